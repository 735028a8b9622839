"""Aggregations lm-eval lacks, named in task YAML as ``!function dsteer_eval.metrics.aggregations.<name>``."""

from __future__ import annotations

import math


def total(items) -> int:
    """Sum of per-document counts (skipped pairs, failed scorer calls, ...)."""
    return int(sum(items))


def label(items) -> str:
    """The one label every document reported (e.g. the toxicity scorer); several are joined by ``|``."""
    seen = list(dict.fromkeys(str(item) for item in items))
    return "|".join(seen)


def finite_mean(items) -> float:
    """Mean of the finite per-document numbers (a non-finite one is counted by the task's own ``n_nonfinite``,
    never averaged in); NaN when none is finite."""
    kept = [float(x) for x in items if x is not None and math.isfinite(float(x))]
    return sum(kept) / len(kept) if kept else float("nan")
