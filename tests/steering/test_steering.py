"""The steering hook itself, on a tiny random Llama: exact arithmetic, positions, KV cache."""

from __future__ import annotations

import pytest
import torch

from dsteer_eval.steering.capture import record
from dsteer_eval.steering.sites import resolve_parts
from dsteer_eval.steering.hook import Intervention, steer


@pytest.fixture(scope="module")
def batch(tiny):
    model, tok = tiny
    enc = tok(["Human: How do I bake bread? Assistant:", "The quick brown fox"], return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def _logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def test_alpha_zero_is_bit_identical(tiny, batch):
    model, _ = tiny
    ids, mask = batch
    base = _logits(model, ids, mask)
    v = torch.randn(32, generator=torch.Generator().manual_seed(1))
    for site in (0, 2, 4):
        with steer(model, [Intervention(site, v, 0.0)]):
            assert torch.equal(_logits(model, ids, mask), base)
    with steer(model, [Intervention(2, torch.zeros(32), 3.0)]):
        assert torch.equal(_logits(model, ids, mask), base)


@pytest.mark.parametrize("alpha", [-2.0, 0.5])
def test_final_shifts_logits_by_alpha_wu_v(tiny, batch, alpha):
    model, _ = tiny
    ids, mask = batch
    parts = resolve_parts(model)
    v = torch.randn(32, generator=torch.Generator().manual_seed(2))
    base = _logits(model, ids, mask)
    with steer(model, [Intervention(parts.num_layers, v, alpha)]):
        steered = _logits(model, ids, mask)
    expected_shift = alpha * (parts.lm_head.weight @ v)
    torch.testing.assert_close(steered - base, expected_shift.expand_as(base), atol=1e-4, rtol=0)


@pytest.mark.parametrize("position", ["prompt", "completion", "last"])
def test_final_shift_only_at_selected_positions(tiny, batch, position):
    model, _ = tiny
    ids, mask = batch
    parts = resolve_parts(model)
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    prompt_lengths = torch.tensor([5, 3])
    base = _logits(model, ids, mask)
    with steer(model, [Intervention(parts.num_layers, v, 1.5)], position=position, prompt_lengths=prompt_lengths):
        steered = _logits(model, ids, mask)
    pos = torch.arange(ids.shape[1])[None, :]
    selected = {
        "prompt": pos < prompt_lengths[:, None],
        "completion": pos >= prompt_lengths[:, None],
        "last": pos == prompt_lengths[:, None] - 1,
    }[position]
    shift = 1.5 * (parts.lm_head.weight @ v)
    torch.testing.assert_close(steered[selected], (base + shift)[selected], atol=1e-4, rtol=0)
    assert torch.equal(steered[~selected], base[~selected])
    assert selected.any() and (~selected).any()


@pytest.mark.parametrize("site", [1, 2, 3])
def test_layer_L_changes_nothing_below_L(tiny, batch, site):
    model, _ = tiny
    ids, mask = batch
    v = torch.randn(32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with record(model) as seen:
            model(ids, attention_mask=mask)
        base = dict(seen)
        with steer(model, [Intervention(site, v, 2.0)]), record(model) as seen:
            model(ids, attention_mask=mask)
    for lower in range(site):
        assert torch.equal(seen[lower], base[lower]), f"site {lower} changed"
    torch.testing.assert_close(seen[site], base[site] + 2.0 * v, atol=1e-5, rtol=0)
    assert not torch.allclose(seen[site + 1], base[site + 1])


def test_subtract_then_add_cancels(tiny, batch):
    model, _ = tiny
    ids, mask = batch
    n = resolve_parts(model).num_layers
    v = torch.randn(32, generator=torch.Generator().manual_seed(5))
    base = _logits(model, ids, mask)
    # one context adding +alpha v and -alpha v at `final`: the deltas sum to exactly zero
    with steer(model, [Intervention(n, v, 1.7), Intervention(n, v, -1.7)]):
        assert torch.equal(_logits(model, ids, mask), base)
    # two nested contexts (two hooks applied in turn) cancel up to float rounding
    with steer(model, [Intervention(n, v, -1.7)]), steer(model, [Intervention(n, v, 1.7)]):
        torch.testing.assert_close(_logits(model, ids, mask), base, atol=1e-5, rtol=0)
    # two different layers, +v then -v, is a real change (the layers in between see +v)
    with steer(model, [Intervention(1, v, 1.7), Intervention(n, v, -1.7)]):
        assert not torch.allclose(_logits(model, ids, mask), base)


def test_hooks_removed_on_exit_and_on_error(tiny, batch):
    model, _ = tiny
    ids, mask = batch
    base = _logits(model, ids, mask)
    with pytest.raises(RuntimeError):
        with steer(model, [Intervention(2, torch.ones(32), 5.0)]):
            raise RuntimeError("boom")
    assert torch.equal(_logits(model, ids, mask), base)


def test_bad_interventions(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="finite"):
        Intervention(1, torch.ones(32), float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        Intervention(1, torch.tensor([float("inf")] * 32), 1.0)
    with pytest.raises(ValueError, match="hidden size is 32"):
        with steer(model, [Intervention(1, torch.ones(31), 1.0)]):
            pass
    with pytest.raises(ValueError, match="out of range 0..4"):
        with steer(model, [Intervention(5, torch.ones(32), 1.0)]):
            pass
    with pytest.raises(ValueError, match="position must be one of"):
        with steer(model, [], position="middle"):
            pass


def _generate(model, ids, mask, use_cache):
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
        use_cache=use_cache, pad_token_id=2,
    )


@pytest.mark.parametrize("position", ["all", "prompt", "completion", "last"])
def test_generation_kv_cache_matches_no_cache(tiny, position):
    model, tok = tiny
    tok.padding_side = "left"
    enc = tok(["Human: How do I bake", "The quick brown fox jumps over"], return_tensors="pt", padding=True)
    n = resolve_parts(model).num_layers
    v = torch.randn(32, generator=torch.Generator().manual_seed(6)) * 3
    plen = torch.full((2,), enc.input_ids.shape[1])
    outs = {}
    for cache in (True, False):
        with steer(model, [Intervention(2, v, 2.0), Intervention(n, v, 1.0)], position=position, prompt_lengths=plen):
            outs[cache] = _generate(model, enc.input_ids, enc.attention_mask, cache)
    assert torch.equal(outs[True], outs[False])
    plain = _generate(model, enc.input_ids, enc.attention_mask, True)
    P = enc.input_ids.shape[1]
    if position == "completion":  # the first new token comes from the unsteered last prompt token
        assert torch.equal(outs[True][:, P], plain[:, P])
    assert not torch.equal(outs[True], plain)
