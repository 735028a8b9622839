"""The fraction of a base–DPO gap that steering closes, with a paired bootstrap CI, and v̄'s rank among
random directions with its empirical p-value.

**Gap closure.** Per document i: ``start`` sᵢ (the side steered, at α = 0), ``target`` tᵢ (the other side at
α = 0) and ``moved`` mᵢ (the side steered at α).  The fraction of the gap closed is

    f = mean(m − s) / mean(t − s)

(1 = the other side reproduced on average, 0 = no movement, < 0 = moved away from it).  Its CI resamples the
documents (the same indices for the numerator and the denominator, so the ratio stays paired) exactly as
:func:`dsteer_eval.stats.bootstrap.bootstrap_means` draws them and takes percentile bounds of the resampled
ratios; the gap itself (mean(t − s)) gets its own paired CI, and a gap whose CI contains 0 makes every
fraction of it meaningless (``gap_shown`` False).

**Rank among random directions.** With K random directions' values r₁..r_K (same layer, α and norm) and
v̄'s value x, higher better: rank = 1 + #{rₖ > x}; the empirical p-value is
(1 + #{rₖ ≥ x}) / (K + 1) (a tie counts against v̄).  Fewer than :data:`MIN_RANDOM` directions are
*underpowered*: one random direction is an anecdote, and p can never fall below 1/(K + 1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from dsteer_eval.stats.bootstrap import CONFIDENCE, N_RESAMPLES, SEED, PairedDelta, paired_bootstrap, resampled

MIN_RANDOM = 8  # fewer random directions than this: a claim against them is labelled underpowered


@dataclass(frozen=True)
class GapClosure:
    n: int  # documents with finite values on all three points
    fraction: float | None  # mean(m − s) / mean(t − s); None when the gap is exactly 0
    low: float | None
    high: float | None
    gap: PairedDelta  # mean(t − s) with its CI
    moved: PairedDelta  # mean(m − s) with its CI
    n_resamples: int
    seed: int
    confidence: float

    @property
    def gap_shown(self) -> bool:
        return self.gap.significant

    def as_dict(self) -> dict:
        d = asdict(self)
        d["gap"], d["moved"] = self.gap.as_dict(), self.moved.as_dict()
        d["gap_shown"] = self.gap_shown
        return d


def gap_closure(moved, start, target, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                confidence: float = CONFIDENCE) -> GapClosure:
    """The fraction of the gap ``target − start`` that ``moved − start`` closes (module docstring); the three
    are paired per document (equal-length, finite: pair and drop non-finite documents first)."""
    m, s, t = (np.asarray(a, dtype=np.float64) for a in (moved, start, target))
    if not (m.shape == s.shape == t.shape) or m.ndim != 1:
        raise ValueError(f"gap_closure: moved, start and target must be paired 1-D arrays (got {m.shape}, "
                         f"{s.shape}, {t.shape})")
    if not len(m):
        raise ValueError("gap_closure: no documents")
    if not (np.isfinite(m).all() and np.isfinite(s).all() and np.isfinite(t).all()):
        raise ValueError("gap_closure: non-finite values; drop those documents first")
    gap = paired_bootstrap(t, s, n_resamples=n_resamples, seed=seed, confidence=confidence)
    shift = paired_bootstrap(m, s, n_resamples=n_resamples, seed=seed, confidence=confidence)
    num, den = m - s, t - s
    if den.mean() == 0:
        return GapClosure(len(m), None, None, None, gap, shift, n_resamples, seed, confidence)
    def ratio(idx):
        with np.errstate(divide="ignore", invalid="ignore"):
            return num[idx].mean(axis=1) / den[idx].mean(axis=1)

    ratios = resampled(len(m), n_resamples, seed, ratio)
    ratios = ratios[np.isfinite(ratios)]
    tail = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(ratios, [tail, 1 - tail])) if len(ratios) else (None, None)
    return GapClosure(len(m), float(num.mean() / den.mean()), low, high, gap, shift, n_resamples, seed, confidence)


@dataclass(frozen=True)
class RateGapClosure:
    n: int  # documents (each point's rate is over its own documents that are not left out)
    counted: tuple[int, int, int]  # documents not left out: moved, start, target
    fraction: float | None  # (rate(m) − rate(s)) / (rate(t) − rate(s)); None when the gap is exactly 0
    low: float | None
    high: float | None
    gap_low: float | None  # the CI of rate(t) − rate(s), from the same resamples
    gap_high: float | None

    @property
    def gap_shown(self) -> bool:
        return self.gap_low is not None and (self.gap_low > 0 or self.gap_high < 0)

    def as_dict(self) -> dict:
        return {**asdict(self), "gap_shown": self.gap_shown}


def rate_gap_closure(moved, start, target, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE) -> RateGapClosure:
    """:func:`gap_closure` for rates whose documents may be left out on some points (NaN: a reply read as OFF — counted
    apart, never averaged in): each point's rate is the mean over its own documents that are not NaN, and the CI
    resamples the documents jointly for the three points (the same indices, as :func:`gap_closure` draws them), so
    a document left out on one point still counts on the others. With no NaN it is :func:`gap_closure` exactly."""
    m, s, t = (np.asarray(a, dtype=np.float64) for a in (moved, start, target))
    if not (m.shape == s.shape == t.shape) or m.ndim != 1 or not len(m):
        raise ValueError(f"rate_gap_closure: moved, start and target must be paired, non-empty 1-D arrays (got "
                         f"{m.shape}, {s.shape}, {t.shape})")
    if np.isinf(np.stack([m, s, t])).any():
        raise ValueError("rate_gap_closure: infinite values; only NaN (left out) is allowed")
    counted = tuple(int((~np.isnan(a)).sum()) for a in (m, s, t))
    if min(counted) == 0:
        return RateGapClosure(len(m), counted, None, None, None, None, None)

    def rates(idx):
        with warnings.catch_warnings():  # a resample with every document of a point left out: NaN, dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            return [np.nanmean(a[idx], axis=1) if idx.ndim == 2 else np.nanmean(a) for a in (m, s, t)]

    rm, rs, rt = rates(np.arange(len(m)))
    tail = (1 - confidence) / 2

    def bounds(stat):
        got = resampled(len(m), n_resamples, seed, stat)
        got = got[np.isfinite(got)]
        return tuple(float(x) for x in np.quantile(got, [tail, 1 - tail])) if len(got) else (None, None)

    def ratio(idx):
        a, b, c = rates(idx)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (a - b) / (c - b)

    def gap(idx):
        _, b, c = rates(idx)
        return c - b

    gap_low, gap_high = bounds(gap)
    if rt == rs:
        return RateGapClosure(len(m), counted, None, None, None, gap_low, gap_high)
    low, high = bounds(ratio)
    return RateGapClosure(len(m), counted, float((rm - rs) / (rt - rs)), low, high, gap_low, gap_high)


@dataclass(frozen=True)
class Rank:
    value: float
    k: int  # random directions
    rank: int  # 1 = v̄ above every random direction
    at_least: int  # #{random ≥ v̄}
    p_value: float  # (1 + at_least) / (k + 1)
    underpowered: bool  # k < MIN_RANDOM

    def as_dict(self) -> dict:
        return asdict(self)


def rank_among(value: float, population: Sequence[float], *, higher: bool = True) -> Rank:
    """v̄'s ``value`` ranked among the random directions' ``population`` (higher better unless ``higher`` is
    False); the empirical p-value counts ties against v̄."""
    if not math.isfinite(value):
        raise ValueError(f"rank_among: v̄'s value {value} is not finite")
    pop = [float(r) for r in population]
    if any(not math.isfinite(r) for r in pop):
        raise ValueError("rank_among: a random direction's value is not finite; drop it and say so")
    sign = 1.0 if higher else -1.0
    above = sum(sign * r > sign * value for r in pop)
    at_least = sum(sign * r >= sign * value for r in pop)
    k = len(pop)
    return Rank(float(value), k, 1 + above, at_least, (1 + at_least) / (k + 1), k < MIN_RANDOM)


@dataclass(frozen=True)
class DistanceDifference:
    """How much nearer the target (f = 1) candidate A is than candidate B: mean |1 − f_B| − |1 − f_A| with a
    paired bootstrap CI (positive = A nearer); ``resolved`` when the CI excludes 0."""
    n: int
    mean: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "resolved": self.resolved}


def distance_difference(a: tuple, b: tuple, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                        confidence: float = CONFIDENCE) -> DistanceDifference | None:
    """``a``, ``b``: (moved, start, target) arrays of two candidates on the same documents (paired, finite). Each
    resample draws one set of document indices for both (module docstring of :func:`gap_closure`); resamples
    where a gap mean is 0 are dropped. None when the point estimates are undefined."""
    arrays = [np.asarray(x, dtype=np.float64) for x in (*a, *b)]
    n = len(arrays[0])
    if any(x.shape != (n,) for x in arrays) or n < 2:
        raise ValueError("distance_difference: six paired 1-D arrays of at least 2 documents are needed")
    ma, sa, ta, mb, sb, tb = arrays

    def distances(idx):
        with np.errstate(divide="ignore", invalid="ignore"):
            fa = (ma[idx] - sa[idx]).mean(axis=-1) / (ta[idx] - sa[idx]).mean(axis=-1)
            fb = (mb[idx] - sb[idx]).mean(axis=-1) / (tb[idx] - sb[idx]).mean(axis=-1)
        return np.abs(1 - fb) - np.abs(1 - fa)

    point = float(distances(np.arange(n)))
    if not math.isfinite(point):
        return None
    diffs = resampled(n, n_resamples, seed, distances)
    diffs = diffs[np.isfinite(diffs)]
    tail = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(diffs, [tail, 1 - tail]))
    return DistanceDifference(n, point, low, high)
