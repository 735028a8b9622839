"""The words on a gap-closure card, decided from the numbers so that they cannot overstate.

Inputs: a gap closure (:class:`dsteer_eval.stats.gap.GapClosure`: the fraction f of the base–DPO gap v̄ closes,
its paired CI [f₋, f₊], and the gap's own CI) and the fractions r₁..r_K that K random directions of v̄'s norm
close at the same point.

**Distance, not size.** The target is f = 1 (the other side reproduced). v̄ is ranked by its distance
|1 − f| to the target: an overshoot to 300 % is as far from it as −100 %, never "more". Rank = 1 + #{k:
|1 − rₖ| < |1 − f|}; ties = #{k: |1 − rₖ| = |1 − f|} (shown as a tie, "1–2 of 9"); the empirical p-value is
(1 + #{k: |1 − rₖ| ≤ |1 − f|}) / (K + 1) (a tie counts against v̄); the z-score is
(mean |1 − r| − |1 − f|) / sd |1 − r| (sample SD; positive = v̄ nearer the target than random directions are
on average; absent when the SD is 0).

**Verdicts** (each a word and the reason it was given):

* ``gap`` — *shown* when the gap's CI excludes 0, else *not shown*: then no fraction is printed at all and
  every verdict below is *not shown*. *unstable* flags a shown gap whose CI bound nearest 0 is below half its
  estimate (a fraction of it can swing by a factor of two or more).
* ``moves`` — *supported* when f's CI lies above 0, *wrong way* when it lies below 0, else *not shown*.
* ``half`` — *overshoot* when f's CI lies above 1 (never "≥ half"); *supported* when it lies at or above ½;
  *contradicted* when it lies below ½; else *not shown*.
* ``vs random`` — decided only for a v̄ that moves toward the target (``moves`` supported; otherwise *not
  decided*, since beating random directions that move further the wrong way says nothing about v̄) and only
  when K ≥ :data:`MIN_RANDOM_P05` (p can reach 0.05; below it *underpowered*); then *supported* when
  p ≤ 0.05, else *not shown*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

MIN_RANDOM_P05 = 19  # (1 + 0)/(K + 1) <= 0.05 needs K >= 19
ALPHA_LEVEL = 0.05
HALF = 0.5
TARGET = 1.0

SHOWN, NOT_SHOWN, UNSTABLE = "shown", "not shown", "unstable"
SUPPORTED, CONTRADICTED, WRONG_WAY, OVERSHOOT = "supported", "contradicted", "wrong way", "overshoot"
UNDERPOWERED, NOT_DECIDED = "underpowered", "not decided"


@dataclass(frozen=True)
class DistanceRank:
    distance: float  # |1 − f| of v̄
    k: int  # random directions
    rank: int  # 1 = nearer the target than every random direction
    ties: int  # random directions at exactly v̄'s distance
    p_value: float  # (1 + #{|1 − r| <= |1 − f|}) / (K + 1)
    z: float | None  # (mean |1 − r| − |1 − f|) / sd |1 − r|
    underpowered: bool  # K < MIN_RANDOM_P05

    @property
    def label(self) -> str:
        """"1 of 9", or "1–2 of 9" for a tie."""
        top = self.rank + self.ties
        return f"{self.rank} of {self.k + 1}" if not self.ties else f"{self.rank}–{top} of {self.k + 1} (tie)"

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}

    @classmethod
    def from_dict(cls, found: dict) -> "DistanceRank":
        """The rank back from :meth:`as_dict` (the report keeps it as JSON)."""
        return cls(**{f.name: found[f.name] for f in fields(cls)})


def rank_by_distance(fraction: float, random_fractions: Sequence[float]) -> DistanceRank:
    """v̄'s rank among random directions by distance to the target (module docstring)."""
    if not math.isfinite(fraction):
        raise ValueError(f"rank_by_distance: v̄'s fraction {fraction} is not finite")
    pop = np.asarray([float(r) for r in random_fractions], dtype=np.float64)
    if not np.isfinite(pop).all():
        raise ValueError("rank_by_distance: a random direction's fraction is not finite; drop it and say so")
    mine = abs(TARGET - fraction)
    theirs = np.abs(TARGET - pop)
    k = len(pop)
    closer, ties = int((theirs < mine).sum()), int((theirs == mine).sum())
    z = None
    if k >= 2 and float(theirs.std(ddof=1)) > 0:
        z = float((theirs.mean() - mine) / theirs.std(ddof=1))
    return DistanceRank(mine, k, 1 + closer, ties, (1 + closer + ties) / (k + 1), z, k < MIN_RANDOM_P05)


@dataclass(frozen=True)
class GapVerdicts:
    gap: str  # shown | not shown
    unstable: bool
    moves: str
    half: str
    vs_random: str
    reasons: dict  # verdict name -> why, in words

    @property
    def fraction_shown(self) -> bool:
        return self.gap == SHOWN

    def vs_random_text(self, rank: DistanceRank | None) -> str:
        """The "vs random" word as a card or leaderboard prints it (underpowered names K)."""
        if self.vs_random == UNDERPOWERED and rank is not None:
            return f"{UNDERPOWERED} (K = {rank.k} < {MIN_RANDOM_P05})"
        return self.vs_random

    def as_dict(self) -> dict:
        return {**asdict(self), "fraction_shown": self.fraction_shown}


def _side_of(low: float, high: float, threshold: float) -> int:
    """+1: the CI lies above ``threshold``; −1: below; 0: it contains it."""
    return 1 if low > threshold else -1 if high < threshold else 0


def gap_verdicts(*, gap_mean: float, gap_low: float, gap_high: float, fraction: float | None,
                 low: float | None, high: float | None, rank: DistanceRank | None) -> GapVerdicts:
    """The card's verdicts for one steered point (module docstring)."""
    if _side_of(gap_low, gap_high, 0.0) == 0 or fraction is None or low is None or high is None:
        why = "the gap's CI contains 0: no fraction of it is meaningful"
        return GapVerdicts(NOT_SHOWN, False, NOT_SHOWN, NOT_SHOWN, NOT_SHOWN,
                           {"gap": why, "moves": why, "half": why, "vs_random": why})
    nearest = min(abs(gap_low), abs(gap_high))
    unstable = nearest < abs(gap_mean) / 2
    reasons = {"gap": (f"unstable: the gap's CI reaches {nearest:.3g}, below half its estimate {abs(gap_mean):.3g}"
                       if unstable else "the gap's CI excludes 0")}
    side = _side_of(low, high, 0.0)
    moves = {1: SUPPORTED, -1: WRONG_WAY, 0: NOT_SHOWN}[side]
    reasons["moves"] = {1: "the fraction's CI lies above 0", -1: "the fraction's CI lies below 0: away from the "
                        "target", 0: "the fraction's CI contains 0"}[side]
    if low > TARGET:
        half, reasons["half"] = OVERSHOOT, "the fraction's CI lies above 1: past the target, not more of it"
    else:
        h = 1 if low >= HALF - 1e-12 else _side_of(low, high, HALF)  # "at or above", up to float rounding
        half = {1: SUPPORTED, -1: CONTRADICTED, 0: NOT_SHOWN}[h]
        reasons["half"] = {1: "the fraction's CI lies at or above ½", -1: "the fraction's CI lies below ½",
                           0: "the fraction's CI contains ½"}[h]
    if moves != SUPPORTED:
        vs_random = NOT_DECIDED
        reasons["vs_random"] = "v̄ does not move toward the target, so beating random directions says nothing"
    elif rank is None or rank.k == 0:
        vs_random, reasons["vs_random"] = NOT_SHOWN, "no random directions"
    elif rank.underpowered:
        vs_random = UNDERPOWERED
        reasons["vs_random"] = (f"K = {rank.k} < {MIN_RANDOM_P05}: the smallest possible p is "
                                f"{1 / (rank.k + 1):.3f} > {ALPHA_LEVEL}")
    else:
        vs_random = SUPPORTED if rank.p_value <= ALPHA_LEVEL else NOT_SHOWN
        reasons["vs_random"] = f"rank {rank.label} by distance to the target, p = {rank.p_value:.3f}"
    return GapVerdicts(SHOWN, unstable, moves, half, vs_random, reasons)


def choose_nearest(candidates: Sequence[tuple[str, float]]) -> list[str]:
    """The names of the candidates nearest the target (|1 − f| smallest): one name, or several for a tie.
    ``candidates``: (name, fraction) pairs already screened (gap shown, moving toward the target, not
    degenerate); an empty list when there are none."""
    finite = [(name, abs(TARGET - f)) for name, f in candidates if f is not None and math.isfinite(f)]
    if not finite:
        return []
    best = min(d for _, d in finite)
    return [name for name, d in finite if d == best]
