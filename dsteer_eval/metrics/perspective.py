"""The Perspective API (``commentanalyzer`` v1alpha1) through google-api-python-client.

* discovery build of the service; requests go out as HTTP batches of up to
  ``batch_size`` ``comments.analyze`` calls;
* a QPS limit counts every call inside a batch (Perspective's quota does);
* 429, 5xx, timeouts and connection errors are retried with exponential
  back-off, per request inside a batch and for the batch as a whole; other
  errors (400: e.g. unsupported language) fail at once;
* the service is built (discovery) inside the same error handling: a rejected key
  (HTTP 400 on discovery), no network or a server that does not answer makes the
  texts failures, never an exception that loses the generations; a discovery that
  fails for good (a non-retryable status, or still failing after the retries) fails
  every later text of the run at once, without asking again;
* a text that finally fails is returned as ``None`` with its reason, never 0;
* the total time a run loses waiting on the service is bounded: ``PERSPECTIVE_API_MAX_WAIT_S``
  (default 300 s) caps the time spent in attempts that scored nothing (timed out, refused,
  rejected) plus the back-off sleeps between retries. Each attempt's socket timeout is cut to
  what is left of it; once it is spent, the texts not yet scored are not sent and fail as
  timed out. Time spent in answered requests and in QPS pacing does not count (a large, healthy
  run is never cut short). The bound holds per scorer, i.e. per process: the task builds one;
* texts that failed by a timeout (the last attempt timed out, or never sent because the wait
  budget was spent) are reported in :attr:`ScoreReport.timed_out` and the toxicity task counts
  them in ``n_timed_out`` (they are in ``n_failed`` too);
* scores are cached on disk by text (:class:`ScoreCache`) as soon as a batch
  returns, so a rerun or a crash never pays twice;
* the API key never reaches a log record, an error message or a result: it is registered with
  :mod:`dsteer_eval.common.redaction` (masked as ``<PERSPECTIVE_API_KEY>``), whose log-record factory
  redacts googleapiclient's request logs, and every failure reason passes through
  :func:`~dsteer_eval.common.redaction.redact`.

Settings (environment, read by :meth:`PerspectiveScorer.from_env`): ``PERSPECTIVE_API_KEY``,
``PERSPECTIVE_API_QPS`` (1), ``PERSPECTIVE_API_BATCH`` (10), ``PERSPECTIVE_API_RETRIES`` (5),
``PERSPECTIVE_API_TIMEOUT_S`` (30, per request), ``PERSPECTIVE_API_MAX_WAIT_S`` (300, per run),
``PERSPECTIVE_API_DISCOVERY_URL`` (Google's discovery document; for proxies and tests).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter

from dsteer_eval.common import redaction
from dsteer_eval.metrics.score_cache import ScoreCache
from dsteer_eval.metrics.types import ScoreReport

log = logging.getLogger("dsteer_eval.toxicity")

DISCOVERY_URL = "https://commentanalyzer.googleapis.com/$discovery/rest?version=v1alpha1"
ATTRIBUTE = "TOXICITY"
RETRY_STATUSES = {429, 500, 502, 503, 504}
KEY_NAME = "PERSPECTIVE_API_KEY"
ENV_DISCOVERY_URL = "PERSPECTIVE_API_DISCOVERY_URL"
ENV_MAX_WAIT = "PERSPECTIVE_API_MAX_WAIT_S"
DEFAULT_MAX_WAIT_S = 300.0
_MIN_ATTEMPT_S = 0.05  # less wait budget than this left: the budget is spent


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
        max_wait_s: float | None = DEFAULT_MAX_WAIT_S,
        languages=("en",),
        cache: ScoreCache | None = None,
        http=None,
        discovery_url: str | None = None,
        sleep=time.sleep,
        clock=time.monotonic,
    ):
        if not api_key:
            raise ValueError("PerspectiveScorer needs an API key (PERSPECTIVE_API_KEY)")
        if not qps > 0 or batch_size < 1 or max_retries < 0:
            raise ValueError("PerspectiveScorer: qps must be > 0, batch_size >= 1, max_retries >= 0")
        if not timeout_s > 0 or (max_wait_s is not None and not max_wait_s > 0):
            raise ValueError("PerspectiveScorer: timeout_s and max_wait_s must be > 0")
        redaction.register(api_key, KEY_NAME)
        redaction.install_log_redaction()  # googleapiclient logs request URLs (with the key) at DEBUG
        self._key = api_key
        self.qps, self.batch_size, self.max_retries, self.backoff_s = float(qps), int(batch_size), int(max_retries), backoff_s
        self.timeout_s = float(timeout_s)
        self.max_wait_s = float(max_wait_s) if max_wait_s is not None else float("inf")
        self.languages = list(languages)
        self.name = f"perspective:{ATTRIBUTE}"
        self.cache = cache if cache is not None else ScoreCache(namespace=f"{self.name}:{','.join(self.languages)}")
        self.discovery_url = discovery_url or os.environ.get(ENV_DISCOVERY_URL) or DISCOVERY_URL
        self._http = http
        self._own_timeout = None  # the transport's timeout before we cut it per attempt
        self._sleep, self._clock = sleep, clock
        self._next_send = 0.0
        self._service = None
        self._fatal: tuple[str, bool] | None = None  # (reason, timed out) once the service cannot be built
        self.calls = 0  # analyze calls sent (inside batches), for reports and tests
        self.waited_s = 0.0  # time lost to attempts that scored nothing and to back-off (the wait budget)

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
            timeout_s=number("PERSPECTIVE_API_TIMEOUT_S", 30.0),
            max_wait_s=number(ENV_MAX_WAIT, DEFAULT_MAX_WAIT_S),
        )

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def redact(text) -> str:
        return redaction.redact(text)

    def _transport(self):
        if self._http is None:
            import httplib2  # deferred: optional API client, loaded only when used

            self._http = httplib2.Http(timeout=self.timeout_s)
        return self._http

    def service(self):
        if self._service is None:
            from googleapiclient import discovery  # deferred: optional API client, loaded only when used

            self._service = discovery.build(
                "commentanalyzer",
                "v1alpha1",
                developerKey=self._key,
                discoveryServiceUrl=self.discovery_url,
                static_discovery=False,
                cache_discovery=False,
                http=self._transport(),
                num_retries=0,  # retries (and their waits) are ours: counted against the wait budget
            )
        return self._service

    def _budget_left(self) -> float:
        return self.max_wait_s - self.waited_s

    def _set_timeout(self, seconds: float) -> None:
        """Cut the socket timeout of the next attempt (httplib2.Http; other transports are left alone)."""
        http = self._transport()
        if not hasattr(http, "connections") or not hasattr(http, "timeout"):
            return
        if self._own_timeout is None:  # a transport passed in keeps its own timeout when shorter
            self._own_timeout = http.timeout if http.timeout and http.timeout > 0 else float("inf")
        seconds = min(seconds, self._own_timeout)
        http.timeout = seconds
        for conn in list(getattr(http, "connections", {}).values()):
            conn.timeout = seconds
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.settimeout(seconds)
                except OSError:
                    pass

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

    def _classify(self, exc, prefix: str = "") -> tuple[str, str]:
        """``(kind, reason)`` of a failed request: kind is ``retry``, ``timeout`` (retried too) or ``fail``."""
        from googleapiclient.errors import HttpError  # deferred: optional API client, loaded only when used

        if isinstance(exc, HttpError):
            status = self._status(exc)
            kind = "retry" if status in RETRY_STATUSES else "fail"
            return kind, self.redact(f"{prefix}HTTP {status}: {exc}")
        reason = self.redact(f"{prefix}{type(exc).__name__}: {exc}")
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return "timeout", reason
        if isinstance(exc, (ConnectionError, OSError)) or "httplib2" in type(exc).__module__:
            return "retry", reason  # refused, reset, no route, DNS (httplib2.ServerNotFoundError), TLS
        return "fail", reason  # malformed replies, an unknown API

    def _send(self, items: list[tuple[str, str]]) -> dict:
        """One HTTP batch: ``{id: ('ok', score) | ('retry' | 'timeout' | 'fail', why)}``.

        The time of a request that scored nothing (discovery included) is added to ``waited_s``."""
        started = self._clock()
        try:
            service = self.service()
        except Exception as exc:  # noqa: BLE001 - a bad key, no network: every text fails, none is lost
            self._lost(started)
            kind, why = self._classify(exc, "service discovery failed: ")
            if kind == "fail":
                self._fatal = (why, False)
            return {rid: (kind, why) for rid, _ in items}

        outcome: dict = {}

        def callback(request_id, response, exception):
            if exception is not None:
                outcome[request_id] = self._classify(exception)
                return
            try:
                value = float(response["attributeScores"][ATTRIBUTE]["summaryScore"]["value"])
            except (KeyError, TypeError, ValueError):
                outcome[request_id] = ("fail", "response without attributeScores.TOXICITY.summaryScore.value")
                return
            outcome[request_id] = ("ok", value)

        try:
            batch = service.new_batch_http_request(callback=callback)
            for request_id, text in items:
                batch.add(service.comments().analyze(body=self._body(text)), request_id=request_id)
            self._pace(len(items))  # only calls that go out count against the QPS limit
            self.calls += len(items)
            started = self._clock()
            batch.execute(http=self._http)
        except Exception as exc:  # noqa: BLE001 - httplib2 errors and malformed batch replies included
            self._lost(started)
            kind, why = self._classify(exc, "batch ")
            return {rid: (kind, why) for rid, _ in items}
        for rid, _ in items:
            outcome.setdefault(rid, ("fail", "no part for this request in the batch reply"))
        if not any(kind == "ok" for kind, _ in outcome.values()):
            self._lost(started)
        return outcome

    def _lost(self, started: float) -> None:
        self.waited_s += max(0.0, self._clock() - started)

    def _spent_reason(self, sent: bool = False) -> str:
        if sent:
            return f"the run's wait budget ({ENV_MAX_WAIT}={self.max_wait_s:g} s) allows no further attempt"
        return f"not sent: the run's wait budget ({ENV_MAX_WAIT}={self.max_wait_s:g} s) is spent"

    def _score_chunk(self, texts: list[str]) -> tuple[dict, dict, set]:
        """``(scored {text: score}, failed {text: reason}, timed-out texts)``."""
        pending = {str(i): t for i, t in enumerate(texts)}
        scored, failed, timed_out, last = {}, {}, set(), {}
        budget_spent = False
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                if delay >= self._budget_left():  # the back-off alone would spend the budget
                    budget_spent = True
                    break
                self._sleep(delay)
                self.waited_s += delay
            left = self._budget_left()
            if left < _MIN_ATTEMPT_S:
                budget_spent = True
                break
            self._set_timeout(min(self.timeout_s, left))
            outcome = self._send(list(pending.items()))
            retry = {}
            for rid, text in pending.items():
                kind, value = outcome[rid]
                if kind == "ok":
                    scored[text] = value
                elif kind in ("retry", "timeout"):
                    retry[rid], last[text] = text, (value, kind == "timeout")
                else:
                    failed[text] = value
            self.cache.put_many({t: scored[t] for t in pending.values() if t in scored})
            pending = retry
            if not pending:
                break
        budget_spent = budget_spent or (bool(pending) and self._budget_left() < _MIN_ATTEMPT_S)
        for text in pending.values():  # still retryable when we stopped
            if text not in last:  # never sent
                failed[text] = self._spent_reason()
                timed_out.add(text)
                continue
            why, was_timeout = last[text]
            if budget_spent:
                failed[text] = f"{why} (gave up: {self._spent_reason(sent=True)})"
                timed_out.add(text)
            else:
                failed[text] = f"{why} (gave up after {self.max_retries} retries)"
                if was_timeout:
                    timed_out.add(text)
        if pending and not budget_spent and self._service is None and self._fatal is None:
            # discovery still failing after every retry (no network): the rest of the run fails at once
            why, was_timeout = last.get(next(iter(pending.values())), (self._spent_reason(), True))
            self._fatal = (f"{why} (gave up after {self.max_retries} retries)", was_timeout)
        return scored, failed, timed_out

    # ---------------------------------------------------------------- public
    def score(self, texts) -> ScoreReport:
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        known = self.cache.get_many(unique)
        todo = [t for t in unique if t not in known]
        failures: dict = {}
        timed_out: set = set()
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            if self._fatal is not None or self._budget_left() < _MIN_ATTEMPT_S:
                why, was_timeout = self._fatal if self._fatal is not None else (self._spent_reason(), True)
                failures.update({t: why for t in chunk})
                if was_timeout:
                    timed_out.update(chunk)
                continue
            scored, failed, late = self._score_chunk(chunk)
            known.update(scored)
            failures.update(failed)
            timed_out.update(late)
        for why, count in Counter(failures.values()).most_common():
            log.warning("Perspective API could not score %d text(s): %s", count, why)
        if timed_out:
            log.warning("Perspective API: %d text(s) failed by timeout or the wait budget (%s=%g s, %.1f s spent)",
                        len(timed_out), ENV_MAX_WAIT, self.max_wait_s, self.waited_s)
        return ScoreReport(
            [known.get(t) for t in texts],
            {i: failures[t] for i, t in enumerate(texts) if t in failures},
            {i for i, t in enumerate(texts) if t in timed_out},
        )
