"""Projection of the DPO shift on v̄ (every layer, last prompt token) and at two read positions of the probe
layer (last prompt token, last token of prompt + chosen)."""

from __future__ import annotations

from dsteer_eval.dpo.extract import last_token_states
from dsteer_eval.probes import measures
from dsteer_eval.probes.figures import projection_figure
from dsteer_eval.probes.registry import Probe, ProbeContext, baseline_row, get


def read_positions(ctx: ProbeContext) -> dict:
    """Projection and consistency at the probe layer at two read positions (see report.POSITIONS)."""
    layer, v = ctx.layer, ctx.v
    u = v.double() / v.double().norm()
    h = {}
    texts = [p.prompt + p.chosen for p in ctx.pairs]
    for which in ("base", "dpo"):
        with ctx.pair.side(which) as model:
            h[which] = last_token_states(model, ctx.pair.tokenizer, texts, batch_size=ctx.settings.batch_size,
                                         desc=f"{which} (chosen)")[:, layer]
    delta_c = h["dpo"] - h["base"]
    out = {"layer": layer}
    for name, delta, items in (("last_prompt", ctx.delta, "prompts"), ("last_chosen", delta_c, "pairs")):
        proj = delta.double() @ u
        cos = measures.cosines(delta, v)
        out[name] = {"position": name, "items": items, "n": len(delta), "projection_shift": measures.summary(proj),
                     "frac_rose": float((proj > 0).double().mean()), "consistency_cos": measures.summary(cos),
                     "frac_above_0_5": float((cos > 0.5).double().mean())}
    mean_c = delta_c.mean(0)
    out["last_chosen"]["cos_mean_delta_with_v"] = (float(measures.cosines(mean_c[None], v)[0])
                                                   if mean_c.norm() > 0 else None)
    out["last_chosen"]["self_consistency_cos"] = (measures.summary(measures.cosines(delta_c, mean_c))
                                                  if mean_c.norm() > 0 else None)
    return out


def run(ctx: ProbeContext) -> dict:
    v = ctx.v.double()
    ctx.numbers.update({"delta": ctx.delta, "proj_v": ctx.delta.double() @ (v / v.norm())})
    return {"projection": {"position": "last_prompt", "by_layer": measures.projection_margins(ctx.states, ctx.vectors)},
            "read_positions": read_positions(ctx)}


def at_layer(report: dict) -> dict:
    return next(r for r in report["projection"]["by_layer"] if r["layer"] == report["layer"])


def headline(report: dict) -> dict:
    at = at_layer(report)
    return {"projection_shift_mean": at["shift"]["mean"], "projection_frac_rose": at["frac_rose"]}


def baselines(report: dict) -> list[dict]:
    at, layer = at_layer(report), report["layer"]
    rnd, null = get(report, "controls", "random_direction"), report.get("nulls") or {}
    iid = get(report, "controls", "iid") or {}
    return [
        baseline_row("projection rise: mean ⟨δᵢ, v̂⟩", layer, "last_prompt", at["shift"]["mean"],
                     get(null, "projection", "shift", "mean"), get(rnd, "projection", "shift", "mean"), None,
                     0.0, get(iid, "projection_on_random_unit", "formula")),
        baseline_row("projection: fraction that rose", layer, "last_prompt", at["frac_rose"],
                     get(null, "projection", "frac_rose"), get(rnd, "projection", "frac_rose"), None, 0.5,
                     "1/2 (symmetric)"),
    ]


PROBE = Probe("projection", run, sections=("projection", "read_positions"), numbers=("delta", "proj_v"),
              headline=headline, baselines=baselines, figures=projection_figure)
