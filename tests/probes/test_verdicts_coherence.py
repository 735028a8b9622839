"""Generated verdicts flip with the numbers; leave-one-out coherence separates noise from sharing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from dsteer_eval.probes.coherence import iid_expectation_naive, loo_cosines, relabel
from dsteer_eval.stats.bootstrap import paired_bootstrap
from dsteer_eval.stats.verdicts import markdown, verdict


def test_verdict_flips_when_the_numbers_flip():
    up = paired_bootstrap([2.0, 2.1, 1.9, 2.2], [1.0, 1.0, 1.0, 1.0])
    down = paired_bootstrap([1.0, 1.0, 1.0, 1.0], [2.0, 2.1, 1.9, 2.2])
    flat = paired_bootstrap([1.0, 2.0, 1.0, 2.0], [1.5, 1.5, 1.5, 1.5])
    assert verdict("x", 2.05, 1.0, up, "higher").verdict == "supported"
    assert verdict("x", 1.0, 2.05, down, "higher").verdict == "contradicted"
    assert verdict("x", 1.0, 2.05, down, "lower").verdict == "supported"
    assert verdict("x", 1.5, 1.5, flat, "higher").verdict == "not shown"
    assert verdict("x", 1.5, 1.5, flat, "lower").verdict == "not shown"  # a CI across 0 shows nothing either way
    assert verdict("x", 2.05, 1.0, up, "lower").verdict == "contradicted"
    assert verdict("x", 2.05, 1.0, up, "higher", fraction=0.4, at_least=0.5).verdict == "partly"
    assert verdict("x", 2.05, 1.0, up, "higher", fraction=0.6, at_least=0.5).verdict == "supported"
    table = markdown([verdict("restoration", 2.05, 1.0, up, "higher")])
    assert "| restoration | 2.050 | 1.000 | +1.050 [" in table and "**supported**" in table
    with pytest.raises(ValueError, match="expect"):
        verdict("x", 1, 1, up, "up")


def test_leave_one_out_coherence_is_zero_for_iid_and_one_for_a_planted_direction():
    gen = torch.Generator().manual_seed(0)
    n, d = 64, 576
    iid = torch.randn(n, d, generator=gen)
    naive = torch.nn.functional.cosine_similarity(iid, iid.mean(0, keepdim=True), dim=1).mean()
    assert float(naive) == pytest.approx(iid_expectation_naive(n, d), abs=0.02)  # the bias: ≈ 0.125
    assert abs(float(loo_cosines(iid).mean())) < 0.04  # sd of this mean ≈ 0.01 (the cosines are correlated)
    shared = torch.randn(d, generator=gen)
    planted = 10 * shared + 0.5 * torch.randn(n, d, generator=gen)
    assert float(loo_cosines(planted).mean()) > 0.97
    g = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    by_hand = [float(torch.nn.functional.cosine_similarity(g[i], (g.sum(0) - g[i]) / 4, dim=0)) for i in range(5)]
    assert loo_cosines(g).tolist() == pytest.approx(by_hand, abs=1e-12)


def test_relabel_swaps_a_seeded_half():
    @dataclass(frozen=True)
    class P:
        prompt: str
        chosen: str
        rejected: str

    pairs = [P(str(i), f"c{i}", f"r{i}") for i in range(10)]
    out, swapped = relabel(pairs, seed=3)
    assert len(swapped) == 5 and relabel(pairs, seed=3)[1] == swapped
    for i, (a, b) in enumerate(zip(pairs, out)):
        assert (b.chosen, b.rejected) == ((a.rejected, a.chosen) if i in swapped else (a.chosen, a.rejected))


def test_pca_cloud_coordinates_equal_numpy_and_a_pure_shift_is_undone():
    import numpy as np

    from dsteer_eval.probes.pca_cloud import pca_cloud

    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 6))
    v = rng.normal(size=6) * 3
    dpo = base + v  # a pure shift by v
    got = pca_cloud(torch.tensor(base), torch.tensor(dpo), torch.tensor(v))
    stacked = np.concatenate([base, dpo, dpo - v, base + v])
    centred = stacked - stacked.mean(0)
    _, s, vh = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vh[:2].T
    mine = np.concatenate([np.array(got["coords"][k]) for k in ("base", "dpo", "dpo_minus_v", "base_plus_v")])
    signs = np.sign((mine * coords).sum(0))  # a singular vector's sign is arbitrary
    np.testing.assert_allclose(mine * signs, coords, atol=1e-10)
    np.testing.assert_allclose(got["explained_variance_ratio"], s[:2] ** 2 / (s ** 2).sum(), rtol=1e-10)
    dist = got["centroid_distances"]
    assert dist["base_dpo"] == pytest.approx(np.linalg.norm(v), rel=1e-12)
    assert dist["base_dpo_minus_v"] == pytest.approx(0.0, abs=1e-12)
    assert dist["dpo_base_plus_v"] == pytest.approx(0.0, abs=1e-12)
