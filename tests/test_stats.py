"""The verdict's statistics, checked by simulation: coverage of the true difference and false positives near 5%,
for models whose errors are correlated (same hard images) and uncorrelated, with one seed and with several."""

from __future__ import annotations

import numpy as np
import pytest

from attnrobust.report.stats import holm, paired_interval, seeds_interval

REPS, N = 400, 1000


def _outcomes(rng, p_a, p_b, correlated: bool, seeds: int = 1, seed_sd: float = 0.0, flip: float = 0.05):
    """Per-image 0/1 outcomes [reps, seeds, n] of two models, and the true expected difference p_a - p_b
    (flip noise scales it by 1 - 2 flip). Correlated: both models fail on the same hard images (a shared
    difficulty u); uncorrelated: each has its own. Seeds shift each model's accuracy by N(0, seed_sd)."""
    u_a = rng.random((REPS, 1, N))
    u_b = u_a if correlated else rng.random((REPS, 1, N))
    shift_a = rng.normal(0, seed_sd, (REPS, seeds, 1))
    shift_b = rng.normal(0, seed_sd, (REPS, seeds, 1))
    a = (u_a < p_a + shift_a) ^ (rng.random((REPS, seeds, N)) < flip)
    b = (u_b < p_b + shift_b) ^ (rng.random((REPS, seeds, N)) < flip)
    return a.astype(float) - b.astype(float), (p_a - p_b) * (1 - 2 * flip)


def _rates(diffs, truth):
    covered = rejected = 0
    for d in diffs:
        iv = paired_interval(d[0]) if d.shape[0] == 1 else seeds_interval(d)
        covered += iv.low <= truth <= iv.high
        rejected += iv.low > 0 or iv.high < 0
        assert (iv.p_value < 0.05) == (iv.low > 0 or iv.high < 0) or abs(iv.p_value - 0.05) < 0.01
    return covered / len(diffs), rejected / len(diffs)


@pytest.mark.parametrize("correlated", [True, False])
@pytest.mark.parametrize("p_a, p_b", [(0.6, 0.6), (0.05, 0.05), (0.62, 0.6)])
def test_one_seed_paired_interval_covers_and_controls_false_positives(correlated, p_a, p_b):
    rng = np.random.default_rng(0)
    diffs, truth = _outcomes(rng, p_a, p_b, correlated)
    coverage, rejected = _rates(diffs, truth)
    assert coverage >= 0.93, coverage
    if p_a == p_b:
        assert rejected <= 0.07, rejected


def test_one_seed_paired_interval_has_power_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(1)
    diffs, truth = _outcomes(rng, 0.64, 0.6, correlated=True)
    _, rejected = _rates(diffs, truth)
    assert rejected >= 0.8  # a 3.6 pp effect on 1000 images with shared difficulty is found
    iv = paired_interval(diffs[0][0])
    a_acc = 0.6 + diffs[0][0].mean()
    unpaired_half = 1.96 * np.sqrt(2 * a_acc * (1 - a_acc) / N)
    assert (iv.high - iv.low) / 2 < 0.6 * unpaired_half


def test_identical_models_give_a_non_degenerate_interval():
    iv = paired_interval(np.zeros(1000))
    assert iv.low < 0 < iv.high and iv.p_value == 1.0 and iv.high - iv.low > 0.001


@pytest.mark.parametrize("correlated", [True, False])
def test_seeds_interval_covers_training_noise(correlated):
    # Training noise (seed_sd 3 pp per model) larger than the test-set noise: a one-seed paired interval would
    # claim effects that are only the seed; the several-seed interval must still cover the architecture effect.
    rng = np.random.default_rng(2)
    diffs, truth = _outcomes(rng, 0.6, 0.6, correlated, seeds=3, seed_sd=0.03)
    coverage, rejected = _rates(diffs, truth)
    assert coverage >= 0.93 and rejected <= 0.07, (coverage, rejected)
    one_seed_false = np.mean([not (paired_interval(d[0]).low <= truth <= paired_interval(d[0]).high)
                              for d in diffs[:100]])
    assert one_seed_false > 0.3  # why seeds matter: the one-seed interval misses the truth often here


def test_seeds_interval_without_training_noise_keeps_test_set_noise():
    rng = np.random.default_rng(3)
    diffs, truth = _outcomes(rng, 0.6, 0.6, True, seeds=3, seed_sd=0.0, flip=0.0)
    # every seed identical: the between-seed spread is 0, the shared test-set noise is not
    iv = seeds_interval(diffs[0])
    one = paired_interval(diffs[0][0])
    assert iv.high - iv.low >= one.high - one.low - 1e-12
    coverage, rejected = _rates(diffs, truth)
    assert coverage >= 0.93 and rejected <= 0.07


def test_holm_adjusts_and_keeps_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([]) == []
    # family-wise error under the global null with 6 independent tests stays near 5%
    rng = np.random.default_rng(4)
    p = rng.random((4000, 6))
    any_rejected = np.mean([min(holm(list(row))) < 0.05 for row in p])
    assert any_rejected <= 0.06 and np.mean((p < 0.05).any(axis=1)) > 0.2
