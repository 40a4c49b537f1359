"""The statistics the verdict needs; distributions and tests come from scipy.stats.

- `mean_ci`: mean and 95% half-width over seeds (t interval): the spread a reader would see retraining.
- `proportion_diff_se`: standard error of a difference of two accuracies measured on n test images each; used
  when only counts are known (the paper's published numbers).
- `paired_interval` (one seed, paired over images) and `seeds_interval` (several seeds x the same images, the
  crossed two-way estimator `crossed_components`): a difference with its interval, p-value and variance
  components. Their coverage is checked by simulation in tests/test_stats.py.
- `holm` controls the family-wise error over a dataset's comparisons; `decide` turns a family of intervals into
  three-way decisions (helps / hurts / equivalent within a margin / inconclusive) with simultaneous intervals.
- `detectable_effect` and `seeds_needed`: the power plan, from variance components alone (so a study can be
  sized before it runs, and every verdict row says what it could have seen).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
ALPHA = 1 - LEVEL
POWER = 0.8
Z95 = float(stats.norm.ppf(0.975))
# Most seeds `seeds_needed` looks at: beyond this a study is not a plan but a different project.
MAX_SEEDS = 1000


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The t such that P(|T| <= t) = level, e.g. t_quantile(2) = 4.3027 (the 0.975 quantile)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(stats.t.ppf(0.5 + level / 2, df))


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


# ---- variance components and the power plan --------------------------------------------------------------------


@dataclass(frozen=True)
class Components:
    """What the variance of a mean paired difference over k seeds x n images is made of.

    seed_var: variance of one seed's mean difference around the architecture's effect (training noise, plus the
    seed x image interaction averaged over the n images: both change with every retraining);
    image_var: variance of the per-image effect that every seed shares (the images' own difficulty difference);
    n: images. var(mean over k seeds) = seed_var / k + image_var / n: more seeds shrink only the first term.
    """

    seed_var: float
    image_var: float
    n: int

    def variance(self, seeds: int) -> float:
        return self.seed_var / seeds + self.image_var / self.n



def verdict_df(seeds: int) -> float:
    """The degrees of freedom the verdict's tests use: seeds - 1 (inf, i.e. normal, for one seed, where only the
    images' noise is in the interval). The crossed estimator's Satterthwaite df is larger, but with 3 seeds it
    trusts a seed term that came out small by chance: its intervals covered 92% in the simulations of
    tests/test_stats.py where training noise dominates; at seeds - 1 every simulated setting covers >= 93%."""
    return math.inf if seeds < 2 else float(seeds - 1)


def _quantile(p: float, df: float) -> float:
    return float(stats.t.ppf(p, df)) if math.isfinite(df) else float(stats.norm.ppf(p))


def detectable_effect(components: Components, seeds: int, *, family: int = 1, alpha: float = ALPHA,
                      power: float = POWER) -> float:
    """The smallest true difference found with probability `power` by the verdict's two-sided test at the
    family's level (Bonferroni alpha / family: the strictest step of Holm), with `seeds` seeds on components.n
    images, in the components' units (a proportion, or eps).

    The test is a t test at df = seeds - 1 (`verdict_df`), so the power is the noncentral t's: the effect whose
    noncentrality delta / SE puts `power` of it above the critical value.
    """
    if seeds < 1 or family < 1 or components.n < 1:
        raise ValueError(f"seeds and family must be >= 1, got {seeds}, {family}")
    df = verdict_df(seeds)
    se = math.sqrt(components.variance(seeds))
    crit = _quantile(1 - alpha / (2 * family), df)
    if not math.isfinite(df):
        return (crit + float(stats.norm.ppf(power))) * se
    ncp = optimize.brentq(lambda c: float(stats.nct.sf(crit, df, c)) - power, 0.0, 100 * (crit + 10))
    return ncp * se


def seeds_needed(components: Components, delta: float, *, family: int = 1, alpha: float = ALPHA,
                 power: float = POWER) -> int | None:
    """The fewest seeds (>= 2: one cannot measure training noise) whose detectable effect is at most delta: at
    that many seeds a true difference of delta is found with `power`, and a true 0 puts the interval within about
    +-delta. None when even MAX_SEEDS seeds cannot (the shared image term alone is too large: more images
    needed, not more seeds)."""
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if detectable_effect(components, MAX_SEEDS, family=family, alpha=alpha, power=power) > delta:
        return None
    lo, hi = 2, MAX_SEEDS  # detectable_effect falls with seeds: bisect for the first that fits
    if detectable_effect(components, lo, family=family, alpha=alpha, power=power) <= delta:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if detectable_effect(components, mid, family=family, alpha=alpha, power=power) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


# ---- paired comparisons (per-image outcomes) -------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A difference (attention minus twin) with its interval, the p-value of 'no difference', its standard error
    and degrees of freedom, and the variance components it came from."""

    estimate: float
    low: float
    high: float
    p_value: float
    method: str
    se: float
    df: float  # Satterthwaite df of the crossed estimator (math.inf: normal, one seed); low/high/p use verdict_df
    components: Components
    seeds: int


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


def _interval(estimate: float, se: float, df: float, level: float, method: str, components: Components,
              seeds: int, centre: float | None = None) -> Interval:
    centre = estimate if centre is None else centre
    q = float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(0.5 + level / 2))
    if se > 0:
        p = float(2 * (stats.t.sf(abs(centre) / se, df) if math.isfinite(df) else stats.norm.sf(abs(centre) / se)))
    else:
        p = 0.0 if centre else 1.0
    return Interval(estimate, centre - q * se, centre + q * se, p, method, se, df, components, seeds)


def paired_interval(d: Sequence[float] | np.ndarray, bound: float = 1.0, level: float = LEVEL) -> Interval:
    """One seed: the difference of two models' mean per-image scores measured on the same images.

    d: per-image differences (attention minus twin) in [-bound, bound]: for accuracy, 1 / 0 / -1 per image (or
    its average over several attack settings); for minimal eps, the difference of the two eps. Pairing removes
    the images' shared difficulty, which an unpaired interval counts twice. It reflects the finite test set only,
    not training noise: it is a statement about these weights (normal quantiles: n is large).
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("paired_interval of no images")
    centre, se = _adjusted_image_moments(d, bound)
    # the seed term is unknown with one seed: 0 here, so a power plan from one seed is a lower bound
    comps = Components(0.0, se * se * d.size, d.size)
    return _interval(float(d.mean()), se, math.inf, level,
                     f"paired over {d.size} images (Agresti-Min adjusted), 1 seed", comps, 1, centre)


def crossed_components(d: np.ndarray, bound: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crossed seeds x images estimator for d[..., k, n] (any leading batch axes, for the simulations):
    returns (seed_var, image_var, df), each of shape d.shape[:-2].

    Two-way layout without replication, d[s, i] = effect + seed_s + image_i + (seed x image)_si. Its mean squares
    MS_seed = n var(row means), MS_image = k var(column means), MS_res (the interaction) have expectations
    n s2_seed + s2_res, k s2_image + s2_res, s2_res. The variance of the grand mean is
    s2_seed / k + s2_image / n + s2_res / (kn) = (MS_seed + MS_image - MS_res) / (kn): the interaction enters once.
    (Adding var(row means) / k and var(column means) / n, as before, counts it twice.) Components truncated at 0:
    seed_var = max(MS_seed, MS_res) / n, image_var = max(MS_image - MS_res, 0) / k. A floor keeps the variance
    from 0 when the models agree on every image: half an image going each way at the bound (Agresti-Min), i.e.
    image_var >= bound^2 / (n + 2). df: Satterthwaite over the mean squares used.
    """
    d = np.asarray(d, dtype=np.float64)
    k, n = d.shape[-2], d.shape[-1]
    rows, cols = d.mean(axis=-1), d.mean(axis=-2)
    grand = d.mean(axis=(-2, -1))
    ms_seed = n * rows.var(axis=-1, ddof=1)
    ms_image = k * cols.var(axis=-1, ddof=1)
    resid = d - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    ms_res = np.square(resid).sum(axis=(-2, -1)) / ((k - 1) * (n - 1))
    seed_var = np.maximum(ms_seed, ms_res) / n
    image_var = np.maximum(np.maximum(ms_image - ms_res, 0.0) / k, bound * bound / (n + 2))
    # Satterthwaite: the variance is a sum of mean squares over kn, each with its own df
    term_seed, term_image = seed_var / k, image_var / n
    seed_from_res = ms_res > ms_seed
    num = (term_seed + term_image) ** 2
    den_seed = np.where(seed_from_res, term_seed ** 2 / ((k - 1) * (n - 1)), term_seed ** 2 / (k - 1))
    den_image = np.where(ms_image > ms_res, (ms_image / (k * n)) ** 2 / (n - 1) + (ms_res / (k * n)) ** 2
                         / ((k - 1) * (n - 1)), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(den_seed + den_image > 0, num / (den_seed + den_image), n - 1.0)
    # never fewer than seeds - 1 (the seed term's own df), never more than the images allow
    return seed_var, image_var, np.clip(df, k - 1, k * n - 1)


def seeds_interval(d: np.ndarray, bound: float = 1.0, level: float = LEVEL) -> Interval:
    """Several seeds: d[s, i] = per-image difference for seed s (each attention model paired with its twin of
    the same seed, all scored on the same images i): training noise and the shared test-set noise, crossed
    (`crossed_components`), with a t interval at df = seeds - 1 (`verdict_df`); the Satterthwaite df is kept in
    .df for the sensitivity column (`decide(..., satterthwaite=True)`)."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2:
        raise ValueError(f"seeds_interval needs [seeds >= 2, images >= 2] differences, got shape {d.shape}")
    k, n = d.shape
    seed_var, image_var, df = (float(x) for x in crossed_components(d, bound))
    comps = Components(seed_var, image_var, n)
    se = math.sqrt(comps.variance(k))
    iv = _interval(float(d.mean()), se, verdict_df(k), level,
                   f"crossed seeds x images, {k} seeds x {n} images (training + test-set noise, df {k - 1}; "
                   f"Satterthwaite df {df:.1f})", comps, k)
    return dataclasses.replace(iv, df=df)


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


# ---- three-way decisions over a family --------------------------------------------------------------------------

HELPS, HURTS, EQUIVALENT, INCONCLUSIVE = "helps", "hurts", "equivalent", "inconclusive"


def _p_values(estimate: float, se: float, df: float, margin: float) -> tuple[float, float]:
    """(p of 'no difference', p of 'outside +-margin'). The second is two one-sided tests, each at alpha / 2
    (p = 2 max of the one-sided p's): rejecting it at alpha is exactly the two-sided (1 - alpha) interval
    lying inside +-margin, so equivalence and the simultaneous interval say the same thing."""
    if se <= 0:
        return (0.0 if estimate else 1.0), (0.0 if abs(estimate) < margin else 1.0)
    dist = stats.t(df) if math.isfinite(df) else stats.norm()
    p_diff = float(2 * dist.sf(abs(estimate) / se))
    p_low = float(dist.sf((estimate + margin) / se))    # H0: difference <= -margin
    p_high = float(dist.cdf((estimate - margin) / se))  # H0: difference >= +margin
    return p_diff, min(1.0, 2 * max(p_low, p_high))


@dataclass(frozen=True)
class Decision:
    verdict: str           # HELPS | HURTS | EQUIVALENT | INCONCLUSIVE
    p_holm: float          # Holm-adjusted p of 'no difference'
    p_equivalence_holm: float  # Holm-adjusted p of 'outside +-margin'
    sim_low: float         # simultaneous interval (Bonferroni over the family)
    sim_high: float
    detectable: float      # smallest effect found with 80% power at the family's level
    seeds_needed: int | None  # for an inconclusive row: seeds to decide at the margin (None: not by seeds)


def decide(intervals: Sequence[Interval], margins: Sequence[float], *, alpha: float = ALPHA,
           satterthwaite: bool = False, power: bool = True) -> list[Decision]:
    """Three-way decisions over one family (a dataset panel's comparisons), each against its own margin.

    helps / hurts: Holm-adjusted p of 'no difference' < alpha; equivalent: Holm-adjusted TOST p < alpha (the
    margin holds both ways); else inconclusive. Holm controls the family-wise error of each kind at alpha.
    Simultaneous intervals: Bonferroni at 1 - alpha / m, so any claim read off several of them holds jointly;
    one that excludes 0 (or lies inside the margin) is always also a Holm decision (Holm rejects at least what
    Bonferroni does), Holm can decide a few more. Tests at df = seeds - 1 (`verdict_df`); satterthwaite: at each
    interval's Satterthwaite df instead (the sensitivity column: what the less conservative df would say).
    power=False: the verdicts and intervals only (detectable nan, seeds_needed None), for checks that re-decide a
    family many times."""
    m = len(intervals)
    if m != len(margins):
        raise ValueError("one margin per interval")
    dfs = [iv.df if satterthwaite else verdict_df(iv.seeds) for iv in intervals]
    centres = [(iv.low + iv.high) / 2 for iv in intervals]  # paired_interval's is Agresti-Min adjusted
    ps = [_p_values(c, iv.se, df, mg) for c, iv, df, mg in zip(centres, intervals, dfs, margins)]
    p_diff = holm([p for p, _ in ps])
    p_eq = holm([p for _, p in ps])
    out = []
    for iv, c, df, mg, pd, pe in zip(intervals, centres, dfs, margins, p_diff, p_eq):
        q = _quantile(1 - alpha / (2 * m), df)
        verdict = (HELPS if c > 0 else HURTS) if pd < alpha else EQUIVALENT if pe < alpha else INCONCLUSIVE
        needed = None
        if verdict == INCONCLUSIVE and iv.seeds >= 2 and power:
            needed = seeds_needed(iv.components, mg, family=m, alpha=alpha)
        detectable = detectable_effect(iv.components, iv.seeds, family=m, alpha=alpha) if power else math.nan
        out.append(Decision(verdict, pd, pe, c - q * iv.se, c + q * iv.se, detectable, needed))
    return out
