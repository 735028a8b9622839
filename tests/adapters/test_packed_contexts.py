"""Packed contexts: each context computed once for all its continuations, lm-eval's numbers."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

from dsteer_eval.adapters import packed_contexts
from dsteer_eval.adapters.packed_contexts import batch_inputs, plan_rows
from dsteer_eval.vectors import save_vectors

from test_continuation_head import PAIRS, real_hh_pairs, reqs


def test_plan_rows_shares_each_context_and_reads_the_right_positions():
    requests = [("a", [1, 2, 3], [4, 5]), ("b", [9], [8]), ("c", [1, 2, 3], [6, 7, 8]), ("d", [1, 2, 3], [2])]
    rows = plan_rows(requests, max_length=32)
    assert len(rows) == 2
    shared, single = rows
    assert shared.tokens == [1, 2, 3, 4, 6, 7] and shared.positions == [0, 1, 2, 3, 3, 4]
    assert shared.branch == [-1, -1, -1, 0, 1, 1] and shared.context_len == 3
    # request 0 reads the last context logit then its own branch; request 3 (one token) the context only
    assert shared.reads == [(0, [2, 3], [4, 5]), (2, [2, 4, 5], [6, 7, 8]), (3, [2], [2])]
    assert single.tokens == [9] and single.reads == [(1, [0], [8])]
    # share=False: lm-eval's own rows, (context + continuation)[:-1], one per request
    plain = plan_rows(requests, max_length=32, share=False)
    assert [r.tokens for r in plain] == [[1, 2, 3, 4], [9], [1, 2, 3, 6, 7], [1, 2, 3]]
    assert [r.reads for r in plain] == [[(0, [2, 3], [4, 5])], [(1, [0], [8])], [(2, [2, 3, 4], [6, 7, 8])],
                                        [(3, [2], [2])]]


def test_plan_rows_truncates_like_lm_eval_and_never_exceeds_max_length():
    ctx = list(range(10, 20))
    requests = [("x", ctx, [1, 2, 3]), ("y", ctx, [4, 5])]
    # max_length 6: lm-eval keeps (ctx + cont)[-7:][:-1]; the truncated contexts differ, so no sharing
    rows = plan_rows(requests, max_length=6)
    assert [r.tokens for r in rows] == [(ctx + [1, 2, 3])[-7:][:-1], (ctx + [4, 5])[-7:][:-1]]
    assert all(len(r.tokens) <= 6 for r in rows)
    # max_length 13: both fit alone (12 and 11 tokens) but not together (10 + 2 + 1 = 13 fits; 3 branches don't)
    requests = [("x", ctx, [1, 2, 3]), ("y", ctx, [4, 5]), ("z", ctx, [6, 7, 8])]
    rows = plan_rows(requests, max_length=13)
    assert [r.tokens for r in rows] == [ctx + [1, 2, 4], ctx + [6, 7]]
    assert all(len(r.tokens) <= 13 for r in rows)
    with pytest.raises(ValueError, match="request 0.*max_length=2"):
        plan_rows([("x", ctx, [1, 2, 3])], max_length=2)


def test_mask_lets_a_branch_see_the_context_and_itself_only():
    requests = [("a", [1, 2], [3, 4]), ("b", [1, 2], [5, 6]), ("c", [7], [8])]
    rows = plan_rows(requests, max_length=32)
    ids, positions, mask = batch_inputs(rows, device="cpu", mask_kind="bool")
    assert ids.tolist() == [[1, 2, 3, 5], [7, 0, 0, 0]] and positions.tolist() == [[0, 1, 2, 2], [0, 0, 0, 0]]
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]
    # padding (never read) sees the context and itself: no all-masked row, so no NaN
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
    _, _, additive = batch_inputs(rows, device="cpu", mask_kind="float", dtype=torch.float32)
    assert torch.equal(additive == 0, mask)
    assert float(additive.min()) == torch.finfo(torch.float32).min


def _spy_kwargs(monkeypatch):
    seen = []
    original = get_model("steered")._forward_kept

    def spy(self, inps, keep, **model_kwargs):
        seen.append((inps.numel(), sorted(model_kwargs)))
        return original(self, inps, keep, **model_kwargs)

    monkeypatch.setattr(get_model("steered"), "_forward_kept", spy)
    return seen


@pytest.fixture(scope="module")
def vector(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    save_vectors(path, {2: torch.randn(32, generator=torch.Generator().manual_seed(8))}, model=tiny[0])
    return str(path)


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_hf_and_computes_fewer_tokens(tiny_dir, vector, monkeypatch, batch_size, attn):
    hf = HFLM(pretrained=tiny_dir, batch_size=batch_size, device="cpu", attn_implementation=attn).loglikelihood(reqs())
    seen = _spy_kwargs(monkeypatch)
    lm = get_model("steered")(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=batch_size,
                              attn_implementation=attn, pack_contexts=True)
    assert lm.packs_contexts()
    ours = lm.loglikelihood(reqs())
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, hf)) <= 1e-5
    assert [a[1] for a in ours] == [b[1] for b in hf]
    assert lm._pack_check["ok"] and lm._pack_check["max_abs_diff"] <= 1e-5
    packed = sum(n for n, kw in seen if kw == ["attention_mask", "position_ids"])
    plain_check = sum(n for n, kw in seen if kw == [])  # the first batch, once more unpacked
    assert packed and plain_check
    # PAIRS share two contexts: packed rows hold fewer token slots than lm-eval's rows
    lengths = [len(lm.tok_encode(c + x)) - 1 for c, x in PAIRS]
    assert packed < sum(lengths)


@pytest.mark.parametrize("position", ["all", "completion"])
def test_steered_packed_equals_unpacked(tiny_dir, vector, monkeypatch, position):
    kw = dict(pretrained=tiny_dir, vector=vector, layer=2, alpha=4.0, position=position, batch_size=2)
    seen = _spy_kwargs(monkeypatch)
    packed = get_model("steered")(pack_contexts=True, **kw).loglikelihood(reqs())
    assert bool(any(k for _, k in seen)) == (position == "all")  # position=completion is never packed
    plain = get_model("steered")(pack_contexts=False, **kw).loglikelihood(reqs())
    assert max(abs(a[0] - b[0]) for a, b in zip(packed, plain)) <= 1e-5
    assert [a[1] for a in packed] == [b[1] for b in plain]


def test_truncated_requests_equal_hf(tiny_dir, vector):
    pairs = [(" ".join(["word"] * 30), " one two three"), (" ".join(["word"] * 30), " four five")] + PAIRS[:6]
    hf = HFLM(pretrained=tiny_dir, batch_size=2, device="cpu", max_length=30).loglikelihood(reqs(pairs))
    lm = get_model("steered")(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2, max_length=30,
                              pack_contexts=True)
    assert lm.packs_contexts()
    assert len(lm.tok_encode(pairs[0][0])) > 30  # the first two are truncated
    ours = lm.loglikelihood(reqs(pairs))
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, hf)) <= 1e-5
    assert [a[1] for a in ours] == [b[1] for b in hf]


def test_a_mask_the_model_ignores_turns_packing_off(tiny_dir, vector, monkeypatch, caplog):
    """A wrong mask (every branch sees the others) stands for an architecture that ignores 4-D masks: the
    first batch's check catches it, nothing packed is scored, and the rest runs unpacked."""
    original = packed_contexts.batch_inputs

    def causal_only(rows, **kw):
        ids, positions, mask = original(rows, **kw)
        return ids, positions, torch.ones_like(mask).tril()

    monkeypatch.setattr(packed_contexts, "batch_inputs", causal_only)
    lm = get_model("steered")(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=3, pack_contexts=True)
    ours = lm.loglikelihood(reqs())
    hf = HFLM(pretrained=tiny_dir, batch_size=3, device="cpu").loglikelihood(reqs())
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, hf)) <= 1e-5
    assert lm._pack_check["ok"] is False and lm._pack_check["max_abs_diff"] > 1e-3
    assert not lm.packs_contexts() and "one row per request" in caplog.text


def test_fallbacks_are_explicit(tiny_dir, vector):
    kw = dict(pretrained=tiny_dir, vector=vector, layer=2, alpha=1.0)
    assert not get_model("steered")(batch_size=2, **kw).packs_contexts()  # `steered`: off unless asked for
    assert get_model("steered")(pack_contexts="true", batch_size=2, **kw).packs_contexts()
    from dsteer_eval.sweep.sweep_lm import SweepLM

    assert SweepLM(batch_size=2, **kw).packs_contexts()  # a sweep: on unless told not to
    assert not SweepLM(pack_contexts="false", batch_size=2, **kw).packs_contexts()
    kw["pack_contexts"] = True
    assert not get_model("steered")(batch_size="auto", **kw).packs_contexts()
    assert not get_model("steered")(head_positions="all", batch_size=2, **kw).packs_contexts()
    with pytest.raises(ValueError, match="pack_contexts"):
        get_model("steered")(batch_size=2, **{**kw, "pack_contexts": "maybe"})


def test_sweep_group_pass_packed_equals_separate_unpacked_points(tiny_dir, vector):
    """Grouped points (rows x points above the site) on packed rows: the mask and rotary inputs are repeated
    per point; numbers equal separate, unpacked runs of each point."""
    from dsteer_eval.sweep.sweep_lm import SweepLM

    from test_alpha_batch import GROUP

    def run(lm, batched):
        out = {}
        for i, (name, layer, alpha, control) in enumerate(GROUP):
            lm.set_point(layer, alpha, "dpo", control)
            lm.set_group(GROUP[i:] if batched else [], name)
            out[name] = lm.loglikelihood(reqs())
        return out

    lm = SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=8)
    grouped = run(lm, True)
    separate = run(SweepLM(pretrained=tiny_dir, vector=vector, layer=2, alpha=0.0, batch_size=2,
                           pack_contexts=False), False)
    assert lm._pack_check["ok"] and lm.logliks.stats["batched_calls"] == 1
    for name in separate:
        assert max(abs(a[0] - b[0]) for a, b in zip(grouped[name], separate[name])) <= 1e-5, name
        assert [a[1] for a in grouped[name]] == [b[1] for b in separate[name]]


def test_real_rows_on_the_embedded_model_packed(embedded_dir):
    """Real HH pairs on SmolLM2, packed: within 1e-4 of --model hf (float rounding of other matmul shapes;
    the same model's own batch sizes 1 and 4 differ by a like amount), same greedy flags."""
    pairs = real_hh_pairs()
    hf4 = HFLM(pretrained=embedded_dir, batch_size=4, device="cpu").loglikelihood(reqs(pairs))
    lm = get_model("steered")(pretrained="smollm2", peft="none", alpha=0.0, batch_size=4, pack_contexts=True)
    assert lm.packs_contexts()
    ours = lm.loglikelihood(reqs(pairs))
    assert lm._pack_check["ok"]
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, hf4)) <= 1e-4
    assert [a[1] for a in ours] == [b[1] for b in hf4]
