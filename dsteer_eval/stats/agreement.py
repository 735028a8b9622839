"""Agreement of a classifier with human labels: per-class precision and recall, Cohen's κ, the confusion table.

For labels y (a reader's) and ŷ (the classifier's) over n items and a set of classes C:

* precision(c) = #{ŷ = c and y = c} / #{ŷ = c}; recall(c) = #{ŷ = c and y = c} / #{y = c} (None when the
  denominator is 0);
* Cohen's κ = (p_o − p_e) / (1 − p_e), with p_o the share of items on which they agree and
  p_e = Σ_c P(y = c)·P(ŷ = c) the agreement expected by chance from the two label distributions (κ = 1 when
  p_e = 1 and they agree everywhere);
* a *grouping* maps fine labels to coarse ones (e.g. REFUSE and DECLINE to "does not comply") before any of
  the above, so one table can be read at the level a rate is reported at.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ClassScore:
    label: str
    support: int  # items the reader gave this label
    predicted: int  # items the classifier gave it
    precision: float | None
    recall: float | None


@dataclass(frozen=True)
class Agreement:
    n: int
    accuracy: float
    kappa: float | None
    classes: tuple[ClassScore, ...]
    confusion: dict  # reader's label -> {classifier's label: count}

    def score(self, label: str) -> ClassScore:
        for c in self.classes:
            if c.label == label:
                return c
        raise KeyError(f"no class {label!r} (classes: {[c.label for c in self.classes]})")

    def as_dict(self) -> dict:
        return {**asdict(self), "classes": [asdict(c) for c in self.classes]}


def agreement(gold: Sequence[str], predicted: Sequence[str], *, grouping: Mapping[str, str] | None = None,
              classes: Sequence[str] | None = None) -> Agreement:
    """Agreement of ``predicted`` with ``gold`` (paired, same length), after ``grouping`` if given."""
    if len(gold) != len(predicted):
        raise ValueError(f"agreement: {len(gold)} reader labels but {len(predicted)} classifier labels")
    if not gold:
        raise ValueError("agreement: no labelled items")
    group = (lambda x: grouping.get(x, x)) if grouping else (lambda x: x)  # noqa: E731
    y = [group(g) for g in gold]
    yhat = [group(p) for p in predicted]
    labels = list(classes) if classes else sorted(set(y) | set(yhat))
    n = len(y)
    agree = sum(a == b for a, b in zip(y, yhat))
    p_o = agree / n
    cy, cp = Counter(y), Counter(yhat)
    p_e = sum(cy[c] * cp[c] for c in set(cy) | set(cp)) / n ** 2
    kappa = (p_o - p_e) / (1 - p_e) if p_e < 1 else (1.0 if p_o == 1 else None)
    scores = []
    for c in labels:
        hit = sum(a == c and b == c for a, b in zip(y, yhat))
        scores.append(ClassScore(c, cy[c], cp[c], hit / cp[c] if cp[c] else None, hit / cy[c] if cy[c] else None))
    confusion = {a: {b: sum(1 for u, v in zip(y, yhat) if u == a and v == b) for b in labels} for a in labels}
    return Agreement(n, p_o, kappa, tuple(scores), confusion)
