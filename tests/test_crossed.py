"""Transfer from independent sources (attnrobust.report.crossed), checked by simulation (seeded): the crossed
sources x targets x images estimator's components are unbiased, its intervals cover the true gap, its tests'
false positives and false equivalences stay near their nominal 5%, with 3 and 10 seeds, a target-, a source- and
an image-dominated noise; the diagonal (same-seed) design is `seeds_interval` exactly; the power plan reads it;
the same-seed excess is found where it is and not where it is not."""

from __future__ import annotations

import numpy as np
import pytest

from attnrobust.report.crossed import (CrossedComponents, crossed_interval, crossed_pairs_components,
                                       same_seed_excess)
from attnrobust.report.stats import EQUIVALENT, INCONCLUSIVE, decide, detectable_effect, seeds_interval, seeds_needed

REPS, N = 400, 40
# (target sd, source sd, pair sd) of the per-pair gap, in the units of the per-image differences (their own
# noise: sd 0.3 per image, shared image effect sd 0.2). "target" is the transfer rows' case (issue 37: target
# pair 14.4, source 0, rest 3.4 pp^2).
NOISE = {"target": (0.04, 0.0, 0.02), "source": (0.0, 0.04, 0.02), "images": (0.0, 0.0, 0.0)}


def _layout(k: int, diagonal: bool = False):
    """(sources, targets) of every pair of k seeds but the same-seed ones (diagonal: only those)."""
    pairs = [(s, t) for s in range(k) for t in range(k) if (s == t) == diagonal]
    return np.array([s for s, _ in pairs]), np.array([t for _, t in pairs])


def _simulate(rng, k, sds, effect=0.0, excess=0.0, with_diagonal=False):
    """Per-image differences d[p, i] of the off-diagonal pairs of k seeds (with_diagonal: the same-seed pairs
    too, shifted by `excess`), and their (sources, targets)."""
    sources, targets = _layout(k)
    if with_diagonal:
        sources, targets = np.concatenate([sources, np.arange(k)]), np.concatenate([targets, np.arange(k)])
    target_sd, source_sd, pair_sd = sds
    cell = (effect + rng.normal(0, target_sd, k)[targets] + rng.normal(0, source_sd, k)[sources]
            + rng.normal(0, pair_sd, len(sources)) + excess * (sources == targets))
    d = cell[:, None] + rng.normal(0, 0.2, N)[None, :] + rng.normal(0, 0.3, (len(sources), N))
    return d, sources, targets


@pytest.mark.parametrize("k", [3, 10])
@pytest.mark.parametrize("noise", sorted(NOISE))
def test_crossed_interval_covers_and_controls_errors(k, noise):
    rng = np.random.default_rng(100 * k + len(noise))
    margin = 0.08
    cover = positives = equivalent = 0
    for _ in range(REPS):
        d, s, t = _simulate(rng, k, NOISE[noise])
        iv = crossed_interval(d, s, t)
        cover += iv.low <= 0 <= iv.high
        positives += iv.p_value < 0.05
        # a true gap at the margin must not be called equivalent: `decide` says equivalent exactly when the
        # interval lies within +-margin (TOST at alpha / 2 each side; checked once below)
        d_m, s_m, t_m = _simulate(rng, k, NOISE[noise], effect=margin)
        at_margin = crossed_interval(d_m, s_m, t_m)
        equivalent += -margin < at_margin.low and at_margin.high < margin
    assert (decide([at_margin], [margin])[0].verdict == EQUIVALENT) == (-margin < at_margin.low < at_margin.high
                                                                          < margin)
    assert cover / REPS >= 0.93, f"coverage {cover / REPS:.3f}"
    assert positives / REPS <= 0.07, f"false positives {positives / REPS:.3f}"
    assert equivalent / REPS <= 0.07, f"false equivalences {equivalent / REPS:.3f}"


def test_components_are_unbiased():
    rng = np.random.default_rng(7)
    sds = (0.05, 0.03, 0.04)
    sources, targets = _layout(8)
    found = []
    for _ in range(2000):
        g = (rng.normal(0, sds[0], 8)[targets] + rng.normal(0, sds[1], 8)[sources]
             + rng.normal(0, sds[2], len(sources)))
        found.append(crossed_pairs_components(g, sources, targets))
    # the truncation at 0 biases a component up a little where its estimate scatters around 0; these are not
    np.testing.assert_allclose(np.mean(found, axis=0), np.square(sds), rtol=0.1)


def test_diagonal_design_is_seeds_interval():
    rng = np.random.default_rng(3)
    d = rng.normal(0.01, 0.3, (5, 50))
    s, t = _layout(5, diagonal=True)
    assert crossed_interval(d, s, t) == seeds_interval(d)
    assert crossed_pairs_components(d.mean(axis=1), s, t) is None  # no two pairs share a seed


def test_crossing_shrinks_the_pair_term_and_power_reads_it():
    comps = CrossedComponents(target_var=1e-3, source_var=0.0, pair_var=4e-3, image_var=1e-2, n=1000)
    same = CrossedComponents(1e-3, 0.0, 4e-3, 1e-2, 1000, design="same-seed")
    assert comps.variance(10) == pytest.approx(1e-4 + 4e-3 / 90 + 1e-5)
    assert same.variance(10) == pytest.approx(5e-4 + 1e-5)
    assert same.variance(10) > comps.variance(10)
    assert detectable_effect(comps, 10) < detectable_effect(same, 10)
    assert seeds_needed(comps, 0.03) <= seeds_needed(same, 0.03)


def test_an_incomplete_layout_still_covers():
    """Some pairs missing (a source seed that failed to score a target): the weights follow the pairs measured."""
    rng = np.random.default_rng(11)
    cover = 0
    for _ in range(REPS):
        d, s, t = _simulate(rng, 6, NOISE["target"])
        keep = rng.random(len(s)) < 0.7
        cover += (iv := crossed_interval(d[keep], s[keep], t[keep])).low <= 0 <= iv.high
    assert cover / REPS >= 0.93


def test_a_cyclic_layout_covers_and_its_power_counts_k_sources_per_target():
    """eval.transfer_seeds = 2: each target seed scored by the 2 seeds before it; the interval still covers, and
    the components say k = 2 so the power plan's pair term is pair_var / (K k)."""
    rng = np.random.default_rng(12)
    k, cover = 8, 0
    for _ in range(REPS):
        d, s, t = _simulate(rng, k, (0.04, 0.02, 0.04))
        keep = (t - s) % k <= 2  # s = t - 1 or t - 2 (the diagonal is not in the layout)
        iv = crossed_interval(d[keep], s[keep], t[keep])
        cover += iv.low <= 0 <= iv.high
    assert cover / REPS >= 0.93
    assert iv.components.sources_per_target == 2
    assert crossed_interval(d, s, t).components.sources_per_target is None  # the full layout
    comps = CrossedComponents(1e-3, 0.0, 4e-3, 0.0, 1000, sources_per_target=2)
    assert comps.variance(10) == pytest.approx(1e-4 + 4e-3 / 20)


@pytest.mark.parametrize("excess", [0.0, -0.1])
def test_same_seed_excess_found_where_it_is(excess):
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(REPS):
        d, s, t = _simulate(rng, 10, NOISE["target"], excess=excess, with_diagonal=True)
        found = same_seed_excess(d.mean(axis=1), s, t)
        hits += found.p_value < 0.05
    if excess == 0:
        assert hits / REPS <= 0.07  # false alarms
    else:
        assert hits / REPS >= 0.8 and found.estimate < 0  # an excess of 2.5 pair sds is found


def test_same_seed_excess_needs_both_kinds_of_pairs():
    s, t = _layout(4, diagonal=True)
    assert same_seed_excess(np.zeros(4), s, t) is None
    s, t = _layout(4)
    assert same_seed_excess(np.zeros(len(s)), s, t) is None


def test_crossed_interval_refuses_mismatched_seeds():
    with pytest.raises(ValueError, match="sources"):
        crossed_interval(np.zeros((4, 10)), [0, 1], [1, 0])


def test_inconclusive_row_asks_for_seeds_from_crossed_components():
    rng = np.random.default_rng(0)
    d, s, t = _simulate(rng, 3, NOISE["target"], effect=0.01)
    dec = decide([crossed_interval(d, s, t)], [0.15])[0]  # the shared image term alone: sd 0.2 / sqrt(40)
    assert dec.verdict == INCONCLUSIVE and dec.seeds_needed is not None and dec.seeds_needed > 3
