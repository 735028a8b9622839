"""Verdicts computed from numbers: a claim, its effect, its control, and a paired CI of the difference.

A claim predicts a direction ("higher" or "lower") for the measured effect relative to its control
(a norm-matched random direction, a null adapter, α=0, the base model). With the paired CI
[low, high] of (effect − control):

* ``supported``    the CI excludes 0 on the predicted side;
* ``contradicted`` the CI excludes 0 on the other side;
* ``not shown``    the CI contains 0.

An optional ``fraction`` claim (e.g. "α=−1 moves the metric back by at least half the DPO−base gap")
adds a threshold on a point estimate; it is reported as ``partly`` when the direction is supported but
the fraction falls short. No verdict is ever typed by hand: tables are rendered from :class:`Verdict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dsteer_eval.stats.bootstrap import PairedDelta

SUPPORTED, CONTRADICTED, NOT_SHOWN, PARTLY = "supported", "contradicted", "not shown", "partly"


@dataclass(frozen=True)
class Verdict:
    claim: str
    effect: float | None
    control: float | None
    delta: dict  # PairedDelta.as_dict() of (effect − control)
    expect: str  # "higher" | "lower"
    verdict: str
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def judge(delta: PairedDelta, expect: str) -> str:
    if expect not in ("higher", "lower"):
        raise ValueError(f"expect must be 'higher' or 'lower', got {expect!r}")
    if delta.low > 0:  # the CI lies above 0
        return SUPPORTED if expect == "higher" else CONTRADICTED
    if delta.high < 0:  # the CI lies below 0
        return SUPPORTED if expect == "lower" else CONTRADICTED
    return NOT_SHOWN


def verdict(claim: str, effect: float | None, control: float | None, delta: PairedDelta, expect: str,
            *, fraction: float | None = None, at_least: float | None = None) -> Verdict:
    """The verdict for ``claim``; with ``fraction``/``at_least``, a supported claim whose fraction is below
    ``at_least`` becomes ``partly`` (the note says by how much)."""
    result = judge(delta, expect)
    note = ""
    if fraction is not None and at_least is not None:
        note = f"fraction {fraction:.2f} (needs ≥ {at_least:.2f})"
        if result == SUPPORTED and not fraction >= at_least:
            result = PARTLY
    return Verdict(claim, effect, control, delta.as_dict(), expect, result, note)


def markdown(verdicts: list[Verdict], digits: int = 3) -> str:
    lines = ["| claim | effect | control | Δ [95% CI] | verdict |", "| --- | ---: | ---: | --- | --- |"]
    for v in verdicts:
        d = v.delta
        cell = lambda x: "—" if x is None else f"{x:.{digits}f}"  # noqa: E731
        ci = f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
        note = f" ({v.note})" if v.note else ""
        lines.append(f"| {v.claim} | {cell(v.effect)} | {cell(v.control)} | {ci} | **{v.verdict}**{note} |")
    return "\n".join(lines) + "\n"
