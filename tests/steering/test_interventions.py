"""Interventions beyond add: ablation, norm preservation, random controls, through the hook and --model_args."""

from __future__ import annotations

import pytest
import torch

from dsteer_eval.steering.controls import random_direction
from dsteer_eval.steering.capture import record
from dsteer_eval.steering.args import SteerArgs
from dsteer_eval.steering.hook import Intervention, steer

TEXTS = ["Human: How do I bake bread? Assistant:", "The quick brown fox"]


def _states(model, tok, site, interventions=(), **kwargs):
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad(), steer(model, interventions, **kwargs), record(model, [site]) as seen:
        model(enc.input_ids, attention_mask=enc.attention_mask)
    return seen[site]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 2.0])
def test_ablation_scales_the_v_component_by_one_minus_alpha_and_leaves_the_rest(tiny, alpha):
    model, tok = tiny
    site = 2
    v = torch.randn(32, generator=torch.Generator().manual_seed(4)) * 3.0
    u = v / v.norm()
    before = _states(model, tok, site)
    after = _states(model, tok, site, [Intervention(site, v, alpha, mode="ablate")])
    proj_before, proj_after = before @ u, after @ u
    torch.testing.assert_close(proj_after, (1 - alpha) * proj_before, atol=1e-5, rtol=1e-5)
    rest_before = before - proj_before[..., None] * u
    rest_after = after - proj_after[..., None] * u
    torch.testing.assert_close(rest_after, rest_before, atol=1e-5, rtol=1e-5)
    if alpha == 0.0:
        assert torch.equal(after, before)  # α=0 is the unsteered state bit for bit


def test_ablation_ignores_the_norm_of_v_and_refuses_a_negative_alpha(tiny):
    model, tok = tiny
    v = torch.randn(32, generator=torch.Generator().manual_seed(4))
    a = _states(model, tok, 2, [Intervention(2, v, 1.0, mode="ablate")])
    b = _states(model, tok, 2, [Intervention(2, 7.5 * v, 1.0, mode="ablate")])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no direction to reverse"):
        Intervention(2, v, -1.0, mode="ablate")
    with pytest.raises(ValueError, match="no direction to reverse"):
        SteerArgs.parse(layer=2, alpha=-1, mode="ablate")
    with pytest.raises(ValueError, match="mode='scale'"):
        SteerArgs.parse(mode="scale")
    with pytest.raises(ValueError, match="zero"):
        Intervention(2, torch.zeros(32), 1.0, mode="ablate")


def test_norm_preserve_keeps_every_norm_exactly_and_only_at_steered_positions(tiny):
    model, tok = tiny
    site = 2
    v = torch.randn(32, generator=torch.Generator().manual_seed(5)) * 4.0
    before = _states(model, tok, site)
    plain = _states(model, tok, site, [Intervention(site, v, 1.0)])
    kept = _states(model, tok, site, [Intervention(site, v, 1.0)], norm_preserve=True)
    torch.testing.assert_close(kept.norm(dim=-1), before.norm(dim=-1), atol=1e-5, rtol=1e-6)
    assert not torch.allclose(plain.norm(dim=-1), before.norm(dim=-1), atol=1e-3)
    # the direction is the plain steered one
    cos = torch.nn.functional.cosine_similarity(kept, plain, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), atol=1e-5, rtol=0)
    # position=last: other positions untouched
    lengths = torch.tensor([3, 2])
    last = _states(model, tok, site, [Intervention(site, v, 1.0)], norm_preserve=True, position="last",
                   prompt_lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        for pos in range(last.shape[1]):
            if pos != n - 1:
                assert torch.equal(last[row, pos], before[row, pos])


def test_control_in_model_args_steers_with_the_seeded_random_direction(tiny_dir, tmp_path):
    from dsteer_eval.adapters.steered import SteeredLM
    from dsteer_eval.vectors import save_vectors

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    v = torch.randn(32, generator=torch.Generator().manual_seed(6)) * 2.0
    path = save_vectors(tmp_path / "v.safetensors", {2: v}, model=model, method="test")
    lm = SteeredLM(pretrained=tiny_dir, vector=str(path), layer=2, alpha=-1.0, control="random:1", device="cpu")
    (item,) = lm.interventions
    assert torch.equal(item.vector, random_direction(v, site=2, index=1, seed=0))
    assert float(item.vector.norm()) == pytest.approx(float(v.norm()), rel=1e-6) and item.alpha == -1.0
    lm2 = SteeredLM(pretrained=tiny_dir, vector=str(path), layer=2, alpha=0.5, mode="ablate", norm_preserve="true",
                    device="cpu")
    assert lm2.interventions[0].mode == "ablate" and lm2._steer_args.norm_preserve
    with pytest.raises(ValueError, match="control='gauss:1'"):
        SteeredLM(pretrained=tiny_dir, vector=str(path), layer=2, control="gauss:1", device="cpu")
