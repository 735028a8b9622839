"""DPO implicit rewards summarised: pooled, and by what a refusal-set pair teaches (refuse / answer).

Shared by training (the card's metrics) and the gate (held-out re-measurement), so neither imports the other.
"""

from __future__ import annotations

import math

import torch

from dsteer_eval.data.refusal_set import REFUSALS


def reward_summary(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    margins = chosen - rejected
    n = len(margins)
    stderr = float(margins.std(unbiased=True) / math.sqrt(n)) if n > 1 else None
    return {
        "pairs": n,
        "reward_accuracy": float((margins > 0).float().mean()),
        "reward_margin_mean": float(margins.mean()),
        "reward_margin_stderr": stderr,
        "reward_margin_median": float(margins.median()),
        "chosen_reward_mean": float(chosen.mean()),
        "rejected_reward_mean": float(rejected.mean()),
    }


def pair_kind(pair) -> str | None:
    """``"refuse"``, ``"answer"`` or ``None`` (not a refusal-set pair)."""
    if pair.chosen in REFUSALS:
        return "refuse"
    if pair.rejected in REFUSALS:
        return "answer"
    return None


def rewards_by_kind(chosen: torch.Tensor, rejected: torch.Tensor, pairs) -> dict:
    """``{kind: reward_summary}`` for every kind present; ``{}`` when fewer than two kinds are known."""
    if len(pairs) != len(chosen):
        raise ValueError(f"{len(pairs)} pairs but {len(chosen)} rewards")
    kinds = [pair_kind(p) for p in pairs]
    present = sorted({k for k in kinds if k is not None})
    if len(present) < 2:
        return {}
    out = {}
    for kind in present:
        idx = torch.tensor([i for i, k in enumerate(kinds) if k == kind])
        out[kind] = reward_summary(chosen[idx], rejected[idx])
    return out
