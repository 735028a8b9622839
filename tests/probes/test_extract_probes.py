"""dpo-diff / preference extraction and the probes, on a tiny random Llama, against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SHORT_PAIRS, write_jsonl

from dsteer_eval.probes import measures as probes
from dsteer_eval.probes import gradients, identity
from dsteer_eval.dpo.extract import PairStates, dpo_diff, first_divergence, pair_states, preference, unique_prompts
from dsteer_eval.dpo.model_pair import ModelPair, ModelPairError
from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.probes.spectra import spectrum

PAIRS = [PreferencePair(**row) for row in SHORT_PAIRS]
PROMPTS = unique_prompts(PAIRS)


def _hand_last_states(model, tok, prompts):
    """One prompt at a time, no padding, transformers' own output_hidden_states."""
    rows = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p).input_ids])
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            rows.append(torch.stack([h[0, -1] for h in hs]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def checkpoint_pair(tiny_dir, tiny_dpo_dir):
    return ModelPair.load(tiny_dir, dpo=tiny_dpo_dir, device="cpu")


@pytest.fixture(scope="module")
def adapter_pair(tiny_dir, tiny_adapter_dir):
    return ModelPair.load(tiny_dir, adapter=tiny_adapter_dir, device="cpu")


def test_dpo_diff_two_checkpoints_equals_hand_computation(checkpoint_pair):
    pair = checkpoint_pair
    hand = _hand_last_states(pair.dpo, pair.tokenizer, PROMPTS) - _hand_last_states(pair.base, pair.tokenizer, PROMPTS)
    v = dpo_diff(pair, PROMPTS, batch_size=4)  # batches of 4 and 2, right padding
    assert sorted(v) == list(range(5))
    for site in range(5):
        torch.testing.assert_close(v[site], hand[:, site].mean(0), atol=1e-5, rtol=1e-5)
    assert float(v[4].norm()) > 1e-3  # the pair really differs


def test_dpo_diff_adapter_toggle_equals_merged_model(tiny_dir, tiny_adapter_dir, adapter_pair):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert adapter_pair.uses_adapter and adapter_pair.dpo is None  # one model in memory
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), tiny_adapter_dir
    ).merge_and_unload().eval()
    tok = adapter_pair.tokenizer
    hand = _hand_last_states(merged, tok, PROMPTS) - _hand_last_states(base, tok, PROMPTS)
    v = dpo_diff(adapter_pair, PROMPTS, batch_size=3)
    assert float(v[0].norm()) == 0.0  # a LoRA on linear layers leaves the embeddings alone
    for site in range(1, 5):
        torch.testing.assert_close(v[site], hand[:, site].mean(0), atol=1e-4, rtol=1e-4)
    # The adapter is active again after the base pass.
    states = pair_states(adapter_pair, PROMPTS[:2])
    assert not torch.equal(states.base, states.dpo)


def test_preference_vector_equals_hand_computation(tiny):
    model, tok = tiny
    v, used = preference(model, tok, PAIRS)
    assert list(v) == [4] and used == len(PAIRS)
    w = model.lm_head.weight.detach()
    rows = []
    for p in PAIRS:
        a, b = tok(p.prompt + p.chosen).input_ids, tok(p.prompt + p.rejected).input_ids
        k = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
        rows.append(w[a[k]] - w[b[k]])
    torch.testing.assert_close(v[4], torch.stack(rows).mean(0))


def test_first_divergence_uses_eos_when_a_reply_is_a_prefix(tiny):
    _, tok = tiny
    d = first_divergence(tok, PreferencePair("\n\nHuman: hi\n\nAssistant:", " Paris", " Paris is big"))
    assert d.chosen_token == tok.eos_token_id and d.rejected_token != tok.eos_token_id
    assert first_divergence(tok, PreferencePair("p", " same", " same")) is None


def test_logit_margin_is_the_logit_difference(checkpoint_pair):
    from dsteer_eval.dpo.extract import divergences

    found, missing = divergences(checkpoint_pair.tokenizer, PAIRS)
    assert missing == 0
    margins = probes.logit_margins(checkpoint_pair, found, batch_size=4)
    for which, model in (("base", checkpoint_pair.base), ("dpo", checkpoint_pair.dpo)):
        for i, d in enumerate(found):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([list(d.prefix)])).logits[0, -1]
            expected = float(logits[d.chosen_token] - logits[d.rejected_token])
            assert float(margins[which][i]) == pytest.approx(expected, abs=1e-4)
    torch.testing.assert_close(margins["shift"], margins["dpo"] - margins["base"])


def test_spectrum_equals_numpy():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(40, 12))
    direction = rng.normal(size=12)
    got = spectrum(torch.tensor(m), direction=torch.tensor(direction))
    _, s, vh = np.linalg.svd(m, full_matrices=False)
    p = s**2 / (s**2).sum()
    entropy = -(p * np.log(p)).sum()
    np.testing.assert_allclose(got["singular_values"], s, rtol=1e-12)
    assert got["sigma1_over_sigma2"] == pytest.approx(s[0] / s[1], rel=1e-12)
    assert got["top1_energy"] == pytest.approx(p[0], rel=1e-12)
    assert got["spectral_entropy"] == pytest.approx(entropy, rel=1e-12)
    q = s / s.sum()  # Roy & Vetterli: shares of the singular values themselves
    assert got["effective_rank"] == pytest.approx(math.exp(-(q * np.log(q)).sum()), rel=1e-12)
    assert got["abs_cos_u1"] == pytest.approx(abs(vh[0] @ direction) / np.linalg.norm(direction), rel=1e-10)


def test_centred_spectrum_removes_the_mean_row():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(30, 8)) + 5.0  # a large shared shift
    centred = spectrum(torch.tensor(m), centred=True)
    s = np.linalg.svd(m - m.mean(axis=0), compute_uv=False)
    np.testing.assert_allclose(centred["singular_values"], s, rtol=1e-12)
    assert spectrum(torch.tensor(m))["top1_energy"] > 0.9 > centred["top1_energy"]
    assert spectrum(torch.tensor(np.ones((4, 4))))["effective_rank"] == pytest.approx(1.0)
    assert spectrum(torch.tensor(np.eye(4)))["effective_rank"] == pytest.approx(4.0)


def test_planted_rank_one_update_is_found_and_random_is_not():
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 64
    u = torch.randn(d, generator=gen)
    u /= u.norm()
    c = 1.0 + torch.rand(n, generator=gen)
    planted = c[:, None] * u + 0.01 * torch.randn(n, d, generator=gen)
    random = torch.randn(n, d, generator=gen)
    base = torch.randn(n, 2, d, generator=gen)
    for delta, low_rank in ((planted, True), (random, False)):
        states = PairStates(["x"] * n, base, base + torch.stack([delta, delta], 1))
        row = probes.layer_spectra(states, {1: u})[1]
        if low_rank:
            assert row["sigma1_over_sigma2"] > 50
            assert row["abs_cos_u1"] > 0.999
            # σ shares weigh the 63 small noise directions more than σ² shares would
            assert row["top1_energy"] > 0.99 and row["effective_rank"] < 8
        else:
            assert row["sigma1_over_sigma2"] < 1.5
            assert row["abs_cos_u1"] < 0.5
            assert row["effective_rank"] > 30


def test_exact_per_prompt_shift_at_final_restores_the_base(checkpoint_pair):
    pair = checkpoint_pair
    states = pair_states(pair, PROMPTS)
    final = 4
    delta = states.delta[:, final]
    base_lp = identity.next_token_logprobs(pair.base, pair.tokenizer, PROMPTS, batch_size=4)
    dpo_lp = identity.next_token_logprobs(pair.dpo, pair.tokenizer, PROMPTS, batch_size=4)
    norm = pair.dpo.model.norm
    restored = identity.next_token_logprobs(
        pair.dpo, pair.tokenizer, PROMPTS, batch_size=4,
        module_edits=[(norm, lambda h, rows: h - delta[rows][:, None, :].to(h))],
    )
    unsteered = float(identity.kl(base_lp, dpo_lp).min())
    assert unsteered > 1e-5
    assert float(identity.kl(base_lp, restored).max()) < 1e-3 * unsteered
    # With the mean shift instead, restoration is partial and alpha=0 is the unsteered KL exactly.
    ident = identity.steering_identity(pair, PROMPTS, delta.mean(0), final, [0.0, 1.0], batch_size=4)
    assert ident["restoration_kl"][0] == ident["kl_base_dpo"]
    assert ident["reproduction_kl"][0] == ident["kl_dpo_base"]
    assert 0 < ident["restoration_kl"][1] < ident["kl_base_dpo"]


def test_gradient_coherence_matches_finite_differences(checkpoint_pair):
    pair = checkpoint_pair
    at_init = gradients.gradient_coherence(pair, PAIRS[:3], beta=0.5, policy="base")
    torch.testing.assert_close(at_init["loss"], torch.full((3,), math.log(2.0)))  # policy == reference
    g = gradients.gradient_coherence(pair, PAIRS, beta=0.5, policy="dpo", batch_size=4)
    one_by_one = torch.cat([gradients.gradient_coherence(pair, [p], beta=0.5)["grads"] for p in PAIRS])
    torch.testing.assert_close(g["grads"], one_by_one, atol=1e-5, rtol=1e-4)  # no leakage across the batch

    # Finite differences of the pair-0 loss along its gradient direction, by a hook of our own.
    p0 = PAIRS[0]
    direction = g["grads"][0] / g["grads"][0].norm()

    def loss_at(eps):
        shift = eps * direction
        handles = [m.model.norm.register_forward_hook(lambda mod, a, o: o + shift) for m in (pair.dpo,)]
        try:
            return float(gradients.gradient_coherence(pair, [p0], beta=0.5)["loss"][0])
        finally:
            for h in handles:
                h.remove()

    eps = 1e-2
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert numeric == pytest.approx(float(g["grads"][0].norm()), rel=2e-2)
    cos = g["cos"]
    torch.testing.assert_close(cos, probes.cosines(g["grads"], g["grads"].mean(0)))


def test_model_pair_rejects_mismatches(tiny_dir, tmp_path):
    from conftest import build_tiny_llama
    from transformers import AutoTokenizer

    wider = tmp_path / "wider"
    build_tiny_llama(wider, hidden=48)
    with pytest.raises(ModelPairError, match="different architectures .*hidden_size: 32 vs 48"):
        ModelPair.load(tiny_dir, dpo=str(wider))
    other_tok = tmp_path / "other_tok"
    build_tiny_llama(other_tok)
    tok = AutoTokenizer.from_pretrained(other_tok)
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(other_tok)
    with pytest.raises(ModelPairError, match="different tokenizers"):
        ModelPair.load(tiny_dir, dpo=str(other_tok))
    with pytest.raises(ModelPairError, match="no adapter_config.json"):
        ModelPair.load(tiny_dir, adapter=str(other_tok))
    with pytest.raises(ModelPairError, match="either as dpo=.* or as adapter="):
        ModelPair.load(tiny_dir)


def test_adapter_of_another_model_is_refused(tiny_dir, tmp_path):
    from conftest import build_tiny_llama
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    wider = tmp_path / "wider"
    build_tiny_llama(wider, hidden=48)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(wider),
                                LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "ad")
    with pytest.raises(ModelPairError, match="does not fit the base model"):
        ModelPair.load(tiny_dir, adapter=str(tmp_path / "ad"))


def test_cli_extract_and_probe_end_to_end(tiny_dir, tiny_adapter_dir, short_pairs_file, tmp_path, capsys):
    from dsteer_eval.cli import main
    from dsteer_eval.vectors import load_vectors

    vec = tmp_path / "v.safetensors"
    assert main(["extract", "--method", "dpo-diff", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir,
                 "--data", short_pairs_file, "--default-layer", "-2", "--batch-size", "4", "--out", str(vec)]) == 0
    vf = load_vectors(vec)
    assert vf.metadata["method"] == "dpo-diff" and vf.metadata["default_layer"] == "3"
    assert vf.metadata["n_examples"] == "6" and vf.metadata["dpo_is_adapter"] == "true"
    again = tmp_path / "again.safetensors"
    main(["extract", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", short_pairs_file,
          "--default-layer", "-2", "--batch-size", "4", "--out", str(again)])
    assert all(torch.equal(load_vectors(again).vectors[s], vf.vectors[s]) for s in vf.vectors)  # deterministic

    out = tmp_path / "probe"
    assert main(["probe", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", short_pairs_file,
                 "--vector", str(vec), "--alphas", "0,1,2", "--grad-pairs", "4", "--out", str(out)]) == 0
    report = json.loads((out / "probe_report.json").read_text())
    assert report["format"] == "dsteer-eval/probe-report" and report["layer"] == 3
    assert report["steering_identity"]["alphas"] == [0.0, 1.0, 2.0]
    assert len(report["spectra"]) == 5 and report["data"]["prompts"] == 6 and report["data"]["pairs"] == 18
    assert report["gradient_coherence"]["at_dpo"]["pairs"] == 4
    assert set(report["figures"]) == {"consistency_hist.png", "spectra_by_layer.png", "singular_values.png",
                                      "steering_identity.png", "projection_by_layer.png", "pca_cloud.png",
                                      "lattice_field.png"}
    assert report["format_version"] == "2" and report["verdicts"] and (out / "verdicts.md").is_file()
    for name in report["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["headline"]) >= {"projection_frac_rose", "restoration_best_ratio", "delta_sigma1_over_sigma2"}
    # An existing report is not overwritten without --overwrite.
    assert main(["probe", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", short_pairs_file,
                 "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["extract", "--method", "dpo-diff", "--data", "{empty}"], "holds no usable pairs"),
        (["extract", "--method", "dpo-diff", "--data", "{different}"], "different prompts"),
        (["probe", "--data", "{empty}"], "holds no usable pairs"),
        (["probe", "--alphas", "0,nan"], "must be a finite number"),
        (["extract", "--method", "dpo-diff", "--pretrained", "{tiny}", "--dpo", "{tiny}", "--peft", "x"],
         "not both"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tiny_dir, tmp_path, capsys, argv, message):
    from dsteer_eval.cli import main

    files = {
        "{empty}": write_jsonl(tmp_path / "empty.jsonl", []),
        "{different}": write_jsonl(tmp_path / "diff.jsonl", [
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: other\n\nAssistant: c"}]),
        "{tiny}": tiny_dir,
    }
    out = tmp_path / "out"
    argv = [files.get(a, a) for a in argv] + ["--out", str(out)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_dpo_diff_reads_prompt_only_files(tiny_dir, tiny_adapter_dir, tmp_path):
    from dsteer_eval.cli import main
    from dsteer_eval.vectors import load_vectors

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS] + [{"prompt": PROMPTS[0]}])
    out = tmp_path / "v.safetensors"
    assert main(["extract", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", prompts,
                 "--batch-size", "4", "--out", str(out)]) == 0
    vf = load_vectors(out)
    assert vf.metadata["n_examples"] == str(len(PROMPTS))  # the repeated prompt counts once
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": ""}])
    assert main(["extract", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", bad,
                 "--out", str(tmp_path / "w.safetensors")]) == 2
    assert not (tmp_path / "w.safetensors").exists()


def test_missing_local_folders_are_named_but_hub_ids_are_not_taken_for_folders(tiny_dir, tmp_path):
    from dsteer_eval.dpo.model_pair import _looks_local

    with pytest.raises(FileNotFoundError, match=r"dpo=.*nope: no such folder"):
        ModelPair.load(tiny_dir, dpo=str(tmp_path / "nope"))
    assert _looks_local("./x") and _looks_local(str(tmp_path)) and _looks_local("a/b/c")
    assert not _looks_local("gpt2") and not _looks_local("smollm2") and not _looks_local("org/name")
