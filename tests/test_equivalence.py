"""The chance of "equivalent" a verdict row states, checked by simulation: rows of the crossed seeds x images
layout (training noise per seed, a shared image term, their interaction) at true effects of 0, half the margin
and the margin, decided as stats.decide decides them (checked equal on the first repetitions)."""

from __future__ import annotations

import numpy as np
import pytest

from attnrobust.report.equivalence import equivalence_chance, equivalence_chances
from attnrobust.report.stats import EQUIVALENT, Components, crossed_components, decide, seeds_interval

REPS, N = 2000, 200


def _simulate(rng, seeds, effect, seed_sd, image_sd, resid_sd):
    """d[rep, seed, image] = effect + seed term + image term + interaction."""
    return (effect + rng.normal(0, seed_sd, (REPS, seeds, 1)) + rng.normal(0, image_sd, (REPS, 1, N))
            + rng.normal(0, resid_sd, (REPS, seeds, N)))


def _equivalent(d, margin, alpha=0.05):
    """Per repetition: does one row (a family of one) read "equivalent"? As stats.decide decides at df = seeds - 1
    with seeds_interval's crossed components."""
    from scipy import stats

    k, n = d.shape[1], d.shape[2]
    seed_var, image_var, _ = crossed_components(d, bound=0.0)
    se = np.sqrt(seed_var / k + image_var / n)
    est = d.mean(axis=(1, 2))
    q = stats.t.ppf(1 - alpha / 2, k - 1)
    return (np.abs(est) < q * se) & (np.abs(est) + q * se < margin)


@pytest.mark.parametrize("seeds, seed_sd, image_sd, resid_sd", [
    (10, 1.0, 0.0, 1.0),    # training noise dominates, as in the transfer rows
    (3, 0.5, 2.0, 3.0),     # image term and interaction large beside the seed term
    (30, 1.0, 1.0, 5.0),
])
def test_chance_of_equivalent_matches_simulation(seeds, seed_sd, image_sd, resid_sd):
    rng = np.random.default_rng(seeds)
    components = Components(seed_sd ** 2 + resid_sd ** 2 / N, image_sd ** 2, N)
    se = np.sqrt(components.variance(seeds))
    margin = 3.5 * se  # where the chance is neither 0 nor 1
    for effect in (0.0, margin / 2, margin):
        d = _simulate(rng, seeds, effect, seed_sd, image_sd, resid_sd)
        hits = _equivalent(d, margin)
        if effect == 0.0:  # the vectorised rule is the verdict's own
            for rep in range(3):
                dec = decide([seeds_interval(d[rep], bound=0.0)], [margin])[0]
                assert (dec.verdict == EQUIVALENT) == bool(hits[rep])
        predicted = equivalence_chance(components, seeds, margin, effect)
        # 2000 repetitions: the frequency's SE is at most 0.011
        assert abs(hits.mean() - predicted) < 0.04, (effect, hits.mean(), predicted)


def test_chance_falls_with_the_effect_and_rises_with_seeds():
    c = Components(4.0, 1.0, 1000)
    at = [equivalence_chance(c, 10, 2.0, e) for e in (0.0, 1.0, 2.0)]
    assert at[0] > at[1] > at[2] and at[2] < 0.06  # at the margin itself "equivalent" is a false equivalence
    assert equivalence_chance(c, 40, 2.0) > at[0]
    assert equivalence_chance(c, 10, 2.0, family=6) < at[0]  # the family's level is stricter


def test_rows_near_a_floor_have_no_chance_and_withheld_rows_none():
    row = {"verdict": "inconclusive", "seed_var": 1.0, "image_var": 1.0, "n": 100, "seeds": 10, "margin": 2.0,
           "family_size": 1, "alpha": 0.05}
    assert equivalence_chances(row)["equivalent_at_0"] > 0.5
    assert equivalence_chances({**row, "near_floor": True}) == {"equivalent_at_0": 0.0, "equivalent_at_half": 0.0}
    assert equivalence_chances({**row, "verdict": "at floor"})["equivalent_at_0"] is None
