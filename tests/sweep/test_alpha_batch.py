"""Generation of a whole (side, layer) group of grid points in one generate call: same greedy outputs."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from dsteer_eval.steering.row_edits import row_shift_edit
from dsteer_eval.vectors import save_vectors

PROMPTS = ["Human: How do I bake bread?\nAssistant:", "The capital of France is", "Once upon a time",
           "Q: 2+2=\nA:", "List three colours:"]


def gen_requests(max_gen_toks=12):
    return [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False}), i)
            for i, p in enumerate(PROMPTS)]


GROUP = [("unsteered", 2, 0.0, None), ("L2_a-4", 2, -4.0, None), ("L2_a-4_random0", 2, -4.0, 0), ("L2_a8", 2, 8.0, None)]


@pytest.fixture(scope="module")
def vector(tiny, tmp_path_factory):
    g = torch.Generator().manual_seed(3)
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    save_vectors(path, {2: torch.randn(32, generator=g)}, model=tiny[0])
    return str(path)


def _run(lm, group, batched: bool):
    out = {}
    for name, layer, alpha, control in group:
        lm.set_point(layer, alpha, "dpo", control)
        lm.set_group(group[group.index((name, layer, alpha, control)):] if batched else [], name)
        out[name] = lm.generate_until(gen_requests())
    return out


def test_group_generation_equals_separate_points(tiny_dir, vector):
    from lm_eval.api.registry import get_model

    from dsteer_eval.sweep.sweep_lm import SweepLM

    lm = SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2)
    separate = _run(lm, GROUP, batched=False)
    assert lm.generations.stats["batched_calls"] == 0
    batched = _run(lm, GROUP, batched=True)
    assert batched == separate
    s = lm.generations.stats
    n_batches = 3  # 5 prompts in batches of 2
    assert s["batched_calls"] == n_batches and s["served"] == n_batches * (len(GROUP) - 1)
    assert s["rows"] == len(PROMPTS) * len(GROUP)
    assert len({tuple(v) for v in separate.values()}) == len(GROUP)  # the points really differ
    # and one point as a plain `lm_eval --model steered` run gives the same texts
    plain = get_model("steered")(pretrained=tiny_dir, vector=vector, layer=2, alpha=8.0, batch_size=2)
    assert plain.generate_until(gen_requests()) == batched["L2_a8"]


def test_rows_cap_splits_a_group_into_several_calls(tiny_dir, vector, monkeypatch):
    from dsteer_eval.sweep.sweep_lm import SweepLM

    monkeypatch.setenv("DSTEER_GEN_BATCH_ROWS", "4")  # 2 prompts x 2 points per call
    lm = SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2)
    batched = _run(lm, GROUP, batched=True)
    # prompt batches of 2, 2, 1: 2 points per call for the pairs (2 calls each), all 4 for the last prompt
    assert lm.generations.stats["batched_calls"] == 2 + 2 + 1
    monkeypatch.delenv("DSTEER_GEN_BATCH_ROWS")
    assert batched == _run(SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2), GROUP,
                           batched=False)


def test_sampling_and_ablation_are_never_batched(tiny_dir, vector):
    from dsteer_eval.sweep.sweep_lm import SweepLM

    lm = SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2, mode="ablate")
    lm.set_point(2, 0.0)
    lm.set_group([(n, l, abs(a), c) for n, l, a, c in GROUP], "unsteered")
    assert lm._group == []
    lm = SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2)
    lm.set_point(2, 0.0)
    lm.set_group(GROUP, "unsteered")
    sampled = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 4, "do_sample": True, "temperature": 1.0}), i)
               for i, p in enumerate(PROMPTS[:2])]
    lm.generate_until(sampled)
    assert lm.generations.stats["batched_calls"] == 0


def test_row_shift_edit_adds_each_rows_own_shift():
    h = torch.zeros(3, 4, 2)
    out = row_shift_edit(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))(h)
    assert torch.equal(out[0], torch.tensor([[1.0, 0.0]] * 4)) and torch.equal(out[1], torch.tensor([[0.0, 2.0]] * 4))
    assert torch.equal(out[2], h[2])
    with pytest.raises(RuntimeError, match="2 shifts for a batch of 3"):
        row_shift_edit(torch.zeros(2, 2))(h)


def test_embedded_model_group_generation_is_identical(embedded_dir, tmp_path):
    """SmolLM2 with the shipped refusal pair: α = 0, −1, +1 and a control, 16 new tokens, greedy."""
    from dsteer_eval.sweep.sweep_lm import SweepLM

    lm = SweepLM(batch_size=5, layer=20, alpha=0.0)
    group = [("unsteered", 20, 0.0, None), ("L20_a-1", 20, -1.0, None), ("L20_a-1_random0", 20, -1.0, 0),
             ("L20_a1", 20, 1.0, None)]
    reqs = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False}), i)
            for i, p in enumerate(PROMPTS[:3])]
    outs = {}
    for batched in (False, True):
        for name, layer, alpha, control in group:
            lm.set_point(layer, alpha, "dpo", control)
            lm.set_group(group[[g[0] for g in group].index(name):] if batched else [], name)
            outs[(batched, name)] = lm.generate_until(reqs)
    for name, *_ in group:
        assert outs[(True, name)] == outs[(False, name)], name
    assert lm.generations.stats["served"] == len(group) - 1


LL_PAIRS = [("Human: How do I bake bread? Assistant:", " Mix flour, water and yeast."),
            ("Human: How do I bake bread? Assistant:", " I would rather not."),
            ("Question: 2 + 2 =", " 4"), ("Question: 2 + 2 =", " 5"),
            ("The quick brown fox", " jumps over the lazy dog, then sleeps.")]


def ll_requests():
    return [Instance("loglikelihood", {}, p, i) for i, p in enumerate(LL_PAIRS)]


def _run_ll(lm, group, batched: bool):
    out = {}
    for i, (name, layer, alpha, control) in enumerate(group):
        lm.set_point(layer, alpha, "dpo", control)
        lm.set_group(group[i:] if batched else [], name)
        out[name] = lm.loglikelihood(ll_requests())
    return out


@pytest.mark.parametrize("batch_size", [4, 8])
def test_group_loglikelihoods_equal_separate_points(tiny_dir, vector, batch_size):
    """One pass per batch for the whole group: lower layers once, rows x points above the site."""
    from dsteer_eval.sweep.sweep_lm import SweepLM

    separate = _run_ll(SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=batch_size),
                       GROUP, batched=False)
    lm = SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=batch_size)
    batched = _run_ll(lm, GROUP, batched=True)
    for name in separate:
        assert max(abs(a[0] - b[0]) for a, b in zip(batched[name], separate[name])) <= 1e-5, name
        assert [a[1] for a in batched[name]] == [b[1] for b in separate[name]]
    s = lm.logliks.stats
    assert s["batched_calls"] == 1 and s["served"] == len(GROUP) - 1 and s["verified_max_abs_diff"] <= 1e-5
    assert len({tuple(round(x[0], 4) for x in v) for v in separate.values()}) == len(GROUP)


def test_group_loglikelihoods_fall_back_when_the_check_fails(tiny_dir, vector, monkeypatch, caplog):
    from dsteer_eval.sweep.sweep_lm import SweepLM

    lm = SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=4)
    monkeypatch.setattr(SweepLM, "_check_group_pass", lambda self, *a: 1.0)
    batched = _run_ll(lm, GROUP, batched=True)
    separate = _run_ll(SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=4), GROUP, False)
    assert batched == separate and not lm._multi_ok and "point by point" in caplog.text
