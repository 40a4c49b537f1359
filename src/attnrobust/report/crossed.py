"""Transfer from independent sources: the sources x targets x images estimator, and the same-seed excess.

A transfer row compares two targets (attention model A and its twin B, each of a target seed t) on attacks crafted
on sources of seed s. With eval.transfer_sources = "other-seeds" every source seed s scores every target seed t
but its own, so the per-pair gaps G[s, t] (mean over images and settings of A_t minus B_t) form a crossed layout
with its diagonal missing:

    G[s, t] = effect + target_t + source_s + (source x target)_st      (+ the images' shared effect, in every cell)

Each term is a random effect: var target_t = target_var (training noise of the target pair, the dominant one),
var source_s = source_var, var (s x t) = pair_var (the interaction and the images' noise in one cell, which no
other cell shares), and the images' own effect on the gap, shared by every cell, image_var / n. For the mean over
the P measured pairs, with m_t pairs of target seed t and m_s of source seed s,

    var = target_var * sum_t (m_t / P)^2 + source_var * sum_s (m_s / P)^2 + pair_var / P + image_var / n,

which for the full off-diagonal layout of K seeds is (target_var + source_var) / K + pair_var / (K (K - 1)) +
image_var / n: crossing every source with every target shrinks the pair term K - 1 times at no training cost
(with eval.transfer_seeds = k, each target seed scored on the k seeds before it: pair_var / (K k), at k / (K - 1)
of the scoring cost).

The components come from moments of pairs of cells (`crossed_pairs_components`): half the squared difference of
two cells sharing their target seed estimates source_var + pair_var, of two sharing their source seed
target_var + pair_var, of two sharing neither all three; any pattern of measured pairs works, complete or not.
image_var is the image term of `stats.crossed_components` over the pairs. The diagonal (same-seed) design is the
special case where no two cells share a seed: only the sum is identifiable and `crossed_interval` is exactly
`stats.seeds_interval` (the rows a same-seed study always had). Tests at df = (target seeds) - 1, as the
verdict's other rows (`stats.verdict_df`); a Satterthwaite df for the sensitivity column. Coverage, false
positives and false equivalences are checked by simulation in tests/test_crossed.py.

`same_seed_excess`: where a target seed has both its own seed's source and others, how much the own-seed source
moves the gap (G[t, t] minus the mean of G[s, t] over s != t), a t interval over the target seeds: the bias a
same-seed design carries (on results/fashion-mnist-cpu-stride2 the same-seed VGG's PGD hit its own CBAM harder than its
twin: an excess of about -2 pp).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from attnrobust.report.stats import (LEVEL, Components, Interval, _interval, crossed_components, seeds_interval,
                                     verdict_df)

__all__ = ["CrossedComponents", "crossed_pairs_components", "crossed_interval", "Excess", "same_seed_excess",
           "OTHER_SEEDS", "SAME_SEED", "components_of"]

OTHER_SEEDS, SAME_SEED = "other-seeds", "same-seed"


@dataclass(frozen=True)
class CrossedComponents:
    """The variance components of a transfer gap over sources x targets x images (see the module docstring), in
    the units of the differences. `variance(seeds)` is the variance of the mean gap of a study of `seeds` seeds in
    the design the row used (all K (K - 1) pairs of other seeds, K k with k sources per target seed
    (eval.transfer_seeds), or the K same-seed pairs), so the power plan
    (`stats.detectable_effect`, `stats.seeds_needed`) reads it as it reads `stats.Components`."""

    target_var: float
    source_var: float
    pair_var: float
    image_var: float
    n: int
    design: str = OTHER_SEEDS
    # other seeds each source is scored on (eval.transfer_seeds); None: every other seed
    sources_per_target: int | None = None

    @property
    def seed_var(self) -> float:
        """What one seed's gap varies by in the same-seed design (every term once): the power plan's seed term."""
        return self.target_var + self.source_var + self.pair_var

    def variance(self, seeds: int) -> float:
        if self.design == SAME_SEED or seeds < 2:
            return self.seed_var / seeds + self.image_var / self.n
        k = seeds - 1 if self.sources_per_target is None else min(self.sources_per_target, seeds - 1)
        return (self.target_var + self.source_var) / seeds + self.pair_var / (seeds * k) + self.image_var / self.n


def crossed_pairs_components(gaps: np.ndarray, sources: np.ndarray, targets: np.ndarray
                             ) -> tuple[float, float, float] | None:
    """(target_var, source_var, pair_var) from the per-pair gaps `gaps[p]` of source seed `sources[p]` and target
    seed `targets[p]`: moments of pairs of cells (each truncated at 0). None when no two cells share a seed (the
    diagonal design: only their sum is identifiable)."""
    g = np.asarray(gaps, dtype=np.float64)
    s, t = np.asarray(sources), np.asarray(targets)
    half_sq = np.square(g[:, None] - g[None, :]) / 2
    upper = np.triu(np.ones(half_sq.shape, dtype=bool), 1)
    same_t, same_s = (t[:, None] == t[None, :]) & upper, (s[:, None] == s[None, :]) & upper
    neither = ~(t[:, None] == t[None, :]) & ~(s[:, None] == s[None, :]) & upper
    if not same_t.any() or not same_s.any() or not neither.any():
        return None
    a, b, c = half_sq[same_t].mean(), half_sq[same_s].mean(), half_sq[neither].mean()
    # a = source + pair, b = target + pair, c = target + source + pair
    return max(c - a, 0.0), max(c - b, 0.0), max(a + b - c, 0.0)


def crossed_interval(d: np.ndarray, sources: Sequence[int], targets: Sequence[int], bound: float = 1.0,
                     level: float = LEVEL) -> Interval:
    """The mean of d[p, i] (per-image differences of pair p: source seed sources[p], target seed targets[p]) with
    its interval over sources x targets x images. Every pair on its own seed (the diagonal design): exactly
    `stats.seeds_interval`. Tests at df = (target seeds) - 1; the Satterthwaite df in .df."""
    d = np.asarray(d, dtype=np.float64)
    s, t = np.asarray(sources), np.asarray(targets)
    if d.ndim != 2 or len(s) != d.shape[0] or len(t) != d.shape[0]:
        raise ValueError(f"crossed_interval: {len(s)} sources and {len(t)} targets for differences of shape "
                         f"{d.shape}")
    if np.all(s == t):
        return seeds_interval(d, bound=bound, level=level)
    p, n = d.shape
    gaps = d.mean(axis=1)
    found = crossed_pairs_components(gaps, s, t)
    image_var = float(crossed_components(d, bound)[1])
    if found is None:  # no two pairs share a seed (e.g. one shifted pair per seed): the pairs are independent
        total = float(gaps.var(ddof=1))
        found = (total, 0.0, 0.0)
    target_var, source_var, pair_var = found
    _, m_t = np.unique(t, return_counts=True)
    _, m_s = np.unique(s, return_counts=True)
    w_t, w_s = float(np.sum((m_t / p) ** 2)), float(np.sum((m_s / p) ** 2))
    terms = np.array([target_var * w_t, source_var * w_s, pair_var / p, image_var / n])
    se = math.sqrt(float(terms.sum()))
    k_t, k_s = len(m_t), len(m_s)
    seeds = min(k_t, k_s)
    dfs = np.array([k_t - 1, k_s - 1, max(p - k_t - k_s + 1, 1), n - 1], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = float(np.sum(np.where(dfs > 0, terms ** 2 / np.maximum(dfs, 1), 0.0)))
    satterthwaite = float(np.clip(terms.sum() ** 2 / den, seeds - 1, p * n - 1)) if den > 0 else float(p * n - 1)
    per_target = round(p / k_t)
    comps = CrossedComponents(target_var, source_var, pair_var, image_var, n, OTHER_SEEDS,
                              None if per_target >= k_t - 1 else per_target)
    iv = _interval(float(d.mean()), se, verdict_df(seeds), level,
                   f"crossed sources x targets x images: {p} pairs of {k_s} source and {k_t} target seeds (none "
                   f"on its own seed) x {n} images (df {seeds - 1}; Satterthwaite df {satterthwaite:.1f})",
                   comps, seeds)
    return dataclasses.replace(iv, df=satterthwaite)


@dataclass(frozen=True)
class Excess:
    """How much a target's own seed's source moves a transfer gap, over the target seeds that have both."""

    estimate: float
    low: float
    high: float
    p_value: float
    seeds: int


def same_seed_excess(gaps: np.ndarray, sources: Sequence[int], targets: Sequence[int],
                     level: float = LEVEL) -> Excess | None:
    """Per target seed t with a same-seed pair and at least one other: G[t, t] minus the mean of G[s, t] over
    s != t; their mean with a t interval and p over those target seeds. None with fewer than two of them."""
    g = np.asarray(gaps, dtype=np.float64)
    s, t = np.asarray(sources), np.asarray(targets)
    per_target = []
    for seed in np.unique(t):
        own, other = (t == seed) & (s == seed), (t == seed) & (s != seed)
        if own.any() and other.any():
            per_target.append(float(g[own].mean() - g[other].mean()))
    k = len(per_target)
    if k < 2:
        return None
    x = np.array(per_target)
    mean, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(k))
    q = float(stats.t.ppf(0.5 + level / 2, k - 1))
    p = float(2 * stats.t.sf(abs(mean) / se, k - 1)) if se > 0 else (0.0 if mean else 1.0)
    return Excess(mean, mean - q * se, mean + q * se, p, k)


def components_of(row: dict) -> Components | CrossedComponents:
    """A verdict row's variance components as the power plan reads them back: crossed for a transfer row from
    other seeds' sources (its target, source and pair terms), else the seed and image terms."""
    if row.get("transfer_sources") == OTHER_SEEDS and row.get("target_var") is not None:
        per_target = round(row["seed_pairs"] / row["seeds"]) if row.get("seed_pairs") else None
        return CrossedComponents(row["target_var"], row["source_var"], row["pair_var"], row["image_var"], row["n"],
                                 sources_per_target=None if per_target is None or per_target >= row["seeds"] - 1
                                 else per_target)
    return Components(row["seed_var"], row["image_var"], row["n"])
