"""dsteer_eval.steering.resume_forward on the tiny random Llama: running from a site reproduces the full forward pass,
unsteered and steered (against dsteer_eval.steering.steer), padding included; gradients reach the shift."""

from __future__ import annotations

import pytest
import torch

from dsteer_eval.steering.hook import Intervention, steer
from dsteer_eval.steering.resume_forward import run_from_site, run_to_site


def batch(tok):
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok(["How do I bake bread? Mix flour.", "Paris is"], padding=True, return_tensors="pt")


@pytest.mark.parametrize("site", [1, 2, 3])
def test_running_from_a_site_is_the_full_forward_pass(tiny, site):
    model, tok = tiny
    enc = batch(tok)
    with torch.no_grad():
        full = model(**enc, output_hidden_states=True).hidden_states[-1]  # the final post-norm state
        state = run_to_site(model, enc.input_ids, enc.attention_mask, site)
        assert torch.equal(state.hidden, model(**enc, output_hidden_states=True).hidden_states[site])
        again = run_from_site(model, state)
    keep = enc.attention_mask.bool()
    assert torch.allclose(again[keep], full[keep], atol=1e-6)


def test_a_shift_from_the_site_equals_steering_there_and_carries_the_gradient(tiny):
    model, tok = tiny
    enc = batch(tok)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), steer(model, [Intervention(2, v, 1.5)]):
        steered = model(**enc, output_hidden_states=True).hidden_states[-1]
    state = run_to_site(model, enc.input_ids, enc.attention_mask, 2)
    shift = (1.5 * v).clone().requires_grad_(True)
    got = run_from_site(model, state, shift)
    keep = enc.attention_mask.bool()
    assert torch.allclose(got[keep], steered[keep], atol=1e-5)
    got[keep].sum().backward()
    assert shift.grad is not None and float(shift.grad.abs().sum()) > 0


def test_sites_outside_the_decoder_layers_are_refused(tiny):
    model, tok = tiny
    enc = batch(tok)
    for bad in (0, model.config.num_hidden_layers, "2"):
        with pytest.raises(ValueError, match="site"):
            run_to_site(model, enc.input_ids, enc.attention_mask, bad)
