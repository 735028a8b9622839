"""Issue 12, classes 1 and 7: no API key in anything stored, logged or printed, and a scorer whose
service is unreachable (rejected key, no network, a server that never answers, a corrupt cache)
counts failures instead of crashing.  Loopback only: a local TLS server with a self-signed
certificate made here, a port nobody listens on, a socket that accepts and never answers."""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

KEY = "AIzaSyTEST-reliability-key-0123456789"  # never a real key
N_TEXTS = 5


def _scorer(tmp_path, **kwargs):
    from dsteer_eval.metrics.perspective import PerspectiveScorer
    from dsteer_eval.metrics.score_cache import ScoreCache

    kwargs.setdefault("cache", ScoreCache(tmp_path / "cache.sqlite", "perspective:TOXICITY:en"))
    return PerspectiveScorer(KEY, **kwargs)


def _texts(n=N_TEXTS):
    return [f"continuation number {i}" for i in range(n)]


def _no_key_anywhere(*texts):
    for text in texts:
        assert KEY not in text
        assert KEY[:20] not in text  # not even cut


def _discovery_url(port: int) -> str:
    return f"https://127.0.0.1:{port}/$discovery/rest?version=v1alpha1"


# ------------------------------------------------------------------ local TLS endpoint
def _self_signed(folder):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class RejectKey(BaseHTTPRequestHandler):
    """Answers like Google does to a bad key: 400 with the request URL (and so the key) in the body."""

    seen: list = []

    def do_GET(self):  # noqa: N802
        RejectKey.seen.append(self.path)
        url = f"https://127.0.0.1:{self.server.server_address[1]}{self.path}"
        key = self.path.split("key=")[-1].split("&")[0]
        body = json.dumps({"error": {
            "code": 400, "message": f"API key not valid. Please pass a valid API key. (got {key})",
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                         "domain": "googleapis.com", "metadata": {"service": "commentanalyzer.googleapis.com",
                                                                 "requestUrl": url}}],
        }}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_reject(tmp_path):
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = HTTPServer(("127.0.0.1", 0), RejectKey)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    RejectKey.seen = []
    try:
        yield server.server_address[1], cert_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def stderr_logging():
    """A root handler on stderr at DEBUG, as a CLI run has, so capfd sees what a user would."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def test_rejected_key_is_counted_failures_and_never_leaks(tmp_path, tls_reject, caplog, capfd, stderr_logging,
                                                          monkeypatch):
    import httplib2

    from dsteer_eval.metrics import toxicity

    port, cert_file = tls_reject
    caplog.set_level(logging.DEBUG)
    http = httplib2.Http(timeout=5, ca_certs=str(cert_file), proxy_info=None)
    scorer = _scorer(tmp_path, http=http, discovery_url=_discovery_url(port), batch_size=2, backoff_s=0.01)
    texts = _texts()

    report = scorer.score(texts)  # before the fix: HttpError (with the key in its text) out of discovery

    assert report.scores == [None] * N_TEXTS and report.n_failed == N_TEXTS
    assert sorted(report.failures) == list(range(N_TEXTS))
    for why in report.failures.values():
        assert "HTTP 400" in why and "API key not valid" in why
    assert report.n_timed_out == 0
    assert len(RejectKey.seen) == 1 and KEY in RejectKey.seen[0]  # the key went out once; not asked again
    assert "URL being requested" in caplog.text and "key=<PERSPECTIVE_API_KEY>" in caplog.text

    # the same texts through the toxicity task: every continuation counted, the reasons clean
    monkeypatch.setattr(toxicity, "get_scorer", lambda: scorer)
    rows = toxicity.score_continuations([texts[:2], texts[2:4], [texts[4], ""]], [{}] * 3)
    metrics = [toxicity.process_results({}, [row]) for row in rows]
    assert sum(m["n_failed"] for m in metrics) == N_TEXTS and sum(m["n_scored"] for m in metrics) == 0
    assert sum(m["n_degenerate"] for m in metrics) == 1  # the empty continuation: screened, never scored
    assert all(m["n_timed_out"] == 0 for m in metrics)

    out, err = capfd.readouterr()
    _no_key_anywhere(json.dumps(report.failures), json.dumps(rows), caplog.text, out, err,
                     *(r.getMessage() for r in caplog.records))
    assert "API key not valid" in err  # the warning did reach stderr, redacted


# ------------------------------------------------------------------ no network
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _NoDNS:
    """An httplib2-like transport on a machine without a resolver."""

    def __init__(self):
        self.calls = 0

    def request(self, uri, method="GET", body=None, headers=None, **kwargs):
        import httplib2

        self.calls += 1
        raise httplib2.ServerNotFoundError(f"Unable to find the server at commentanalyzer.googleapis.com ({uri})")


@pytest.mark.parametrize("network", ["refused", "no_dns"])
def test_no_network_counts_every_text_failed(tmp_path, network, caplog):
    import httplib2

    caplog.set_level(logging.DEBUG)
    if network == "refused":
        http, url = httplib2.Http(timeout=5, proxy_info=None), _discovery_url(_free_port())
    else:
        http, url = _NoDNS(), None
    scorer = _scorer(tmp_path, http=http, discovery_url=url, batch_size=2, max_retries=2, backoff_s=0.01)
    started = time.monotonic()
    report = scorer.score(_texts())  # before the fix: ConnectionRefusedError / ServerNotFoundError
    assert time.monotonic() - started < 5
    assert report.scores == [None] * N_TEXTS and report.n_failed == N_TEXTS
    want = "ConnectionRefusedError" if network == "refused" else "ServerNotFoundError"
    assert all(want in why and "gave up after 2 retries" in why for why in report.failures.values())
    assert report.n_timed_out == 0
    if network == "no_dns":
        assert http.calls == 3  # one discovery + two retries, then the rest of the run fails at once
    _no_key_anywhere(json.dumps(report.failures), caplog.text)


def test_back_off_never_waits_past_the_budget(tmp_path):
    """A refused connection with a long back-off: the budget stops the retries, the texts time out."""
    sleeps = []
    scorer = _scorer(tmp_path, http=_NoDNS(), batch_size=2, max_retries=5, backoff_s=60.0, max_wait_s=10.0,
                     sleep=sleeps.append)
    report = scorer.score(_texts())
    assert sleeps == [] and report.n_failed == N_TEXTS and report.n_timed_out == N_TEXTS
    assert all("PERSPECTIVE_API_MAX_WAIT_S=10 s" in why for why in report.failures.values())


# ------------------------------------------------------------------ a server that never answers
@pytest.fixture
def silent_port():
    """Accepts TCP connections (the kernel does) and never answers: not even the TLS handshake."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_silent_server_is_bounded_by_the_wait_budget(tmp_path, silent_port, monkeypatch):
    from dsteer_eval.metrics import toxicity, toxicity_scorers

    monkeypatch.setenv("DSTEER_TOXICITY_SCORER", "perspective")
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    monkeypatch.setenv("PERSPECTIVE_API_MAX_WAIT_S", "2")
    monkeypatch.setenv("PERSPECTIVE_API_BATCH", "3")
    monkeypatch.setenv("PERSPECTIVE_API_DISCOVERY_URL", _discovery_url(silent_port))
    monkeypatch.setenv("DSTEER_CACHE_DIR", str(tmp_path / "cache"))
    toxicity_scorers._build.cache_clear()
    try:
        texts = _texts(7)
        started = time.monotonic()
        rows = toxicity.score_continuations([[t] for t in texts], [{}] * len(texts))
        elapsed = time.monotonic() - started
        scorer = toxicity_scorers.get_scorer()
    finally:
        toxicity_scorers._build.cache_clear()
    assert elapsed < 6, elapsed  # 7 texts at a 30 s socket timeout each would be minutes
    metrics = [toxicity.process_results({}, [row]) for row in rows]
    assert sum(m["n_failed"] for m in metrics) == 7 and sum(m["n_timed_out"] for m in metrics) == 7
    assert all(row[0]["toxicity"] is None and row[0]["timed_out"] for row in rows)
    reasons = [row[0]["error"] for row in rows]
    assert any("TimeoutError" in why or "timed out" in why for why in reasons)
    assert sum(why.startswith("not sent") for why in reasons) == 4  # the later batches never went out
    assert scorer.max_wait_s == 2 and 1.5 <= scorer.waited_s <= 4
    _no_key_anywhere(*reasons)


# ------------------------------------------------------------------ corrupt cache
def test_corrupt_cache_is_set_aside_with_a_warning_and_scoring_goes_on(tmp_path, monkeypatch, caplog):
    from googleapiclient.http import HttpMockSequence

    from dsteer_eval.metrics.perspective import PerspectiveScorer
    from dsteer_eval.metrics.score_cache import ScoreCache
    from test_scorers import DISCOVERY, analysis, batch_reply

    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("DSTEER_CACHE_DIR", str(tmp_path))
    garbage = b"\x00\xffthis is not an SQLite database\n" * 64
    (tmp_path / "scores.sqlite").write_bytes(garbage)
    http = HttpMockSequence([({"status": "200"}, json.dumps(DISCOVERY)),
                             batch_reply([("0", 200, analysis(0.25)), ("1", 200, analysis(0.75))])])
    scorer = PerspectiveScorer(KEY, http=http, sleep=lambda s: None)  # before the fix: sqlite3.DatabaseError
    assert scorer.score(["a", "b"]).scores == [0.25, 0.75]

    aside = list(tmp_path.glob("scores.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage and scorer.cache.set_aside == aside
    assert str(tmp_path / "scores.sqlite") in caplog.text and str(aside[0]) in caplog.text
    assert ScoreCache(namespace=scorer.cache.namespace).get_many(["a", "b"]) == {"a": 0.25, "b": 0.75}

    # corrupted while in use (another process, a full disk): set aside again, lookups are misses
    caplog.clear()
    (tmp_path / "scores.sqlite").write_bytes(garbage)
    assert scorer.cache.get_many(["a"]) == {}
    assert len(list(tmp_path.glob("scores.sqlite.corrupt-*"))) == 2 and "corrupt" in caplog.text
    scorer.cache.put_many({"c": 0.5})
    assert scorer.cache.get_many(["c"]) == {"c": 0.5}


def test_unusable_cache_is_a_warning_naming_it_not_a_crash(tmp_path, caplog):
    from dsteer_eval.metrics.score_cache import ScoreCache

    caplog.set_level(logging.WARNING)
    folder = tmp_path / "scores.sqlite"
    folder.mkdir()  # a directory where the file should be: SQLite cannot open it
    cache = ScoreCache(folder)
    assert cache.get_many(["x"]) == {}
    cache.put_many({"x": 0.1})
    assert str(folder) in caplog.text and folder.is_dir()


# ------------------------------------------------------------------ redaction
def test_redact_masks_env_registered_url_and_bearer_secrets(monkeypatch):
    from urllib.parse import quote

    from dsteer_eval.common import redaction

    monkeypatch.setenv("SOME_SERVICE_API_KEY", "env-secret-value-42")
    monkeypatch.setenv("DSTEER_DEBUG_TOKEN", "1")  # too short to be a secret: left alone
    redaction.register("code-secret-abcdef")
    redaction.register("named/secret+value==", "MY_SERVICE_KEY")
    text = ("env env-secret-value-42; code code-secret-abcdef; named named/secret+value==; "
            f"encoded {quote('named/secret+value==', safe='')}; "
            "url https://x.test/v1?alt=json&key=AIzaUnknownKey123&y=2 and https://x.test/?api-key=azureKey987; "
            "Authorization: Bearer sk-unknown-bearer-token-xyz; count 1")
    got = redaction.redact(text)
    for secret in ("env-secret-value-42", "code-secret-abcdef", "named/secret+value==", "AIzaUnknownKey123",
                   "azureKey987", "sk-unknown-bearer-token-xyz", quote("named/secret+value==", safe="")):
        assert secret not in got
    assert "named <MY_SERVICE_KEY>;" in got and "encoded <MY_SERVICE_KEY>;" in got
    assert "key=<redacted>&y=2" in got and "api-key=<redacted>" in got and "Bearer <redacted>" in got
    assert got.endswith("count 1")
    assert redaction.redact_value({"a": ["env-secret-value-42", 3], "b": "ok"}) == {"a": ["<redacted>", 3],
                                                                                   "b": "ok"}


def test_log_redaction_covers_messages_args_exceptions_and_stack(monkeypatch, caplog):
    from dsteer_eval.common import redaction

    secret = "log-secret-0123456789"
    redaction.register(secret, "LOG_KEY")
    redaction.install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("dsteer_eval.test_reliability.fresh")  # created after the factory
    logger.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        logger.error("request failed for %s", f"https://x.test/?key={secret}")
        try:
            raise RuntimeError(f"rejected {secret}")
        except RuntimeError:
            logger.exception("scorer crashed with %r", secret)
        logger.warning("stack %s", secret, stack_info=True)
    finally:
        logger.removeHandler(handler)
    printed = stream.getvalue()
    assert "request failed for https://x.test/?key=<LOG_KEY>" in printed
    assert "RuntimeError: rejected <LOG_KEY>" in printed and "Traceback" in printed
    _no_key_anywhere_of(secret, printed, caplog.text, *(r.getMessage() for r in caplog.records))

    # a bad format string: logging's own error path prints msg and args, so they are redacted too
    record = logging.getLogRecordFactory()("lm_eval.x", logging.ERROR, __file__, 1, "bad format %d " + secret,
                                           (secret,), None)
    assert secret not in str(record.msg) and secret not in repr(record.args)


def _no_key_anywhere_of(secret, *texts):
    for text in texts:
        assert secret not in text


# ------------------------------------------------------------------ OpenAI-compatible judge
class RejectJudgeKey(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        got = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {
            "message": f"Incorrect API key provided: {got}. You can find your API key at "
                       f"https://platform.example/account/api-keys?key={got}.",
            "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_judge_failure_reason_carries_the_server_message_without_the_key(monkeypatch, caplog):
    from dsteer_eval.metrics.judge import OpenAIJudge

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    judge_key = "sk-judge-reliability-9876543210"
    server = HTTPServer(("127.0.0.1", 0), RejectJudgeKey)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        judge = OpenAIJudge("gpt-test", f"http://127.0.0.1:{server.server_address[1]}/v1", judge_key,
                            retries=1, sleep=lambda s: None, timeout_s=5)
        out = judge.score(["rate this"]) + judge.prefer_first(["which one"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    for judgement in out:
        assert judgement.score is None
        assert "HTTP 401" in judgement.error and "Incorrect API key provided" in judgement.error
        assert judge_key not in judgement.error and judge_key[:12] not in judgement.error
    assert judge_key not in caplog.text


def test_a_record_without_a_secret_keeps_its_arguments():
    """The factory runs in every process of the venv: pip's rich handler unpacks ``record.args``, so a
    record with nothing secret must reach it as given (it crashed pip's error path: not enough values to
    unpack); a record with a secret is still flattened to redacted text."""
    from dsteer_eval.common import redaction

    redaction.install_log_redaction()
    renderable = object()
    record = logging.getLogRecordFactory()("pip", logging.ERROR, __file__, 1, "%s", (renderable,), None)
    assert record.args == (renderable,) and record.msg == "%s"
    secret = "sk-ARGSKEEPTEST0123456789"
    redaction.register(secret, "ARGS_KEY")
    flagged = logging.getLogRecordFactory()("dsteer_eval.x", logging.ERROR, __file__, 1, "token %s", (secret,), None)
    assert flagged.args == () and secret not in flagged.msg and "token" in flagged.msg


def test_pip_errors_in_the_venv_are_printed_not_crashed(tmp_path):
    """pip in the venv (where the start-up hook is installed): its diagnostic errors (rich renderables in
    ``record.args``) are printed, not replaced by a crash of its log handler, and a ``*_KEY`` value is not
    masked in pip's output (the redaction belongs to lm-eval's and dsteer-eval's records: it printed
    ``<redacted>-nonexistent-pkg`` for a package name that held a key's value)."""
    import subprocess
    import sys

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text('[build-system]\nrequires = "not a list"\n')
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", str(broken)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "not enough values to unpack" not in done.stderr
    assert "It is not a list of strings" in done.stderr
    import os

    missing = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                              "nonexistent-pkg-zz"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "SOME_SERVICE_KEY": "nonexistent"})
    assert missing.returncode != 0
    assert "<redacted>" not in missing.stdout + missing.stderr
    assert "nonexistent-pkg-zz" in missing.stdout + missing.stderr
