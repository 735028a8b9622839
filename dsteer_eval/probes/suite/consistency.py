"""Directional consistency: cos(δᵢ, v̄) per prompt at the probe layer (and its mean at every layer)."""

from __future__ import annotations

from dsteer_eval.probes import measures
from dsteer_eval.probes.figures import consistency_figure
from dsteer_eval.probes.registry import Probe, ProbeContext, baseline_row, get


def run(ctx: ProbeContext) -> dict:
    ctx.numbers["cos_v"] = measures.cosines(ctx.delta, ctx.v)
    consistency = measures.directional_consistency(ctx.delta, ctx.v)
    consistency["layer"] = ctx.layer
    consistency["position"] = "last_prompt"
    consistency["by_layer"] = []
    for site, vec in sorted(ctx.vectors.items()):
        if float(vec.norm()) == 0.0:
            consistency["by_layer"].append({"layer": site, "vector_is_zero": True})
            continue
        cos = measures.cosines(ctx.states.delta[:, site], vec)
        consistency["by_layer"].append({"layer": site, "mean": float(cos.mean()), "median": float(cos.median()),
                                        "frac_above_0_5": float((cos > 0.5).double().mean())})
    return {"consistency": consistency}


def headline(report: dict) -> dict:
    c = report["consistency"]
    return {"consistency_cos_mean": c["cos"]["mean"], "consistency_frac_above_0_5": c["frac_above_0_5"]}


def baselines(report: dict) -> list[dict]:
    c, layer = report["consistency"], report["layer"]
    rnd, null = get(report, "controls", "random_direction"), report.get("nulls") or {}
    iid = get(report, "controls", "iid") or {}
    return [
        baseline_row("consistency: mean cos(δᵢ, v̄)", layer, "last_prompt", c["cos"]["mean"],
                     get(null, "consistency", "cos", "mean"), get(rnd, "consistency", "cos", "mean"), None,
                     0.0, get(iid, "cos_with_random_direction", "formula")),
        baseline_row("consistency: fraction cos(δᵢ, v̄) > 0.5", layer, "last_prompt", c["frac_above_0_5"],
                     get(null, "consistency", "frac_above_0_5"), get(rnd, "consistency", "frac_above_0_5")),
    ]


PROBE = Probe("consistency", run, sections=("consistency",), numbers=("cos_v",), headline=headline,
              baselines=baselines, figures=consistency_figure)
