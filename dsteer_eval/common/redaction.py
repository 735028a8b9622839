"""The one place where secrets are taken out of text that is stored, logged or printed.

What counts as a secret:

* the value of every environment variable whose name says it holds one
  (``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*PASSWORD*``, e.g. ``PERSPECTIVE_API_KEY``,
  ``OPENAI_API_KEY``, ``HF_TOKEN``), read when :func:`redact` runs, so a key set
  after import is covered too;
* values registered with :func:`register` (a key passed in code, not via the environment),
  masked as ``<NAME>`` when registered with a name (``register(key, "PERSPECTIVE_API_KEY")``),
  so a reader still sees which secret stood there;
* whatever stands after ``key=`` / ``api_key=`` / ``api-key=`` / ``access_token=`` / ``token=``
  in a URL query and after ``Bearer `` in a header, whether or not the value is known;
* the value of a secret-looking key inside comma-separated model args (``token=``, ``hf_token=``,
  ``api_key=``, ``access_token=``, ``password=``, ``secret=`` ...: :func:`is_secret_arg`), e.g. in
  ``--model-args pretrained=org/m,token=hf_...``, and the same keys in a printed dict or JSON
  (``{'hf_token': 'hf_...'}``, ``"api_key": "..."``: lm-eval's "Initializing steered model, with
  arguments: {...}" line, logged before any model code runs); :func:`register_model_args` also
  registers those values, so they are masked wherever they appear later.

A known secret is also masked in its percent-encoded form (as it appears inside a URL).

Every place that stores or prints an exception text or a failure reason calls :func:`redact`
(``failed.json``, scorer failure reasons, leaderboards, CLI errors); :func:`install_log_redaction`
redacts log records (message, arguments and formatted traceback): in the ``dsteer-eval`` command every
record of its process, and wherever lm-eval is imported (the start-up hook) the records of lm-eval's
and dsteer-eval's loggers and of the HTTP clients they send keys through (:data:`SCOPED_LOGGERS`);
other programs of the venv are left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from urllib.parse import quote

MASK = "<redacted>"
_SECRET_ENV = re.compile(r"(_KEY|_TOKEN|_SECRET|PASSWORD)$|^(HF_TOKEN|HUGGING_FACE_HUB_TOKEN)$", re.I)
_URL_SECRET = re.compile(r"(?P<name>[?&;](?:key|api[_-]?key|access_token|token)=)[^&\s\"'<>]+", re.I)
_BEARER = re.compile(r"(?P<name>Bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_MIN_SECRET_LEN = 6  # shorter values (e.g. "1", "true") are not secrets and would mangle text
_SPECIAL_TOKENS = r"(?!(?:pad|bos|eos|unk|sep|cls|mask)_token\b)"  # tokenizer settings, not secrets
_SECRET_ARG_NAME = re.compile(_SPECIAL_TOKENS + r"^[\w.-]*?(token|api[_-]?key|apikey|secret|password|passwd|credentials?)$", re.I)
_ARG_SECRET = re.compile(
    r"(?P<name>(?:^|(?<=[,\s\"'(]))" + _SPECIAL_TOKENS + r"[\w.-]*?(?:token|api[_-]?key|apikey|secret|password|passwd|credentials?)\s*=\s*)"
    r"(?!<)[^,\s\"')&]{%d,}" % _MIN_SECRET_LEN, re.I)

_MAPPING_SECRET = re.compile(
    r"(?P<name>(?P<q>['\"])" + _SPECIAL_TOKENS + r"[\w.-]*?(?:token|api[_-]?key|apikey|secret|password|passwd|credentials?)"
    r"(?P=q)\s*:\s*(?P<v>['\"]))(?!<)(?:(?!(?P=v)).){%d,}(?=(?P=v))" % _MIN_SECRET_LEN, re.I)

_registered: dict[str, str] = {}  # secret -> its mask
_cache: dict = {"env_len": -1, "env_names": (), "key": None, "masks": []}


def register(secret: str | None, name: str | None = None) -> None:
    """Redact ``secret`` wherever it appears from now on (a key given in code, not the environment).

    With ``name`` it is masked as ``<name>`` (e.g. ``<PERSPECTIVE_API_KEY>``), else as :data:`MASK`.
    """
    if secret and len(str(secret)) >= _MIN_SECRET_LEN:
        if name:
            _registered[str(secret)] = f"<{name}>"
        else:
            _registered.setdefault(str(secret), MASK)


def _masks() -> list[tuple[str, str]]:
    """Every known secret and its mask, longest first. Cached: rebuilt only when a secret is registered, the
    environment gains or loses a variable, or a secret-named variable changes value (a log record costs a
    few dictionary look-ups, not a scan of the environment)."""
    if len(os.environ) != _cache["env_len"]:
        _cache["env_len"] = len(os.environ)
        _cache["env_names"] = tuple(name for name in os.environ if _SECRET_ENV.search(name))
    values = tuple(os.environ.get(name) for name in _cache["env_names"])
    key = (values, tuple(_registered.items()))
    if key == _cache["key"]:
        return _cache["masks"]
    found = dict(_registered)
    for value in values:
        if value and len(value) >= _MIN_SECRET_LEN:
            found.setdefault(value, MASK)
    for secret, mask in list(found.items()):
        encoded = quote(secret, safe="")
        if encoded != secret:
            found.setdefault(encoded, mask)
    _cache["key"], _cache["masks"] = key, sorted(found.items(), key=lambda item: len(item[0]), reverse=True)
    return _cache["masks"]


def secrets() -> list[str]:
    """Every secret value known now, longest first (a key that contains another is masked whole)."""
    return [secret for secret, _ in _masks()]


def redact(text) -> str:
    """``text`` as a string with every known secret and every URL key/token value masked."""
    text = str(text)
    for secret, mask in _masks():
        if secret in text:
            text = text.replace(secret, mask)
    text = _URL_SECRET.sub(lambda m: m.group("name") + MASK, text)
    text = _ARG_SECRET.sub(lambda m: m.group("name") + MASK, text)
    text = _MAPPING_SECRET.sub(lambda m: m.group("name") + MASK, text)
    return _BEARER.sub(lambda m: m.group("name") + MASK, text)


def is_secret_arg(name: str) -> bool:
    """Whether a model-args key names a secret (``token``, ``hf_token``, ``api_key``, ``password`` ...;
    not ``tokenizer`` or ``max_new_tokens``)."""
    return bool(_SECRET_ARG_NAME.match(str(name).strip()))


def register_model_args(kwargs) -> dict[str, str]:
    """Register the value of every secret-looking key of parsed model args (masked as ``<model_args KEY>``
    from now on: logs, errors, stored files) and return ``{key: sha256 of the value}``, which lets a
    resume notice a changed secret without storing it."""

    found = {}
    for key, value in dict(kwargs).items():
        if is_secret_arg(key) and str(value).strip():
            register(str(value).strip(), f"model_args {key}")
            found[str(key)] = hashlib.sha256(str(value).strip().encode()).hexdigest()
    return found


def redact_value(value):
    """Redact every string inside a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value


# The loggers whose records the start-up hook redacts (a logger's name or its parent's): lm-eval's, ours, and
# the HTTP clients that carry our keys (Perspective through googleapiclient/httplib2, judges through
# requests/urllib3/httpx/openai, the hub through huggingface_hub).
SCOPED_LOGGERS = ("lm_eval", "dsteer_eval", "googleapiclient", "httplib2", "urllib3", "requests", "httpx", "openai",
                  "huggingface_hub")
_state = {"installed": False, "everything": False}


def _in_scope(name: str) -> bool:
    return _state["everything"] or name.split(".", 1)[0] in SCOPED_LOGGERS


def install_log_redaction(scope: str = "lm_eval") -> None:
    """Redact log records from now on (idempotent; a later ``scope="all"`` widens an earlier scoped call).

    ``scope="all"``: every record of this process (the ``dsteer-eval`` command: the whole process is ours).
    ``scope="lm_eval"``: only records of :data:`SCOPED_LOGGERS` (what the start-up hook installs wherever
    lm-eval is imported: another program's records, pip's included, are left as they are).

    A record factory, not a filter: filters attach to one logger or handler and miss records of loggers
    created later (googleapiclient's, httplib2's); the factory sees every record and returns the ones out of
    scope untouched. The message is formatted once here: a record whose text holds a secret gets the
    redacted text as its message and no arguments; any other keeps its message and arguments as given. A
    traceback is rendered, redacted and stored as ``exc_text`` (what logging's formatters print); the
    exception itself (``exc_info``, what rich, Sentry, caplog and JSON formatters read) is kept unless its
    rendered text held a secret.
    """
    if scope not in ("all", "lm_eval"):
        raise ValueError(f"install_log_redaction(scope={scope!r}): use 'all' or 'lm_eval'")
    if scope == "all":
        _state["everything"] = True
    if _state["installed"]:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if not _in_scope(record.name):
            return record
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep logging's own error path,
            # but with nothing secret in what it prints
            record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, (str, BaseException)) else a for a in record.args)
        else:
            masked = redact(message)
            if masked != message:  # only a record that held a secret is flattened; the others keep their
                record.msg, record.args = masked, ()  # args (pip's rich handler unpacks record.args)
        if record.exc_info and record.exc_info[0] is not None:
            rendered = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(rendered)
            if record.exc_text != rendered:
                record.exc_info = None  # a handler that renders the exception itself would print the secret
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)
    _state["installed"] = True
