"""Random-direction controls: seeded, exactly norm-matched, different per site and index."""

from __future__ import annotations

import pytest
import torch

from dsteer_eval.steering.controls import parse_controls, random_direction


def test_random_controls_are_norm_matched_and_seeded():
    v = torch.randn(576, generator=torch.Generator().manual_seed(3)) * 7.5
    a = random_direction(v, site=20, index=0)
    assert a.dtype == torch.float32 and a.shape == v.shape
    assert float(a.double().norm()) == pytest.approx(float(v.double().norm()), rel=1e-7)
    assert torch.equal(a, random_direction(v, site=20, index=0))  # seeded: bit-identical again
    others = [random_direction(v, site=20, index=1), random_direction(v, site=10, index=0),
              random_direction(v, site=20, index=0, seed=1)]
    for b in others:
        assert not torch.equal(a, b)
        assert abs(float(torch.nn.functional.cosine_similarity(a, b, dim=0))) < 0.2
    # a random direction is nearly orthogonal to v in 576 dims
    assert abs(float(torch.nn.functional.cosine_similarity(a, v, dim=0))) < 0.2


def test_zero_vector_has_no_control():
    with pytest.raises(ValueError, match="layer 5 is zero"):
        random_direction(torch.zeros(8), site=5, index=0)


@pytest.mark.parametrize("text,k", [(None, 0), ("", 0), ("none", 0), ("random", 1), ("random:3", 3)])
def test_parse_controls(text, k):
    assert parse_controls(text) == k


@pytest.mark.parametrize("text", ["gaussian:2", "random:x", "random:0", "random:65"])
def test_parse_controls_refuses(text):
    with pytest.raises(ValueError, match="--controls"):
        parse_controls(text)
