"""The paper's Fig 1(c): base and DPO states at the probe layer (last prompt token) in their top two PCs, with
DPO − v̄ and base + v̄ (dsteer_eval.probes.pca_cloud)."""

from __future__ import annotations

from dsteer_eval.probes.figures import pca_figure
from dsteer_eval.probes.pca_cloud import pca_cloud
from dsteer_eval.probes.registry import Probe, ProbeContext


def run(ctx: ProbeContext) -> dict:
    layer = ctx.layer
    return {"pca_cloud": {"layer": layer, "position": "last_prompt",
                          **pca_cloud(ctx.states.base[:, layer], ctx.states.dpo[:, layer], ctx.v)}}


PROBE = Probe("pca_cloud", run, sections=("pca_cloud",), figures=pca_figure)
