"""The Perspective API (``commentanalyzer`` v1alpha1) through google-api-python-client.

* discovery build of the service; requests go out as HTTP batches of up to
  ``batch_size`` ``comments.analyze`` calls;
* a QPS limit counts every call inside a batch (Perspective's quota does);
* 429, 5xx, timeouts and connection errors are retried with exponential
  back-off, per request inside a batch and for the batch as a whole; other
  errors (400: e.g. unsupported language) fail at once;
* a text that finally fails is returned as ``None`` with its reason, never 0;
* scores are cached on disk by text (:class:`ScoreCache`) as soon as a batch
  returns, so a rerun or a crash never pays twice;
* the API key never reaches a log record, an error message or a result: it is
  redacted from googleapiclient's request logs and from every failure reason.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from dsteer_eval.metrics.score_cache import ScoreCache
from dsteer_eval.metrics.toxicity_scorers import ScoreReport

log = logging.getLogger("dsteer_eval.toxicity")

DISCOVERY_URL = "https://commentanalyzer.googleapis.com/$discovery/rest?version=v1alpha1"
ATTRIBUTE = "TOXICITY"
RETRY_STATUSES = {429, 500, 502, 503, 504}


class _RedactKey(logging.Filter):
    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.key in message:
            record.msg, record.args = message.replace(self.key, "<PERSPECTIVE_API_KEY>"), ()
        return True


class PerspectiveScorer:
    def __init__(
        self,
        api_key: str,
        *,
        qps: float = 1.0,
        batch_size: int = 10,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        languages=("en",),
        cache: ScoreCache | None = None,
        http=None,
        sleep=time.sleep,
        clock=time.monotonic,
    ):
        if not api_key:
            raise ValueError("PerspectiveScorer needs an API key (PERSPECTIVE_API_KEY)")
        if not qps > 0 or batch_size < 1 or max_retries < 0:
            raise ValueError("PerspectiveScorer: qps must be > 0, batch_size >= 1, max_retries >= 0")
        self._key = api_key
        self.qps, self.batch_size, self.max_retries, self.backoff_s = float(qps), int(batch_size), int(max_retries), backoff_s
        self.timeout_s = timeout_s
        self.languages = list(languages)
        self.name = f"perspective:{ATTRIBUTE}"
        self.cache = cache if cache is not None else ScoreCache(namespace=f"{self.name}:{','.join(self.languages)}")
        self._http = http
        self._sleep, self._clock = sleep, clock
        self._next_send = 0.0
        self._service = None
        self.calls = 0  # analyze calls sent (inside batches), for reports and tests
        self._redactor = _RedactKey(api_key)
        for name in ("googleapiclient.discovery", "googleapiclient.http", "googleapiclient"):
            logging.getLogger(name).addFilter(self._redactor)

    @classmethod
    def from_env(cls, api_key: str) -> "PerspectiveScorer":
        def number(name, default, kind=float):
            raw = os.environ.get(name)
            try:
                return kind(raw) if raw not in (None, "") else default
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        return cls(
            api_key,
            qps=number("PERSPECTIVE_API_QPS", 1.0),
            batch_size=number("PERSPECTIVE_API_BATCH", 10, int),
            max_retries=number("PERSPECTIVE_API_RETRIES", 5, int),
        )

    # ------------------------------------------------------------------ plumbing
    def redact(self, text: str) -> str:
        return str(text).replace(self._key, "<PERSPECTIVE_API_KEY>")

    def service(self):
        if self._service is None:
            from googleapiclient import discovery

            http = self._http
            if http is None:
                import httplib2

                http = httplib2.Http(timeout=self.timeout_s)
            self._http = http
            self._service = discovery.build(
                "commentanalyzer",
                "v1alpha1",
                developerKey=self._key,
                discoveryServiceUrl=DISCOVERY_URL,
                static_discovery=False,
                cache_discovery=False,
                http=http,
            )
        return self._service

    def _pace(self, n_calls: int) -> None:
        """Wait until the QPS budget allows ``n_calls`` more calls."""
        now = self._clock()
        if now < self._next_send:
            self._sleep(self._next_send - now)
            now = self._next_send
        self._next_send = now + n_calls / self.qps

    def _body(self, text: str) -> dict:
        return {"comment": {"text": text}, "languages": self.languages, "requestedAttributes": {ATTRIBUTE: {}}}

    @staticmethod
    def _status(exc) -> int | None:
        resp = getattr(exc, "resp", None)
        try:
            return int(getattr(resp, "status", None))
        except (TypeError, ValueError):
            return None

    def _send(self, items: list[tuple[str, str]]) -> dict:
        """One HTTP batch: ``{id: ('ok', score) | ('retry', why) | ('fail', why)}``."""
        from googleapiclient.errors import HttpError

        service = self.service()
        outcome: dict = {}

        def callback(request_id, response, exception):
            if exception is not None:
                status = self._status(exception)
                kind = "retry" if status in RETRY_STATUSES else "fail"
                outcome[request_id] = (kind, f"HTTP {status}: {self.redact(exception)}")
                return
            try:
                value = float(response["attributeScores"][ATTRIBUTE]["summaryScore"]["value"])
            except (KeyError, TypeError, ValueError):
                outcome[request_id] = ("fail", "response without attributeScores.TOXICITY.summaryScore.value")
                return
            outcome[request_id] = ("ok", value)

        batch = service.new_batch_http_request(callback=callback)
        for request_id, text in items:
            batch.add(service.comments().analyze(body=self._body(text)), request_id=request_id)
        self.calls += len(items)
        try:
            batch.execute(http=self._http)
        except HttpError as exc:
            status = self._status(exc)
            kind = "retry" if status in RETRY_STATUSES else "fail"
            return {rid: (kind, f"batch HTTP {status}: {self.redact(exc)}") for rid, _ in items}
        except (TimeoutError, socket.timeout, ConnectionError, OSError) as exc:
            return {rid: ("retry", f"{type(exc).__name__}: {self.redact(exc)}") for rid, _ in items}
        except Exception as exc:  # httplib2 errors and malformed batch replies
            name = type(exc).__name__
            kind = "retry" if "httplib2" in type(exc).__module__ else "fail"
            return {rid: (kind, f"{name}: {self.redact(exc)}") for rid, _ in items}
        for rid, _ in items:
            outcome.setdefault(rid, ("fail", "no part for this request in the batch reply"))
        return outcome

    def _score_chunk(self, texts: list[str]) -> tuple[dict, dict]:
        pending = {str(i): t for i, t in enumerate(texts)}
        scored, failed, last_retry = {}, {}, {}
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            self._pace(len(pending))
            outcome = self._send(list(pending.items()))
            retry = {}
            for rid, text in pending.items():
                kind, value = outcome[rid]
                if kind == "ok":
                    scored[text] = value
                elif kind == "retry":
                    retry[rid], last_retry[text] = text, value
                else:
                    failed[text] = value
            self.cache.put_many({t: scored[t] for t in pending.values() if t in scored})
            pending = retry
            if not pending:
                break
        for text in pending.values():  # still retryable after the last attempt
            failed[text] = f"{last_retry[text]} (gave up after {self.max_retries} retries)"
        return scored, failed

    # ---------------------------------------------------------------- public
    def score(self, texts) -> ScoreReport:
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        known = self.cache.get_many(unique)
        todo = [t for t in unique if t not in known]
        failures: dict = {}
        for start in range(0, len(todo), self.batch_size):
            scored, failed = self._score_chunk(todo[start:start + self.batch_size])
            known.update(scored)
            failures.update(failed)
        for text, why in failures.items():
            log.warning("Perspective API could not score a text (%d chars): %s", len(text), why)
        return ScoreReport([known.get(t) for t in texts], {i: failures[t] for i, t in enumerate(texts) if t in failures})
