"""The width slope, checked by simulation: three widths, each its own crossed seeds x images comparison (training
noise, a shared image term, their interaction), 1000 repetitions: the slope's interval covers the true slope, a
flat truth reads "grows"/"shrinks" at most ~5% of the time, and a true change of one margin across the widths
reads "flat" at most ~5%; then on verdict rows as widths.width_trend gives them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnrobust.report.slopes import FLAT, GROWS, SHRINKS, _decide, slope_interval, width_slopes
from attnrobust.report.stats import _quantile, crossed_components

REPS, SEEDS, N = 1000, 5, 200
WIDTHS = (8, 16, 32)


def _simulate(rng, slope, seed_sd):
    """Per repetition and width: (gap estimate, se) from the crossed estimator; the true gap is slope x log2(w)."""
    est, ses = [], []
    for w in WIDTHS:
        d = (slope * math.log2(w) + rng.normal(0, seed_sd, (REPS, SEEDS, 1)) + rng.normal(0, 1, (REPS, 1, N))
             + rng.normal(0, 1, (REPS, SEEDS, N)))
        seed_var, image_var, _ = crossed_components(d, bound=0.0)
        est.append(d.mean(axis=(1, 2)))
        ses.append(np.sqrt(seed_var / SEEDS + image_var / N))
    return np.stack(est, 1), np.stack(ses, 1)


@pytest.mark.parametrize("seed_sd", [0.1, 0.5])
def test_slope_covers_and_controls_false_trends_and_false_flatness(seed_sd):
    rng = np.random.default_rng(int(seed_sd * 10))
    x = [math.log2(w) for w in WIDTHS]
    margin = 1.0
    for true_slope in (0.0, 0.3, margin / 2):  # margin / 2 per doubling: one margin across 8 -> 32
        est, ses = _simulate(rng, true_slope, seed_sd)
        covered = trends = flats = 0
        for y, s in zip(est, ses):
            slope, se, df = slope_interval(x, y, s, [SEEDS - 1] * len(WIDTHS))
            q = _quantile(0.975, df)
            covered += abs(slope - true_slope) <= q * se
            row = {"slope": slope, "se": se, "df": df, "margin_per_doubling": margin / 2}
            _decide([row], 0.05)
            trends += row["verdict"] in (GROWS, SHRINKS)
            flats += row["verdict"] == FLAT
        assert covered / REPS >= 0.93, (true_slope, covered)
        if true_slope == 0.0:
            assert trends / REPS <= 0.07
        if true_slope == margin / 2:
            assert flats / REPS <= 0.06


def _trend_row(width, difference, half, seeds=5, attack="minimal", saturated=False):
    from attnrobust.report.stats import t_quantile

    q = t_quantile(seeds - 1)
    return {"panel": "fashion-mnist-mini", "attention_model": "cbam_resnet14", "baseline_model": "resnet14",
            "scenario": "white-box", "family": "robustness", "attack": attack, "unit": "/255", "width": width,
            "difference": difference, "ci_low": difference - q * half, "ci_high": difference + q * half,
            "df_verdict": seeds - 1, "margin": 0.5, "withheld": None, "saturated": saturated}


def test_width_slopes_from_trend_rows():
    flat = [_trend_row(w, 0.15, 0.05) for w in WIDTHS]
    growing = [_trend_row(w, 0.5 * math.log2(w), 0.05, attack="fgsm") for w in WIDTHS]
    floor = [_trend_row(w, 0.0, 0.05, attack="pgd", saturated=w != 8) for w in WIDTHS]  # one usable width: no fit
    slopes = {s["attack"]: s for s in width_slopes(flat + growing + floor)}
    assert set(slopes) == {"minimal", "fgsm"}
    assert slopes["minimal"]["verdict"] == FLAT and slopes["minimal"]["slope"] == pytest.approx(0.0, abs=1e-12)
    assert slopes["minimal"]["margin_per_doubling"] == pytest.approx(0.25)  # 0.5 across two doublings
    assert slopes["fgsm"]["verdict"] == GROWS and slopes["fgsm"]["slope"] == pytest.approx(0.5)
