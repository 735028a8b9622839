"""Provenance records: what made an output file, so it can be traced and re-made.

Every vector file (metadata key ``provenance``, a JSON string), DPO card, ``dpo-gate`` card entry,
probe report and ``sweep.json`` carries one record (key ``provenance``), like lm-eval's results
carry their config; ``dsteer-eval info FILE`` prints it.  Schema (``schema_version`` 1)::

    schema           "dsteer-eval/provenance"
    schema_version   "1"
    package_version  dsteer_eval.__version__
    git              {"commit": 40 hex, "dirty": bool | null} when the package runs from a git
                     checkout (its own files tracked there), else null
    python           the interpreter's version
    versions         {torch, transformers, lm_eval, trl, peft}: installed versions (null: not installed)
    command          the exact command line (secrets redacted)
    data             [{"path", "sha256", "bytes"[, "files"][, "role"]}] per input file or folder (a folder:
                     SHA-256 over its files' relative names and full SHA-256s, dsteer_eval.common.hashing);
                     a name that is no local path (a hub id): {"path", "sha256": null, "note"}
    models           [{"role", "path_or_id", "fingerprint"}]; fingerprint: model_type, hidden_size,
                     num_layers, vocab_size, name_or_path of a loaded model; adapter_sha256 (its
                     adapter_model.safetensors, else its whole folder) of a PEFT adapter folder;
                     content_digest of other model files (SHA-256 over each file's size and first and
                     last MiB, as the sweep's resume check: a checkpoint is not read whole)
    seeds            {name: seed} of every seed the run used
    created          UTC time, ISO 8601

Collecting never fails a run: a git or model lookup that goes wrong leaves that field null.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from dsteer_eval import __version__
from dsteer_eval.common.hashing import sha256_file, sha256_tree, tree_files
from dsteer_eval.common.redaction import redact

SCHEMA = "dsteer-eval/provenance"
SCHEMA_VERSION = "1"
KEY = "provenance"  # the key a record goes under, in every kind of output
SINCE = "0.1.0"  # the dsteer-eval version whose outputs first carry a record
LIBRARIES = ("torch", "transformers", "lm_eval", "trl", "peft")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # where the git checkout is looked for (tests move it)
GIT_TIMEOUT_S = 5
NOT_LOCAL = "not a local file"


# ------------------------------------------------------------------ git
def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS`` stdout, or None on any failure (no git, not a checkout, too slow)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")  # status must not take the index lock
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def _git_state(folder: str) -> tuple[str, bool | None] | None:
    here = Path(folder)
    commit = (_git(here, "rev-parse", "HEAD") or "").strip()
    if len(commit) != 40 or _git(here, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None  # not a checkout, or one that does not track this package (e.g. a venv inside a repo)
    status = _git(here, "status", "--porcelain")
    return commit, None if status is None else bool(status.strip())


def git_state() -> dict | None:
    """``{"commit", "dirty"}`` of the checkout the package runs from, else None.

    Looked up once per process: the code that runs is the code imported when it started."""
    found = _git_state(str(PACKAGE_DIR))
    return None if found is None else {"commit": found[0], "dirty": found[1]}


# ------------------------------------------------------------------ parts
def library_versions() -> dict[str, str | None]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def command_line(argv: Iterable[str] | None = None) -> str:
    """``dsteer-eval ARGV`` for the CLI's own arguments; else the process's command line
    (``dsteer-eval ...`` when it runs as the ``dsteer-eval`` script).  Secrets are redacted."""

    if argv is not None:
        words = ["dsteer-eval", *argv]
    elif Path(sys.argv[0]).name == "dsteer-eval":
        words = ["dsteer-eval", *sys.argv[1:]]
    else:
        words = list(sys.argv)
    return redact(shlex.join(str(w) for w in words))


def data_entry(source, role: str | None = None) -> dict:
    """``{"path", "sha256", "bytes"}`` of a local file or folder (folder: also ``files``); a name that is
    not a local path (a hub id): ``{"path", "sha256": None, "note"}``."""

    path = Path(str(source)).expanduser()
    if path.is_file():
        entry = {"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    elif path.is_dir():
        files = [full for _, full in tree_files(path)]
        entry = {"path": str(path.resolve()), "sha256": sha256_tree(path),
                 "bytes": sum(f.stat().st_size for f in files), "files": len(files)}
    else:
        entry = {"path": str(source), "sha256": None, "note": NOT_LOCAL}
    return entry if role is None else {**entry, "role": role}


# ------------------------------------------------------------------ records
def collect(*, data: Iterable = (), models: Iterable[Mapping] = (), seeds: Mapping | None = None,
            command: str | None = None) -> dict:
    """A provenance record (schema in the module docstring).

    ``data``: input paths or hub ids (or entries made by :func:`data_entry`); ``models``: entries made by
    :func:`dsteer_eval.models.identity.model_entry`; ``seeds``: ``{name: seed}``; ``command``: default :func:`command_line` ``()``."""

    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "git": git_state(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "command": command if command is not None else command_line(),
        "data": [dict(d) if isinstance(d, Mapping) else data_entry(d) for d in data],
        "models": [dict(m) for m in models],
        "seeds": dict(seeds or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def dumps(record: Mapping) -> str:
    """The record as one line of JSON (for string-only metadata such as safetensors')."""
    return json.dumps(record, separators=(",", ":"))


def read(value) -> dict | None:
    """The record in ``value`` (a dict, or a JSON string as vector files store it); None when absent.

    Raises ValueError when ``value`` is there but is not a provenance record."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the provenance record is not valid JSON ({exc})") from None
    if not isinstance(value, Mapping) or value.get("schema") != SCHEMA:
        raise ValueError(f"the provenance record is not a {SCHEMA} record")
    wrong = _wrong_shape(value)
    if wrong:
        raise ValueError(f"the provenance record's {wrong}; it is not as dsteer-eval wrote it (edited, or made "
                         f"by another tool): re-make the file to record its provenance again")
    return dict(value)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}")


def _wrong_shape(record: Mapping) -> str | None:
    """What in ``record`` has the wrong type for the schema (module docstring), or None; absent fields are fine."""
    def wrong(name, value, want):
        return f"{name!r} is {_kind(value)}, not {want}"

    for key in ("schema_version", "package_version", "python", "command", "created"):
        if record.get(key) is not None and not isinstance(record[key], str):
            return wrong(key, record[key], "a string")
    git = record.get("git")
    if git is not None and not isinstance(git, Mapping):
        return wrong("git", git, "an object or null")
    if git and git.get("commit") is not None and not isinstance(git["commit"], str):
        return wrong("git.commit", git["commit"], "a string")
    if git and git.get("dirty") is not None and not isinstance(git["dirty"], bool):
        return wrong("git.dirty", git["dirty"], "true/false or null")
    for key in ("versions", "seeds"):
        if key in record and not isinstance(record[key], Mapping):
            return wrong(key, record[key], "an object")
    for key in ("data", "models"):
        items = record.get(key, [])
        if not isinstance(items, list):
            return wrong(key, items, "a list of objects")
        for item in items:
            if not isinstance(item, Mapping):
                return f"{key!r} is a list holding {_kind(item)}, not a list of objects"
    return None
