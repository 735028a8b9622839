"""Gradient coherence without the self-inclusion bias, and its shuffled-pair baseline.

The naive statistic cos(gᵢ, ḡ) with ḡ the mean over all N gradients includes gᵢ in ḡ: for i.i.d.
random vectors in d dimensions its mean is ≈ 1/√N·(…) > 0 (about 0.12 for N = 64, d = 576). The
leave-one-out statistic cos(gᵢ, ḡ₋ᵢ), ḡ₋ᵢ the mean of the others, has expectation 0 for i.i.d.
directions and ≈ 1 when every gᵢ shares one direction: it measures sharing, not sample size.

The baseline relabels the preference: for a seeded random half of the pairs, chosen and rejected are
swapped before the gradients are taken (:func:`relabel`). A real preference direction is shared by
the true labels and broken by the relabelling.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch


def loo_cosines(grads: torch.Tensor) -> torch.Tensor:
    """cos(gᵢ, mean of the other rows) for every row of ``grads`` (N × d, N ≥ 2), in float64."""
    g = grads.detach().to(torch.float64)
    if g.dim() != 2 or g.shape[0] < 2:
        raise ValueError(f"leave-one-out coherence needs at least 2 gradients, got shape {tuple(g.shape)}")
    others = (g.sum(0, keepdim=True) - g) / (g.shape[0] - 1)
    return torch.nn.functional.cosine_similarity(g, others, dim=1)


def iid_expectation_naive(n: int, d: int) -> float:
    """E[cos(gᵢ, ḡ)] for N i.i.d. isotropic Gaussian vectors in d dims, ḡ including gᵢ (large-d limit).

    ⟨gᵢ, ḡ⟩ ≈ ‖g‖²/N and ‖ḡ‖ ≈ ‖g‖/√N, so the cosine ≈ 1/√N — the floor the naive statistic
    reports for pure noise (0.125 for N = 64). The leave-one-out statistic's floor is 0.
    """
    return 1.0 / n ** 0.5


def relabel(pairs: Sequence, seed: int = 0) -> tuple[list, list[int]]:
    """``pairs`` with chosen/rejected swapped on a seeded random half; returns (pairs, swapped indices).

    Works on any dataclass with ``chosen`` and ``rejected`` fields (``dataclasses.replace``).
    """

    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(pairs)), len(pairs) // 2))
    chosen = set(idx)
    out = [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen) if i in chosen else p
           for i, p in enumerate(pairs)]
    return out, idx
