"""The null adapter: the DPO update's rows permuted and rescaled to DPO's mean |δ| at the probe layer, run
through the same probes (dsteer_eval.probes.nulls.null_probes); every ``*_vs_null`` claim reads it."""

from __future__ import annotations

import logging

from dsteer_eval.probes import nulls
from dsteer_eval.probes.registry import Claim, Probe, ProbeContext, get

log = logging.getLogger(__name__)

CLAIMS = (
    Claim("projection_vs_null", "movement along v̂ exceeds the null adapter's movement along its own v̂_null",
          "mean", ("proj_v",), ("proj_null",), "⟨δᵢ, v̂⟩ vs ⟨δᵢ^null, v̂_null⟩", "layer", "last_prompt", "prompts"),
    Claim("consistency_vs_null", "δᵢ agree with v̄ more than the null's δᵢ agree with v̄_null",
          "mean", ("cos_v",), ("cos_null",), "cos(δᵢ, v̄) vs cos(δᵢ^null, v̄_null)", "layer", "last_prompt",
          "prompts"),
    Claim("restoration_vs_null", "−v̄ restores the base better than the null's own −v̄_null restores its base",
          "statistic", ("kl_restored", "kl_base_dpo"), ("kl_restored_null", "kl_base_null"),
          "1 − mean KL(base ‖ dpo − v̄) / mean KL(base ‖ dpo) vs the same for the null (α = 1)",
          "layer", "all", "prompts", fn="reduction"),
    Claim("reproduction_vs_null", "+v̄ reproduces the DPO model better than +v̄_null reproduces the null",
          "statistic", ("kl_reproduced", "kl_dpo_base"), ("kl_reproduced_null", "kl_null_base"),
          "1 − mean KL(dpo ‖ base + v̄) / mean KL(dpo ‖ base) vs the same for the null (α = 1)",
          "layer", "all", "prompts", fn="reduction"),
    Claim("coherence_vs_null", "gradient coherence (leave-one-out) exceeds the null adapter's",
          "mean", ("grad_loo",), ("grad_loo_null",), "cos(gᵢ, ḡ₋ᵢ), π = DPO vs π = null", "final", "all", "pairs"),
    Claim("logit_margin_vs_null", "the logit margin rises more under DPO than under the null adapter",
          "mean", ("margin_shift",), ("margin_shift_null",), "margin shift DPO − base vs null − base", "final",
          "first_divergence_content", "pairs"),
    Claim("top1_energy_vs_null", "the top-1 energy share of ΔH exceeds the null's",
          "statistic", ("delta",), ("delta_null",), "σ1²/Σσ² of ΔH (uncentred) vs of ΔH_null", "layer",
          "last_prompt", "prompts", fn="top1"),
    Claim("top1_energy_centred_vs_null", "the top-1 energy share of centred ΔH exceeds the null's",
          "statistic", ("delta",), ("delta_null",), "σ1²/Σσ² of ΔH − mean row vs the same for ΔH_null", "layer",
          "last_prompt", "prompts", fn="top1_centred"),
)


def run(ctx: ProbeContext) -> dict:
    s = ctx.settings
    if not s.nulls:
        return {"nulls": None}
    try:
        section, found = nulls.null_probes(
            ctx.pair, ctx.prompts, ctx.states.base, ctx.layer, seed=s.null_seed, beta=s.beta,
            grad_pairs=ctx.need("used_pairs", "gradients"), content=ctx.need("content", "logit_margin"),
            logp_base=ctx.need("logp", "identity")["base"], batch_size=s.batch_size, max_length=s.max_length)
    except (ValueError, RuntimeError) as exc:
        log.warning("probe: no null adapter (%s); the verdicts against it are left out", exc)
        return {"nulls": {"error": str(exc)}}
    ctx.numbers.update(found)
    return {"nulls": section}


def headline(report: dict) -> dict:
    null = report.get("nulls") or {}
    return {"null_projection_shift_mean": get(null, "projection", "shift", "mean"),
            "null_consistency_cos_mean": get(null, "consistency", "cos", "mean"),
            "null_delta_top1_energy": get(null, "spectra", "uncentred", "top1_energy"),
            "null_restoration_ratio": get(null, "steering_identity", "restoration_ratio"),
            "null_reproduction_ratio": get(null, "steering_identity", "reproduction_ratio"),
            "null_grad_coherence_loo_mean": get(null, "gradient_coherence", "loo", "mean")}


PROBE = Probe("null_adapter", run, sections=("nulls",),
              numbers=("proj_null", "cos_null", "kl_restored_null", "kl_base_null", "kl_reproduced_null",
                       "kl_null_base", "grad_loo_null", "delta_null", "margin_shift_null"),
              claims=CLAIMS, headline=headline)
