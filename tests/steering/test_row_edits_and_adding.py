"""steering/row_edits.py (per-row alpha, grouped expansion) and hook.adding (gradient-carrying shifts)."""

from __future__ import annotations

import torch

from dsteer_eval.steering.capture import record
from dsteer_eval.steering.hook import Intervention, adding, steer
from dsteer_eval.steering.row_edits import expanded_rows, repeat_layer_inputs, row_shift_edit
from dsteer_eval.steering.sites import resolve_parts

TEXTS = ["Human: How do I bake bread? Assistant:", "The quick brown fox jumps"]


def _batch(tok):
    return tok(TEXTS, return_tensors="pt", padding=True)


def test_row_shift_edit_equals_one_steered_pass_per_row(tiny):
    """Row i shifted by alpha_i*v gives exactly the logits of a pass steered by alpha_i alone (each row)."""
    model, tok = tiny
    enc = _batch(tok)
    parts = resolve_parts(model)
    v = torch.randn(32, generator=torch.Generator().manual_seed(1))
    alphas = [0.5, -2.0]
    shifts = torch.stack([a * v for a in alphas])
    with torch.no_grad(), steer(model, module_edits=[(parts.site_module(2), row_shift_edit(shifts))]):
        both = model(enc.input_ids, attention_mask=enc.attention_mask).logits
    for i, alpha in enumerate(alphas):
        with torch.no_grad(), steer(model, [Intervention(2, v, alpha)]):
            single = model(enc.input_ids, attention_mask=enc.attention_mask).logits
        assert torch.equal(both[i], single[i])


def test_expanded_rows_runs_every_variant_in_one_pass(tiny):
    """rows x variants at the site (variant-major), each with its shift: variant k's rows equal a pass
    steered by shift k; the states below the site are computed once (one call of the site's layer)."""
    model, tok = tiny
    enc = _batch(tok)
    parts = resolve_parts(model)
    v = torch.randn(32, generator=torch.Generator().manual_seed(2))
    alphas = [0.0, 1.0, -3.0]
    rows = enc.input_ids.shape[0]
    shifts = torch.cat([torch.stack([a * v] * rows) for a in alphas])
    calls = []
    handle = parts.layers[0].register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        with torch.no_grad(), expanded_rows(parts.site_module(2), shifts, len(alphas)), \
                repeat_layer_inputs(parts, 2, rows, len(alphas)):
            grown = model(enc.input_ids, attention_mask=enc.attention_mask).logits
    finally:
        handle.remove()
    assert len(calls) == 1 and grown.shape[0] == rows * len(alphas)
    for k, alpha in enumerate(alphas):
        with torch.no_grad(), steer(model, [Intervention(2, v, alpha)] if alpha else []):
            single = model(enc.input_ids, attention_mask=enc.attention_mask).logits
        torch.testing.assert_close(grown[k * rows:(k + 1) * rows], single, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the hooks are gone: the model is unsteered again, at its own batch size
        assert model(enc.input_ids, attention_mask=enc.attention_mask).logits.shape[0] == rows


def test_adding_at_the_final_norm_shifts_logits_by_exactly_the_head_of_the_shift_and_carries_grad(tiny):
    model, tok = tiny
    enc = _batch(tok)
    parts = resolve_parts(model)
    shift = torch.randn(32, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    with torch.no_grad(), record(model, [parts.num_layers]) as seen:
        plain = model(enc.input_ids, attention_mask=enc.attention_mask).logits
    with torch.enable_grad(), adding({parts.final_norm: shift}):
        shifted = model(enc.input_ids, attention_mask=enc.attention_mask).logits
        shifted.sum().backward()
    expected = parts.lm_head(seen[parts.num_layers] + shift.detach())
    assert torch.equal(shifted.detach(), expected.detach())
    torch.testing.assert_close(shifted.detach() - plain, (parts.lm_head.weight @ shift.detach()).expand_as(plain),
                               atol=1e-5, rtol=1e-5)
    # d(sum of logits)/d shift = sum over (batch, positions) of the head's column sums
    n_positions = plain.shape[0] * plain.shape[1]
    torch.testing.assert_close(shift.grad, n_positions * parts.lm_head.weight.sum(dim=0), atol=1e-3, rtol=1e-4)
    with torch.no_grad():  # removed on exit
        assert torch.equal(model(enc.input_ids, attention_mask=enc.attention_mask).logits, plain)
