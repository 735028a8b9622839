"""The probe report's null baselines, gradient statistics and generated verdicts, on a tiny LoRA pair."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from conftest import SHORT_PAIRS

from dsteer_eval.probes import measures as probes
from dsteer_eval.probes import gradients, identity
from dsteer_eval.dpo.extract import divergences, first_divergence, pair_states, unique_prompts
from dsteer_eval.dpo.model_pair import ModelPair
from dsteer_eval.data.preference_pairs import PreferencePair
from dsteer_eval.probes.report import HEADLINE_KEYS, POSITIONS, run_probes, write_report
from dsteer_eval.probes.verdicts import CLAIMS, probe_verdicts, statistic_bootstrap

PAIRS = [PreferencePair(**row) for row in SHORT_PAIRS]
PROMPTS = unique_prompts(PAIRS)
LAYER, BETA, MAX_LENGTH = 2, 0.1, 64


@pytest.fixture(scope="module")
def lora_pair(tiny_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("probe_nulls_adapter")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(folder)
    return ModelPair.load(tiny_dir, adapter=str(folder), device="cpu")


@pytest.fixture(scope="module")
def run(lora_pair):
    before = pair_states(lora_pair, PROMPTS)
    start = time.perf_counter()
    report = run_probes(lora_pair, PAIRS, layer=LAYER, alphas=(0.0, 1.0), beta=BETA, grad_pairs=6, batch_size=4,
                        max_length=MAX_LENGTH, random_controls=2, lattice_pairs=3, null_seed=0)
    seconds = time.perf_counter() - start
    print(f"run_probes on the tiny LoRA pair: {seconds:.1f} s")
    return report, before, seconds


def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def test_report_has_every_new_section_with_finite_numbers(run):
    report, _, seconds = run
    assert report["format_version"] == "2" and report["positions"] == POSITIONS
    assert set(report["headline"]) == set(HEADLINE_KEYS)
    for path, value in _walk(report):
        if isinstance(value, float) and not math.isfinite(value):
            assert path.endswith("sigma1_over_sigma2") and value == math.inf, path
    final = report["num_layers"]

    nulls = report["nulls"]
    assert nulls["adapter"]["kind"] == "lora-B row permutation" and nulls["layer"] == LAYER
    assert nulls["consistency"]["position"] == "last_prompt" and -1 <= nulls["consistency"]["cos"]["mean"] <= 1
    assert nulls["projection"]["shift"]["n"] == len(PROMPTS)
    for key in ("uncentred", "centred"):
        assert 0 < nulls["spectra"][key]["top1_energy"] <= 1 and nulls["spectra"][key]["effective_rank"] >= 1
    assert nulls["spectra"]["states"]["spectral_entropy"] > 0
    ident = nulls["steering_identity"]
    assert ident["kl_base_null"] > 0 and ident["restoration_ratio"] == pytest.approx(
        ident["restoration_kl"] / ident["kl_base_null"])
    assert nulls["gradient_coherence"]["pairs"] == 6 and nulls["gradient_coherence"]["loo"]["n"] == 6
    assert nulls["logit_margin"]["pairs"] == report["logit_margin"]["content"]["pairs"]

    rnd = report["controls"]["random_direction"]
    assert rnd["count"] == 2 and rnd["names"] == ["random:0", "random:1"] and rnd["layer"] == LAYER
    assert rnd["steering_identity"]["restoration_ratio"] > 0
    assert report["controls"]["iid"]["d"] == 32

    grad = report["gradient_coherence"]
    for key in ("at_dpo", "relabelled", "at_init"):
        entry = grad[key]
        assert entry["pairs"] == 6 and -1 <= entry["loo"]["mean"] <= 1 and entry["first_divergence"]["pairs"] == 6
        assert "cos_neg_mean_grad_with_v_final" in entry and "cos_mean_grad_with_v_final" not in entry
    assert [r["layer"] for r in grad["at_dpo"]["by_layer"]] == list(range(final + 1))
    assert grad["at_dpo"]["by_layer"][0]["cos_neg_mean_grad_with_v"] is None  # v̄ = 0 at the embeddings
    assert grad["relabelled"]["seed"] == 0 and len(grad["relabelled"]["swapped"]) == 3
    assert grad["at_dpo"]["iid_naive_expectation"] == pytest.approx(1 / math.sqrt(6))

    reads = report["read_positions"]
    assert reads["last_prompt"]["n"] == len(PROMPTS) and reads["last_chosen"]["n"] == len(PAIRS)
    assert reads["last_prompt"]["projection_shift"]["mean"] == pytest.approx(
        report["projection"]["by_layer"][LAYER]["shift"]["mean"], rel=1e-5)

    content = report["logit_margin"]["content"]
    assert content["pairs"] + content["left_out"] == report["logit_margin"]["pairs"]
    assert content["pairs"] >= 1 and content["left_out"] >= 1 and content["shift"]["n"] == content["pairs"]

    grid = report["steering_identity"]["grid"]
    assert [(g["site_name"], g["position"]) for g in grid] == [(str(LAYER), "all"), (str(LAYER), "last"),
                                                                ("final", "all"), ("final", "last")]
    assert grid[0]["restoration_kl"] == pytest.approx(report["steering_identity"]["restoration_kl"])
    # at final only the last position feeds the next-token head: 'all' and 'last' agree exactly
    assert grid[2]["restoration_kl"] == pytest.approx(grid[3]["restoration_kl"], rel=1e-5)
    assert grid[0]["restoration_kl"][0] == grid[0]["kl_base_dpo"]  # α = 0 is the unsteered KL

    for row in report["spectra"][1:]:
        assert "centred" in row and row["effective_rank_dpo_centred"] >= 1
    pca = report["pca_cloud"]
    assert pca["layer"] == LAYER and len(pca["coords"]["base"]) == len(PROMPTS)
    assert pca["centroid_distances"]["base_dpo_minus_v"] == pytest.approx(0, abs=1e-5)  # in-sample v̄
    assert len(report["lattice_field"]["points"]) == 27 and report["lattice_field"]["pairs"] == 3

    assert {v["key"] for v in report["verdicts"]} == {c.key for c in CLAIMS}  # every control was run
    for v in report["verdicts"]:
        assert v["verdict"] in ("supported", "contradicted", "not shown")
        assert v["delta"]["low"] <= v["delta"]["mean"] <= v["delta"]["high"] or v["kind"] == "statistic"
        assert v["position"] in POSITIONS
    statistics = {b["statistic"] for b in report["baselines"]}
    assert any("top-1 energy" in s for s in statistics) and any("restoration" in s for s in statistics)


def test_schema_docstring_names_what_is_written():
    import dsteer_eval.probes.report as module

    doc = module.__doc__
    assert "cos_neg_mean_grad_with_v_final" in doc and "cos_mean_grad_with_v_final" not in doc
    assert 'format_version = "2"' in doc
    for section in ("nulls", "controls", "read_positions", "pca_cloud", "lattice_field", "baselines", "verdicts",
                    "positions", "first_divergence", "by_layer", "grid", "centred"):
        assert section in doc, section


def test_the_null_matches_the_dpo_shift_and_is_removed_afterwards(run, lora_pair):
    report, before, _ = run
    info = report["nulls"]["adapter"]
    assert info["site"] == LAYER
    assert info["null_mean_shift"] == pytest.approx(info["target_mean_shift"], rel=0.01)
    expected = float(before.delta[:, LAYER].norm(dim=-1).mean())
    assert info["target_mean_shift"] == pytest.approx(expected, rel=1e-5)
    assert "null" not in lora_pair.base.peft_config and lora_pair.base.active_adapter == "default"
    after = pair_states(lora_pair, PROMPTS)
    torch.testing.assert_close(after.dpo, before.dpo)


def test_content_rule_leaves_out_whitespace_divergences(lora_pair):
    tok = lora_pair.tokenizer
    found, _ = divergences(tok, PAIRS)
    kept, index = probes.content_divergences(tok, found)
    for i, d in enumerate(found):
        texts = [tok.decode([d.chosen_token]), tok.decode([d.rejected_token])]
        content = all(any(ch.isalnum() for ch in t) for t in texts)
        assert (i in index) == content
    assert not probes.is_content_token(tok, tok.eos_token_id)
    assert 0 < len(kept) < len(found)


def test_per_layer_loo_coherence_equals_a_hand_computation(run, lora_pair):
    """∂L/∂h at one site by detaching the site's output into a leaf, one sequence at a time, no padding."""
    report, _, _ = run
    tok = lora_pair.tokenizer
    site = LAYER
    model = lora_pair.base
    parts = probes.resolve_parts(model)

    def logp_and_leaf(ids, start, keep_leaf):
        leaf = {}

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            leaf["h"] = hidden.detach().requires_grad_(True)
            return (leaf["h"], *output[1:]) if isinstance(output, tuple) else leaf["h"]

        handle = parts.site_module(site).register_forward_hook(hook) if keep_leaf else None
        try:
            with torch.enable_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
                lp = logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
                total = lp[start - 1:].sum()
        finally:
            if handle:
                handle.remove()
        return total, leaf.get("h")

    grads = []
    for p in PAIRS:
        prompt_ids = tok(p.prompt).input_ids
        terms, leaves = [], []
        for reply in (p.chosen, p.rejected):
            ids = tok(p.prompt + reply).input_ids[:MAX_LENGTH]
            start = next((i for i in range(min(len(ids), len(prompt_ids))) if ids[i] != prompt_ids[i]),
                         min(len(ids), len(prompt_ids)))
            with lora_pair.side("base"), torch.no_grad():
                ref, _ = logp_and_leaf(ids, start, False)
            with lora_pair.side("dpo"):
                pol, leaf = logp_and_leaf(ids, start, True)
            terms.append(pol - ref)
            leaves.append(leaf)
        loss = -torch.nn.functional.logsigmoid(BETA * (terms[0] - terms[1]))
        loss.backward()
        grads.append(sum(leaf.grad[0].sum(0) for leaf in leaves).double())
    g = torch.stack(grads)
    n = len(g)
    loo = [float(torch.nn.functional.cosine_similarity(g[i], (g.sum(0) - g[i]) / (n - 1), dim=0)) for i in range(n)]
    row = next(r for r in report["gradient_coherence"]["at_dpo"]["by_layer"] if r["layer"] == site)
    assert row["loo_mean"] == pytest.approx(sum(loo) / n, abs=1e-4)
    v = pair_states(lora_pair, PROMPTS).delta[:, site].mean(0).double()
    expected = float(torch.nn.functional.cosine_similarity(-g.mean(0), v, dim=0))
    assert row["cos_neg_mean_grad_with_v"] == pytest.approx(expected, abs=1e-4)


def test_first_divergence_gradient_is_minus_beta_sigma_delta_e_and_matches_finite_differences(lora_pair):
    beta = 0.5
    final = lora_pair.num_sites - 1
    out = gradients.shift_gradients(lora_pair, PAIRS, beta=beta, sites=[final], max_length=MAX_LENGTH)
    g = out["first_divergence"][final].double()
    assert bool(out["has_divergence"].all())
    with lora_pair.side("dpo") as model:
        w = probes.resolve_parts(model).lm_head.weight.detach().double()
    for i, p in enumerate(PAIRS):
        d = first_divergence(lora_pair.tokenizer, p)
        # ∂L/∂h = ∂L/∂m · (W_U[y_w] − W_U[y_l]),  ∂L/∂m = −β σ(−βm) = −β (1 − e^{−L})
        scale = -beta * (1 - math.exp(-float(out["loss"][i])))
        torch.testing.assert_close(g[i], scale * (w[d.chosen_token] - w[d.rejected_token]), rtol=1e-4, atol=1e-6)

    # finite differences of pair 0's loss along its gradient, shifting only the policy's state at the first
    # divergent position (the reference pass runs the same modules with the adapter off: no hook there)
    p0, d0 = PAIRS[0], first_divergence(lora_pair.tokenizer, PAIRS[0])
    pos = len(d0.prefix) - 1
    direction = (g[0] / g[0].norm()).float()
    ids, attn, target = gradients.reply_batch(lora_pair.tokenizer, [p0], MAX_LENGTH, "cpu")
    with lora_pair.side("base") as model, torch.no_grad():
        ref = gradients.sequence_logps(model(input_ids=ids, attention_mask=attn).logits, ids, target)

    def loss_at(eps):
        def hook(module, args, output):
            output = output.clone()
            output[:, pos] += eps * direction
            return output

        with lora_pair.side("dpo") as model, torch.no_grad():
            handle = probes.resolve_parts(model).final_norm.register_forward_hook(hook)
            try:
                pol = gradients.sequence_logps(model(input_ids=ids, attention_mask=attn).logits, ids, target)
            finally:
                handle.remove()
        ratio = (pol - ref).view(-1, 2)
        return float(-torch.nn.functional.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1]))[0])

    assert loss_at(0.0) == pytest.approx(float(out["loss"][0]), rel=1e-5)
    eps = 1e-2
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert numeric == pytest.approx(float(g[0].norm()), rel=2e-2)


def _planted(rng, n=24, d=16, dpo_wins=True):
    """Numbers where the DPO side beats its controls (or the controls beat it)."""
    u = np.zeros(d)
    u[0] = 1.0
    low_rank = (1 + rng.random(n))[:, None] * u + 0.05 * rng.normal(size=(n, d))
    isotropic = rng.normal(size=(n, d)) * 0.4
    strong, weak = 1.0 + 0.1 * rng.normal(size=n), 0.2 + 0.1 * rng.normal(size=n)
    kl = 1.0 + 0.2 * rng.random(n)
    good, bad = 0.2 * kl, 0.95 * kl
    a, b = (strong, weak) if dpo_wins else (weak, strong)
    numbers = {
        "proj_v": a, "proj_r": b, "proj_null": b, "cos_v": a / 2, "cos_r": b / 2, "cos_null": b / 2,
        "kl_base_dpo": kl, "kl_base_null": kl, "kl_dpo_base": kl, "kl_null_base": kl,
        "kl_restored": good if dpo_wins else bad, "kl_restored_null": bad if dpo_wins else good,
        "kl_restored_random": bad if dpo_wins else good,
        "kl_reproduced": good if dpo_wins else bad, "kl_reproduced_null": bad if dpo_wins else good,
        "grad_loo": a / 2, "grad_loo_relabelled": b / 2, "grad_loo_null": b / 2,
        "grad_loo_fd": a / 2, "grad_loo_fd_relabelled": b / 2,
        "margin_shift": a - 0.6, "margin_shift_null": b - 0.6,
        "delta": low_rank if dpo_wins else isotropic, "delta_null": isotropic if dpo_wins else low_rank,
    }
    return numbers


def test_planted_numbers_flip_every_verdict():
    rng = np.random.default_rng(0)
    win = {v["key"]: v for v in probe_verdicts(_planted(rng), sites={"layer": 3, "final": 4})}
    lose = {v["key"]: v for v in probe_verdicts(_planted(rng, dpo_wins=False), sites={"layer": 3, "final": 4})}
    assert set(win) == set(lose) == {c.key for c in CLAIMS}
    for key in win:
        assert win[key]["verdict"] == "supported", key
        assert lose[key]["verdict"] == "contradicted", key
    assert win["top1_energy_vs_null"]["layer"] == 3 and win["coherence_vs_null"]["layer"] == 4
    # equal numbers on both sides: nothing is shown
    same = _planted(rng)
    same.update({"proj_r": same["proj_v"], "delta_null": same["delta"], "kl_restored_null": same["kl_restored"]})
    flat = {v["key"]: v for v in probe_verdicts(same)}
    for key in ("projection_vs_random", "top1_energy_vs_null", "restoration_vs_null"):
        assert flat[key]["verdict"] == "not shown" and flat[key]["delta"]["mean"] == 0.0
    # a claim whose numbers are missing is left out, not guessed
    partial = _planted(rng)
    del partial["proj_null"], partial["delta_null"]
    keys = {v["key"] for v in probe_verdicts(partial)}
    assert "projection_vs_null" not in keys and "top1_energy_vs_null" not in keys and "projection_vs_random" in keys
    # non-finite items are dropped and counted
    bad = _planted(rng)
    bad["proj_v"] = bad["proj_v"].copy()
    bad["proj_v"][0] = np.nan
    row = next(v for v in probe_verdicts(bad) if v["key"] == "projection_vs_random")
    assert row["dropped"] == 1 and row["n"] == 23


def test_statistic_bootstrap_point_estimates_equal_the_spectra_module():
    from dsteer_eval.probes.verdicts import _stat_fn
    from dsteer_eval.probes.spectra import spectrum

    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(12, 8)) + 2.0, rng.normal(size=(12, 8))
    claim = next(c for c in CLAIMS if c.key == "top1_energy_centred_vs_null")
    fx, fy = _stat_fn(claim, {"delta": m1, "delta_null": m2}, ("delta",)), _stat_fn(
        claim, {"delta": m1, "delta_null": m2}, ("delta_null",))
    delta, x, y = statistic_bootstrap(fx, fy, 12)
    assert x == pytest.approx(spectrum(torch.tensor(m1), centred=True)["top1_energy"], rel=1e-9)
    assert y == pytest.approx(spectrum(torch.tensor(m2), centred=True)["top1_energy"], rel=1e-9)
    assert delta.mean == pytest.approx(x - y) and delta.low <= delta.high and delta.n == 12
    # a resample's statistic equals the spectrum of the resampled rows
    idx = np.array([[0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]])
    assert float(fx(idx)[0]) == pytest.approx(spectrum(torch.tensor(m1[idx[0]]), centred=True)["top1_energy"],
                                              rel=1e-6)


def test_write_report_writes_verdicts_md_and_the_new_figures(run, tmp_path):
    report, _, _ = run
    out = tmp_path / "probe"
    path = write_report(report, out)
    data = json.loads(path.read_text())
    assert data["format_version"] == "2" and data["verdicts"]
    assert {"pca_cloud.png", "lattice_field.png", "consistency_hist.png"} <= set(data["figures"])
    for name in data["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "verdicts.md").read_text()
    assert f"probe layer: {LAYER}" in md and "null adapter: lora-B row permutation" in md
    assert "| claim | effect | control | Δ [95% CI] | verdict |" in md
    for v in report["verdicts"]:
        assert v["claim"] in md and f"**{v['verdict']}**" in md
    for key in ("last_prompt", "first_divergence_content", "all"):
        assert f"`{key}`" in md
    assert "Headline statistics beside their baselines" in md and "\\|cos(u1, v̄)\\|" in md


def test_cli_probe_flags(tiny_dir, tiny_adapter_dir, short_pairs_file, tmp_path, capsys):
    from dsteer_eval.cli import main

    out = tmp_path / "probe"
    assert main(["probe", "--pretrained", tiny_dir, "--peft", tiny_adapter_dir, "--data", short_pairs_file,
                 "--alphas", "0,1", "--grad-pairs", "3", "--max-length", "64", "--no-nulls", "--random-controls", "0",
                 "--lattice-pairs", "0", "--no-figures", "--out", str(out)]) == 0
    report = json.loads((out / "probe_report.json").read_text())
    assert report["nulls"] is None and "random_direction" not in report["controls"]
    assert report["lattice_field"] is None
    keys = {v["key"] for v in report["verdicts"]}
    assert keys and not any(k.endswith(("_null", "_random")) for k in keys)
    assert "null adapter: not run" in (out / "verdicts.md").read_text()
    assert main(["probe", "--pretrained", tiny_dir, "--data", short_pairs_file, "--lattice-pairs", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--lattice-pairs -1: must be 0 or more" in capsys.readouterr().err


def test_ablation_restoration_in_the_report(run, lora_pair):
    """mode=ablate in the probes: α = 0 leaves the DPO model as is, and each KL equals a direct computation."""
    from dsteer_eval.steering.hook import Intervention

    report, _, _ = run
    ablation = report["steering_identity"]["ablation"]
    assert ablation["mode"] == "ablate" and ablation["alphas"] == [0.0, 1.0] and ablation["layer"] == LAYER
    assert ablation["restoration_kl"][0] == pytest.approx(ablation["kl_base_dpo"], rel=1e-6)
    prompts = list(dict.fromkeys(p.prompt for p in PAIRS))
    from dsteer_eval.dpo.extract import dpo_diff

    v = dpo_diff(lora_pair, prompts)[LAYER]
    logp = identity.side_logprobs(lora_pair, prompts)
    with lora_pair.side("dpo") as model:
        got = identity.next_token_logprobs(model, lora_pair.tokenizer, prompts,
                                         interventions=[Intervention(LAYER, v, 1.0, mode="ablate")])
    assert ablation["restoration_kl"][1] == pytest.approx(float(identity.kl(logp["base"], got).mean()), rel=1e-4)


def test_norm_preserving_identity_in_the_report(run, lora_pair):
    """norm_preserve=true in the probes: α = 0 is the unsteered KL, and each value equals a direct computation."""
    from dsteer_eval.dpo.extract import dpo_diff
    from dsteer_eval.steering.hook import Intervention

    report, _, _ = run
    kept = report["steering_identity"]["norm_preserve"]
    assert kept["norm_preserve"] and kept["alphas"] == [0.0, 1.0]
    assert kept["restoration_kl"][0] == pytest.approx(kept["kl_base_dpo"], rel=1e-6)
    prompts = list(dict.fromkeys(p.prompt for p in PAIRS))
    v = dpo_diff(lora_pair, prompts)[LAYER]
    logp = identity.side_logprobs(lora_pair, prompts)
    with lora_pair.side("dpo") as model:
        got = identity.next_token_logprobs(model, lora_pair.tokenizer, prompts, norm_preserve=True,
                                         interventions=[Intervention(LAYER, v, -1.0)])
    assert kept["restoration_kl"][1] == pytest.approx(float(identity.kl(logp["base"], got).mean()), rel=1e-4)
