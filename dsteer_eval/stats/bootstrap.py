"""Seeded paired bootstrap confidence intervals for a difference of per-document means.

For documents i = 1..n with values xᵢ (e.g. a steered point) and yᵢ (its reference: α=0, the base
model, or the mean of the random controls on the same document), dᵢ = xᵢ − yᵢ. One resample draws n
indices uniformly with replacement (``numpy.random.default_rng(seed).integers(0, n, n)``, resample
after resample, in that order) and takes the mean of d over them; the interval is the
(1−c)/2 and (1+c)/2 quantiles (numpy's default linear interpolation) of ``n_resamples`` such means
— the percentile bootstrap. Pairing matters: the document-to-document spread that x and y share
cancels in d, which is why this CI is far narrower than two independent stderrs.

``significant`` is True when the interval excludes 0 (the ``*`` of the leaderboard).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
CHUNK = 256  # resamples drawn at a time: bounded memory for large n


@dataclass(frozen=True)
class PairedDelta:
    n: int
    mean: float  # mean of x − y over the n documents (the point estimate)
    low: float
    high: float
    n_resamples: int
    seed: int
    confidence: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}

    def format(self, digits: int = 3) -> str:
        mark = "*" if self.significant else ""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{mark}"


def resampled(n: int, n_resamples: int, seed: int, statistic) -> np.ndarray:
    """``statistic(idx)`` over ``n_resamples`` seeded resamples of ``n`` documents: ``idx`` is a ``(k, n)`` block
    of document indices, row r = resample start + r, drawn in order in blocks of :data:`CHUNK` (the procedure in
    the module docstring); every statistic that resamples documents draws them here, so equal seeds give equal
    resamples."""
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, CHUNK):
        k = min(CHUNK, n_resamples - start)
        out[start:start + k] = statistic(rng.integers(0, n, size=(k, n)))
    return out


def bootstrap_means(d: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """The means of d over ``n_resamples`` seeded resamples (the procedure in the module docstring)."""
    return resampled(len(d), n_resamples, seed, lambda idx: d[idx].mean(axis=1))


def paired_bootstrap(x, y, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE) -> PairedDelta:
    """CI of mean(x − y) over paired documents. x and y: equal-length sequences of finite numbers."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_bootstrap: x and y must be 1-D and paired (got shapes {x.shape} and {y.shape})")
    if len(x) == 0:
        raise ValueError("paired_bootstrap: no paired documents")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired_bootstrap: non-finite values; count and drop them before pairing")
    if n_resamples < 1000:
        raise ValueError(f"paired_bootstrap: n_resamples={n_resamples}; use at least 1000")
    if not 0 < confidence < 1:
        raise ValueError(f"paired_bootstrap: confidence={confidence} must be in (0, 1)")
    d = x - y
    means = bootstrap_means(d, n_resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDelta(len(d), float(d.mean()), float(low), float(high), n_resamples, seed, confidence)


def finite_pairs(x: dict, y: dict) -> tuple[list, list, list, int]:
    """Pair two {doc_id: value} maps on their common documents, in doc order; drop non-finite pairs.

    Returns (doc_ids, xs, ys, n_dropped): n_dropped counts common documents where either value is not
    a finite number (a failed or non-finite score is never paired as a number).
    """
    ids, xs, ys, dropped = [], [], [], 0
    for doc in sorted(set(x) & set(y)):
        a, b = x[doc], y[doc]
        if finite_number(a) and finite_number(b):
            ids.append(doc)
            xs.append(float(a))
            ys.append(float(b))
        else:
            dropped += 1
    return ids, xs, ys, dropped


def finite_number(value) -> bool:
    """A number (bools count as 0/1) that is finite; None, strings and NaN/inf are not."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def finite_docs(maps: list[dict]) -> list:
    """The documents (sorted) that every ``{doc_id: value}`` map holds with a finite number."""
    docs = set.intersection(*(set(m) for m in maps)) if maps else set()
    return sorted(d for d in docs if all(finite_number(m[d]) for m in maps))
