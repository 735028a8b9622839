"""Fig 1(c) of D-STEER: the PCA cloud of H_base, H_dpo, H_dpo − v̄ and H_base + v̄ at one layer.

The four (N × d) clouds are stacked and centred on their joint mean; the basis is the top right
singular vectors of that stacked matrix (PCA without scaling), and every row is projected on it. If
the DPO update is (mostly) a shift by v̄, H_dpo − v̄ lands on H_base and H_base + v̄ on H_dpo:
``centroid_distances`` (in the full d-dimensional space, not only the plotted plane) says how close.
"""

from __future__ import annotations

import torch

CLOUDS = ("base", "dpo", "dpo_minus_v", "base_plus_v")


def pca_cloud(base: torch.Tensor, dpo: torch.Tensor, v: torch.Tensor, *, components: int = 2) -> dict:
    if base.shape != dpo.shape or base.dim() != 2 or v.shape != base.shape[1:]:
        raise ValueError(f"pca_cloud: H_base {tuple(base.shape)}, H_dpo {tuple(dpo.shape)} and v̄ {tuple(v.shape)} "
                         f"must be (N × d), (N × d) and (d,)")
    b, d, v = base.double(), dpo.double(), v.double()
    clouds = {"base": b, "dpo": d, "dpo_minus_v": d - v, "base_plus_v": b + v}
    stacked = torch.cat([clouds[k] for k in CLOUDS])
    mean = stacked.mean(0)
    _, s, vh = torch.linalg.svd(stacked - mean, full_matrices=False)
    basis = vh[:components]
    centroids = {k: c.mean(0) for k, c in clouds.items()}
    dist = lambda a, c: float((centroids[a] - centroids[c]).norm())  # noqa: E731
    return {
        "components": components,
        "explained_variance_ratio": [float(x) for x in (s[:components] ** 2 / (s ** 2).sum())],
        "coords": {k: ((c - mean) @ basis.T).tolist() for k, c in clouds.items()},
        "centroid_distances": {
            "base_dpo": dist("base", "dpo"),
            "base_dpo_minus_v": dist("base", "dpo_minus_v"),
            "dpo_base_plus_v": dist("dpo", "base_plus_v"),
        },
    }
