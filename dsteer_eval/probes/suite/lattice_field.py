"""The paper's Fig 1(b): the DPO loss gradient field on a 27-point lattice around the final state, spanned by
v̄ and the two next directions of the state shifts (dsteer_eval.probes.lattice_field)."""

from __future__ import annotations

from dsteer_eval.probes.figures import lattice_figure
from dsteer_eval.probes.lattice_field import lattice_field
from dsteer_eval.probes.registry import Probe, ProbeContext


def run(ctx: ProbeContext) -> dict:
    s = ctx.settings
    if s.lattice_pairs <= 0:
        return {"lattice_field": None}
    pairs = ctx.need("used_pairs", "gradients")[: s.lattice_pairs]
    try:
        if len(pairs) < 1:
            raise ValueError("no preference pair fits max_length for the lattice field")
        field = lattice_field(ctx.pair, pairs, ctx.v_final, ctx.states.delta[:, ctx.final], beta=s.beta,
                              max_length=s.max_length)
    except ValueError as exc:
        return {"lattice_field": {"layer": "final", "skipped": str(exc)}}
    return {"lattice_field": {"layer": "final", "position": "all", **field}}


PROBE = Probe("lattice_field", run, sections=("lattice_field",), figures=lattice_figure)
