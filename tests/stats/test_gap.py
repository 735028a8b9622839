"""stats/gap.py: the fraction of the gap closed (exact on constructed documents) and the rank/p-value rule."""

import numpy as np
import pytest

from dsteer_eval.stats.gap import MIN_RANDOM, gap_closure, rank_among, rate_gap_closure


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


def test_rate_gap_closure_is_gap_closure_without_left_out_documents_and_counts_each_point_over_its_own():
    rng = np.random.default_rng(3)
    s, t = (rng.random(40) < 0.2).astype(float), (rng.random(40) < 0.9).astype(float)
    m = np.where(rng.random(40) < 0.5, t, s)
    plain, rates = gap_closure(m, s, t), rate_gap_closure(m, s, t)
    assert (rates.fraction, rates.low, rates.high) == pytest.approx((plain.fraction, plain.low, plain.high), abs=1e-12)
    assert rates.gap_shown == plain.gap_shown and rates.counted == (40, 40, 40)
    # a document left out (NaN: read as OFF) on one point still counts on the others
    m2, s2 = m.copy(), s.copy()
    m2[:5], s2[5:8] = np.nan, np.nan
    got = rate_gap_closure(m2, s2, t)
    by_hand = (m[5:].mean() - np.r_[s[:5], s[8:]].mean()) / (t.mean() - np.r_[s[:5], s[8:]].mean())
    assert got.counted == (35, 37, 40) and got.fraction == pytest.approx(by_hand, abs=1e-12)
    assert got.low <= got.fraction <= got.high
    assert rate_gap_closure(np.full(3, np.nan), s[:3], t[:3]).fraction is None  # nothing read on one point
    with pytest.raises(ValueError, match="infinite"):
        rate_gap_closure(np.r_[np.inf, m[1:]], s, t)
