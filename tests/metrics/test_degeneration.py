"""Degenerate generations are counted and screened before scoring, judging and win-rates."""

from __future__ import annotations

import pytest

from dsteer_eval.metrics.degeneration import degenerate


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), ("   \n ", "empty"),
    ("!!!!!!!!!!!!", "garbled"), ("aaaaaaaaaaaaaaaa", "garbled"), ("@@##$$%%^^&&**~~", "garbled"),
    ("I am I am I am I am I am I am I am I am", "loop"),
    ("the the the the the the the the the the the the the", "loop"),
    ("Sure, here is how you bake bread: mix flour, water and yeast, then bake it.", None),
    ("I can't help with that.", None), ("Paris.", None),
    ("No no no, that is not what I meant at all, let me explain it again.", None),
])
def test_degenerate_rule(text, reason):
    assert degenerate(text) == reason


class Judge:
    name = "fake"

    def __init__(self):
        self.prompts = []

    def score(self, prompts):
        from dsteer_eval.metrics.judge import Judgement

        self.prompts += prompts
        return [Judgement(3.0, 1.0) for _ in prompts]

    def prefer_first(self, prompts):
        from dsteer_eval.metrics.judge import Judgement

        self.prompts += prompts
        return [Judgement(0.75, 1.0) for _ in prompts]


def test_geval_never_judges_a_degenerate_answer(monkeypatch):
    from dsteer_eval.metrics import geval

    judge = Judge()
    monkeypatch.setattr(geval, "get_judge", lambda: judge)
    docs = [{"prompt": "How do I bake bread?"}, {"prompt": "Tell me a joke."}]
    items = geval.judge_answers([["Mix flour and water, then bake."], ["ha ha ha ha ha ha ha ha ha ha ha ha"]], docs)
    assert len(judge.prompts) == len(geval.CRITERIA_USED)  # only the first answer went to the judge
    assert geval.process_results(docs[1], [items[1]]) == {"judge": "fake", "n_failed": 0, "n_degenerate": 1}
    first = geval.process_results(docs[0], [items[0]])
    assert first["n_degenerate"] == 0 and first["geval_helpfulness"] == 3.0


def test_toxicity_never_scores_a_degenerate_continuation(monkeypatch):
    from test_scorers import FakeScorer

    from dsteer_eval.metrics import toxicity

    scorer = FakeScorer({"a b": 0.2})
    monkeypatch.setattr(toxicity, "get_scorer", lambda: scorer)
    rows = toxicity.score_continuations([["a b", ""], ["", "!!!!!!!!!!!!"]], [{}, {}])
    got = [toxicity.process_results({}, [row]) for row in rows]
    assert got[0] == {"n_scored": 1, "n_failed": 0, "n_degenerate": 1, "scorer": "fake", "toxicity": 0.2,
                      "expected_max_toxicity": 0.2, "toxicity_probability": 0.0}
    assert got[1] == {"n_scored": 0, "n_failed": 0, "n_degenerate": 2, "scorer": "fake"}  # no toxicity number


def test_win_rate_screens_degenerate_pairs():
    from dsteer_eval.metrics.winrate import win_rate

    judge = Judge()
    result = win_rate(judge, ["q1", "q2", "q3"], ["A fine answer here.", "", "Another fine answer."],
                      ["B fine answer here.", "B answer.", "!!!!!!!!!!!!!!"])
    assert len(judge.prompts) == 2  # only the first pair, in both orders
    assert (result.n, result.n_degenerate, result.n_failed) == (1, 2, 0)
    assert result.win_rate == pytest.approx((0.75 + 0.25) / 2)
