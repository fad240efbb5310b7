"""The uncertainty of accuracies measured on N images: Wilson's interval for one accuracy, and the exact McNemar test
for two models (or two attacks) evaluated on the same images.

An accuracy on N test images is a binomial proportion: on 100 images its standard error is up to 5 points, so a
difference of 1-2 points between two evaluations says nothing by itself. Wilson's score interval (Wilson 1927)
keeps its coverage near the nominal level even close to 0 or 1, where the normal approximation fails. Two
evaluations on the same images are compared on the images where they disagree (McNemar 1947): under "no
difference" each disagreement goes either way with probability 1/2, so the exact p-value is a binomial tail.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from .errors import ConfigError


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The ``confidence`` Wilson score interval of a proportion ``successes / n``, as fractions; (0, 1) when ``n``
    is 0 (nothing was measured)."""
    if not (0 <= successes <= n) or not 0 < confidence < 1:
        raise ConfigError(f"a proportion needs 0 <= successes <= n and a confidence in (0, 1), got {successes}/{n} "
                          f"at {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """The two-sided exact McNemar p-value of two paired evaluations: ``only_first`` images right under the first
    and wrong under the second, ``only_second`` the reverse (images where both agree carry no information). 1.0
    when they never disagree."""
    if only_first < 0 or only_second < 0:
        raise ConfigError(f"disagreement counts must be non-negative, got {only_first} and {only_second}")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def one_sided_excess(exceeding: int, disagreements: int) -> float:
    """The exact one-sided p-value that, among ``disagreements`` paired images, ``exceeding`` or more go one way
    when each way is equally likely: how surprising it is that a second attack breaks that many images the first
    did not, if the two were equally strong."""
    if not 0 <= exceeding <= disagreements:
        raise ConfigError(f"need 0 <= exceeding <= disagreements, got {exceeding} of {disagreements}")
    if disagreements == 0:
        return 1.0
    return sum(math.comb(disagreements, k) for k in range(exceeding, disagreements + 1)) / 2 ** disagreements


def paired_counts(first: str, second: str) -> tuple[int, int]:
    """From two per-image outcome strings of "0"/"1" (a report's ``per_image``): the images right only under the
    first, and right only under the second."""
    if len(first) != len(second):
        raise ConfigError(f"paired outcomes need the same images, got {len(first)} and {len(second)}")
    only_first = sum(a == "1" and b == "0" for a, b in zip(first, second))
    only_second = sum(a == "0" and b == "1" for a, b in zip(first, second))
    return only_first, only_second


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of an ``accuracy`` measured on ``n`` images (the count of successes is recovered
    exactly from the fraction)."""
    return wilson_interval(round(accuracy * n), n)


def error_bars(values: Sequence[float], intervals: Sequence[tuple[float, float]],
               scale: float = 100.0) -> list[list[float]]:
    """Matplotlib's asymmetric error bars of accuracies and their intervals, times ``scale`` (100: in points)."""
    return [[scale * (v - low) for v, (low, _) in zip(values, intervals)],
            [scale * (high - v) for v, (_, high) in zip(values, intervals)]]
