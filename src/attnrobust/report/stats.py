"""The statistics the report needs, without scipy (scipy is only a test dependency).

- `t_quantile`: Student t quantile for a two-sided interval, from the exact finite-sum CDF that integer degrees of
  freedom allow (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
- `mean_ci`: mean and 95% half-width over seeds (t interval): the spread a reader would see retraining.
- `proportion_diff_se`: standard error of a difference of two accuracies measured on n test images each; used
  when only counts are known (the paper's published numbers).
- `paired_interval`, `seeds_interval`: the verdict's intervals from per-image outcomes (one seed: paired over
  images; several: training noise over seeds plus the shared test-set noise), with p-values; `holm` controls
  the family-wise error over a dataset's comparisons. Their coverage is checked by simulation in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


# ---- paired comparisons (per-image outcomes) -------------------------------------------------------------------


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer df."""
    return max(0.0, 1.0 - t_two_sided_cdf(t, df))


@dataclass(frozen=True)
class Interval:
    """A difference (attention minus twin) with its 95% interval and the p-value of 'no difference'."""

    estimate: float
    low: float
    high: float
    p_value: float
    method: str


def _adjusted_image_moments(d: np.ndarray, bound: float) -> tuple[float, float]:
    """(centre, standard error) of the mean of per-image paired differences d in [-bound, bound].

    The Agresti-Min (2005) adjustment for paired proportions, generalised from {-1, 0, 1} to bounded values: as if
    half an image had gone each way at the bound (and one more image changed nothing), i.e. n + 2 observations,
    the same sum, and bound^2 more in the sum of squares. For 0/1 outcomes it is exactly Agresti-Min's
    interval, whose coverage stays near nominal when few images differ; it also keeps the interval from
    collapsing to zero width when the two models agree on every image (common at 0% PGD accuracy).
    """
    n = d.size
    m = n + 2
    centre = float(d.sum()) / m
    second = (float(np.square(d).sum()) + bound * bound) / m
    return centre, math.sqrt(max(second - centre * centre, 0.0) / m)


def paired_interval(d: Sequence[float] | np.ndarray, bound: float = 1.0, level: float = LEVEL) -> Interval:
    """One seed: the difference of two models' mean per-image scores measured on the same images.

    d: per-image differences (attention minus twin) in [-bound, bound]: for accuracy, 1 / 0 / -1 per image (or
    its average over several attack settings); for minimal eps, the difference of the two eps. Pairing removes
    the images' shared difficulty, which an unpaired interval counts twice. It reflects the finite test set only,
    not training noise: it is a statement about these weights.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("paired_interval of no images")
    centre, se = _adjusted_image_moments(d, bound)
    z = _z_quantile(level)
    p = normal_two_sided_p(centre / se) if se > 0 else (0.0 if centre else 1.0)
    return Interval(float(d.mean()), centre - z * se, centre + z * se, p,
                    f"paired over {d.size} images (Agresti-Min adjusted), 1 seed")


def seeds_interval(d: np.ndarray, bound: float = 1.0, level: float = LEVEL) -> Interval:
    """Several seeds: d[s, i] = per-image difference for seed s (each attention model paired with its twin of
    the same seed, all scored on the same images i).

    Two sources of noise, added: training (the spread of the per-seed mean differences, var/k) and the test
    sample (the paired standard error of the per-image differences averaged over seeds). The second is shared
    by every seed, because every seed is scored on the same images, so the spread over seeds cannot see it.
    Degrees of freedom by Welch-Satterthwaite (rounded down), so with 3 seeds the interval is a wide t_2-ish
    interval unless the test-set term dominates. It is never narrower than the paired test-set interval.
    """
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] == 0:
        raise ValueError(f"seeds_interval needs [seeds >= 2, images >= 1] differences, got shape {d.shape}")
    k, n = d.shape
    per_seed = d.mean(axis=1)
    between = float(per_seed.var(ddof=1)) / k
    _, se_images = _adjusted_image_moments(d.mean(axis=0), bound)
    images = se_images ** 2
    total = between + images
    se = math.sqrt(total)
    df_float = total ** 2 / ((between ** 2) / (k - 1) + (images ** 2) / max(n - 1, 1)) if total > 0 else k - 1
    df = max(1, int(math.floor(df_float)))
    estimate = float(per_seed.mean())
    half = t_quantile(df, level) * se
    p = t_two_sided_p(estimate / se, df) if se > 0 else (0.0 if estimate else 1.0)
    return Interval(estimate, estimate - half, estimate + half, p,
                    f"paired by seed and image, {k} seeds x {n} images (training + test-set noise, "
                    f"Welch-Satterthwaite df {df})")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): reject where adjusted p < alpha controls the
    family-wise error rate at alpha over the whole family, under any dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _z_quantile(level: float) -> float:
    """Two-sided standard normal quantile (bisection on erf; 1.959964 for 0.95)."""
    if level == LEVEL:
        return Z95
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2.0)) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
