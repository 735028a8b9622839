"""Random-direction controls: seeded directions with exactly the norm of the vector they control for.

A steering effect means something only beside what an arbitrary push of the same size does. For a
vector v at site s, control i (i = 0..K−1) is a standard-normal direction drawn from
``torch.Generator().manual_seed(seed_for(seed, s, i))`` in float64, scaled to ‖v‖ and stored in
float32 — the same α, layer and positions then give a push of exactly the same size in a direction
that carries no preference. Controls are named ``random:<i>`` in sweeps and reports.
"""

from __future__ import annotations

import hashlib

import torch

DEFAULT_SEED = 0


def seed_for(seed: int, site: int, index: int) -> int:
    """A stable 63-bit seed for (seed, site, index): each site and control gets its own direction."""
    digest = hashlib.sha256(f"dsteer-eval/random-control/{seed}/{site}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def random_direction(vector: torch.Tensor, *, site: int, index: int, seed: int = DEFAULT_SEED) -> torch.Tensor:
    """Control ``index`` for ``vector`` at ``site``: a seeded random direction with ‖·‖ = ‖vector‖."""
    if vector.dim() != 1:
        raise ValueError(f"random_direction: the vector must be 1-D, got shape {tuple(vector.shape)}")
    norm = float(vector.detach().to(torch.float64).norm())
    if norm == 0.0:
        raise ValueError(f"random_direction: the vector at layer {site} is zero; a zero push needs no control")
    g = torch.Generator().manual_seed(seed_for(seed, site, index))
    r = torch.randn(vector.shape[0], generator=g, dtype=torch.float64)
    return (r * (norm / float(r.norm()))).to(torch.float32)


def parse_controls(text: str | None) -> int:
    """``random`` or ``random:K`` -> K (``random`` = 1); ``None``/``""``/``none`` -> 0."""
    if text is None or str(text).strip().lower() in ("", "none", "0"):
        return 0
    kind, _, count = str(text).strip().partition(":")
    if kind != "random":
        raise ValueError(f"--controls {text!r}: the only control kind is 'random' (e.g. --controls random:3)")
    if not count:
        return 1
    try:
        k = int(count)
    except ValueError:
        raise ValueError(f"--controls {text!r}: K must be a whole number (e.g. random:3)") from None
    if not 1 <= k <= 64:
        raise ValueError(f"--controls {text!r}: K must be between 1 and 64")
    return k
