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
                   unless by_layer; see gradients.shift_gradients)
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
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from dsteer_eval import __version__
from dsteer_eval.common import provenance as prov
from dsteer_eval.common.output_folder import check_free, staged_folder
from dsteer_eval.dpo.extract import divergences, pair_states, unique_prompts
from dsteer_eval.probes.figures import probe_figures
from dsteer_eval.probes.registry import Probe, ProbeContext, ProbeSettings, run_probe
from dsteer_eval.probes.suite import PROBES
from dsteer_eval.probes.verdicts import probe_verdicts, verdicts_markdown

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
# every probe's headline keys, in registry order, then the verdict counts (kept as a list for readers)
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


def run_probes(pair, pairs, *, vectors: dict[int, torch.Tensor] | None = None, vector_info: dict | None = None,
               layer: int | None = None, alphas: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0),
               beta: float = 0.1, grad_pairs: int = 64, batch_size: int = 8, max_length: int = 256,
               data_info: dict | None = None, nulls: bool = True, null_seed: int = 0, random_controls: int = 1,
               lattice_pairs: int = 8, n_resamples: int = 2000, probes: Sequence[Probe] = PROBES) -> dict:
    """Every probe of ``probes`` (the registry, :data:`dsteer_eval.probes.suite.PROBES`) and the verdicts of
    their claims; ``vectors`` (site → v̄) default to the in-sample mean δ over the same prompts.

    ``nulls``: run the null adapter (matched at ``layer``, seeded by ``null_seed``); ``random_controls``:
    how many norm-matched random directions (0: none; their seed is ``null_seed`` too);
    ``lattice_pairs``: pairs for the Fig 1(b) lattice field (0: skip it); ``n_resamples``: bootstrap
    resamples of every verdict's CI. The relabelled gradient baseline swaps a half chosen by ``null_seed``.
    """
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
    if final in vectors and float(vectors[final].norm()) > 0:
        v_final, final_source = vectors[final].float(), "the vector file" if not in_sample else "in-sample"
    else:
        v_final, final_source = states.delta[:, final].mean(0), "in-sample mean of δ at final (not in the vector file)"
    found, no_divergence = divergences(pair.tokenizer, pairs)
    settings = ProbeSettings(alphas=tuple(alphas), beta=beta, grad_pairs=grad_pairs, batch_size=batch_size,
                             max_length=max_length, nulls=nulls, null_seed=null_seed, random_controls=random_controls,
                             lattice_pairs=lattice_pairs)
    ctx = ProbeContext(pair, pairs, prompts, states, vectors, layer, final, vectors[layer].float(), v_final, settings,
                       shared={"divergences": found})
    for probe in probes:
        run_probe(probe, ctx)

    claims = [claim for probe in probes for claim in probe.claims]
    verdicts = probe_verdicts(ctx.numbers, claims=claims, sites={"layer": layer, "final": final},
                              n_resamples=n_resamples, seed=0)
    report = {
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
        "headline": {},
        **{name: ctx.sections[name] for probe in probes for name in probe.sections},
    }
    for probe in probes:
        report["headline"].update(probe.headline(report))
    report["headline"].update({"verdicts_supported": sum(v["verdict"] == "supported" for v in verdicts),
                               "verdicts_total": len(verdicts)})
    report["baselines"] = [row for probe in probes for row in probe.baselines(report)]
    report["verdicts"] = verdicts
    return report


def _clean(obj):
    """JSON without NaN/inf (written as null / strings the JSON spec allows)."""
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
                 provenance: dict | None = None, probes: Sequence[Probe] = PROBES) -> Path:
    """Write ``out/probe_report.json``, ``out/verdicts.md`` and the figures, atomically (a temp folder
    renamed at the end); ``probes`` draw their figures.  ``provenance``: how the report was made (:func:`dsteer_eval.common.provenance.collect`);
    without one (and none in ``report``), a minimal record."""
    out = check_free(out, overwrite)
    with staged_folder(out) as tmp:
        report = dict(report)
        if provenance is not None or prov.KEY not in report:
            report[prov.KEY] = provenance if provenance is not None else prov.collect()
        drawn = [p.figures for p in probes if all(section in report for section in p.sections)]
        report["figures"] = probe_figures(report, tmp, drawn) if figures else []
        cleaned = _clean(report)
        (tmp / REPORT_NAME).write_text(json.dumps(cleaned, indent=1, allow_nan=False) + "\n")
        (tmp / VERDICTS_NAME).write_text(verdicts_markdown(cleaned), encoding="utf-8")
    return out / REPORT_NAME
