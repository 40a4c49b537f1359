"""The few statistics the report needs, without scipy (scipy is only a test dependency).

- `t_quantile`: Student t quantile for a two-sided interval, from the exact finite-sum CDF that integer degrees of
  freedom allow (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
- `mean_ci`: mean and 95% half-width over seeds (t interval): the spread a reader would see retraining.
- `proportion_diff_se`: standard error of a difference of two accuracies measured on n test images each; used
  when there is one seed, where the only noise we can quantify is the finite test set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LEVEL = 0.95
Z95 = 1.959963984540054  # standard normal 0.975 quantile


def t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df >= 1 (exact finite sums, A&S 26.7.3 / 26.7.4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a positive integer, got {df}")
    t = abs(t)
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    total, term = 1.0, 1.0
    if df % 2 == 0:
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * c2
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    for k in range(1, (df - 1) // 2):
        term *= (2 * k) / (2 * k + 1) * c2
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The t such that P(|T| <= t) = level, e.g. t_quantile(2) = 4.3027 (the 0.975 quantile)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_two_sided_cdf(hi, df) < level:
        hi *= 2
    for _ in range(200):  # bisection to float precision; the CDF is cheap
        mid = (lo + hi) / 2
        if t_two_sided_cdf(mid, df) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float | None]:
    """(mean, half-width of the t interval); half-width None for a single value (no spread to estimate)."""
    k = len(values)
    if k == 0:
        raise ValueError("mean_ci of no values")
    mean = sum(values) / k
    if k == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (k - 1)
    return mean, t_quantile(k - 1, level) * math.sqrt(var / k)


def proportion_diff_se(correct_a: int, n_a: int, correct_b: int, n_b: int) -> float:
    """Standard error of acc_a - acc_b for two accuracies over n_a and n_b images (as fractions).

    Agresti-Caffo adjustment (one success and one failure added to each) so that accuracies of exactly 0% or
    100% - common under PGD - do not give a zero-width interval. It treats the two accuracies as independent;
    both models see the same images and their errors are positively correlated, so the true SE of the paired
    difference is smaller: this errs on the side of "no significant difference".
    """
    pa = (correct_a + 1) / (n_a + 2)
    pb = (correct_b + 1) / (n_b + 2)
    return math.sqrt(pa * (1 - pa) / (n_a + 2) + pb * (1 - pb) / (n_b + 2))
