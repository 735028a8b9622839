"""Spectra of the DPO update ΔH (prompts × d) by layer, last prompt token: σ1/σ2, top-1 energy, |cos(u1, v̄)|,
spectral entropy and effective rank, uncentred and centred (dsteer_eval.probes.spectra)."""

from __future__ import annotations

from dsteer_eval.probes import measures
from dsteer_eval.probes.figures import spectra_figures
from dsteer_eval.probes.registry import Probe, ProbeContext, baseline_row, get


def run(ctx: ProbeContext) -> dict:
    spectra = measures.layer_spectra(ctx.states, ctx.vectors)
    for row in spectra:
        row["position"] = "last_prompt"
    return {"spectra": spectra}


def headline(report: dict) -> dict:
    spec = report["spectra"][report["layer"]]
    return {"delta_sigma1_over_sigma2": spec.get("sigma1_over_sigma2"), "delta_top1_energy": spec.get("top1_energy"),
            "delta_abs_cos_u1": spec.get("abs_cos_u1")}


def baselines(report: dict) -> list[dict]:
    layer, spec = report["layer"], report["spectra"][report["layer"]]
    nspec = (report.get("nulls") or {}).get("spectra") or {}
    iid = get(report, "controls", "iid") or {}
    rows = []
    for label, key in (("uncentred", None), ("centred", "centred")):
        mine = spec if key is None else (spec.get("centred") or {})
        theirs = nspec.get(label) or {}
        rows += [
            baseline_row(f"σ1/σ2 of ΔH ({label})", layer, "last_prompt", mine.get("sigma1_over_sigma2"),
                         theirs.get("sigma1_over_sigma2")),
            baseline_row(f"top-1 energy of ΔH ({label})", layer, "last_prompt", mine.get("top1_energy"),
                         theirs.get("top1_energy"), iid=get(iid, "top1_energy_gaussian", "mean"),
                         formula=get(iid, "top1_energy_gaussian", "formula")),
            baseline_row(f"|cos(u1, v̄)| of ΔH ({label}; null: with v̄_null)", layer, "last_prompt",
                         mine.get("abs_cos_u1"), theirs.get("abs_cos_u1"), iid=get(iid, "abs_cos_u1_with_v", "mean"),
                         formula=get(iid, "abs_cos_u1_with_v", "formula")),
            baseline_row(f"effective rank of ΔH ({label}; Roy & Vetterli)", layer, "last_prompt",
                         mine.get("effective_rank"), theirs.get("effective_rank")),
            baseline_row(f"spectral entropy of ΔH ({label}, nats)", layer, "last_prompt", mine.get("spectral_entropy"),
                         theirs.get("spectral_entropy")),
        ]
    states = nspec.get("states") or {}
    rows.append(baseline_row(f"spectral entropy of H (DPO: H_dpo, null: H_null; H_base = "
                             f"{spec.get('spectral_entropy_base'):.4g})", layer, "last_prompt",
                             spec.get("spectral_entropy_dpo"), states.get("spectral_entropy")))
    rows.append(baseline_row(f"effective rank of H (H_base = {spec.get('effective_rank_base'):.4g})", layer,
                             "last_prompt", spec.get("effective_rank_dpo"), states.get("effective_rank")))
    return rows


PROBE = Probe("spectra", run, sections=("spectra",), headline=headline, baselines=baselines, figures=spectra_figures)
