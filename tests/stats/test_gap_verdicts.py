"""Verdict rules that cannot overstate (issue 34 item 2): each rule against a planted case with a known answer."""

from __future__ import annotations

import pytest

from dsteer_eval.stats.gap_verdicts import (MIN_RANDOM_P05, NOT_DECIDED, NOT_SHOWN, OVERSHOOT, SUPPORTED,
                                            UNDERPOWERED, WRONG_WAY, choose_nearest, gap_verdicts, rank_by_distance)

GAP = dict(gap_mean=10.0, gap_low=8.0, gap_high=12.0)


def test_a_planted_overshoot_ranks_last_and_is_called_overshoot_not_half():
    """v̄ at 300 % against random directions at 100–133 %: far past the target, so it is the farthest, and the
    'half' verdict is overshoot, never supported."""
    randoms = [1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.33]
    rank = rank_by_distance(3.0, randoms)
    assert (rank.rank, rank.ties, rank.k) == (9, 0, 8) and rank.p_value == 1.0
    assert rank.label == "9 of 9" and rank.z < 0
    v = gap_verdicts(**GAP, fraction=3.0, low=2.5, high=3.5, rank=rank)
    assert v.half == OVERSHOOT and v.moves == SUPPORTED and v.vs_random == UNDERPOWERED


def test_a_wrong_way_vector_that_beats_random_directions_gets_no_vs_random_verdict():
    randoms = [-1.9, -1.5, -1.2, -1.0, -0.8, -0.6, -0.5, -0.4, -0.3, -0.35, -0.45, -0.55, -0.65, -0.75,
               -0.85, -0.95, -1.05, -1.15, -1.25, -1.35]
    rank = rank_by_distance(-0.2, randoms)
    assert rank.rank == 1 and rank.p_value == pytest.approx(1 / 21)  # it does beat them all
    v = gap_verdicts(**GAP, fraction=-0.2, low=-0.3, high=-0.1, rank=rank)
    assert v.moves == WRONG_WAY and v.vs_random == NOT_DECIDED
    assert "does not move toward the target" in v.reasons["vs_random"]


def test_a_tie_is_shown_as_a_tie_and_counts_against_v():
    # 0.5 and 1.5 are both 0.5 from the target
    rank = rank_by_distance(0.5, [1.5, 0.1, 0.2, 0.0, -0.1, 0.3, 0.2, 0.1])
    assert (rank.rank, rank.ties) == (1, 1) and rank.label == "1–2 of 9 (tie)"
    assert rank.p_value == pytest.approx(2 / 9)


def test_an_unstable_gap_is_flagged_and_a_gap_not_shown_hides_every_fraction():
    v = gap_verdicts(gap_mean=5.0, gap_low=2.0, gap_high=8.0, fraction=0.9, low=0.6, high=1.2, rank=None)
    assert v.unstable and v.gap == "shown" and v.fraction_shown
    assert "below half its estimate" in v.reasons["gap"]
    steady = gap_verdicts(gap_mean=5.0, gap_low=3.0, gap_high=7.0, fraction=0.9, low=0.6, high=1.2, rank=None)
    assert not steady.unstable
    hidden = gap_verdicts(gap_mean=1.0, gap_low=-0.5, gap_high=2.5, fraction=-7.0, low=-10, high=11, rank=None)
    assert not hidden.fraction_shown
    assert (hidden.moves, hidden.half, hidden.vs_random) == (NOT_SHOWN, NOT_SHOWN, NOT_SHOWN)
    negative = gap_verdicts(gap_mean=-5.0, gap_low=-7.0, gap_high=-2.0, fraction=0.9, low=0.6, high=1.2, rank=None)
    assert negative.unstable  # the bound nearest 0 (−2) is below half of |−5|


def test_k8_is_underpowered_and_k20_can_support():
    """The same v̄, nearest the target among K random directions: with K = 8 the smallest p is 1/9 = 0.111,
    which can never be support; with K = 20 it is 1/21 = 0.048."""
    close = dict(**GAP, fraction=0.8, low=0.7, high=0.9)
    k8 = rank_by_distance(0.8, [0.1 * i for i in range(8)])
    assert k8.p_value == pytest.approx(1 / 9) and k8.underpowered
    assert gap_verdicts(**close, rank=k8).vs_random == UNDERPOWERED
    k20 = rank_by_distance(0.8, [0.03 * i for i in range(20)])
    assert k20.p_value == pytest.approx(1 / 21) and not k20.underpowered and MIN_RANDOM_P05 == 19
    assert gap_verdicts(**close, rank=k20).vs_random == SUPPORTED
    second = rank_by_distance(0.8, [0.03 * i for i in range(19)] + [0.95])
    assert second.rank == 2 and gap_verdicts(**close, rank=second).vs_random == NOT_SHOWN  # p = 2/21 = 0.095


def test_half_uses_the_ci_and_the_nearest_candidate_wins_not_the_largest():
    assert gap_verdicts(**GAP, fraction=0.38, low=0.34, high=0.43, rank=None).half == "contradicted"
    assert gap_verdicts(**GAP, fraction=0.86, low=0.77, high=0.94, rank=None).half == SUPPORTED
    assert gap_verdicts(**GAP, fraction=0.6, low=0.4, high=0.8, rank=None).half == NOT_SHOWN
    # α = −2 at 250 % against α = −1 at 100 %: −1 is chosen
    assert choose_nearest([("a-2", 2.5), ("a-1", 1.0), ("a-0.5", 0.4)]) == ["a-1"]
    assert choose_nearest([("x", 0.5), ("y", 1.5)]) == ["x", "y"]  # a tie is a tie
    assert choose_nearest([]) == []


def test_the_z_score_is_on_distances():
    rank = rank_by_distance(1.0, [0.0, 0.5, 1.5, 2.0])
    # distances of the random directions: 1, .5, .5, 1 -> mean .75, sd .2887; v̄'s distance 0
    assert rank.z == pytest.approx(0.75 / 0.28867513, rel=1e-6)
    assert rank_by_distance(1.0, [0.0, 0.0]).z is None  # no spread: no z
    with pytest.raises(ValueError, match="not finite"):
        rank_by_distance(float("nan"), [0.1])
