"""The probe registry: what a probe declares, and the one loop that runs them.

A probe (:class:`Probe`) declares

* ``name`` and the report ``sections`` it writes (keys of ``probe_report.json``);
* ``run(ctx)``: computes those sections from a :class:`ProbeContext` (the pair, the prompts' states, v̄, the
  settings) and may put per-item arrays into ``ctx.numbers``;
* ``numbers``: the names it may put there: the only contract between probes and claims;
* ``claims``: :class:`Claim` s judged from those numbers (:func:`dsteer_eval.probes.verdicts.probe_verdicts`);
* ``headline`` / ``baselines`` / ``figures``: its flat numbers for leaderboards, its rows of the
  baselines table (:func:`baseline_row`), and the figures it draws (:class:`dsteer_eval.probes.figures.Canvas`).

The probes shipped are listed, in the order they run and appear in the report, in
:data:`dsteer_eval.probes.suite.PROBES`; adding one is a module in ``probes/suite/`` and a line there
(docs/probes.md has a worked example).  :func:`run_probe` checks a probe keeps its declaration: it writes
exactly its sections and only its declared numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Claim:
    """A D-STEER claim judged against its control from per-item numbers (see probes/verdicts.py)."""

    key: str
    claim: str
    kind: str  # "mean" | "statistic"
    x: tuple[str, ...]  # the numbers of the DPO side
    y: tuple[str, ...] | None  # the numbers of the control (None: compare with 0)
    statistic: str  # what is compared, in words
    site: str  # "layer" | "final"
    position: str  # a key of probe_report.POSITIONS
    over: str  # "prompts" | "pairs"
    expect: str = "higher"
    fn: str = "mean"  # for statistic claims: "reduction" | "top1" | "top1_centred"


@dataclass(frozen=True)
class ProbeSettings:
    alphas: tuple[float, ...]
    beta: float
    grad_pairs: int
    batch_size: int
    max_length: int
    nulls: bool
    null_seed: int
    random_controls: int
    lattice_pairs: int


@dataclass
class ProbeContext:
    """Everything a probe reads.  ``states``: hidden states of base and DPO at every site, last prompt token
    (:func:`dsteer_eval.dpo.extract.pair_states`); ``v``: v̄ at ``layer``; ``v_final``: v̄ at ``final``.
    ``shared`` carries what one probe computes for later ones (``logp``, ``used_pairs``, ``content``):
    :meth:`need` reads it and names the probe that should have run first."""

    pair: object
    pairs: Sequence
    prompts: list[str]
    states: object
    vectors: dict[int, torch.Tensor]
    layer: int
    final: int
    v: torch.Tensor
    v_final: torch.Tensor
    settings: ProbeSettings
    numbers: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)

    @property
    def delta(self) -> torch.Tensor:
        """ΔH at the probe layer, last prompt token (prompts × d)."""
        return self.states.delta[:, self.layer]

    def need(self, key: str, made_by: str):
        if key not in self.shared:
            raise ValueError(f"probe registry: {key!r} is made by the {made_by!r} probe, which must run first")
        return self.shared[key]


def _none(*_args):
    return None


@dataclass(frozen=True)
class Probe:
    name: str
    run: Callable[[ProbeContext], dict]
    sections: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    claims: tuple[Claim, ...] = ()
    headline: Callable[[dict], dict] = field(default=lambda report: {})
    baselines: Callable[[dict], list] = field(default=lambda report: [])
    figures: Callable = field(default=_none)  # (report, canvas) -> None


def run_probe(probe: Probe, ctx: ProbeContext) -> None:
    """Run one probe into ``ctx`` (its sections, its numbers), checking it keeps its declaration."""
    before = set(ctx.numbers)
    sections = probe.run(ctx)
    if set(sections) != set(probe.sections):
        raise ValueError(f"probe {probe.name!r} wrote sections {sorted(sections)}, declared {list(probe.sections)}")
    undeclared = set(ctx.numbers) - before - set(probe.numbers)
    if undeclared:
        raise ValueError(f"probe {probe.name!r} wrote numbers it does not declare: {sorted(undeclared)}")
    ctx.sections.update(sections)


def check_registry(probes: Sequence[Probe]) -> None:
    """Names and sections are unique, and every claim reads numbers some probe declares."""
    names = [p.name for p in probes]
    sections = [s for p in probes for s in p.sections]
    for what, items in (("name", names), ("section", sections)):
        twice = sorted({x for x in items if items.count(x) > 1})
        if twice:
            raise ValueError(f"probe registry: {what}s used twice: {twice}")
    declared = {n for p in probes for n in p.numbers}
    for p in probes:
        for claim in p.claims:
            missing = [k for k in claim.x + (claim.y or ()) if k not in declared]
            if missing:
                raise ValueError(f"probe {p.name!r}: claim {claim.key!r} reads numbers no probe declares: {missing}")


def get(d, *path):
    """d[path[0]][path[1]]..., or None where a step is missing."""
    for key in path:
        if d is None:
            return None
        d = d[key] if isinstance(d, list) and isinstance(key, int) else (d.get(key) if isinstance(d, dict) else None)
    return d


def baseline_row(statistic, layer, position, dpo, null=None, random=None, relabelled=None, iid=None,
                 formula=None) -> dict:
    """One row of the baselines table: a statistic beside its null, random, relabelled and i.i.d. values."""
    return {"statistic": statistic, "layer": layer, "position": position, "dpo": dpo, "null": null,
            "random": random, "relabelled": relabelled, "iid": iid, "iid_formula": formula}
