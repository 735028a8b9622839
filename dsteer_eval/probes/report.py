"""Run every D-STEER probe on a base/DPO pair, with its null baselines, and write one JSON report,
``verdicts.md`` and PNG figures.

Report schema (``format = "dsteer-eval/probe-report"``, ``format_version = "2"``). ``layer`` is the probe
site L; ``final`` is site n (the post-norm state the head reads). Every section names the position
its numbers were read at, as a key of ``positions``::

    positions     {last_prompt, last_chosen, first_divergence, first_divergence_content, all, last}:
                  what each position name means (see POSITIONS)
    models        {base, dpo, adapter: bool}
    data          {source, prompts, pairs, pairs_without_divergence, skipped}
    vector        {source, method, in_sample: bool, final_source}   where v̄ (and v̄ at final) came from
    layer         L, the site of consistency, projection at_layer, spectra verdicts, the null's matching
    num_layers    n
    headline      flat numbers for leaderboards (see HEADLINE_KEYS)
    projection    {position: last_prompt, by_layer: [{layer, base, dpo, shift: summary, frac_rose}]}
    read_positions {layer: L, last_prompt: {position, items: prompts, n, projection_shift, frac_rose,
                    consistency_cos, frac_above_0_5},
                    last_chosen: {... over pairs, + cos_mean_delta_with_v (cos(mean δ there, v̄_L)),
                                  self_consistency_cos (cos(δᵢ, mean δ there))}}
    logit_margin  {position: first_divergence, site: final, pairs, base, dpo, shift: summary, frac_rose,
                   content: {position: first_divergence_content, rule, pairs, left_out, base, dpo, shift,
                             frac_rose}}
    consistency   {layer: L, position: last_prompt, cos: summary, frac_above_0_5, histogram {edges, counts},
                   values, by_layer: [{layer, mean, median, frac_above_0_5}]}
    gradient_coherence {beta, pairs, skipped_prompt_too_long, positions,
                   at_dpo, relabelled, at_init: COHERENCE (π = DPO; DPO with chosen/rejected swapped on a
                   seeded half (+ seed, swapped); π = π_ref, no by_layer)}
        COHERENCE = {position: all, pairs, skipped_prompt_too_long, loss_mean,
                     cos: summary (naive cos(gᵢ, ḡ)), frac_above_0_5, loo: summary (cos(gᵢ, ḡ₋ᵢ)),
                     loo_frac_above_0_5, iid_naive_expectation (1/√N), iid_loo_expectation (0),
                     grad_norm_mean, cos_neg_mean_grad_with_v_final (cos(−ḡ, v̄_final)),
                     first_divergence: {position: first_divergence, pairs, without_divergence, the same
                                        statistics, cos_neg_mean_grad_with_v_final},
                     by_layer: [{layer, loo_mean, cos_mean, cos_neg_mean_grad_with_v, grad_norm_mean}]}
                   (g at sequence level = Σ_t ∂Lᵢ/∂h_t over every position of both sequences, final site
                   unless by_layer; see probes.shift_gradients)
    spectra       [{layer, position: last_prompt, singular_values (top 16), sigma1_over_sigma2, top1_energy,
                    spectral_entropy, effective_rank, abs_cos_u1  (ΔH uncentred),
                    centred: {the same for ΔH minus its mean row},
                    spectral_entropy_base, effective_rank_base, spectral_entropy_base_centred,
                    effective_rank_base_centred, and the same for _dpo}]
                  (spectral entropy over σ² shares; effective rank = Roy & Vetterli, exp of the entropy of
                   the σ shares; see dsteer_eval.probes.spectra)
    steering_identity {layer: L, position: all, alphas, kl_base_dpo, kl_dpo_base, restoration_kl,
                       reproduction_kl, best_restoration {alpha, kl, ratio}, best_reproduction,
                       alpha_1: {restoration_kl, restoration_ratio, reproduction_kl, reproduction_ratio},
                       grid: [{layer, site_name (L | final), position (all | last), the same keys}],
                       ablation: {layer: L, position: all, mode: ablate, alphas (>= 0), kl_base_dpo,
                                  restoration_kl: KL(base ‖ dpo with v̂ ablated at α), best_restoration},
                       norm_preserve: {layer: L, position: all, norm_preserve: true, alphas, kl_base_dpo,
                                       kl_dpo_base, restoration_kl, reproduction_kl (each steered state
                                       rescaled to its own norm)}}
    controls      {random_direction: {count, seed, layer: L, norm, names,
                                      projection {position: last_prompt, shift, frac_rose},
                                      consistency {position: last_prompt, cos, frac_above_0_5},
                                      steering_identity {layer, position: all, alpha: 1, restoration_kl,
                                                         restoration_ratio, reproduction_kl, reproduction_ratio}},
                   iid: analytic expectations for structureless data (probe_nulls.iid_expectations)}
    nulls         {adapter: {kind, seed, scale, site, target_mean_shift, null_mean_shift, evaluations},
                   layer: L, vector {source, norm}, consistency (as DPO's, position last_prompt),
                   projection {position, shift, frac_rose} (along the null's own v̂_null),
                   spectra {layer, position, uncentred, centred, states {spectral_entropy, effective_rank,
                            ..._centred} of H_null},
                   steering_identity {layer, position: all, alpha: 1, kl_base_null, restoration_kl,
                                      restoration_ratio, kl_null_base, reproduction_kl, reproduction_ratio},
                   gradient_coherence COHERENCE (π = null), logit_margin {position, pairs, shift, frac_rose}}
                  or {error} when no null could be built, or null with nulls=False
    pca_cloud     {layer: L, position: last_prompt, components, explained_variance_ratio, coords,
                   centroid_distances {base_dpo, base_dpo_minus_v, dpo_base_plus_v}}   (Fig 1(c))
    lattice_field {layer: final, position: all, ... dsteer_eval.probes.lattice_field} or {skipped}   (Fig 1(b))
    baselines     [{statistic, layer, position, dpo, null, random, relabelled, iid, iid_formula}]
    verdicts      [{claim, effect, control, delta (paired CI), expect, verdict, note, key, statistic,
                    layer, site, position, paired_over, n, dropped, kind}]   (dsteer_eval.probes.verdicts)
    figures       PNG file names next to the report
    provenance    how the report was made (dsteer_eval.common.provenance): version, git commit, command, the
                  sha256 of the pairs and vector files, the models' fingerprints, the null seed

A ``summary`` is {n, mean, stderr, median, std, q10, q90, frac_positive}.
Unit conventions: projections use v̂ = v̄/|v̄|; KL in nats; entropies in nats.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from dsteer_eval.probes import nulls as probe_nulls
from dsteer_eval.probes import measures as probes
from dsteer_eval.dpo.extract import divergences, last_token_states, pair_states, unique_prompts

log = logging.getLogger(__name__)

REPORT_NAME = "probe_report.json"
VERDICTS_NAME = "verdicts.md"
FORMAT = "dsteer-eval/probe-report"
FORMAT_VERSION = "2"
POSITIONS = {
    "last_prompt": "last prompt token (its state predicts the first reply token)",
    "last_chosen": "last token of prompt + chosen reply",
    "first_divergence": "last token shared by prompt+chosen and prompt+rejected (its state predicts the first "
                        "divergent token)",
    "first_divergence_content": "first_divergence, pairs whose two divergent tokens are content tokens only",
    "all": "every position (steering: v added to every token; gradients: one shift at every token)",
    "last": "last prompt token only (steering)",
}
HEADLINE_KEYS = (
    "projection_shift_mean", "projection_frac_rose", "logit_margin_shift_mean", "logit_margin_frac_rose",
    "logit_margin_content_shift_mean", "consistency_cos_mean", "consistency_frac_above_0_5",
    "grad_coherence_cos_mean", "grad_coherence_loo_mean", "grad_coherence_relabelled_loo_mean",
    "grad_coherence_first_divergence_loo_mean",
    "delta_sigma1_over_sigma2", "delta_top1_energy", "delta_abs_cos_u1",
    "kl_base_dpo", "restoration_best_ratio", "reproduction_best_ratio", "restoration_ratio_alpha_1",
    "reproduction_ratio_alpha_1",
    "random_projection_shift_mean", "random_consistency_cos_mean", "random_restoration_ratio",
    "null_projection_shift_mean", "null_consistency_cos_mean", "null_delta_top1_energy",
    "null_restoration_ratio", "null_reproduction_ratio", "null_grad_coherence_loo_mean",
    "verdicts_supported", "verdicts_total",
)


def _best(alphas, values, reference):
    i = min(range(len(values)), key=values.__getitem__)
    return {"alpha": alphas[i], "kl": values[i], "ratio": values[i] / reference if reference > 0 else None}


def _ratio(a, b):
    return a / b if b else None


def _get(d, *path):
    """d[path[0]][path[1]]..., or None where a step is missing."""
    for key in path:
        if d is None:
            return None
        d = d[key] if isinstance(d, list) and isinstance(key, int) else (d.get(key) if isinstance(d, dict) else None)
    return d


def _read_positions(pair, pairs, states, layer: int, v: torch.Tensor, batch_size: int) -> dict:
    """Projection and consistency at the probe layer at two read positions (see POSITIONS)."""
    u = v.double() / v.double().norm()
    delta_p = states.delta[:, layer]
    h = {}
    texts = [p.prompt + p.chosen for p in pairs]
    for which in ("base", "dpo"):
        with pair.side(which) as model:
            h[which] = last_token_states(model, pair.tokenizer, texts, batch_size=batch_size,
                                         desc=f"{which} (chosen)")[:, layer]
    delta_c = h["dpo"] - h["base"]
    out = {"layer": layer}
    for name, delta, items in (("last_prompt", delta_p, "prompts"), ("last_chosen", delta_c, "pairs")):
        proj = delta.double() @ u
        cos = probes.cosines(delta, v)
        out[name] = {"position": name, "items": items, "n": len(delta), "projection_shift": probes.summary(proj),
                     "frac_rose": float((proj > 0).double().mean()), "consistency_cos": probes.summary(cos),
                     "frac_above_0_5": float((cos > 0.5).double().mean())}
    mean_c = delta_c.mean(0)
    out["last_chosen"]["cos_mean_delta_with_v"] = float(probes.cosines(mean_c[None], v)[0]) if mean_c.norm() > 0 else None
    out["last_chosen"]["self_consistency_cos"] = (probes.summary(probes.cosines(delta_c, mean_c))
                                                  if mean_c.norm() > 0 else None)
    return out


def _margin_entry(margins: dict, position: str) -> dict:
    return {"position": position, "site": "final", "pairs": len(margins["shift"]),
            "base": probes.summary(margins["base"]), "dpo": probes.summary(margins["dpo"]),
            "shift": probes.summary(margins["shift"]),
            "frac_rose": float((margins["shift"] > 0).double().mean())}


def run_probes(pair, pairs, *, vectors: dict[int, torch.Tensor] | None = None, vector_info: dict | None = None,
               layer: int | None = None, alphas: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
               beta: float = 0.1, grad_pairs: int = 64, batch_size: int = 8, max_length: int = 256,
               data_info: dict | None = None, nulls: bool = True, null_seed: int = 0, random_controls: int = 1,
               lattice_pairs: int = 8, n_resamples: int = 2000) -> dict:
    """All probes and their baselines; ``vectors`` (site → v̄) default to the in-sample mean δ over the
    same prompts.

    ``nulls``: run the null adapter (matched at ``layer``, seeded by ``null_seed``); ``random_controls``:
    how many norm-matched random directions (0: none; their seed is ``null_seed`` too);
    ``lattice_pairs``: pairs for the Fig 1(b) lattice field (0: skip it); ``n_resamples``: bootstrap
    resamples of every verdict's CI. The relabelled gradient baseline swaps a half chosen by ``null_seed``.
    """
    from dsteer_eval.probes.coherence import relabel
    from dsteer_eval.probes.pca_cloud import pca_cloud
    from dsteer_eval.probes.verdicts import probe_verdicts

    prompts = unique_prompts(pairs)
    states = pair_states(pair, prompts, batch_size=batch_size)
    n_sites = states.base.shape[1]
    in_sample = vectors is None
    if in_sample:
        mean = states.delta.mean(0)
        vectors = {s: mean[s] for s in range(n_sites)}
        vector_info = {"source": "in-sample mean of δ over the probe prompts", "method": "dpo-diff"}
    if layer is None:
        layer = max(vectors) if len(vectors) == 1 else (2 * (n_sites - 1)) // 3
    if layer not in vectors:
        raise ValueError(f"layer={layer}: the vector file has no vector for that layer (it has {sorted(vectors)})")
    if float(vectors[layer].norm()) == 0.0:
        raise ValueError(f"layer={layer}: v-bar is zero there (the DPO update does not reach it); pick another layer")
    final = n_sites - 1
    v = vectors[layer].float()
    if final in vectors and float(vectors[final].norm()) > 0:
        v_final, final_source = vectors[final].float(), "the vector file" if not in_sample else "in-sample"
    else:
        v_final, final_source = states.delta[:, final].mean(0), "in-sample mean of δ at final (not in the vector file)"
    delta = states.delta[:, layer]
    numbers: dict = {"delta": delta, "proj_v": delta.double() @ (v.double() / v.double().norm()),
                     "cos_v": probes.cosines(delta, v)}

    projection = probes.projection_margins(states, vectors)
    found, no_divergence = divergences(pair.tokenizer, pairs)
    margins = probes.logit_margins(pair, found, batch_size=batch_size)
    content, _ = probes.content_divergences(pair.tokenizer, found)
    logit_margin = _margin_entry(margins, "first_divergence")
    logit_margin["content"] = {"position": "first_divergence_content", "rule": probes.CONTENT_RULE,
                               "pairs": len(content), "left_out": len(found) - len(content)}
    if content:
        margins_content = probes.logit_margins(pair, content, batch_size=batch_size)
        logit_margin["content"].update({k: x for k, x in _margin_entry(margins_content, "first_divergence_content")
                                        .items() if k != "pairs"})
        numbers["margin_shift"] = margins_content["shift"]

    consistency = probes.directional_consistency(delta, v)
    consistency["layer"] = layer
    consistency["position"] = "last_prompt"
    consistency["by_layer"] = []
    for site, vec in sorted(vectors.items()):
        if float(vec.norm()) == 0.0:
            consistency["by_layer"].append({"layer": site, "vector_is_zero": True})
            continue
        cos = probes.cosines(states.delta[:, site], vec)
        consistency["by_layer"].append({"layer": site, "mean": float(cos.mean()), "median": float(cos.median()),
                                        "frac_above_0_5": float((cos > 0.5).double().mean())})
    read_positions = _read_positions(pair, pairs, states, layer, v, batch_size)

    # --- gradients: at the DPO model (every site), at init (final), relabelled (every site)
    grad_batch = max(1, batch_size // 2)
    sites = range(n_sites)
    g_dpo = probes.shift_gradients(pair, pairs, beta=beta, policy="dpo", sites=sites, max_length=max_length,
                                   batch_size=grad_batch, limit=grad_pairs)
    used = g_dpo["pairs"]
    at_dpo, numbers["grad_loo"], numbers["grad_loo_fd"] = probes.coherence_summary(g_dpo, vectors)
    g_init = probes.shift_gradients(pair, used, beta=beta, policy="base", max_length=max_length,
                                    batch_size=grad_batch)
    at_init, _, _ = probes.coherence_summary(g_init, vectors, by_layer=False)
    swapped_pairs, swapped = relabel(used, seed=null_seed)
    g_rel = probes.shift_gradients(pair, swapped_pairs, beta=beta, policy="dpo", sites=sites,
                                   max_length=max_length, batch_size=grad_batch, desc="grad (relabelled)")
    relabelled, numbers["grad_loo_relabelled"], numbers["grad_loo_fd_relabelled"] = probes.coherence_summary(
        g_rel, vectors)
    for entry in (at_dpo, at_init, relabelled):
        entry["skipped_prompt_too_long"] = g_dpo["skipped_prompt_too_long"]
    relabelled.update({"seed": null_seed, "swapped": swapped})
    grad = {"beta": beta, "pairs": len(used), "skipped_prompt_too_long": g_dpo["skipped_prompt_too_long"],
            "positions": {"all": "sequence level: one zero shift added at every position of both sequences",
                          "first_divergence": probes.FIRST_DIVERGENCE},
            "at_dpo": at_dpo, "at_init": at_init, "relabelled": relabelled}

    # --- spectra and the steering identity
    spectra = probes.layer_spectra(states, vectors)
    for row in spectra:
        row["position"] = "last_prompt"
    logp = probes.side_logprobs(pair, prompts, batch_size=batch_size)
    ident = probes.steering_identity(pair, prompts, v, layer, alphas, batch_size=batch_size, logp=logp)
    ident["best_restoration"] = _best(ident["alphas"], ident["restoration_kl"], ident["kl_base_dpo"])
    ident["best_reproduction"] = _best(ident["alphas"], ident["reproduction_kl"], ident["kl_dpo_base"])
    one = probes.identity_kl(pair, prompts, v, layer, 1.0, logp=logp, batch_size=batch_size)
    numbers.update({"kl_restored": one["restoration"], "kl_base_dpo": one["kl_base_dpo"],
                    "kl_reproduced": one["reproduction"], "kl_dpo_base": one["kl_dpo_base"]})
    ident["alpha_1"] = {
        "restoration_kl": float(one["restoration"].mean()),
        "restoration_ratio": _ratio(float(one["restoration"].mean()), ident["kl_base_dpo"]),
        "reproduction_kl": float(one["reproduction"].mean()),
        "reproduction_ratio": _ratio(float(one["reproduction"].mean()), ident["kl_dpo_base"]),
    }
    ablation = probes.ablation_identity(pair, prompts, v, layer, [a for a in alphas if a >= 0], batch_size=batch_size,
                                        logp=logp)
    ablation["best_restoration"] = _best(ablation["alphas"], ablation["restoration_kl"], ablation["kl_base_dpo"])
    ident["ablation"] = ablation
    ident["norm_preserve"] = probes.norm_preserved_identity(pair, prompts, v, layer, alphas, batch_size=batch_size,
                                                            logp=logp)
    ident["grid"] = []
    for site, vec, name in ((layer, v, str(layer)), (final, v_final, "final")):
        if name == "final" and site == layer:
            continue
        for position in ("all", "last"):
            g = probes.steering_identity(pair, prompts, vec, site, alphas, batch_size=batch_size, position=position,
                                         logp=logp)
            g["site_name"] = name
            g["best_restoration"] = _best(g["alphas"], g["restoration_kl"], g["kl_base_dpo"])
            g["best_reproduction"] = _best(g["alphas"], g["reproduction_kl"], g["kl_dpo_base"])
            ident["grid"].append(g)

    # --- controls: random directions, i.i.d. expectations, the null adapter
    controls = {"iid": probe_nulls.iid_expectations(len(prompts), delta.shape[1], len(used))}
    if random_controls > 0:
        controls["random_direction"], found_numbers = probe_nulls.random_controls(
            pair, prompts, delta, v, layer, count=random_controls, seed=null_seed, logp=logp, batch_size=batch_size)
        numbers.update(found_numbers)
    null_section = None
    if nulls:
        try:
            null_section, found_numbers = probe_nulls.null_probes(
                pair, prompts, states.base, layer, seed=null_seed, beta=beta, grad_pairs=used, content=content,
                logp_base=logp["base"], batch_size=batch_size, max_length=max_length)
            numbers.update(found_numbers)
        except (ValueError, RuntimeError) as exc:
            log.warning("probe: no null adapter (%s); the verdicts against it are left out", exc)
            null_section = {"error": str(exc)}

    # --- the paper's figures
    pca = {"layer": layer, "position": "last_prompt", **pca_cloud(states.base[:, layer], states.dpo[:, layer], v)}
    lattice = None
    if lattice_pairs > 0:
        try:
            lattice = {"layer": "final", "position": "all",
                       **lattice_field_for(pair, used[:lattice_pairs], v_final, states.delta[:, final], beta=beta,
                                           max_length=max_length)}
        except ValueError as exc:
            lattice = {"layer": "final", "skipped": str(exc)}

    verdicts = probe_verdicts(numbers, sites={"layer": layer, "final": final}, n_resamples=n_resamples,
                              seed=0)
    at = next(r for r in projection if r["layer"] == layer)  # non-zero: checked above
    report_parts = {"projection_at": at, "spectrum": spectra[layer], "consistency": consistency,
                    "grad": grad, "ident": ident, "controls": controls, "nulls": null_section,
                    "logit_margin": logit_margin, "layer": layer, "final": final}
    headline = _headline(report_parts, verdicts)
    from dsteer_eval import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "positions": dict(POSITIONS),
        "models": {"base": pair.base_id, "dpo": pair.dpo_id, "adapter": pair.uses_adapter},
        "data": {**(data_info or {}), "prompts": len(prompts), "pairs": len(pairs),
                 "pairs_without_divergence": no_divergence},
        "vector": {**(vector_info or {}), "in_sample": in_sample, "final_source": final_source},
        "layer": layer,
        "num_layers": final,
        "headline": headline,
        "projection": {"position": "last_prompt", "by_layer": projection},
        "read_positions": read_positions,
        "logit_margin": logit_margin,
        "consistency": consistency,
        "gradient_coherence": grad,
        "spectra": spectra,
        "steering_identity": ident,
        "controls": controls,
        "nulls": null_section,
        "pca_cloud": pca,
        "lattice_field": lattice,
        "baselines": _baselines(report_parts),
        "verdicts": verdicts,
    }


def lattice_field_for(pair, pairs, v_final, delta_final, *, beta: float, max_length: int) -> dict:
    from dsteer_eval.probes.lattice_field import lattice_field

    if len(pairs) < 1:
        raise ValueError("no preference pair fits max_length for the lattice field")
    return lattice_field(pair, pairs, v_final, delta_final, beta=beta, max_length=max_length)


def _headline(p: dict, verdicts: list[dict]) -> dict:
    at, spec, ident, grad = p["projection_at"], p["spectrum"], p["ident"], p["grad"]
    rnd, null = p["controls"].get("random_direction"), p["nulls"] or {}
    margin = p["logit_margin"]
    return {
        "projection_shift_mean": at["shift"]["mean"],
        "projection_frac_rose": at["frac_rose"],
        "logit_margin_shift_mean": margin["shift"]["mean"],
        "logit_margin_frac_rose": margin["frac_rose"],
        "logit_margin_content_shift_mean": _get(margin, "content", "shift", "mean"),
        "consistency_cos_mean": p["consistency"]["cos"]["mean"],
        "consistency_frac_above_0_5": p["consistency"]["frac_above_0_5"],
        "grad_coherence_cos_mean": grad["at_dpo"]["cos"]["mean"],
        "grad_coherence_loo_mean": _get(grad, "at_dpo", "loo", "mean"),
        "grad_coherence_relabelled_loo_mean": _get(grad, "relabelled", "loo", "mean"),
        "grad_coherence_first_divergence_loo_mean": _get(grad, "at_dpo", "first_divergence", "loo", "mean"),
        "delta_sigma1_over_sigma2": spec.get("sigma1_over_sigma2"),
        "delta_top1_energy": spec.get("top1_energy"),
        "delta_abs_cos_u1": spec.get("abs_cos_u1"),
        "kl_base_dpo": ident["kl_base_dpo"],
        "restoration_best_ratio": ident["best_restoration"]["ratio"],
        "reproduction_best_ratio": ident["best_reproduction"]["ratio"],
        "restoration_ratio_alpha_1": ident["alpha_1"]["restoration_ratio"],
        "reproduction_ratio_alpha_1": ident["alpha_1"]["reproduction_ratio"],
        "random_projection_shift_mean": _get(rnd, "projection", "shift", "mean"),
        "random_consistency_cos_mean": _get(rnd, "consistency", "cos", "mean"),
        "random_restoration_ratio": _get(rnd, "steering_identity", "restoration_ratio"),
        "null_projection_shift_mean": _get(null, "projection", "shift", "mean"),
        "null_consistency_cos_mean": _get(null, "consistency", "cos", "mean"),
        "null_delta_top1_energy": _get(null, "spectra", "uncentred", "top1_energy"),
        "null_restoration_ratio": _get(null, "steering_identity", "restoration_ratio"),
        "null_reproduction_ratio": _get(null, "steering_identity", "reproduction_ratio"),
        "null_grad_coherence_loo_mean": _get(null, "gradient_coherence", "loo", "mean"),
        "verdicts_supported": sum(v["verdict"] == "supported" for v in verdicts),
        "verdicts_total": len(verdicts),
    }


def _baselines(p: dict) -> list[dict]:
    """Every headline statistic beside its null, random-direction, relabelled and i.i.d. baselines."""
    layer, spec, ident, grad = p["layer"], p["spectrum"], p["ident"], p["grad"]
    rnd, null, iid = p["controls"].get("random_direction"), p["nulls"] or {}, p["controls"]["iid"]
    nspec = null.get("spectra") or {}
    rows = []

    def row(statistic, where, position, dpo, null_value=None, random=None, relabelled=None, iid_value=None,
            formula=None):
        rows.append({"statistic": statistic, "layer": where, "position": position, "dpo": dpo, "null": null_value,
                     "random": random, "relabelled": relabelled, "iid": iid_value, "iid_formula": formula})

    row("consistency: mean cos(δᵢ, v̄)", layer, "last_prompt", p["consistency"]["cos"]["mean"],
        _get(null, "consistency", "cos", "mean"), _get(rnd, "consistency", "cos", "mean"), None,
        0.0, iid["cos_with_random_direction"]["formula"])
    row("consistency: fraction cos(δᵢ, v̄) > 0.5", layer, "last_prompt", p["consistency"]["frac_above_0_5"],
        _get(null, "consistency", "frac_above_0_5"), _get(rnd, "consistency", "frac_above_0_5"))
    row("projection rise: mean ⟨δᵢ, v̂⟩", layer, "last_prompt", p["projection_at"]["shift"]["mean"],
        _get(null, "projection", "shift", "mean"), _get(rnd, "projection", "shift", "mean"), None,
        0.0, iid["projection_on_random_unit"]["formula"])
    row("projection: fraction that rose", layer, "last_prompt", p["projection_at"]["frac_rose"],
        _get(null, "projection", "frac_rose"), _get(rnd, "projection", "frac_rose"), None, 0.5, "1/2 (symmetric)")
    for label, key in (("uncentred", None), ("centred", "centred")):
        mine = spec if key is None else (spec.get("centred") or {})
        theirs = nspec.get(label) or {}
        row(f"σ1/σ2 of ΔH ({label})", layer, "last_prompt", mine.get("sigma1_over_sigma2"),
            theirs.get("sigma1_over_sigma2"))
        row(f"top-1 energy of ΔH ({label})", layer, "last_prompt", mine.get("top1_energy"),
            theirs.get("top1_energy"), iid_value=iid["top1_energy_gaussian"]["mean"],
            formula=iid["top1_energy_gaussian"]["formula"])
        row(f"|cos(u1, v̄)| of ΔH ({label}; null: with v̄_null)", layer, "last_prompt", mine.get("abs_cos_u1"),
            theirs.get("abs_cos_u1"), iid_value=iid["abs_cos_u1_with_v"]["mean"],
            formula=iid["abs_cos_u1_with_v"]["formula"])
        row(f"effective rank of ΔH ({label}; Roy & Vetterli)", layer, "last_prompt", mine.get("effective_rank"),
            theirs.get("effective_rank"))
        row(f"spectral entropy of ΔH ({label}, nats)", layer, "last_prompt", mine.get("spectral_entropy"),
            theirs.get("spectral_entropy"))
    states = nspec.get("states") or {}
    row(f"spectral entropy of H (DPO: H_dpo, null: H_null; H_base = {spec.get('spectral_entropy_base'):.4g})",
        layer, "last_prompt", spec.get("spectral_entropy_dpo"), states.get("spectral_entropy"))
    row(f"effective rank of H (H_base = {spec.get('effective_rank_base'):.4g})", layer, "last_prompt",
        spec.get("effective_rank_dpo"), states.get("effective_rank"))
    row("restoration: KL(base ‖ side − v)/KL(base ‖ side), α = 1", layer, "all",
        ident["alpha_1"]["restoration_ratio"], _get(null, "steering_identity", "restoration_ratio"),
        _get(rnd, "steering_identity", "restoration_ratio"))
    row("reproduction: KL(side ‖ base + v)/KL(side ‖ base), α = 1", layer, "all",
        ident["alpha_1"]["reproduction_ratio"], _get(null, "steering_identity", "reproduction_ratio"),
        _get(rnd, "steering_identity", "reproduction_ratio"))
    row("restoration: best ratio over the α grid", layer, "all", ident["best_restoration"]["ratio"])
    ng = null.get("gradient_coherence") or {}
    for label, path, iid_value, formula in (("leave-one-out", ("loo", "mean"), 0.0, "0"),
                                            ("naive (ḡ includes gᵢ)", ("cos", "mean"),
                                             grad["at_dpo"]["iid_naive_expectation"], "1/√N")):
        row(f"gradient coherence, {label}", "final", "all", _get(grad, "at_dpo", *path), _get(ng, *path),
            None, _get(grad, "relabelled", *path), iid_value, formula)
    row("gradient coherence, leave-one-out, first divergent position", "final", "first_divergence",
        _get(grad, "at_dpo", "first_divergence", "loo", "mean"), _get(ng, "first_divergence", "loo", "mean"),
        None, _get(grad, "relabelled", "first_divergence", "loo", "mean"), 0.0, "0")
    row("gradient coherence at init (π = π_ref), leave-one-out", "final", "all", _get(grad, "at_init", "loo", "mean"))
    row("cos(−ḡ, v̄ at final) (null: v̄_null)", "final", "all", grad["at_dpo"].get("cos_neg_mean_grad_with_v_final"),
        ng.get("cos_neg_mean_grad_with_v_final"), None, grad["relabelled"].get("cos_neg_mean_grad_with_v_final"))
    row("logit margin shift (side − base), first divergent token", "final", "first_divergence",
        p["logit_margin"]["shift"]["mean"])
    row("logit margin shift (side − base), first divergent content token", "final", "first_divergence_content",
        _get(p["logit_margin"], "content", "shift", "mean"), _get(null, "logit_margin", "shift", "mean"))
    return rows


def _clean(obj):
    """JSON without NaN/inf (written as null / strings the JSON spec allows)."""
    import math

    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_report(report: dict, out, *, figures: bool = True, overwrite: bool = False,
                 provenance: dict | None = None) -> Path:
    """Write ``out/probe_report.json``, ``out/verdicts.md`` and the figures, atomically (a temp folder
    renamed at the end).  ``provenance``: how the report was made (:func:`dsteer_eval.common.provenance.collect`);
    without one (and none in ``report``), a minimal record."""
    from dsteer_eval.common import provenance as prov
    from dsteer_eval.common.output_folder import check_free, staged_folder
    from dsteer_eval.probes.figures import probe_figures
    from dsteer_eval.probes.verdicts import verdicts_markdown

    out = check_free(out, overwrite)
    with staged_folder(out) as tmp:
        report = dict(report)
        if provenance is not None or prov.KEY not in report:
            report[prov.KEY] = provenance if provenance is not None else prov.collect()
        report["figures"] = probe_figures(report, tmp) if figures else []
        cleaned = _clean(report)
        (tmp / REPORT_NAME).write_text(json.dumps(cleaned, indent=1, allow_nan=False) + "\n")
        (tmp / VERDICTS_NAME).write_text(verdicts_markdown(cleaned), encoding="utf-8")
    return out / REPORT_NAME
