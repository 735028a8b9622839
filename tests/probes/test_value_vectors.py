"""dsteer_eval.probes.value_vectors on the tiny random Llama (d=32, 64 neurons a layer, 4 layers): exact,
known answers from planted weights and from computations by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dsteer_eval.probes.value_vectors import (
    Neuron,
    keys,
    logit_lens,
    mean_residual,
    neuron_activations,
    rank_by_cosine,
    scale_keys,
    top_svd,
    value_vectors,
    weight_change,
)


@pytest.fixture()
def model(tiny):
    """A private copy of the session's tiny Llama: tests here plant weights in it."""
    return copy.deepcopy(tiny[0]).eval()


@pytest.fixture()
def tok(tiny):
    return tiny[1]


def mlp(model, layer):
    return model.model.layers[layer].mlp


def unit(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def batch(tok):
    enc = tok(["Human: How do I bake bread? Assistant: Mix flour.", "Paris is the capital."],
              padding=True, return_tensors="pt")
    assert (enc.attention_mask == 0).any()  # padding is present
    return enc.input_ids, enc.attention_mask


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def no_hooks_left(model) -> bool:
    """No hook of ours is left. transformers (5.x) installs persistent output-capturing hooks of its own the first
    time a model is asked for hidden states (any earlier test on the shared model may have done so): not ours."""
    def ours(hooks):
        return [h for h in hooks.values() if "output_capturing_hook" not in getattr(h, "__qualname__", "")]

    return all(not ours(m._forward_hooks) and not ours(m._forward_pre_hooks) for m in model.modules())


def same_weights(model, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------- weights


def test_value_vectors_and_keys_are_float32_copies_of_the_weights(model):
    down = mlp(model, 2).down_proj.weight
    values = value_vectors(model, 2)
    assert values.shape == (64, 32) and values.dtype == torch.float32
    assert torch.equal(values, down.detach().t())
    assert torch.equal(values[7], down.detach()[:, 7])
    gate, up = keys(model, 2)
    assert torch.equal(gate, mlp(model, 2).gate_proj.weight.detach())
    assert torch.equal(up, mlp(model, 2).up_proj.weight.detach())
    before = down.detach().clone()
    values.zero_(); gate.zero_(); up.zero_()  # noqa: E702
    assert torch.equal(down.detach(), before)  # copies, not views


def test_a_planted_toxic_neuron_ranks_first(model):
    w = unit(32, 0)
    with torch.no_grad():
        mlp(model, 1).down_proj.weight[:, 7] = 5 * w
    ranked = rank_by_cosine(model, w, top=10)
    assert len(ranked) == 10
    first = ranked[0]
    assert (first.layer, first.index) == (1, 7)
    assert first.cosine == pytest.approx(1.0, abs=1e-6)
    assert first.norm == pytest.approx(5.0, abs=1e-5)
    assert [n.cosine for n in ranked] == sorted((n.cosine for n in ranked), reverse=True)
    # the same top 10 as a brute-force ranking of all 4 x 64 neurons
    everything = sorted(
        ((float(F.cosine_similarity(mlp(model, layer).down_proj.weight[:, j].detach(), w, dim=0)), layer, j)
         for layer in range(4) for j in range(64)), reverse=True)
    assert [(n.layer, n.index) for n in ranked] == [(layer, j) for _, layer, j in everything[:10]]
    for n, (c, _, _) in zip(ranked, everything):
        assert n.cosine == pytest.approx(c, abs=1e-6)
    # a 2-D (1, d) direction and a scaled direction give the same ranking; layers restricts the search
    scaled = rank_by_cosine(model, 3 * w[None], top=10)
    assert [(n.layer, n.index) for n in scaled] == [(n.layer, n.index) for n in ranked]
    assert [n.cosine for n in scaled] == pytest.approx([n.cosine for n in ranked], abs=1e-6)
    assert all(-1.0 <= n.cosine <= 1.0 for n in ranked)
    others = rank_by_cosine(model, w, layers=[0, 2], top=5)
    assert {n.layer for n in others} <= {0, 2} and (1, 7) not in {(n.layer, n.index) for n in others}
    assert len(rank_by_cosine(model, w, layers=[3], top=1000)) == 64  # fewer than top when fewer exist


def test_logit_lens_is_final_norm_then_lm_head(model, tok):
    v = 3 * unit(32, 1)
    with torch.no_grad():
        by_hand = model.lm_head(model.model.norm(v[None, None]))[0, 0]
    lens = logit_lens(model, tok, v, top=5)
    assert len(lens) == 5
    best = int(by_hand.argmax())
    assert lens[0][0] == tok.decode([best])
    assert lens[0][1] == pytest.approx(float(by_hand[best]), abs=1e-5)
    assert [x for _, x in lens] == pytest.approx(torch.topk(by_hand, 5).values.tolist(), abs=1e-5)
    # make token 3's unembedding row a large multiple of norm(v)'s direction: token 3 comes first
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied
    with torch.no_grad():
        normed = model.model.norm(v[None, None])[0, 0]
        model.lm_head.weight[3] = 100 * normed / normed.norm()
    lens = logit_lens(model, tok, v, top=3)
    assert lens[0][0] == tok.decode([3])
    assert lens[0][1] == pytest.approx(100 * float(normed.norm()), rel=1e-5)


def test_top_svd_of_multiples_of_one_direction_is_that_direction_with_the_positive_sign(model):
    u = unit(32, 2)
    planted = [(0, 3, 1.0), (2, 10, 2.5), (3, 60, 0.5)]
    with torch.no_grad():
        for layer, j, c in planted:
            mlp(model, layer).down_proj.weight[:, j] = c * u
    neurons = [Neuron(layer, j) for layer, j, _ in planted]
    top = top_svd(model, neurons)
    assert top.shape == (1, 32)
    assert float(top[0].norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(top[0] @ u) == pytest.approx(1.0, abs=1e-6)  # +u, not -u
    # the sign follows the vectors: planted along -u, the answer is -u
    with torch.no_grad():
        for layer, j, c in planted:
            mlp(model, layer).down_proj.weight[:, j] = -c * u
    assert float(top_svd(model, [(layer, j) for layer, j, _ in planted])[0] @ u) == pytest.approx(-1.0, abs=1e-6)
    assert top_svd(model, neurons, k=3).shape == (3, 32)


def test_weight_change_is_exact_for_known_edits(model):
    dpo = copy.deepcopy(model)
    with torch.no_grad():
        mlp(dpo, 2).down_proj.weight[:, 5] *= 3  # same direction, 3x: cos 1, relative change 2
        mlp(dpo, 0).gate_proj.weight[1] *= -1  # flipped: cos -1, relative change 2
        v = mlp(dpo, 1).up_proj.weight[4].double()
        r = torch.randn(32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        r = r - (r @ v) / (v @ v) * v  # orthogonal to v, same norm: cos 0, relative change sqrt 2
        mlp(dpo, 1).up_proj.weight[4] = (r / r.norm() * v.norm()).float()
    rows = weight_change(model, dpo, [Neuron(2, 5), (0, 1), (1, 4), (3, 9)])
    assert [(r["layer"], r["index"]) for r in rows] == [(2, 5), (0, 1), (1, 4), (3, 9)]
    a, b, c, untouched = rows
    assert a["value_cos"] == pytest.approx(1.0, abs=1e-9) and a["value_rel_change"] == pytest.approx(2.0, abs=1e-6)
    assert (a["gate_cos"], a["gate_rel_change"], a["up_cos"], a["up_rel_change"]) == (1.0, 0.0, 1.0, 0.0)
    assert b["gate_cos"] == pytest.approx(-1.0, abs=1e-12) and b["gate_rel_change"] == 2.0  # -x is exact
    assert (b["value_cos"], b["value_rel_change"]) == (1.0, 0.0)
    assert c["up_cos"] == pytest.approx(0.0, abs=1e-6)
    assert c["up_rel_change"] == pytest.approx(math.sqrt(2), abs=1e-6)
    assert all(untouched[f"{n}_cos"] == 1.0 and untouched[f"{n}_rel_change"] == 0.0
               for n in ("value", "gate", "up"))


# ------------------------------------------------------------------------------------ activations


def test_neuron_activations_match_a_computation_by_hand_over_non_padding_positions(model, tok):
    ids, mask = batch(tok)
    neurons = [Neuron(1, 7), (3, 0), (1, 2), (1, 7)]  # order kept, repeats allowed
    mlp_inputs, down_inputs = {}, {}
    handles = [model.model.layers[layer].post_attention_layernorm.register_forward_hook(
        lambda m, a, out, layer=layer: mlp_inputs.__setitem__(layer, out.detach())) for layer in (1, 3)]
    handles += [mlp(model, layer).down_proj.register_forward_pre_hook(
        lambda m, a, layer=layer: down_inputs.__setitem__(layer, a[0].detach())) for layer in (1, 3)]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    expected, at_down_proj = [], []
    for n in neurons:
        layer, j = (n.layer, n.index) if isinstance(n, Neuron) else n
        m, x = mlp(model, layer), mlp_inputs[layer]
        with torch.no_grad():
            act = m.act_fn(x @ m.gate_proj.weight[j]) * (x @ m.up_proj.weight[j])  # (batch, seq)
        values = [float(act[b, t]) for b in range(ids.shape[0]) for t in range(ids.shape[1]) if mask[b, t]]
        expected.append(sum(values) / len(values))
        at_down_proj.append(float(down_inputs[layer][..., j][mask.bool()].mean()))
    got = neuron_activations(model, ids, mask, neurons)
    assert got.shape == (4,) and got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    assert got.tolist() == pytest.approx(at_down_proj, abs=1e-7)  # what down_proj really receives
    assert got[0] == got[3]
    # padding matters: averaging over every position gives another number
    assert not torch.allclose(neuron_activations(model, ids, None, neurons), got)
    assert no_hooks_left(model)


def test_neuron_activations_per_token_are_what_down_proj_receives_at_each_kept_position(model, tok):
    ids, mask = batch(tok)
    neurons = [Neuron(1, 7), Neuron(3, 0), Neuron(1, 2)]
    down_inputs = {}
    handles = [mlp(model, layer).down_proj.register_forward_pre_hook(
        lambda m, a, layer=layer: down_inputs.__setitem__(layer, a[0].detach())) for layer in (1, 3)]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    got = neuron_activations(model, ids, mask, neurons, per_token=True)
    kept = int(mask.sum())
    assert got.shape == (kept, 3) and got.dtype == torch.float32
    for col, n in enumerate(neurons):  # row-major over the batch: row 0's kept positions, then row 1's
        expected = [float(down_inputs[n.layer][b, t, n.index]) for b in range(ids.shape[0])
                    for t in range(ids.shape[1]) if mask[b, t]]
        assert got[:, col].tolist() == pytest.approx(expected, abs=1e-7)
    # the mean mode is the mean of the per-token mode
    assert neuron_activations(model, ids, mask, neurons).tolist() == pytest.approx(got.mean(0).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="per_token"):
        neuron_activations(model, ids, mask, neurons, per_token="yes")
    assert no_hooks_left(model)


def test_hooks_are_removed_when_the_forward_pass_raises(model, tok):
    ids, mask = batch(tok)
    bad = ids.clone()
    bad[0, 0] = 10_000  # outside the vocabulary: the embedding lookup raises
    with pytest.raises(IndexError):
        neuron_activations(model, bad, mask, [Neuron(0, 1), Neuron(2, 3)])
    with pytest.raises(IndexError):
        mean_residual(model, bad, mask, 2)
    assert no_hooks_left(model)


def test_mean_residual_is_the_hidden_state_entering_the_layer(model, tok):
    ids, mask = batch(tok)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    keep = mask.bool()
    for layer in (0, 2, 3):
        got = mean_residual(model, ids, mask, layer)
        assert got.shape == (32,)
        assert torch.allclose(got, hidden[layer][keep].mean(dim=0), atol=1e-6)
    with torch.no_grad():  # no mask: every position counts (and the model runs unmasked)
        unmasked = model(input_ids=ids, output_hidden_states=True).hidden_states[1]
    assert torch.allclose(mean_residual(model, ids, None, 1), unmasked.reshape(-1, 32).mean(dim=0), atol=1e-6)


# ------------------------------------------------------------------------------------- scale_keys


def test_scale_keys_scales_both_rows_and_restores_the_exact_weights(model):
    snap = snapshot(model)
    gate, up = mlp(model, 2).gate_proj, mlp(model, 2).up_proj
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = up(x)
    with scale_keys(model, [Neuron(2, 9), Neuron(0, 4), Neuron(2, 9)], 10.0):  # a repeat is scaled once
        assert torch.equal(gate.weight[9], snap["model.layers.2.mlp.gate_proj.weight"][9] * 10.0)
        assert torch.equal(up.weight[9], snap["model.layers.2.mlp.up_proj.weight"][9] * 10.0)
        assert torch.equal(mlp(model, 0).up_proj.weight[4], snap["model.layers.0.mlp.up_proj.weight"][4] * 10.0)
        with torch.no_grad():
            inside = up(x)
        assert torch.allclose(inside[:, 9], 10.0 * before[:, 9], rtol=1e-5, atol=0)  # linear in the row
        assert torch.equal(torch.cat([inside[:, :9], inside[:, 10:]], 1),
                           torch.cat([before[:, :9], before[:, 10:]], 1))  # other neurons untouched
    assert same_weights(model, snap)
    with scale_keys(model, [Neuron(2, 9)], 2.0):  # a power of two scales every product exactly
        with torch.no_grad():
            assert torch.equal(up(x)[:, 9], 2.0 * before[:, 9])
    assert same_weights(model, snap)


def test_scale_keys_restores_the_weights_when_the_body_raises(model):
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with scale_keys(model, [Neuron(1, 1), Neuron(3, 63)], 10.0):
            assert not same_weights(model, snap)
            raise RuntimeError("boom")
    assert same_weights(model, snap)


def test_scale_keys_scales_the_bias_entries_too():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=50, mlp_bias=True)
    small = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        small.model.layers[1].mlp.up_proj.bias.normal_()
        small.model.layers[1].mlp.gate_proj.bias.normal_()
    snap = snapshot(small)
    m, x = small.model.layers[1].mlp, torch.randn(2, 16)
    with torch.no_grad():
        before_up, before_gate = m.up_proj(x)[:, 5], m.gate_proj(x)[:, 5]
        with scale_keys(small, [(1, 5)], 10.0):
            assert torch.allclose(m.up_proj(x)[:, 5], 10 * before_up, rtol=1e-5, atol=1e-6)
            assert torch.allclose(m.gate_proj(x)[:, 5], 10 * before_gate, rtol=1e-5, atol=1e-6)
    assert same_weights(small, snap)


# ------------------------------------------------------------------------------------ bad input


def test_bad_input_raises_a_value_error_that_names_the_fix(model, tok):
    w = unit(32, 0)
    ids, mask = batch(tok)
    for layer in (4, -1):
        with pytest.raises(ValueError, match=rf"layer={layer} is out of range.*pass 0\.\.3"):
            value_vectors(model, layer)
    with pytest.raises(ValueError, match="must be an int"):
        keys(model, "1")
    with pytest.raises(ValueError, match=r"layer=4 is out of range"):
        mean_residual(model, ids, mask, 4)
    with pytest.raises(ValueError, match=r"direction has shape \(31,\).*hidden size is 32"):
        rank_by_cosine(model, torch.ones(31))
    with pytest.raises(ValueError, match="zero vector"):
        rank_by_cosine(model, torch.zeros(32))
    with pytest.raises(ValueError, match="non-finite"):
        rank_by_cosine(model, torch.full((32,), math.nan))
    with pytest.raises(ValueError, match="top must be a positive int"):
        rank_by_cosine(model, w, top=0)
    with pytest.raises(ValueError, match="layers is empty"):
        rank_by_cosine(model, w, layers=[])
    with pytest.raises(ValueError, match=r"layer=7 is out of range"):
        rank_by_cosine(model, w, layers=[0, 7])
    with pytest.raises(ValueError, match=r"vector has shape \(16,\)"):
        logit_lens(model, tok, torch.ones(16))
    with pytest.raises(ValueError, match="top must be a positive int"):
        logit_lens(model, tok, w, top=0)
    for factor in (math.nan, math.inf, -math.inf, "10"):
        with pytest.raises(ValueError, match="factor must be a finite number"):
            with scale_keys(model, [Neuron(0, 0)], factor):
                pass
    for call in (lambda n: top_svd(model, n), lambda n: weight_change(model, model, n),
                 lambda n: neuron_activations(model, ids, mask, n), lambda n: scale_keys(model, n, 2.0).__enter__()):
        with pytest.raises(ValueError, match="neurons is empty"):
            call([])
        with pytest.raises(ValueError, match=r"index 64 of layer 1 is out of range: pass 0\.\.63"):
            call([Neuron(1, 64)])
        with pytest.raises(ValueError, match=r"layer=9 is out of range"):
            call([(9, 0)])
        with pytest.raises(ValueError, match="Neuron or a \\(layer, index\\) pair"):
            call([7])
    with pytest.raises(ValueError, match=r"k must be an int in 1\.\.2"):
        top_svd(model, [Neuron(0, 0), Neuron(0, 1)], k=3)
    with torch.no_grad():
        mlp(model, 0).down_proj.weight[:, 0] = 0
    with pytest.raises(ValueError, match="all zero"):
        top_svd(model, [Neuron(0, 0)])
    with pytest.raises(ValueError, match="input_ids must be a 2-D integer tensor"):
        neuron_activations(model, ids[0], None, [Neuron(0, 1)])
    with pytest.raises(ValueError, match="attention_mask must be a tensor of input_ids' shape"):
        mean_residual(model, ids, mask[:, :-1], 0)
    with pytest.raises(ValueError, match="no non-padding position"):
        neuron_activations(model, ids, torch.zeros_like(mask), [Neuron(0, 1)])
    assert no_hooks_left(model)


def test_a_mismatched_dpo_model_or_a_non_swiglu_model_is_refused(model):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50))
    with pytest.raises(ValueError, match="does not match base_model"):
        weight_change(model, other, [Neuron(0, 0)])
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=8))
    with pytest.raises(ValueError, match="no SwiGLU MLP"):
        value_vectors(gpt2, 0)
