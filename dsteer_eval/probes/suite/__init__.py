"""The probes dsteer-eval runs, in the order they run and appear in ``probe_report.json``.

Each entry is a :class:`dsteer_eval.probes.registry.Probe` declared in its own module here; adding a probe is a
module and a line in :data:`PROBES` (docs/probes.md, "Adding a probe").  Order matters only where a probe reads
what an earlier one shares (``ctx.need``): gradients make ``used_pairs``, identity ``logp``, logit_margin
``content``.
"""

from dsteer_eval.probes.registry import check_registry
from dsteer_eval.probes.suite import (
    consistency,
    controls,
    gradients,
    identity,
    lattice_field,
    logit_margin,
    null_adapter,
    pca_cloud,
    projection,
    spectra,
)

PROBES = (
    projection.PROBE,
    logit_margin.PROBE,
    consistency.PROBE,
    gradients.PROBE,
    spectra.PROBE,
    identity.PROBE,
    controls.PROBE,
    null_adapter.PROBE,
    pca_cloud.PROBE,
    lattice_field.PROBE,
)
check_registry(PROBES)
CLAIMS = tuple(claim for probe in PROBES for claim in probe.claims)
