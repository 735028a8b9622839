"""Spectral summaries of a matrix of hidden states (rows = examples, columns = hidden dims).

For singular values σ_1 ≥ σ_2 ≥ … of an (N × d) matrix M (uncentred; :func:`spectrum` with
``centred=True`` first subtracts the column means, i.e. the mean row):

* energy shares       p_k = σ_k² / Σ_j σ_j²
* top-1 energy share  p_1
* spectral entropy    H = −Σ_k p_k ln p_k   (nats, over energy shares; 0 for rank one)
* effective rank      exp(−Σ_k q_k ln q_k) with q_k = σ_k / Σ_j σ_j — Roy & Vetterli (2007), whose
                      distribution is the singular values themselves (not their squares); 1 for rank
                      one, min(N, d) for equal singular values
* σ1/σ2               inf when σ_2 = 0

An uncentred spectrum of state differences is dominated by their mean (a shared shift is rank one
by construction); the centred one asks whether the spread around that mean is low-rank too.

Everything is computed in float64.
"""

from __future__ import annotations

import math

import torch


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    if matrix.dim() != 2 or min(matrix.shape) == 0:
        raise ValueError(f"need a non-empty 2-D matrix, got shape {tuple(matrix.shape)}")
    return torch.linalg.svdvals(matrix.detach().to(torch.float64).cpu())


def energy_shares(sv: torch.Tensor) -> torch.Tensor:
    energy = sv.to(torch.float64) ** 2
    total = energy.sum()
    if total == 0:
        raise ValueError("the matrix is zero: its spectrum has no energy to share")
    return energy / total


def spectral_entropy(sv: torch.Tensor) -> float:
    p = energy_shares(sv)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def effective_rank(sv: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the singular-value shares σ_k / Σσ."""
    sv = sv.to(torch.float64)
    total = sv.sum()
    if total == 0:
        raise ValueError("the matrix is zero: it has no effective rank")
    q = sv / total
    q = q[q > 0]
    return math.exp(float(-(q * q.log()).sum()))


def spectrum(matrix: torch.Tensor, *, direction: torch.Tensor | None = None, keep: int = 16,
             centred: bool = False) -> dict:
    """Summary of ``matrix``'s spectrum; with ``direction``, also |cos(u1, direction)|.

    ``u1`` is the top right singular vector (a direction in hidden space).
    """
    m = matrix.detach().to(torch.float64).cpu()
    if m.dim() != 2 or min(m.shape) == 0:
        raise ValueError(f"need a non-empty 2-D matrix, got shape {tuple(m.shape)}")
    if centred:
        m = m - m.mean(dim=0, keepdim=True)
    _, sv, vh = torch.linalg.svd(m, full_matrices=False)
    shares = energy_shares(sv)
    out = {
        "singular_values": [float(s) for s in sv[:keep]],
        "sigma1_over_sigma2": float(sv[0] / sv[1]) if len(sv) > 1 and sv[1] > 0 else math.inf,
        "top1_energy": float(shares[0]),
        "spectral_entropy": spectral_entropy(sv),
        "effective_rank": effective_rank(sv),
    }
    if direction is not None:
        d = direction.detach().to(torch.float64).cpu()
        if d.shape != vh[0].shape:
            raise ValueError(f"direction has shape {tuple(d.shape)}, the matrix has {m.shape[1]} columns")
        norm = float(d.norm())
        out["abs_cos_u1"] = abs(float(vh[0] @ d) / norm) if norm > 0 else None
    return out
