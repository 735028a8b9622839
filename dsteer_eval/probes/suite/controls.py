"""Controls: K norm-matched random directions in place of v̄ at the probe layer, and the i.i.d. expectations
for structureless data (dsteer_eval.probes.nulls)."""

from __future__ import annotations

from dsteer_eval.probes import nulls
from dsteer_eval.probes.registry import Claim, Probe, ProbeContext, get

CLAIMS = (
    Claim("projection_vs_random", "movement along v̂ exceeds movement along a norm-matched random direction",
          "mean", ("proj_v",), ("proj_r",), "⟨δᵢ, v̂⟩ vs ⟨δᵢ, r̂⟩ (r̂ averaged over the random controls)",
          "layer", "last_prompt", "prompts"),
    Claim("consistency_vs_random", "δᵢ agree with v̄ more than with a norm-matched random direction",
          "mean", ("cos_v",), ("cos_r",), "cos(δᵢ, v̄) vs cos(δᵢ, r)", "layer", "last_prompt", "prompts"),
    Claim("restoration_vs_random", "−v̄ restores the base better than minus a norm-matched random direction",
          "statistic", ("kl_restored", "kl_base_dpo"), ("kl_restored_random", "kl_base_dpo"),
          "1 − mean KL(base ‖ dpo − v̄) / mean KL(base ‖ dpo) vs 1 − mean KL(base ‖ dpo − r) / mean KL(base ‖ dpo)",
          "layer", "all", "prompts", fn="reduction"),
)


def run(ctx: ProbeContext) -> dict:
    s = ctx.settings
    used = ctx.need("used_pairs", "gradients")
    controls = {"iid": nulls.iid_expectations(len(ctx.prompts), ctx.delta.shape[1], len(used))}
    if s.random_controls > 0:
        controls["random_direction"], found = nulls.random_controls(
            ctx.pair, ctx.prompts, ctx.delta, ctx.v, ctx.layer, count=s.random_controls, seed=s.null_seed,
            logp=ctx.need("logp", "identity"), batch_size=s.batch_size)
        ctx.numbers.update(found)
    return {"controls": controls}


def headline(report: dict) -> dict:
    rnd = get(report, "controls", "random_direction")
    return {"random_projection_shift_mean": get(rnd, "projection", "shift", "mean"),
            "random_consistency_cos_mean": get(rnd, "consistency", "cos", "mean"),
            "random_restoration_ratio": get(rnd, "steering_identity", "restoration_ratio")}


PROBE = Probe("controls", run, sections=("controls",),
              numbers=("proj_r", "cos_r", "kl_restored_random", "kl_reproduced_random"), claims=CLAIMS,
              headline=headline)
