"""The steering identity: does −v̄ restore the base (KL(base ‖ dpo − αv̄)) and +v̄ reproduce DPO
(KL(dpo ‖ base + αv̄)) over an α grid; also ablating v̂, norm-preserving steering, and the (layer | final) ×
(all | last) grid."""

from __future__ import annotations

from dsteer_eval.probes import identity
from dsteer_eval.probes.figures import identity_figure
from dsteer_eval.probes.registry import Probe, ProbeContext, baseline_row, get


def best(alphas, values, reference) -> dict:
    i = min(range(len(values)), key=values.__getitem__)
    return {"alpha": alphas[i], "kl": values[i], "ratio": values[i] / reference if reference > 0 else None}


def _ratio(a, b):
    return a / b if b else None


def run(ctx: ProbeContext) -> dict:
    pair, prompts, v, layer = ctx.pair, ctx.prompts, ctx.v, ctx.layer
    alphas, batch_size = ctx.settings.alphas, ctx.settings.batch_size
    logp = ctx.shared["logp"] = identity.side_logprobs(pair, prompts, batch_size=batch_size)
    ident = identity.steering_identity(pair, prompts, v, layer, alphas, batch_size=batch_size, logp=logp)
    ident["best_restoration"] = best(ident["alphas"], ident["restoration_kl"], ident["kl_base_dpo"])
    ident["best_reproduction"] = best(ident["alphas"], ident["reproduction_kl"], ident["kl_dpo_base"])
    one = identity.identity_kl(pair, prompts, v, layer, 1.0, logp=logp, batch_size=batch_size)
    ctx.numbers.update({"kl_restored": one["restoration"], "kl_base_dpo": one["kl_base_dpo"],
                        "kl_reproduced": one["reproduction"], "kl_dpo_base": one["kl_dpo_base"]})
    ident["alpha_1"] = {
        "restoration_kl": float(one["restoration"].mean()),
        "restoration_ratio": _ratio(float(one["restoration"].mean()), ident["kl_base_dpo"]),
        "reproduction_kl": float(one["reproduction"].mean()),
        "reproduction_ratio": _ratio(float(one["reproduction"].mean()), ident["kl_dpo_base"]),
    }
    ablation = identity.ablation_identity(pair, prompts, v, layer, [a for a in alphas if a >= 0],
                                          batch_size=batch_size, logp=logp)
    ablation["best_restoration"] = best(ablation["alphas"], ablation["restoration_kl"], ablation["kl_base_dpo"])
    ident["ablation"] = ablation
    ident["norm_preserve"] = identity.norm_preserved_identity(pair, prompts, v, layer, alphas, batch_size=batch_size,
                                                              logp=logp)
    ident["grid"] = []
    for site, vec, name in ((layer, v, str(layer)), (ctx.final, ctx.v_final, "final")):
        if name == "final" and site == layer:
            continue
        for position in ("all", "last"):
            g = identity.steering_identity(pair, prompts, vec, site, alphas, batch_size=batch_size,
                                           position=position, logp=logp)
            g["site_name"] = name
            g["best_restoration"] = best(g["alphas"], g["restoration_kl"], g["kl_base_dpo"])
            g["best_reproduction"] = best(g["alphas"], g["reproduction_kl"], g["kl_dpo_base"])
            ident["grid"].append(g)
    return {"steering_identity": ident}


def headline(report: dict) -> dict:
    ident = report["steering_identity"]
    return {"kl_base_dpo": ident["kl_base_dpo"], "restoration_best_ratio": ident["best_restoration"]["ratio"],
            "reproduction_best_ratio": ident["best_reproduction"]["ratio"],
            "restoration_ratio_alpha_1": ident["alpha_1"]["restoration_ratio"],
            "reproduction_ratio_alpha_1": ident["alpha_1"]["reproduction_ratio"]}


def baselines(report: dict) -> list[dict]:
    ident, layer = report["steering_identity"], report["layer"]
    rnd, null = get(report, "controls", "random_direction"), report.get("nulls") or {}
    return [
        baseline_row("restoration: KL(base ‖ side − v)/KL(base ‖ side), α = 1", layer, "all",
                     ident["alpha_1"]["restoration_ratio"], get(null, "steering_identity", "restoration_ratio"),
                     get(rnd, "steering_identity", "restoration_ratio")),
        baseline_row("reproduction: KL(side ‖ base + v)/KL(side ‖ base), α = 1", layer, "all",
                     ident["alpha_1"]["reproduction_ratio"], get(null, "steering_identity", "reproduction_ratio"),
                     get(rnd, "steering_identity", "reproduction_ratio")),
        baseline_row("restoration: best ratio over the α grid", layer, "all", ident["best_restoration"]["ratio"]),
    ]


PROBE = Probe("identity", run, sections=("steering_identity",),
              numbers=("kl_restored", "kl_base_dpo", "kl_reproduced", "kl_dpo_base"),
              headline=headline, baselines=baselines, figures=identity_figure)
