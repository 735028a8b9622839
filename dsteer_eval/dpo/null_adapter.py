"""The null adapter: a DPO update with its structure scrambled and its size kept.

D-STEER says the DPO update moves hidden states along a few *preference* directions. A null that
moves them just as far, with the same spectrum, but along directions unrelated to any preference,
tells which probe numbers come from the preference and which from any low-rank update of that size.

* LoRA pair (one PeftModel): every ``lora_B`` (out × r) gets its rows permuted by a seeded
  permutation of its own (:func:`permute_lora_B`). ΔW = s·P·B·A, P a permutation: each module keeps
  its singular values (times s) while its output directions are scrambled.
* Two full checkpoints: every weight delta ΔW = W_dpo − W_base gets its rows permuted the same way
  (:func:`permute_weight_delta`) and W_null = W_base + s·P·ΔW.
* The one scale s (shared by every module) is found by bisection so that the mean ‖δ‖ = ‖h_null −
  h_base‖ at the probe site, last prompt token, over the probe prompts matches DPO's to ``tol``
  (relative). The report records s and both means.

The null is installed as a second adapter named ``null`` on the same PeftModel (or as a third model
for full checkpoints) and used through :meth:`ModelPair.side` like the DPO side.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Sequence

import torch

from dsteer_eval.dpo.extract import last_token_states

NULL = "null"


def _perm(key: str, n: int, seed: int) -> torch.Tensor:
    digest = hashlib.sha256(f"dsteer-eval/null/{seed}/{key}".encode()).digest()
    return torch.randperm(n, generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1))


def permute_lora_B(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of a LoRA state dict with the rows of every ``lora_B`` weight permuted (seeded per key)."""
    out, found = {}, 0
    for key, value in state.items():
        if "lora_B" in key and value.dim() == 2:
            value = value[_perm(key, value.shape[0], seed)]
            found += 1
        out[key] = value.clone()
    if not found:
        raise ValueError("the adapter has no lora_B weights: the null adapter is defined for LoRA adapters")
    return out


def permute_weight_delta(base: dict[str, torch.Tensor], dpo: dict[str, torch.Tensor],
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """{name: P·(W_dpo − W_base)} for every weight that changed (rows permuted, seeded per name)."""
    out = {}
    for key, w in dpo.items():
        delta = w.detach().float() - base[key].detach().float()
        if delta.abs().max() > 0:
            out[key] = delta[_perm(key, delta.shape[0], seed)] if delta.dim() >= 1 else delta
    if not out:
        raise ValueError("the two checkpoints are identical: there is no update to scramble")
    return out


def _mean_shift(pair, which_pair, prompts, site, base_states, batch_size) -> float:
    with which_pair.side("dpo") as model:
        states = last_token_states(model, pair.tokenizer, prompts, batch_size=batch_size, desc="null")[:, site]
    return float((states - base_states).norm(dim=-1).mean())


@dataclasses.dataclass
class NullInfo:
    kind: str  # "lora-B row permutation" | "weight-delta row permutation"
    seed: int
    scale: float
    site: int
    target_mean_shift: float  # DPO's mean ‖δ‖ at the site
    null_mean_shift: float
    evaluations: int


def attach_null(pair, prompts: Sequence[str], site: int, *, seed: int = 0, tol: float = 0.01,
                max_evaluations: int = 40, batch_size: int = 8):
    """Build the null for ``pair`` and return (null_pair, NullInfo); ``null_pair.side("dpo")`` runs it."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict  # deferred: peft loads only when an adapter is used

    if not prompts:
        raise ValueError("the null adapter needs probe prompts to match the shift size on")
    with pair.side("base") as model:
        base_states = last_token_states(model, pair.tokenizer, prompts, batch_size=batch_size, desc="base")[:, site]
    with pair.side("dpo") as model:
        dpo_states = last_token_states(model, pair.tokenizer, prompts, batch_size=batch_size, desc="dpo")[:, site]
    target = float((dpo_states - base_states).norm(dim=-1).mean())
    if target == 0:
        raise ValueError(f"the DPO side does not move the states at layer {site}: no shift to match")

    if pair.uses_adapter:
        peft_model = pair.base
        name = pair.adapter_name
        permuted = permute_lora_B(get_peft_model_state_dict(peft_model, adapter_name=name), seed)
        if NULL not in peft_model.peft_config:
            peft_model.add_adapter(NULL, copy.deepcopy(peft_model.peft_config[name]))
        null_pair = dataclasses.replace(pair, adapter_name=NULL)
        kind = "lora-B row permutation"

        def set_scale(s: float) -> None:
            set_peft_model_state_dict(peft_model, {k: (v * s if "lora_B" in k else v) for k, v in permuted.items()},
                                      adapter_name=NULL)
            peft_model.eval()
    else:
        base_sd = {k: v for k, v in pair.base.state_dict().items()}
        deltas = permute_weight_delta(base_sd, pair.dpo.state_dict(), seed)
        null_model = copy.deepcopy(pair.base).eval()
        params = dict(null_model.named_parameters()) | dict(null_model.named_buffers())
        null_pair = dataclasses.replace(pair, dpo=null_model, dpo_id=f"null({pair.dpo_id})")
        kind = "weight-delta row permutation"

        def set_scale(s: float) -> None:
            with torch.no_grad():
                for key, delta in deltas.items():
                    params[key].copy_(base_sd[key].float() + s * delta)

    evaluations = 0

    def shift(s: float) -> float:
        nonlocal evaluations
        evaluations += 1
        set_scale(s)
        return _mean_shift(pair, null_pair, prompts, site, base_states, batch_size)

    lo, hi = 0.0, 1.0
    got = shift(hi)
    while got < target and evaluations < max_evaluations // 2:
        lo, hi = hi, hi * 2
        got = shift(hi)
    s = hi
    while abs(got - target) > tol * target and evaluations < max_evaluations:
        s = (lo + hi) / 2
        got = shift(s)
        lo, hi = (s, hi) if got < target else (lo, s)
    if abs(got - target) > tol * target:
        raise RuntimeError(f"null adapter: could not match the mean shift {target:.4g} at layer {site} within "
                           f"{tol:.0%} in {max_evaluations} evaluations (last: scale {s:.4g} -> {got:.4g})")
    return null_pair, NullInfo(kind, seed, s, site, target, got, evaluations)
