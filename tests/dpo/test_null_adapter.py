"""The null adapter keeps each module's singular values, scrambles directions, and matches the shift size."""

from __future__ import annotations

import pytest
import torch

from dsteer_eval.dpo.model_pair import ModelPair
from dsteer_eval.dpo.null_adapter import attach_null, permute_lora_B, permute_weight_delta

PROMPTS = ["Human: How do I bake bread? Assistant:", "Human: Tell me something rude. Assistant:",
           "What is the capital of France?", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture()
def lora_pair(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    return ModelPair.load(tiny_dir, adapter=str(tmp_path / "adapter"), device="cpu")


def _module_deltas(state):
    out = {}
    for key, b in state.items():
        if "lora_B" in key:
            out[key] = b @ state[key.replace("lora_B", "lora_A")]
    return out


def test_permuted_lora_keeps_every_module_spectrum_and_changes_directions():
    gen = torch.Generator().manual_seed(0)
    state = {}
    for m in ("q", "v"):
        state[f"layers.0.{m}.lora_A.weight"] = torch.randn(4, 16, generator=gen)
        state[f"layers.0.{m}.lora_B.weight"] = torch.randn(16, 4, generator=gen)
    permuted = permute_lora_B(state, seed=1)
    before, after = _module_deltas(state), _module_deltas(permuted)
    for key in before:
        torch.testing.assert_close(torch.linalg.svdvals(after[key]), torch.linalg.svdvals(before[key]))
        assert not torch.allclose(after[key], before[key])
        assert sorted(after[key].flatten().tolist()) == pytest.approx(sorted(before[key].flatten().tolist()))
    for key in state:
        if "lora_A" in key:
            assert torch.equal(permuted[key], state[key])
    assert all(torch.equal(permute_lora_B(state, seed=1)[k], permuted[k]) for k in state)  # seeded
    with pytest.raises(ValueError, match="lora_B"):
        permute_lora_B({"w": torch.ones(2, 2)})


def test_weight_delta_permutation_keeps_singular_values():
    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(8, 5, generator=gen), "n": torch.ones(8), "same": torch.zeros(3)}
    dpo = {"w": base["w"] + torch.randn(8, 5, generator=gen), "n": base["n"] + 0.1, "same": torch.zeros(3)}
    deltas = permute_weight_delta(base, dpo, seed=0)
    assert set(deltas) == {"w", "n"}  # unchanged weights are left alone
    torch.testing.assert_close(torch.linalg.svdvals(deltas["w"]), torch.linalg.svdvals(dpo["w"] - base["w"]))
    with pytest.raises(ValueError, match="identical"):
        permute_weight_delta(base, base)


def test_null_adapter_matches_the_mean_shift_at_the_site(lora_pair):
    from peft import get_peft_model_state_dict

    from dsteer_eval.dpo.extract import last_token_states

    site = 2
    null_pair, info = attach_null(lora_pair, PROMPTS, site, seed=0, tol=0.01)
    with lora_pair.side("base") as m:
        base = last_token_states(m, lora_pair.tokenizer, PROMPTS)[:, site]
    with lora_pair.side("dpo") as m:
        dpo = last_token_states(m, lora_pair.tokenizer, PROMPTS)[:, site]
    with null_pair.side("dpo") as m:
        null = last_token_states(m, lora_pair.tokenizer, PROMPTS)[:, site]
    target = float((dpo - base).norm(dim=-1).mean())
    got = float((null - base).norm(dim=-1).mean())
    assert info.target_mean_shift == pytest.approx(target, rel=1e-6)
    assert got == pytest.approx(target, rel=0.01) and info.null_mean_shift == pytest.approx(got, rel=1e-6)
    assert not torch.allclose(null, dpo, atol=1e-4)  # a different update, not the DPO one again
    # the null's lora_B are the DPO's rows permuted and scaled by one s: singular values times s
    dpo_state = get_peft_model_state_dict(lora_pair.base, adapter_name="default")
    null_state = get_peft_model_state_dict(lora_pair.base, adapter_name="null")
    d0, d1 = _module_deltas(dpo_state), _module_deltas(null_state)
    for key in d0:
        torch.testing.assert_close(torch.linalg.svdvals(d1[key]), info.scale * torch.linalg.svdvals(d0[key]),
                                   rtol=1e-4, atol=1e-6)
    # the DPO side is still the DPO adapter after the null ran
    with lora_pair.side("dpo") as m:
        again = last_token_states(m, lora_pair.tokenizer, PROMPTS)[:, site]
    torch.testing.assert_close(again, dpo)


def test_lattice_field_on_a_tiny_pair(lora_pair, tmp_path):
    from dsteer_eval.dpo.extract import pair_states
    from dsteer_eval.probes.lattice_field import lattice_basis, lattice_field, quiver_png
    from dsteer_eval.data.preference_pairs import PreferencePair

    pairs = [PreferencePair(p, " Mix flour and bake.", " I would rather not.") for p in PROMPTS[:3]]
    states = pair_states(lora_pair, PROMPTS)
    final = states.delta.shape[1] - 1
    delta = states.delta[:, final]
    v = delta.mean(0)
    basis = lattice_basis(v, delta)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)
    assert float(basis[0] @ v.double()) == pytest.approx(float(v.double().norm()), rel=1e-10)
    field = lattice_field(lora_pair, pairs, v, delta, beta=0.1)
    assert len(field["points"]) == 27 and [0, 0, 0] in field["points"]
    g = torch.tensor(field["field_in_basis"])
    assert g.shape == (27, 3) and torch.isfinite(g).all()
    assert -1.0 <= field["uniformity_min"] <= field["uniformity"] <= 1.0
    # at the origin the field is minus the mean of the per-pair gradients of the coherence probe
    from dsteer_eval.probes import gradients

    coherence = gradients.gradient_coherence(lora_pair, pairs, beta=0.1)
    origin = field["points"].index([0, 0, 0])
    torch.testing.assert_close(g[origin].double(), -(coherence["mean"].double() @ basis.T), rtol=1e-4, atol=1e-7)
    quiver_png(field, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 1000
