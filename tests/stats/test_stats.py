"""Paired bootstrap and the conditioned subset, against hand computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dsteer_eval.stats.bootstrap import finite_pairs, paired_bootstrap
from dsteer_eval.stats.conditioned import conditioned_docs, differs


def test_paired_bootstrap_equals_a_hand_computation():
    x = [0.9, 0.2, 0.7, 0.4, 1.0, 0.3]
    y = [0.5, 0.1, 0.6, 0.6, 0.2, 0.3]
    got = paired_bootstrap(x, y, n_resamples=1000, seed=7)
    # by hand: resample after resample, n indices each, from default_rng(7); percentile interval
    rng = np.random.default_rng(7)
    d = [a - b for a, b in zip(x, y)]
    means = []
    for _ in range(1000):
        idx = rng.integers(0, 6, size=6)
        means.append(sum(d[i] for i in idx) / 6)
    means.sort()
    def quantile(q):  # numpy's default (linear) rule, written out
        pos = q * (len(means) - 1)
        lo = int(pos)
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])
    assert got.mean == pytest.approx(sum(d) / 6, abs=1e-15)
    assert got.low == pytest.approx(quantile(0.025), abs=1e-12)
    assert got.high == pytest.approx(quantile(0.975), abs=1e-12)
    assert (got.n, got.n_resamples, got.seed, got.confidence) == (6, 1000, 7, 0.95)
    assert paired_bootstrap(x, y, n_resamples=1000, seed=7) == got  # seeded: identical again


def test_paired_bootstrap_converges_to_the_exact_bootstrap_distribution():
    d = np.array([0.0, 1.0, 3.0])
    # every one of the 27 equally likely resamples, enumerated
    exact = sorted(np.mean(c) for c in itertools.product(d, repeat=3))
    got = paired_bootstrap(d, np.zeros(3), n_resamples=200_000, seed=1, confidence=0.5)
    # k/27 never equals 0.25 or 0.75, so the sample quantiles settle on the population's
    assert got.low == pytest.approx(np.quantile(exact, 0.25, method="inverted_cdf"), abs=1e-12)
    assert got.high == pytest.approx(np.quantile(exact, 0.75, method="inverted_cdf"), abs=1e-12)


def test_pairing_removes_shared_document_spread_and_marks_significance():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 5, 200)  # large per-document spread
    x = y + 0.1 + rng.normal(0, 0.01, 200)  # a small, consistent shift
    got = paired_bootstrap(x, y)
    assert got.significant and got.low > 0.09 and got.high < 0.11
    assert got.format().endswith("*")
    same = paired_bootstrap(y, y)
    assert (same.mean, same.low, same.high, same.significant) == (0.0, 0.0, 0.0, False)


@pytest.mark.parametrize("x,y,message", [
    ([1.0, 2.0], [1.0], "paired"),
    ([], [], "no paired"),
    ([1.0, float("nan")], [1.0, 2.0], "non-finite"),
])
def test_paired_bootstrap_refuses_bad_input(x, y, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(x, y)


def test_paired_bootstrap_refuses_too_few_resamples():
    with pytest.raises(ValueError, match="at least 1000"):
        paired_bootstrap([1.0], [0.0], n_resamples=100)


def test_finite_pairs_pairs_by_document_and_counts_what_it_drops():
    x = {0: 1.0, 1: float("nan"), 2: 3.0, 3: None, 5: True}
    y = {0: 0.5, 1: 1.0, 2: float("inf"), 3: 1.0, 4: 2.0, 5: 0.0}
    assert finite_pairs(x, y) == ([0, 5], [1.0, 1.0], [0.5, 0.0], 3)


def test_conditioned_subset_on_a_hand_made_case():
    base = {
        0: [[-1.0, False], [-2.0, True]],   # argmax 0
        1: [[-1.0, False], [-2.0, False]],
        2: [[-1.0, False], [-2.0, False]],
        3: ["I cannot help with that."],
        4: ["Sure, here is how."],
        5: [[-3.0, True]],
    }
    dpo = {
        0: [[-3.0, False], [-2.0, True]],   # argmax flips -> differs
        1: [[-5.0, False], [-6.0, False]],  # every choice shifted by -4: margin unchanged -> same
        2: [[-1.0, False], [-2.15, False]],  # margin moved by 0.15 > 0.1 nats -> differs
        3: ["I cannot help with that."],    # same text -> same
        4: ["I cannot help with that."],    # different text -> differs
        5: [[-3.05, True]],                 # one continuation moved by 0.05 <= 0.1 -> same
        6: [[-1.0, False]],                 # not in base: never in the subset
    }
    assert conditioned_docs(base, dpo) == {0, 2, 4}
    assert differs([[-3.0, True]], [[-3.2, True]])  # one continuation moved by 0.2 > 0.1
