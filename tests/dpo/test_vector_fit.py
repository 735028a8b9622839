"""dsteer_eval.dpo.vector_fit on the tiny random Llama, with planted answers: a 'DPO' model that is the base plus a
known vector at a site (the distilled vectors recover it, both ways, and close all of the gap), a 'DPO' model that
differs by a scaled MLP (no vector closes it), the DPO loss at v = 0 (exactly log 2), and the steered forward pass
equal to dsteer_eval.steering.steer's at every position."""

from __future__ import annotations

import copy
import json
import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.dpo.vector_fit import (
    check_split,
    collate,
    encode,
    encode_pairs,
    fit_distilled,
    fit_dpo_vector,
    measure,
    sequence_logps,
    target_logprobs,
)
from dsteer_eval.steering.hook import Intervention, steer

SITE = 2
PROMPTS = ["How do I bake bread?", "What is the capital of France?", "Tell me a joke.", "Say something nice.",
           "Where is the river?", "Name a colour.", "Who wrote this book?", "When does the shop open?"]
REPLIES = [(" Mix flour and water.", " I will not help."), (" Paris.", " Rome, I think."),
           (" A dog walks in.", " No jokes today."), (" You did well.", " Go away."),
           (" It runs north.", " Nowhere at all."), (" Blue.", " I refuse."),
           (" A famous author.", " Nobody knows that."), (" At nine.", " Never, sorry.")]


def pairs(n=8):
    return [PreferencePair(f"\n\nHuman: {p}\n\nAssistant:", c, r) for p, (c, r) in zip(PROMPTS[:n], REPLIES[:n])]


class PlantedPair:
    """base = the tiny model; dpo = the same model with ``vector`` added at ``site`` (every position), or
    ``other`` (a separate model) when given."""

    def __init__(self, model, tokenizer, vector=None, other=None):
        self.model, self.tokenizer, self.vector, self.other = model, tokenizer, vector, other

    @contextmanager
    def side(self, which):
        if which == "base":
            yield self.model
        elif self.other is not None:
            yield self.other
        else:
            with steer(self.model, [Intervention(SITE, self.vector, 1.0)]):
                yield self.model


@pytest.fixture()
def model(tiny):
    return copy.deepcopy(tiny[0]).eval()


@pytest.fixture()
def tok(tiny):
    tok = copy.deepcopy(tiny[1])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def planted_vector(model, tok, seed=0):
    """A random direction as long as the mean state norm at SITE."""
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc, output_hidden_states=True).hidden_states[SITE]
    norm = float(h[enc.attention_mask.bool()].norm(dim=-1).mean())
    v = torch.randn(h.shape[-1], generator=torch.Generator().manual_seed(seed))
    return norm * v / v.norm()


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("position", ["all", "prompt", "completion", "last"])
def test_the_trainable_shift_is_the_steering_hook_at_every_position(model, tok, position):
    enc = encode_pairs(tok, pairs(3))
    texts = [t for two in enc for t in two]
    batch = collate(texts, tok.pad_token_id)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = target_logprobs(model, batch, site=SITE, vector=v, position=position)
    with torch.no_grad(), steer(model, [Intervention(SITE, v, 1.0)], position=position,
                                prompt_lengths=batch.prompt_lengths):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = F.log_softmax(logits[batch.target].float(), -1)
    assert torch.allclose(got, expected, atol=1e-5)
    # and the summed completion log-probability is the labels' entries of it, by hand
    seq = sequence_logps(got, batch)
    for row, t in enumerate(texts):
        by_hand = sum(float(F.log_softmax(logits[row, i].float(), -1)[t.ids[i + 1]])
                      for i in range(t.prompt_len - 1, len(t.ids) - 1))
        assert float(seq[row]) == pytest.approx(by_hand, abs=1e-4)


def test_encode_keeps_the_prompt_end_and_the_completion_start(tok):
    long = " ".join(["word"] * 300)
    e = encode(tok, long, " a b c d e f", max_prompt=16, max_completion=3)
    assert e.prompt_len == 16 and len(e.ids) == 19
    assert list(e.ids[-3:]) == tok(" a b c d e f", add_special_tokens=False).input_ids[:3]
    with pytest.raises(ValueError, match="completion"):
        encode(tok, "prompt", "")


def test_distilled_vectors_recover_a_planted_vector_both_ways_and_close_the_whole_gap(model, tok):
    v_true = planted_vector(model, tok)
    pair = PlantedPair(model, tok, vector=v_true)
    fit_rows, held = pairs(6), pairs(8)[6:]
    v_star = fit_distilled(pair, fit_rows, SITE, direction="install", steps=120, lr=0.3, batch_size=6)
    u_star = fit_distilled(pair, fit_rows, SITE, direction="undo", steps=120, lr=0.3, batch_size=6)
    assert v_star.losses[-1] < 1e-3 * v_star.losses[0]
    assert cos(v_star.vector, v_true) > 0.99 and cos(u_star.vector, -v_true) > 0.99
    assert float(v_star.vector.norm()) == pytest.approx(float(v_true.norm()), rel=0.02)
    m = measure(pair, held, SITE, {"v*": ("base", v_star.vector), "u*": ("dpo", u_star.vector),
                                   "zero": ("base", torch.zeros_like(v_true))})
    assert bool((m.kl_dpo_base > 1e-3).all())  # the planted change is visible on held-out rows
    for name, before in (("v*", m.kl_dpo_base), ("u*", m.kl_base_dpo)):
        explained = 1 - float(m.steered[name]["kl_to_target"].mean()) / float(before.mean())
        assert explained > 0.99, name
    # the margin relative to the base: installed all the way by v*, taken all the way back by u*
    share_in = float(m.steered["v*"]["margin"].mean()) / float(m.margin_dpo.mean())
    share_back = 1 - float(m.steered["u*"]["margin"].mean()) / float(m.margin_dpo.mean())
    assert share_in == pytest.approx(1.0, abs=0.02) and share_back == pytest.approx(1.0, abs=0.02)
    # a zero vector on the base is the base: margin 0 exactly, KL to DPO = the unsteered KL
    assert torch.equal(m.steered["zero"]["margin"], torch.zeros_like(m.margin_dpo))
    assert torch.allclose(m.steered["zero"]["kl_to_target"], m.kl_dpo_base)
    assert v_star.record()["method"] == "distill-install" and v_star.record()["rows"] == 6


def test_a_step_too_large_for_a_small_gap_overshoots_unless_the_check_pairs_guard_the_fit(model, tok):
    # a planted gap 2 % of the state norm and a step size far too large for it (the failure seen on the null DPO run:
    # Adam's first steps are as large as lr whatever the gradient): the unguarded last iterate is worse than no vector
    # on held-out rows; the guarded fit (check pairs pick the iterate, an overshoot halves the step) recovers it
    v_true = 0.02 * planted_vector(model, tok)
    pair = PlantedPair(model, tok, vector=v_true)
    fit_rows, held = pairs(6), pairs(8)[6:]
    settings = dict(direction="install", steps=40, lr=3.0, batch_size=4)
    loose = fit_distilled(pair, fit_rows, SITE, check_fraction=0, **settings)
    guarded = fit_distilled(pair, fit_rows, SITE, check_fraction=0.34, **settings)
    m = measure(pair, held, SITE, {"loose": ("base", loose.vector), "guarded": ("base", guarded.vector)})
    explained = {k: 1 - float(m.steered[k]["kl_to_target"].mean()) / float(m.kl_dpo_base.mean()) for k in m.steered}
    assert explained["loose"] < 0 < 0.9 < explained["guarded"]
    assert cos(guarded.vector, v_true) > 0.9
    r = guarded.record()
    assert r["check_pairs"] == 2 and r["halvings"] >= 1 and loose.record()["check_pairs"] == 0
    # the kept vector is the check-loss minimum among the iterates read (w = 0 first): re-measured on the check pairs
    steps, losses = zip(*r["check_losses"])
    assert steps[0] == 0 and r["best_step"] == steps[losses.index(min(losses))]
    _, check = check_split(6, 0.34, 0)
    again = measure(pair, [fit_rows[i] for i in check], SITE, {"kept": ("base", guarded.vector)})
    assert float(again.steered["kept"]["kl_to_target"].mean()) == pytest.approx(min(losses), rel=1e-4)
    assert float(again.kl_dpo_base.mean()) == pytest.approx(losses[0], rel=1e-4)


def test_the_check_split_is_seeded_disjoint_and_never_takes_every_pair():
    train, check = check_split(10, 0.25, 3)
    assert (train, check) == check_split(10, 0.25, 3) and len(check) == 2 and sorted(train + check) == list(range(10))
    assert check_split(10, 0.25, 4) != (train, check)
    assert check_split(1, 0.5, 0) == ([0], []) and check_split(2, 0.9, 0)[1].__len__() == 1
    assert check_split(5, 0, 0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ValueError, match="check_fraction"):
        check_split(5, 1.0, 0)


def test_no_vector_closes_a_non_additive_change(model, tok):
    other = copy.deepcopy(model)
    with torch.no_grad():  # the MLPs after the site scaled: an input-dependent change, not a shift
        for layer in other.model.layers[SITE:]:
            layer.mlp.down_proj.weight.mul_(4.0)
            layer.mlp.up_proj.weight.mul_(-1.0)
    pair = PlantedPair(model, tok, other=other)
    fit_rows, held = pairs(6), pairs(8)[6:]
    v_star = fit_distilled(pair, fit_rows, SITE, direction="install", steps=120, lr=0.3, batch_size=6)
    m = measure(pair, held, SITE, {"v*": ("base", v_star.vector)})
    explained = 1 - float(m.steered["v*"]["kl_to_target"].mean()) / float(m.kl_dpo_base.mean())
    assert explained < 0.5  # a vector cannot be a scaled, sign-flipped MLP


def test_the_dpo_vector_starts_at_log_two_and_learns_the_preference(model, tok):
    pair = PlantedPair(model, tok, vector=torch.zeros(model.config.hidden_size))  # the DPO side is never used
    rows = pairs(8)
    fit = fit_dpo_vector(pair, rows, SITE, beta=0.5, steps=60, lr=0.3, batch_size=8, check_fraction=0)
    assert fit.losses[0] == pytest.approx(math.log(2), abs=1e-6)  # v = 0: the policy is the reference
    assert fit.losses[-1] < 0.8 * math.log(2)
    # on its own rows the chosen replies now beat the rejected ones relative to the reference, on average and in
    # most pairs (one vector in a 4-layer random model cannot order every pair)
    planted = PlantedPair(model, tok, vector=fit.vector)
    m = measure(planted, rows, SITE, {"v": ("base", fit.vector)})
    assert float(m.steered["v"]["margin"].mean()) > 0 and float((m.steered["v"]["margin"] > 0).float().mean()) >= 0.75
    assert torch.allclose(m.steered["v"]["margin"], m.margin_dpo, atol=1e-4)  # the same model both ways


def test_bad_arguments_are_refused_by_name(model, tok):
    pair = PlantedPair(model, tok, vector=torch.zeros(model.config.hidden_size))
    with pytest.raises(ValueError, match="site"):
        fit_distilled(pair, pairs(2), 99)
    with pytest.raises(ValueError, match="direction"):
        fit_distilled(pair, pairs(2), SITE, direction="sideways")
    with pytest.raises(ValueError, match="position"):
        fit_distilled(pair, pairs(2), SITE, position="middle")
    with pytest.raises(ValueError, match="beta"):
        fit_dpo_vector(pair, pairs(2), SITE, beta=0)
    with pytest.raises(ValueError, match="pairs"):
        fit_dpo_vector(pair, [], SITE)


def test_cli_fits_per_layer_saves_a_loadable_file_and_resumes_the_missing_layers(tiny_dir, tiny_adapter_dir,
                                                                                  short_pairs_file, tmp_path,
                                                                                  monkeypatch, capsys):
    from dsteer_eval.cli import main
    from dsteer_eval.dpo import vector_fit
    from dsteer_eval.vectors import load_vectors

    out = tmp_path / "new" / "v.safetensors"  # a folder that does not exist yet
    args = ["extract", "--method", "distill", "--direction", "undo", "--pretrained", tiny_dir, "--peft",
            tiny_adapter_dir, "--data", short_pairs_file, "--part", "all", "--layers", "1,3", "--steps", "3",
            "--batch-size", "4", "--out", str(out)]
    real, fitted = vector_fit.fit_distilled, []

    def failing_at_3(pair, pairs_, site, **kw):
        if site == 3:
            raise KeyboardInterrupt  # the run stops after layer 1
        fitted.append(site)
        return real(pair, pairs_, site, **kw)

    monkeypatch.setattr(vector_fit, "fit_distilled", failing_at_3)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    sidecar = tmp_path / "new" / "v.safetensors.fits.json"
    assert fitted == [1] and sidecar.is_file() and not out.exists()
    fitted.clear()
    monkeypatch.setattr(vector_fit, "fit_distilled", lambda *a, **kw: (fitted.append(a[2]), real(*a, **kw))[1])
    assert main(args) == 0
    assert fitted == [3] and not sidecar.exists()  # only the missing layer was fitted
    vf = load_vectors(out)
    assert sorted(vf.vectors) == [1, 3] and vf.metadata["method"] == "distill-undo"
    fit = json.loads(vf.metadata["fit"])
    assert fit["1"]["steps"] == 3 and fit["3"]["student"] == "dpo" and vf.metadata["fit_position"] == "all"
    assert main([*args[:-6], "--steps", "0", "--batch-size", "4", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--steps (0)" in capsys.readouterr().err


def test_the_null_dpo_vector_is_fitted_on_the_pairs_train_dpo_swaps(tiny, tiny_dir, tiny_adapter_dir, tmp_path,
                                                                     monkeypatch):
    """extract --method dpo-vector --labels shuffled: the DPO-trained vector never sees the adapter, so its null
    control is the DPO loss on the null run's data: the first --limit train pairs with exactly half of them swapped,
    seeded as train-dpo --labels shuffled swaps (with every pair, its very swaps); distill refuses the flag."""
    from conftest import SHORT_PAIRS, write_jsonl
    from dsteer_eval.cli import main
    from dsteer_eval.data.preference_pairs import load_pairs
    from dsteer_eval.data.splits import part_of
    from dsteer_eval.dpo import vector_fit
    from dsteer_eval.dpo.training import DPOSettings, split_pairs
    from dsteer_eval.vectors import load_vectors

    rows = [{**r, "chosen": f"{r['chosen']} {i}"} for i, r in enumerate(SHORT_PAIRS * 8)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    every = load_pairs(data)
    null_train, _, _ = split_pairs(every, tiny[1], DPOSettings(labels="shuffled", eval_size=0, max_prompt_length=40,
                                                               max_length=64), part="train")
    assert sum(part_of(p.prompt) == "train" for p in every) >= 6
    seen = {}

    def spy(pair, pairs_, site, **kw):
        seen["pairs"] = list(pairs_)
        return real(pair, pairs_, site, **{**kw, "steps": 1})

    real = vector_fit.fit_dpo_vector
    monkeypatch.setattr(vector_fit, "fit_dpo_vector", spy)
    out = tmp_path / "null_v.safetensors"
    args = ["extract", "--method", "dpo-vector", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", data,
            "--part", "train", "--limit", "5", "--layers", "2", "--steps", "1", "--batch-size", "4"]
    given_all = [p for p in every if part_of(p.prompt) == "train"]
    assert main([*args, "--limit", str(len(given_all)), "--labels", "shuffled", "--out", str(tmp_path / "all.st")]) == 0
    assert seen["pairs"] == null_train  # every pair: exactly the pairs train-dpo --labels shuffled swaps
    assert main([*args, "--labels", "shuffled", "--out", str(out)]) == 0
    given = given_all[:5]
    # --limit 5: the first 5 with exactly 2 (= 5 // 2) swapped, chosen and rejected exchanged, nothing else changed
    swapped = [a for a, b in zip(seen["pairs"], given) if a != b]
    assert len(seen["pairs"]) == 5 and len(swapped) == 2
    assert all(a == b or (a.chosen, a.rejected, a.prompt) == (b.rejected, b.chosen, b.prompt)
               for a, b in zip(seen["pairs"], given))
    assert load_vectors(out).metadata["labels"] == "shuffled (label seed 0)"
    assert main([*args, "--out", str(tmp_path / "given.safetensors")]) == 0
    assert seen["pairs"] == given
    assert main(["extract", "--method", "distill", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data",
                 data, "--labels", "shuffled", "--out", str(tmp_path / "d.safetensors")]) == 2
