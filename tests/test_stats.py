"""Uncertainty of accuracies: Wilson intervals and exact McNemar tests, against values computed by hand and by
simulation."""
import math
import random

import pytest

from robust_sabn.errors import ConfigError
from robust_sabn.stats import mcnemar_exact, one_sided_excess, paired_counts, wilson_interval


@pytest.mark.parametrize("successes, n, low, high", [
    (50, 100, 0.4038, 0.5962), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662),
])
def test_wilson_interval_matches_published_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_covers_the_true_proportion_about_95_percent_of_the_time():
    rng = random.Random(0)
    p, n, trials = 0.3, 100, 2000
    covered = 0
    for _ in range(trials):
        low, high = wilson_interval(sum(rng.random() < p for _ in range(n)), n)
        covered += low <= p <= high
    assert 0.93 <= covered / trials <= 0.97


def test_mcnemar_exact_is_the_binomial_tail_of_the_disagreements():
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2)
    assert one_sided_excess(5, 5) == pytest.approx(1 / 32) and one_sided_excess(0, 5) == 1.0
    assert one_sided_excess(9, 10) == pytest.approx(11 / 1024)
    assert mcnemar_exact(200, 260) == pytest.approx(2 * sum(math.comb(460, k) for k in range(201)) / 2 ** 460)


def test_paired_counts_and_bad_input():
    assert paired_counts("1100", "1010") == (1, 1)
    for call in (lambda: wilson_interval(5, 3), lambda: mcnemar_exact(-1, 2), lambda: paired_counts("1", "10"),
                 lambda: one_sided_excess(3, 2)):
        with pytest.raises(ConfigError):
            call()
