"""scripts/compare_seeds.py: the seed-replication verdict is computed from the cards and vectors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import load_script


def _module():
    return load_script("scripts/compare_seeds.py")


def _card(seed, answer_passed=True):
    kind = lambda ok: {"reward_accuracy": 0.9 if ok else 0.2, "margin_in_stderrs": 5.0 if ok else -3.0,  # noqa: E731
                       "pairs": 10, "passed": ok}
    return {"hyperparameters": {"seed": seed}, "steps_done": 140,
            "gate": {"passed": True, "passed_every_kind": answer_passed, "reward_accuracy": 0.9, "margin_in_stderrs": 8.0,
                     "pairs": 20, "by_kind": {"answer": kind(answer_passed), "refuse": kind(True)}}}


def _vf(vectors):
    return SimpleNamespace(vectors=vectors, metadata={"default_layer": "2"})


def test_verdicts_follow_the_rule():
    cs = _module()
    g = torch.Generator().manual_seed(0)
    v = torch.randn(256, generator=g)
    near = v + 0.3 * torch.randn(256, generator=g)
    other = torch.randn(256, generator=g)
    zero = torch.zeros(256)
    same = cs.compare(_card(0), _card(1), _vf({0: zero, 2: v}), _vf({0: zero, 2: near}))
    assert same["verdict"] == "replicated"
    assert abs(same["cos_at_layer"] - float(v @ near / (v.norm() * near.norm()))) < 1e-6
    assert list(same["per_site"]) == ["2"]  # a zero vector has no direction to compare
    assert 0.15 < same["null"]["abs_cos"] < 0.3  # |cos| of random directions in 256 dimensions, 99.9th pct
    apart = cs.compare(_card(0), _card(1), _vf({2: v}), _vf({2: other}))
    assert apart["verdict"].startswith("not replicated: cos") and "within the random-direction null" in apart["verdict"]
    failing = cs.compare(_card(0), _card(1, answer_passed=False), _vf({2: v}), _vf({2: near}))
    assert failing["verdict"] == "not replicated: a seed fails the held-out gate for some kind"
    assert "| second seed (seed 1) | 140 |" in cs.markdown(failing, ("shipped", "second seed"))


def _seed_noise():
    return load_script("scripts/seed_noise.py")


def test_seed_noise_tells_a_seed_effect_from_sampling_noise():
    sn = _seed_noise()
    g = torch.Generator().manual_seed(1)
    v, w = torch.randn(64, generator=g), torch.randn(64, generator=g)
    noise = lambda: 3.0 * torch.randn(80, 64, generator=g, dtype=torch.float64)  # noqa: E731
    same = sn.split_cosines(v.double() + noise(), v.double() + noise(), splits=50)
    assert same["verdict"] == "seed effect within sampling noise" and same["prompts"] == 80
    assert same["within"]["n"] == 100 and same["within"]["q025"] <= same["within"]["mean"] <= same["within"]["q975"]
    apart = sn.split_cosines(v.double() + noise(), (0.5 * v + w).double() + noise(), splits=50)
    assert apart["verdict"] == "seeds differ beyond sampling noise"
    assert apart["across_other"]["mean"] < apart["within"]["q025"]
    with pytest.raises(ValueError, match="same >= 4 prompts"):
        sn.split_cosines(torch.zeros(3, 4), torch.zeros(3, 4))
