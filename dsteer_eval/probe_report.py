"""Run every D-STEER probe on a base/DPO pair and write one JSON report plus PNG figures.

Report schema (``format = "dsteer-eval/probe-report"``, ``format_version = "1"``)::

    models        {base, dpo, adapter: bool}
    data          {source, prompts, pairs, pairs_without_divergence, skipped}
    vector        {source, method, in_sample: bool}   where v̄ came from
    layer         the site used for consistency and the steering identity
    num_layers
    headline      flat numbers for leaderboards (see HEADLINE_KEYS)
    projection    {by_layer: [{layer, base, dpo, shift: summary, frac_rose}]}
    logit_margin  {pairs, base, dpo, shift: summary, frac_rose}
    consistency   {layer, cos: summary, frac_above_0_5, histogram {edges, counts}, values,
                   by_layer: [{layer, mean, median, frac_above_0_5}]}
    gradient_coherence {at_dpo, at_init: {pairs, skipped_prompt_too_long, cos: summary, frac_above_0_5,
                        cos_mean_grad_with_v_final, loss_mean}, beta}
    spectra       [{layer, singular_values (top 16), sigma1_over_sigma2, top1_energy,
                    spectral_entropy, effective_rank, abs_cos_u1,
                    spectral_entropy_base, effective_rank_base, spectral_entropy_dpo, effective_rank_dpo}]
    steering_identity {layer, alphas, kl_base_dpo, kl_dpo_base, restoration_kl, reproduction_kl,
                       best_restoration {alpha, kl, ratio}, best_reproduction {alpha, kl, ratio}}
    figures       PNG file names next to the report

A ``summary`` is {n, mean, stderr, median, std, q10, q90, frac_positive}.
Unit conventions: projections use v̂ = v̄/|v̄|; KL in nats; entropies in nats.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from dsteer_eval import probes
from dsteer_eval.extract import divergences, pair_states, unique_prompts

REPORT_NAME = "probe_report.json"
FORMAT = "dsteer-eval/probe-report"
HEADLINE_KEYS = (
    "projection_shift_mean", "projection_frac_rose", "logit_margin_shift_mean", "logit_margin_frac_rose",
    "consistency_cos_mean", "consistency_frac_above_0_5", "grad_coherence_cos_mean",
    "delta_sigma1_over_sigma2", "delta_top1_energy", "delta_abs_cos_u1",
    "kl_base_dpo", "restoration_best_ratio", "reproduction_best_ratio",
)


def _best(alphas, values, reference):
    i = min(range(len(values)), key=values.__getitem__)
    return {"alpha": alphas[i], "kl": values[i], "ratio": values[i] / reference if reference > 0 else None}


def run_probes(pair, pairs, *, vectors: dict[int, torch.Tensor] | None = None, vector_info: dict | None = None,
               layer: int | None = None, alphas: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
               beta: float = 0.1, grad_pairs: int = 64, batch_size: int = 8, max_length: int = 256,
               data_info: dict | None = None) -> dict:
    """All probes; ``vectors`` (site → v̄) default to the in-sample mean δ over the same prompts."""
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

    projection = probes.projection_margins(states, vectors)
    found, no_divergence = divergences(pair.tokenizer, pairs)
    margins = probes.logit_margins(pair, found, batch_size=batch_size)
    consistency = probes.directional_consistency(states.delta[:, layer], vectors[layer])
    consistency["layer"] = layer
    consistency["by_layer"] = []
    for site, v in sorted(vectors.items()):
        if float(v.norm()) == 0.0:
            consistency["by_layer"].append({"layer": site, "vector_is_zero": True})
            continue
        cos = probes.cosines(states.delta[:, site], v)
        consistency["by_layer"].append({"layer": site, "mean": float(cos.mean()), "median": float(cos.median()),
                                        "frac_above_0_5": float((cos > 0.5).double().mean())})

    grad = {"beta": beta}
    for policy, key in (("dpo", "at_dpo"), ("base", "at_init")):
        g = probes.gradient_coherence(pair, pairs, beta=beta, policy=policy, max_length=max_length,
                                      batch_size=max(1, batch_size // 2), limit=grad_pairs)
        entry = {"pairs": len(g["grads"]), "skipped_prompt_too_long": g["skipped_prompt_too_long"],
                 "cos": probes.summary(g["cos"]),
                 "frac_above_0_5": float((g["cos"] > 0.5).double().mean()), "loss_mean": float(g["loss"].mean())}
        if final in vectors and g["mean"].norm() > 0:
            # DPO moves h against its loss gradient: compare −ḡ with v̄ at the final site.
            entry["cos_neg_mean_grad_with_v_final"] = float(probes.cosines(-g["mean"][None], vectors[final])[0])
        grad[key] = entry

    spectra = probes.layer_spectra(states, vectors)
    ident = probes.steering_identity(pair, prompts, vectors[layer], layer, alphas, batch_size=batch_size)
    ident["best_restoration"] = _best(ident["alphas"], ident["restoration_kl"], ident["kl_base_dpo"])
    ident["best_reproduction"] = _best(ident["alphas"], ident["reproduction_kl"], ident["kl_dpo_base"])

    at = next(r for r in projection if r["layer"] == layer)  # non-zero: checked above
    spec_at = spectra[layer]
    headline = {
        "projection_shift_mean": at["shift"]["mean"],
        "projection_frac_rose": at["frac_rose"],
        "logit_margin_shift_mean": float(margins["shift"].mean()),
        "logit_margin_frac_rose": float((margins["shift"] > 0).double().mean()),
        "consistency_cos_mean": consistency["cos"]["mean"],
        "consistency_frac_above_0_5": consistency["frac_above_0_5"],
        "grad_coherence_cos_mean": grad["at_dpo"]["cos"]["mean"],
        "delta_sigma1_over_sigma2": spec_at.get("sigma1_over_sigma2"),
        "delta_top1_energy": spec_at.get("top1_energy"),
        "delta_abs_cos_u1": spec_at.get("abs_cos_u1"),
        "kl_base_dpo": ident["kl_base_dpo"],
        "restoration_best_ratio": ident["best_restoration"]["ratio"],
        "reproduction_best_ratio": ident["best_reproduction"]["ratio"],
    }
    from dsteer_eval import __version__

    return {
        "format": FORMAT,
        "format_version": "1",
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": {"base": pair.base_id, "dpo": pair.dpo_id, "adapter": pair.uses_adapter},
        "data": {**(data_info or {}), "prompts": len(prompts), "pairs": len(pairs),
                 "pairs_without_divergence": no_divergence},
        "vector": {**(vector_info or {}), "in_sample": in_sample},
        "layer": layer,
        "num_layers": final,
        "headline": headline,
        "projection": {"by_layer": projection},
        "logit_margin": {
            "pairs": len(found),
            "base": probes.summary(margins["base"]),
            "dpo": probes.summary(margins["dpo"]),
            "shift": probes.summary(margins["shift"]),
            "frac_rose": headline["logit_margin_frac_rose"],
        },
        "consistency": consistency,
        "gradient_coherence": grad,
        "spectra": spectra,
        "steering_identity": ident,
    }


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


def write_report(report: dict, out, *, figures: bool = True, overwrite: bool = False) -> Path:
    """Write ``out/probe_report.json`` and the figures, atomically (a temp folder renamed at the end)."""
    from dsteer_eval.output_folder import check_free, staged_folder
    from dsteer_eval.plots import probe_figures

    out = check_free(out, overwrite)
    with staged_folder(out) as tmp:
        report = dict(report)
        report["figures"] = probe_figures(report, tmp) if figures else []
        (tmp / REPORT_NAME).write_text(json.dumps(_clean(report), indent=1, allow_nan=False) + "\n")
    return out / REPORT_NAME
