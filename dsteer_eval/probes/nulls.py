"""Baselines for the probe report, computed in the same run: the null adapter, random directions, i.i.d.

* :func:`null_probes`      the null adapter (:mod:`dsteer_eval.dpo.null_adapter`: the DPO update's rows
                           permuted, rescaled to DPO's mean ‖δ‖ at the probe layer) run through the
                           same probes as DPO, with its own δᵢ^null = h_null − h_base and its own
                           v̄_null = mean δᵢ^null (in-sample, every site).
* :func:`random_controls`  K seeded random directions r with ‖r‖ = ‖v̄‖ at the probe layer
                           (:func:`dsteer_eval.steering.controls.random_direction`) in place of v̄.
* :func:`iid_expectations` what the statistics would be for directions or matrices with no
                           structure at all (formulas named in the output).

Each returns (section, numbers): ``section`` goes into the report as is, ``numbers`` holds the
per-item values (same prompts / pairs as DPO's, in the same order) that the verdicts pair with DPO's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dsteer_eval.dpo.extract import last_token_states
from dsteer_eval.dpo.null_adapter import NULL, attach_null
from dsteer_eval.probes import gradients, identity, measures as probes
from dsteer_eval.steering.controls import random_direction


def iid_expectations(n: int, d: int, n_grad: int | None = None) -> dict:
    """Expectations for structureless data: n prompts, d hidden dims, n_grad gradient pairs."""
    # E|cos(u, v)| for u uniform on the sphere in d dims: Γ(d/2) / (√π Γ((d+1)/2)) ≈ √(2/(πd))
    abs_cos = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    out = {
        "cos_with_random_direction": {"mean": 0.0, "sd": 1 / math.sqrt(d), "formula": "0 ± 1/√d"},
        "projection_on_random_unit": {"mean": 0.0, "formula": "0 ± rms‖δ‖/√d"},
        "abs_cos_u1_with_v": {"mean": abs_cos, "formula": "E|cos| of a uniform direction = Γ(d/2)/(√π Γ((d+1)/2))"},
        "top1_energy_gaussian": {"mean": (math.sqrt(n) + math.sqrt(d)) ** 2 / (n * d),
                                 "formula": "(√N + √d)²/(N·d): i.i.d. Gaussian N × d, Marchenko–Pastur edge "
                                            "(large N, d)"},
        "n": n, "d": d,
    }
    if n_grad:
        out["grad_coherence_loo"] = {"mean": 0.0, "formula": "0 (leave-one-out, i.i.d. directions)"}
        out["grad_coherence_naive"] = {"mean": 1 / math.sqrt(n_grad), "formula": "1/√N (ḡ includes gᵢ)"}
    return out


def random_controls(pair, prompts: Sequence[str], delta: torch.Tensor, v: torch.Tensor, layer: int, *, count: int,
                    seed: int, logp: dict, batch_size: int = 8) -> tuple[dict, dict]:
    """K norm-matched random directions r at ``layer`` in place of v̄ (δ = ΔH at the layer, last prompt token).

    Per prompt, averaged over the K controls: ⟨δᵢ, r̂⟩, cos(δᵢ, r), KL(base ‖ dpo − r) and
    KL(dpo ‖ base + r) (r added at every position, α = 1).
    """

    if count < 1:
        return {}, {}
    rs = [random_direction(v.float(), site=layer, index=i, seed=seed) for i in range(count)]
    proj = torch.stack([delta.double() @ (r.double() / r.double().norm()) for r in rs]).mean(0)
    cos = torch.stack([probes.cosines(delta, r) for r in rs]).mean(0)
    kls = [identity.identity_kl(pair, prompts, r, layer, 1.0, logp=logp, batch_size=batch_size) for r in rs]
    restored = torch.stack([k["restoration"] for k in kls]).mean(0)
    reproduced = torch.stack([k["reproduction"] for k in kls]).mean(0)
    kl_bd, kl_db = float(kls[0]["kl_base_dpo"].mean()), float(kls[0]["kl_dpo_base"].mean())
    section = {
        "count": count, "seed": seed, "layer": layer, "norm": float(v.norm()),
        "names": [f"random:{i}" for i in range(count)],
        "projection": {"position": "last_prompt", "shift": probes.summary(proj),
                       "frac_rose": float((proj > 0).double().mean())},
        "consistency": {"position": "last_prompt", "cos": probes.summary(cos),
                        "frac_above_0_5": float((cos > 0.5).double().mean())},
        "steering_identity": {
            "layer": layer, "position": "all", "alpha": 1.0,
            "restoration_kl": float(restored.mean()), "restoration_ratio": _ratio(float(restored.mean()), kl_bd),
            "reproduction_kl": float(reproduced.mean()), "reproduction_ratio": _ratio(float(reproduced.mean()), kl_db),
        },
    }
    return section, {"proj_r": proj, "cos_r": cos, "kl_restored_random": restored, "kl_reproduced_random": reproduced}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _spectra_at(delta: torch.Tensor, h: torch.Tensor, v: torch.Tensor) -> dict:
    return {"uncentred": probes.delta_spectrum(delta, v, False), "centred": probes.delta_spectrum(delta, v, True),
            "states": probes.state_spectrum(h)}


def null_probes(pair, prompts: Sequence[str], base_states: torch.Tensor, layer: int, *, seed: int,
                beta: float, grad_pairs: Sequence, content: Sequence, logp_base: torch.Tensor,
                batch_size: int = 8, max_length: int = 256, tol: float = 0.01) -> tuple[dict, dict]:
    """The null adapter through DPO's probes. ``base_states``: (N, sites, d) at the last prompt token;
    ``grad_pairs``: the pairs of DPO's gradient coherence; ``content``: the content-token divergences.

    The null is attached for this call only: an adapter added to a PeftModel is deleted on the way out
    and the pair's own adapter is active again.
    """

    had_null = pair.uses_adapter and NULL in getattr(pair.base, "peft_config", {})
    try:
        null_pair, info = attach_null(pair, prompts, layer, seed=seed, tol=tol, batch_size=batch_size)
        with null_pair.side("dpo") as model:
            h_null = last_token_states(model, pair.tokenizer, prompts, batch_size=batch_size, desc="null")
        delta_all = h_null - base_states
        vectors = {s: delta_all[:, s].mean(0) for s in range(delta_all.shape[1])}
        v, delta = vectors[layer], delta_all[:, layer]
        proj = delta.double() @ (v.double() / v.double().norm())
        cos = probes.cosines(delta, v)
        consistency = probes.directional_consistency(delta, v)
        logp = {"base": logp_base}
        with null_pair.side("dpo") as model:
            logp["dpo"] = identity.next_token_logprobs(model, pair.tokenizer, prompts, batch_size=batch_size)
        kl = identity.identity_kl(null_pair, prompts, v, layer, 1.0, logp=logp, batch_size=batch_size)
        grads = gradients.shift_gradients(null_pair, grad_pairs, beta=beta, policy="dpo", sites=range(delta_all.shape[1]),
                                       max_length=max_length, batch_size=max(1, batch_size // 2), desc="grad (null)")
        coherence, loo, loo_fd = gradients.coherence_summary(grads, vectors)
        margins = probes.logit_margins(null_pair, content, batch_size=batch_size) if content else None
    finally:
        if pair.uses_adapter:
            if not had_null and NULL in pair.base.peft_config:
                pair.base.set_adapter(pair.adapter_name)
                pair.base.delete_adapter(NULL)
            pair.base.set_adapter(pair.adapter_name)
    r_mean, rep_mean = float(kl["restoration"].mean()), float(kl["reproduction"].mean())
    kl_bn, kl_nb = float(kl["kl_base_dpo"].mean()), float(kl["kl_dpo_base"].mean())
    section = {
        "adapter": {k: getattr(info, k) for k in ("kind", "seed", "scale", "site", "target_mean_shift",
                                                   "null_mean_shift", "evaluations")},
        "layer": layer,
        "vector": {"source": "in-sample mean of the null's δ over the probe prompts", "norm": float(v.norm())},
        "consistency": {"position": "last_prompt", **consistency},
        "projection": {"position": "last_prompt", "shift": probes.summary(proj),
                       "frac_rose": float((proj > 0).double().mean())},
        "spectra": {"layer": layer, "position": "last_prompt", **_spectra_at(delta, h_null[:, layer], v)},
        "steering_identity": {
            "layer": layer, "position": "all", "alpha": 1.0,
            "kl_base_null": kl_bn, "restoration_kl": r_mean, "restoration_ratio": _ratio(r_mean, kl_bn),
            "kl_null_base": kl_nb, "reproduction_kl": rep_mean, "reproduction_ratio": _ratio(rep_mean, kl_nb),
        },
        "gradient_coherence": coherence,
    }
    numbers = {"proj_null": proj, "cos_null": cos, "kl_restored_null": kl["restoration"],
               "kl_base_null": kl["kl_base_dpo"], "kl_reproduced_null": kl["reproduction"],
               "kl_null_base": kl["kl_dpo_base"], "grad_loo_null": loo, "delta_null": delta}
    if margins is not None:
        section["logit_margin"] = {"position": "first_divergence_content", "pairs": len(content),
                                   "shift": probes.summary(margins["shift"]),
                                   "frac_rose": float((margins["shift"] > 0).double().mean())}
        numbers["margin_shift_null"] = margins["shift"]
    return section, numbers
