"""Gradient coherence: how much the per-pair DPO loss gradients ∂Lᵢ/∂h agree (leave-one-out), at the DPO model
(every site), at init (π = π_ref, final) and with chosen/rejected swapped on a seeded half (relabelled)."""

from __future__ import annotations

from dsteer_eval.probes import gradients
from dsteer_eval.probes.coherence import relabel
from dsteer_eval.probes.registry import Claim, Probe, ProbeContext, baseline_row, get

CLAIMS = (
    Claim("coherence_vs_relabelled", "gradient coherence (leave-one-out) exceeds the relabelled-pair baseline",
          "mean", ("grad_loo",), ("grad_loo_relabelled",), "cos(gᵢ, ḡ₋ᵢ) vs the same with chosen/rejected "
          "swapped on a seeded half", "final", "all", "pairs"),
    Claim("coherence_first_divergence_vs_relabelled",
          "gradient coherence (leave-one-out) at the first divergent position exceeds the relabelled baseline",
          "mean", ("grad_loo_fd",), ("grad_loo_fd_relabelled",), "cos(gᵢ, ḡ₋ᵢ) vs relabelled, g = ∂L/∂h at the "
          "first divergent position", "final", "first_divergence", "pairs"),
)


def run(ctx: ProbeContext) -> dict:
    s = ctx.settings
    grad_batch = max(1, s.batch_size // 2)
    sites = range(ctx.final + 1)
    g_dpo = gradients.shift_gradients(ctx.pair, ctx.pairs, beta=s.beta, policy="dpo", sites=sites,
                                     max_length=s.max_length, batch_size=grad_batch, limit=s.grad_pairs)
    used = g_dpo["pairs"]
    ctx.shared["used_pairs"] = used
    at_dpo, ctx.numbers["grad_loo"], ctx.numbers["grad_loo_fd"] = gradients.coherence_summary(g_dpo, ctx.vectors)
    g_init = gradients.shift_gradients(ctx.pair, used, beta=s.beta, policy="base", max_length=s.max_length,
                                      batch_size=grad_batch)
    at_init, _, _ = gradients.coherence_summary(g_init, ctx.vectors, by_layer=False)
    swapped_pairs, swapped = relabel(used, seed=s.null_seed)
    g_rel = gradients.shift_gradients(ctx.pair, swapped_pairs, beta=s.beta, policy="dpo", sites=sites,
                                     max_length=s.max_length, batch_size=grad_batch, desc="grad (relabelled)")
    relabelled, ctx.numbers["grad_loo_relabelled"], ctx.numbers["grad_loo_fd_relabelled"] = \
        gradients.coherence_summary(g_rel, ctx.vectors)
    for entry in (at_dpo, at_init, relabelled):
        entry["skipped_prompt_too_long"] = g_dpo["skipped_prompt_too_long"]
    relabelled.update({"seed": s.null_seed, "swapped": swapped})
    return {"gradient_coherence": {
        "beta": s.beta, "pairs": len(used), "skipped_prompt_too_long": g_dpo["skipped_prompt_too_long"],
        "positions": {"all": "sequence level: one zero shift added at every position of both sequences",
                      "first_divergence": gradients.FIRST_DIVERGENCE},
        "at_dpo": at_dpo, "at_init": at_init, "relabelled": relabelled}}


def headline(report: dict) -> dict:
    grad = report["gradient_coherence"]
    return {"grad_coherence_cos_mean": grad["at_dpo"]["cos"]["mean"],
            "grad_coherence_loo_mean": get(grad, "at_dpo", "loo", "mean"),
            "grad_coherence_relabelled_loo_mean": get(grad, "relabelled", "loo", "mean"),
            "grad_coherence_first_divergence_loo_mean": get(grad, "at_dpo", "first_divergence", "loo", "mean")}


def baselines(report: dict) -> list[dict]:
    grad = report["gradient_coherence"]
    ng = (report.get("nulls") or {}).get("gradient_coherence") or {}
    rows = []
    for label, path, iid_value, formula in (("leave-one-out", ("loo", "mean"), 0.0, "0"),
                                            ("naive (ḡ includes gᵢ)", ("cos", "mean"),
                                             grad["at_dpo"]["iid_naive_expectation"], "1/√N")):
        rows.append(baseline_row(f"gradient coherence, {label}", "final", "all", get(grad, "at_dpo", *path),
                                 get(ng, *path), None, get(grad, "relabelled", *path), iid_value, formula))
    rows.append(baseline_row("gradient coherence, leave-one-out, first divergent position", "final",
                             "first_divergence", get(grad, "at_dpo", "first_divergence", "loo", "mean"),
                             get(ng, "first_divergence", "loo", "mean"), None,
                             get(grad, "relabelled", "first_divergence", "loo", "mean"), 0.0, "0"))
    rows.append(baseline_row("gradient coherence at init (π = π_ref), leave-one-out", "final", "all",
                             get(grad, "at_init", "loo", "mean")))
    rows.append(baseline_row("cos(−ḡ, v̄ at final) (null: v̄_null)", "final", "all",
                             grad["at_dpo"].get("cos_neg_mean_grad_with_v_final"),
                             ng.get("cos_neg_mean_grad_with_v_final"), None,
                             grad["relabelled"].get("cos_neg_mean_grad_with_v_final")))
    return rows


PROBE = Probe("gradients", run, sections=("gradient_coherence",),
              numbers=("grad_loo", "grad_loo_fd", "grad_loo_relabelled", "grad_loo_fd_relabelled"), claims=CLAIMS,
              headline=headline, baselines=baselines)
