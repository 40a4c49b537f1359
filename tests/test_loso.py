"""Leave one seed out, checked by simulation: a planted outlier seed that makes a row "hurts" is named; rows whose
seeds are all alike are rarely flagged (false positives), and a clear effect never."""

from __future__ import annotations

import numpy as np

from attnrobust.config import VerdictSection
from attnrobust.report.loso import leave_one_seed_out
from attnrobust.report.stats import decide, seeds_interval

REPS, SEEDS, N = 200, 10, 100


def _row(d, margin=2.0):
    """A one-row family as verdicts.compare_cells and decide_family leave it (unit = the data's own)."""
    verdict = decide([seeds_interval(d, bound=0.0)], [margin], power=False)[0].verdict
    seeds = list(range(d.shape[0]))
    return {"withheld": None, "seeds": d.shape[0], "_diffs": d, "_seeds": seeds,
            "_without": lambda seed: seeds_interval(d[[s for s in seeds if s != seed]], bound=0.0),
            "_scale": 1.0, "margin": margin, "verdict": verdict}


def _family(rng, effect):
    """Ten alike seeds: training noise, a shared image term and their interaction, each of SD 1."""
    return [_row(effect + rng.normal(0, 1.0, (SEEDS, 1)) + rng.normal(0, 1.0, (1, N))
                 + rng.normal(0, 1.0, (SEEDS, N)))]


def _flagged(rows):
    leave_one_seed_out(rows, VerdictSection())
    return rows[0]["decided_by_seed"]


def test_an_outlier_seed_that_decides_a_row_is_named():
    # little training noise and no effect, but seed 5 trained differently: its shift widens the interval past a
    # margin of 1 that the other nine seeds' interval fits in
    rng = np.random.default_rng(0)
    named = 0
    for _ in range(REPS):
        d = rng.normal(0, 0.2, (SEEDS, 1)) + rng.normal(0, 1.0, (1, N)) + rng.normal(0, 1.0, (SEEDS, N))
        d[5] -= 4.0
        rows = [_row(d, margin=1.0)]
        named += rows[0]["verdict"] == "inconclusive" and _flagged(rows) == [5]
    assert named / REPS > 0.9


def test_alike_seeds_are_rarely_flagged_and_a_clear_effect_never():
    # alike seeds (no outlier), no effect: a seed is named only for rows at their threshold, about 8% of them
    rng = np.random.default_rng(1)
    flagged = sum(bool(_flagged(_family(rng, effect=0.0))) for _ in range(2 * REPS))
    assert flagged / (2 * REPS) < 0.12
    rows = _family(rng, effect=-6.0)
    assert rows[0]["verdict"] == "hurts" and _flagged(rows) == []
    assert rows[0]["estimate_without_seed"][0] <= rows[0]["_diffs"].mean() <= rows[0]["estimate_without_seed"][1]


def test_rows_with_two_seeds_or_withheld_are_not_checked():
    rng = np.random.default_rng(2)
    rows = [_row(rng.normal(0, 1, (2, N))), {**_row(rng.normal(0, 1, (5, N))), "withheld": "did not learn"}]
    leave_one_seed_out(rows, VerdictSection())
    assert [r["decided_by_seed"] for r in rows] == [None, None]
