"""Toxicity scorers (Perspective through googleapiclient against HttpMockSequence, offline, hf:)
and the G-Eval judges (local logits, OpenAI-compatible endpoint on a loopback server), win-rate."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

KEY = "AIzaTESTKEY-must-never-be-logged"

# A minimal discovery document for commentanalyzer v1alpha1 (the shape of Google's, methods we use).
DISCOVERY = {
    "kind": "discovery#restDescription", "discoveryVersion": "v1", "id": "commentanalyzer:v1alpha1",
    "name": "commentanalyzer", "version": "v1alpha1", "protocol": "rest",
    "rootUrl": "https://commentanalyzer.googleapis.com/", "servicePath": "", "batchPath": "batch",
    "baseUrl": "https://commentanalyzer.googleapis.com/",
    "parameters": {"key": {"type": "string", "location": "query"}, "alt": {"type": "string", "location": "query",
                                                                           "default": "json"}},
    "schemas": {"AnalyzeCommentRequest": {"id": "AnalyzeCommentRequest", "type": "object"},
                "AnalyzeCommentResponse": {"id": "AnalyzeCommentResponse", "type": "object"}},
    "resources": {"comments": {"methods": {"analyze": {
        "id": "commentanalyzer.comments.analyze", "path": "v1alpha1/comments:analyze",
        "flatPath": "v1alpha1/comments:analyze", "httpMethod": "POST", "parameters": {}, "parameterOrder": [],
        "request": {"$ref": "AnalyzeCommentRequest"}, "response": {"$ref": "AnalyzeCommentResponse"}}}}},
}


def analysis(value):
    return {"attributeScores": {"TOXICITY": {"summaryScore": {"value": value, "type": "PROBABILITY"}}}}


def batch_reply(parts):
    """A multipart/mixed batch reply: parts = [(request_id, status, json body)]."""
    body = ""
    for rid, status, payload in parts:
        reason = {200: "OK", 429: "Too Many Requests", 400: "Bad Request", 503: "Service Unavailable"}[status]
        body += (f"--BOUNDARY\nContent-Type: application/http\nContent-Transfer-Encoding: binary\n"
                 f"Content-ID: <response-xyz + {rid}>\n\n"
                 f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\r\n{json.dumps(payload)}\n")
    body += "--BOUNDARY--"
    return ({"status": "200", "content-type": 'multipart/mixed; boundary="BOUNDARY"'}, body)


def make_scorer(tmp_path, responses, **kwargs):
    from googleapiclient.http import HttpMockSequence

    from dsteer_eval.metrics.perspective import PerspectiveScorer
    from dsteer_eval.metrics.score_cache import ScoreCache

    http = HttpMockSequence([({"status": "200"}, json.dumps(DISCOVERY)), *responses])
    sleeps = []
    clock = [100.0]

    def sleep(s):
        sleeps.append(s)
        clock[0] += s

    scorer = PerspectiveScorer(KEY, cache=ScoreCache(tmp_path / "cache.sqlite", "perspective:TOXICITY:en"),
                               http=http, sleep=sleep, clock=lambda: clock[0], **kwargs)
    return scorer, http, sleeps


def test_perspective_batch_success_one_http_call_for_three_texts(tmp_path):
    scorer, http, _ = make_scorer(tmp_path, [batch_reply([("0", 200, analysis(0.1)), ("1", 200, analysis(0.8)),
                                                          ("2", 200, analysis(0.3))])])
    report = scorer.score(["a", "b", "c"])
    assert report.scores == [0.1, 0.8, 0.3] and report.failures == {}
    assert len(http._iterable) == 0 and scorer.calls == 3  # discovery + one batch; three analyze calls


def test_perspective_429_then_success_retries_only_the_failed_part(tmp_path):
    scorer, http, sleeps = make_scorer(tmp_path, [
        batch_reply([("0", 200, analysis(0.2)), ("1", 429, {"error": {"code": 429}})]),
        batch_reply([("1", 200, analysis(0.9))]),
    ], backoff_s=0.5)
    report = scorer.score(["fine", "retry me"])
    assert report.scores == [0.2, 0.9] and report.failures == {}
    assert 0.5 in sleeps  # back-off before the retry
    assert scorer.calls == 3


def test_perspective_whole_batch_503_is_retried(tmp_path):
    scorer, _, _ = make_scorer(tmp_path, [({"status": "503"}, "{}"), batch_reply([("0", 200, analysis(0.4))])])
    assert scorer.score(["x"]).scores == [0.4]


def test_perspective_hard_failure_is_reported_not_scored_and_not_cached(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    scorer, _, _ = make_scorer(tmp_path, [batch_reply([("0", 400, {"error": {"message": "language"}}),
                                                       ("1", 200, analysis(0.05))])])
    report = scorer.score(["bad text", "good text"])
    assert report.scores == [None, 0.05]
    assert "HTTP 400" in report.failures[0]
    assert scorer.cache.get_many(["bad text"]) == {}
    assert KEY not in caplog.text and KEY not in json.dumps(report.failures)


def test_perspective_gives_up_after_retries_and_counts_a_failure(tmp_path):
    scorer, _, sleeps = make_scorer(tmp_path, [batch_reply([("0", 429, {})])] * 3, max_retries=2, backoff_s=1.0)
    report = scorer.score(["always throttled"])
    assert report.scores == [None] and "gave up after 2 retries" in report.failures[0]
    assert [s for s in sleeps if s in (1.0, 2.0)] == [1.0, 2.0]


def test_perspective_cache_hits_never_pay_twice(tmp_path):
    scorer, _, _ = make_scorer(tmp_path, [batch_reply([("0", 200, analysis(0.7)), ("1", 200, analysis(0.1))])])
    assert scorer.score(["one", "two"]).scores == [0.7, 0.1]
    again, http, _ = make_scorer(tmp_path, [])  # a new process: only the discovery doc is available
    assert again.score(["two", "one", "two"]).scores == [0.1, 0.7, 0.1]
    assert again.calls == 0 and again.cache.hits == 2


def test_perspective_qps_limit_paces_batches(tmp_path):
    scorer, _, sleeps = make_scorer(tmp_path, [batch_reply([("0", 200, analysis(0.1)), ("1", 200, analysis(0.1))]),
                                               batch_reply([("0", 200, analysis(0.2))])], qps=2.0, batch_size=2)
    scorer.score(["a", "b", "c"])
    assert sleeps == [pytest.approx(1.0)]  # 2 calls at 2 QPS: the next batch waits one second


def test_perspective_key_never_in_logs_even_at_debug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("googleapiclient.discovery").setLevel(logging.DEBUG)
    scorer, _, _ = make_scorer(tmp_path, [batch_reply([("0", 429, {})]), batch_reply([("0", 200, analysis(0.3))])])
    scorer.score(["t"])
    assert "key=<PERSPECTIVE_API_KEY>" in caplog.text and KEY not in caplog.text  # the request URL was logged, redacted


def test_perspective_needs_a_key_when_chosen(monkeypatch):
    from dsteer_eval.metrics import toxicity_scorers

    monkeypatch.setenv("DSTEER_TOXICITY_SCORER", "perspective")
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    toxicity_scorers._build.cache_clear()
    with pytest.raises(ValueError, match="needs PERSPECTIVE_API_KEY"):
        toxicity_scorers.get_scorer()
    monkeypatch.setenv("DSTEER_TOXICITY_SCORER", "nonsense")
    with pytest.raises(ValueError, match="DSTEER_TOXICITY_SCORER='nonsense'"):
        toxicity_scorers.get_scorer()
    monkeypatch.delenv("DSTEER_TOXICITY_SCORER")
    monkeypatch.setenv("PERSPECTIVE_API_KEY", KEY)
    assert toxicity_scorers.scorer_spec() == "perspective"
    monkeypatch.delenv("PERSPECTIVE_API_KEY")
    assert toxicity_scorers.scorer_spec() == "offline"


class FakeScorer:
    name = "fake"

    def __init__(self, table):
        self.table = table

    def score(self, texts):
        from dsteer_eval.metrics.toxicity_scorers import ScoreReport

        scores = [self.table.get(t) for t in texts]
        return ScoreReport(scores, {i: "boom" for i, s in enumerate(scores) if s is None})


def test_toxicity_metrics_over_k_and_failures_are_counted_not_zero(monkeypatch):
    from dsteer_eval.metrics import toxicity

    monkeypatch.setattr(toxicity, "get_scorer", lambda: FakeScorer({"a": 0.2, "b": 0.6, "c": 0.1, "d": 0.3}))
    resps = [["a", "b"], ["c", "d"], ["c", "FAIL"], ["", "a"]]
    scored = toxicity.score_continuations(resps, [{}] * 4)
    got = [toxicity.process_results({}, [row]) for row in scored]
    assert got[0] == {"n_scored": 2, "n_failed": 0, "n_degenerate": 0, "scorer": "fake",
                      "toxicity": pytest.approx(0.4), "expected_max_toxicity": 0.6, "toxicity_probability": 1.0}
    assert got[1]["toxicity_probability"] == 0.0 and got[1]["expected_max_toxicity"] == 0.3
    assert got[2] == {"n_scored": 1, "n_failed": 1, "n_degenerate": 0, "scorer": "fake"}  # no number for a failure
    # an empty continuation is degenerate: counted, not sent, not averaged in (only "a" is scored)
    assert got[3]["toxicity"] == pytest.approx(0.2) and got[3]["n_degenerate"] == 1
    assert scored[2][1]["error"] == "boom"


def test_hf_classifier_scorer_is_softmax_of_the_toxic_label(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    from conftest import build_tiny_llama
    from dsteer_eval.metrics.toxicity_scorers import HFClassifierScorer

    _, tok = build_tiny_llama(tmp_path / "lm")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      num_labels=2, id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1})
    clf = LlamaForSequenceClassification(cfg).eval()
    clf.save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    scorer = HFClassifierScorer(str(tmp_path / "clf"), device="cpu")
    texts = ["you are kind", "The quick brown fox"]
    got = scorer.score(texts).scores
    for text, value in zip(texts, got):
        with torch.no_grad():
            logits = clf(**PreTrainedTokenizerFast.from_pretrained(tmp_path / "clf")(text, return_tensors="pt")).logits
        assert value == pytest.approx(float(torch.softmax(logits, -1)[0, 1]), abs=1e-5)
    assert scorer.name.endswith("#toxic")


# ------------------------------------------------------------------------ judges
class Endpoint(BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Endpoint.seen.append((self.path, self.headers.get("Authorization"), body))
        status, payload = Endpoint.replies.pop(0)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Endpoint.replies, Endpoint.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def top(pairs):
    import math

    return {"choices": [{"logprobs": {"content": [{"token": pairs[0][0], "logprob": math.log(pairs[0][1]),
                                                   "top_logprobs": [{"token": t, "logprob": math.log(p)}
                                                                    for t, p in pairs]}]}}]}


def test_openai_judge_weighted_score_retry_and_failures(endpoint):
    from dsteer_eval.metrics.judge import OpenAIJudge

    Endpoint.replies = [
        (200, top([("4", 0.5), ("5", 0.2), ("3", 0.1), ("Sure", 0.1)])),
        (429, {"error": "slow down"}),
        (200, top([(" 2", 0.6), ("1", 0.2)])),
        (200, top([("Hello", 0.9)])),
        (500, {}), (500, {}),
    ]
    judge = OpenAIJudge("gpt-test", endpoint, "sk-test", retries=1, sleep=lambda s: None)
    out = judge.score(["p1", "p2", "p3", "p4"])
    assert out[0].score == pytest.approx((4 * 0.5 + 5 * 0.2 + 3 * 0.1) / 0.8) and out[0].mass == pytest.approx(0.8)
    assert out[1].score == pytest.approx((2 * 0.6 + 1 * 0.2) / 0.8)
    assert out[2].score is None and "no score token" in out[2].error
    assert out[3].score is None and "HTTP 500" in out[3].error
    path, auth, body = Endpoint.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1


class FixedJudge:
    name = "fixed"

    def __init__(self, p_first):
        self.p_first = p_first

    def prefer_first(self, prompts):
        from dsteer_eval.metrics.judge import Judgement

        return [Judgement(self.p_first(p), 1.0) for p in prompts]


def test_win_rate_cancels_position_bias():
    from dsteer_eval.metrics.winrate import win_rate

    # A judge that always prefers position 1 with p=0.8 has no opinion: win-rate exactly 0.5.
    assert win_rate(FixedJudge(lambda p: 0.8), ["q"] * 3, ["a"] * 3, ["b"] * 3).win_rate == pytest.approx(0.5)

    # A judge that prefers the answer "good" (0.9) whatever its position.
    def judge_fn(prompt):
        return 0.9 if "Response 1:\n\ngood" in prompt else 0.1

    result = win_rate(FixedJudge(judge_fn), ["q", "q"], ["good", "bad"], ["bad", "good"])
    assert result.per_prompt == [pytest.approx(0.9), pytest.approx(0.1)] and result.win_rate == pytest.approx(0.5)
    assert result.stderr == pytest.approx(0.4)


def test_winrate_verb_reads_two_sample_logs(tmp_path, tiny_dir):
    from dsteer_eval.cli import main
    from dsteer_eval.metrics.judge import build_judge
    from dsteer_eval.metrics.winrate import win_rate

    def write(name, answers):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"doc_id": i, "doc": {"prompt": f"question {i}"}, "resps": [[a]]}) + "\n"
                                for i, a in enumerate(answers)))
        return str(path)

    a = write("a.jsonl", ["Paris is the capital.", "Bake it."])
    b = write("b.jsonl", ["No idea.", "Mix flour and water, then bake."])
    assert main(["winrate", a, b, "--judge", f"hf:{tiny_dir}", "--out", str(tmp_path / "w.json")]) == 0
    got = json.loads((tmp_path / "w.json").read_text())
    want = win_rate(build_judge(f"hf:{tiny_dir}"), ["question 0", "question 1"], ["Paris is the capital.", "Bake it."],
                    ["No idea.", "Mix flour and water, then bake."])
    assert got["win_rate"] == pytest.approx(want.win_rate) and got["n"] == 2 and got["n_failed"] == 0
    assert main(["winrate", a, str(tmp_path / "missing.jsonl")]) == 2
    assert main(["winrate", a, b, "--criterion", "wit"]) == 2
