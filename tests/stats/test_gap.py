"""stats/gap.py: the fraction of the gap closed (exact on constructed documents) and the rank/p-value rule."""

import numpy as np
import pytest

from dsteer_eval.stats.gap import MIN_RANDOM, gap_closure, rank_among


def test_a_shift_of_exactly_half_the_gap_closes_one_half_with_a_ci_around_it():
    rng = np.random.default_rng(0)
    start = rng.normal(0, 3, 200)
    target = start + 2.0 + rng.normal(0, 0.5, 200)
    moved = start + 0.5 * (target - start)  # every document moves exactly half its own gap
    g = gap_closure(moved, start, target)
    assert g.fraction == pytest.approx(0.5, abs=1e-12) and g.low == pytest.approx(0.5) and g.high == pytest.approx(0.5)
    assert g.gap_shown and g.gap.mean == pytest.approx(float((target - start).mean()))
    assert g.n == 200


def test_noise_gives_a_wide_ci_around_zero_and_a_reversal_is_negative():
    rng = np.random.default_rng(1)
    start = rng.normal(0, 1, 300)
    target = start + 1.0
    g = gap_closure(start + rng.normal(0, 1, 300), start, target)
    assert g.low < 0 < g.high
    back = gap_closure(start - 0.25, start, target)  # moved away from the target by a quarter gap
    assert back.fraction == pytest.approx(-0.25)


def test_a_gap_that_is_not_shown_says_so():
    rng = np.random.default_rng(2)
    start = rng.normal(0, 1, 100)
    target = start + rng.normal(0, 1, 100)  # no systematic gap
    g = gap_closure(start, start, target)
    assert not g.gap_shown and g.as_dict()["gap_shown"] is False


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="paired 1-D"):
        gap_closure([1, 2], [1], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        gap_closure([1, float("nan")], [0, 0], [1, 1])


def test_rank_and_empirical_p_value():
    r = rank_among(0.9, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert (r.rank, r.at_least, r.k, r.underpowered) == (1, 0, 8, False) and r.p_value == pytest.approx(1 / 9)
    tie = rank_among(0.5, [0.5, 0.1, 0.9])  # a tie counts against v̄; one random above
    assert (tie.rank, tie.at_least) == (2, 2) and tie.p_value == pytest.approx(3 / 4) and tie.underpowered
    lower = rank_among(-2.0, [-1.0, 0.0], higher=False)
    assert lower.rank == 1 and lower.p_value == pytest.approx(1 / 3)
    assert MIN_RANDOM == 8
    with pytest.raises(ValueError, match="not finite"):
        rank_among(0.1, [float("inf")])
