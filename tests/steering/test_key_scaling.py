"""Key scaling inside the forward pass (dsteer_eval.steering.key_scaling; ``steered`` ``scale_keys=`` /
``key_factor=``; Lee et al.'s un-aligning, issue 35 item 5): the same numbers as scaling the gate and up rows in the
weights, nothing changed at factor 1, every position scaled whatever the steering position, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch

from dsteer_eval.models.defaults import resolve_key_neurons
from dsteer_eval.probes.value_vectors import neuron_activations, scale_keys
from dsteer_eval.steering.hook import steer
from dsteer_eval.steering.key_scaling import key_scale_edits, parse_neurons
from dsteer_eval.steering.sites import resolve_parts
from test_tasks import write_vector

NEURONS = [(1, 3), (2, 5), (2, 7)]


def test_neurons_are_parsed_in_order_once_and_bad_names_are_refused():
    assert parse_neurons("1.3+2.5+1.3") == [(1, 3), (2, 5)]
    for bad in ("", "1,3", "1.3+x", "1.3.4", "-1.3"):
        with pytest.raises(ValueError, match="LAYER.INDEX"):
            parse_neurons(bad)
    with pytest.raises(ValueError, match="toxic:K needs a whole number"):
        resolve_key_neurons(None, "toxic:seven")


def test_scaled_outputs_equal_scaled_weights_and_factor_one_changes_nothing(tiny):
    model, tok = copy.deepcopy(tiny[0]).eval(), tiny[1]
    parts = resolve_parts(model)
    enc = tok(["The cat sat on the mat today.", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**enc).logits
        with steer(model, module_edits=key_scale_edits(parts, NEURONS, 1.0)):
            assert torch.equal(model(**enc).logits, plain)
        with steer(model, module_edits=key_scale_edits(parts, NEURONS, 10.0)):
            hooked = model(**enc).logits
            acts_hooked = neuron_activations(model, enc.input_ids, enc.attention_mask, NEURONS)
        with scale_keys(model, NEURONS, 10.0):
            weights = model(**enc).logits
            acts_weights = neuron_activations(model, enc.input_ids, enc.attention_mask, NEURONS)
    assert not torch.allclose(hooked, plain, atol=1e-3)  # it did something, at every position
    torch.testing.assert_close(hooked, weights, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acts_hooked, acts_weights, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="index outside"):
        key_scale_edits(parts, [(1, 10_000)], 2.0)
    with pytest.raises(ValueError, match="layer outside"):
        key_scale_edits(parts, [(9, 0)], 2.0)


def test_steered_scale_keys_is_the_model_with_scaled_keys(tiny_dir, tiny, tmp_path):
    from dsteer_eval.adapters.steered import SteeredLM

    vector = write_vector(tmp_path / "v.safetensors", tiny[0])
    lm = SteeredLM(pretrained=str(tiny_dir), vector=str(vector), layer=2, alpha=0.0, scale_keys="1.3+2.5+2.7",
                   key_factor=10, position="last", device="cpu")  # the keys scale at every position regardless
    ids = torch.tensor([[1, 5, 9, 12, 3, 7]])
    model = copy.deepcopy(tiny[0]).eval()
    with torch.no_grad(), scale_keys(model, NEURONS, 10.0):
        want = model(ids).logits
    got = lm._model_call(ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    lm.set_steering(lm.interventions_at(2, 0.5))  # a sweep re-points the steering: the key scaling stays
    shift = lm.interventions_at(2, 0.5)
    with torch.no_grad(), scale_keys(model, NEURONS, 10.0), steer(model, shift, position="last", prompt_lengths=[6]):
        torch.testing.assert_close(lm._model_call(ids), model(ids).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="key_factor"):
        SteeredLM(pretrained=str(tiny_dir), vector=str(vector), layer=2, scale_keys="1.3", key_factor="ten",
                  device="cpu")
