"""The interaction verdicts (report/interactions.py), checked by simulation: a verdict row at two values of an axis,
each seeds x images of per-image differences, the seed effect partly shared across the two values (the same seed
number: same data order and initial draw). With no interaction the interval covers 0 in >= 93% of runs and
"changes" is said in <= 7%; with an interaction of one margin "no change within the margin" is said in <= 7%; a
crossed transfer row pairs by (source seed, target seed)."""

from __future__ import annotations

import numpy as np
import pytest

from attnrobust.config import VerdictSection
from attnrobust.report.interactions import CHANGES, NO_CHANGE, TOO_FEW_SEEDS, PairedData, interactions
from attnrobust.results import Panel, Setting

REPS, SEEDS, N = 400, 5, 200
AXIS = [("model_args.stem_stride", [1, 2])]
FGSM = [Setting("fgsm", 0.1)]


def _row(stride: int, diffs: np.ndarray, units: list, design=None, **extra) -> tuple[dict, PairedData]:
    row = {"dataset": Panel("d", point=(("model_args.stem_stride", stride),)), "attention_model": "cbam",
           "baseline_model": "base", "scenario": "white-box", "family": "robustness", "attack": "fgsm",
           "unit": "pp", "difference": 100 * float(diffs.mean()), "margin": 2.0, "withheld": None,
           "at_floor": False, **extra}
    return row, PairedData(FGSM, units, diffs, design, 1.0, on=lambda settings: None)


def _decide(ref: tuple[dict, PairedData], val: tuple[dict, PairedData], power: bool = False) -> dict:
    rows = [ref[0], val[0]]
    paired = {(r["dataset"], r["attention_model"], r["baseline_model"], r["scenario"], r["attack"]): p
              for r, p in (ref, val)}
    (found,) = interactions(rows, paired, AXIS, VerdictSection(), power=power)
    return found


def _simulate(rng, interaction: float, shared: float = 0.6):
    """Per-image differences at the reference and at the other value: gap 0.01 at the reference, seed sd 0.01
    (a share `shared` of its variance common to both values), a shared image effect and per-image noise."""
    common = rng.normal(0, 0.01 * np.sqrt(shared), SEEDS)
    image = rng.normal(0, 0.2, N)
    out = []
    for effect in (0.01, 0.01 + interaction):
        seed = common + rng.normal(0, 0.01 * np.sqrt(1 - shared), SEEDS)
        out.append(effect + seed[:, None] + image[None, :] + rng.normal(0, 0.3, (SEEDS, N)))
    return out


@pytest.mark.parametrize("shared", [0.0, 0.6])
def test_no_interaction_is_covered_and_rarely_called_a_change(shared):
    rng = np.random.default_rng(1)
    cover = changes = 0
    for _ in range(REPS):
        d_ref, d_val = _simulate(rng, 0.0, shared)
        found = _decide(_row(1, d_ref, list(range(SEEDS))), _row(2, d_val, list(range(SEEDS))))
        cover += found["ci_low"] <= 0 <= found["ci_high"]
        changes += found["verdict"] == CHANGES
    assert cover / REPS >= 0.93 and changes / REPS <= 0.07


def test_an_interaction_of_one_margin_is_rarely_called_no_change():
    rng = np.random.default_rng(2)
    wrong = found_change = 0
    for _ in range(REPS):
        d_ref, d_val = _simulate(rng, 0.02)  # 2 pp: the margin
        found = _decide(_row(1, d_ref, list(range(SEEDS))), _row(2, d_val, list(range(SEEDS))))
        wrong += found["verdict"] == NO_CHANGE
        found_change += found["verdict"] == CHANGES
    assert wrong / REPS <= 0.07
    assert found["interaction"] == pytest.approx(100 * (d_val.mean() - d_ref.mean()))


def test_a_large_interaction_is_found_and_a_null_one_with_many_seeds_is_no_change():
    rng = np.random.default_rng(3)
    d_ref, d_val = _simulate(rng, 0.1)
    found = _decide(_row(1, d_ref, list(range(SEEDS))), _row(2, d_val, list(range(SEEDS))))
    assert found["verdict"] == CHANGES and found["interaction"] > 0
    assert found["gap_value"] - found["gap_reference"] == pytest.approx(found["interaction"])
    # tight rows on 2,000 images: the interaction is within the margin
    tight = [rng.normal(0.01, 0.001, (SEEDS, 2000)) for _ in range(2)]
    found = _decide(_row(1, tight[0], list(range(SEEDS))), _row(2, tight[1], list(range(SEEDS))))
    assert found["verdict"] == NO_CHANGE
    # ... but not near a floor, where both gaps are squeezed alike
    found = _decide(_row(1, tight[0], list(range(SEEDS)), near_floor=True), _row(2, tight[1], list(range(SEEDS))))
    assert found["verdict"] == "inconclusive"


def test_an_inconclusive_interaction_says_how_many_seeds_would_decide_it():
    rng = np.random.default_rng(8)
    d_ref, d_val = _simulate(rng, 0.0)
    found = _decide(_row(1, d_ref, list(range(SEEDS))), _row(2, d_val, list(range(SEEDS))), power=True)
    assert found["verdict"] == "inconclusive" and found["seeds_needed"] > SEEDS


def test_seeds_are_paired_and_rows_without_two_common_seeds_are_too_few():
    rng = np.random.default_rng(4)
    d_ref, d_val = _simulate(rng, 0.0)
    # the value measured seeds 1..4 only: the interaction uses the four seeds both have, each with its own
    found = _decide(_row(1, d_ref, list(range(SEEDS))), _row(2, d_val[1:], [1, 2, 3, 4]))
    assert found["seeds"] == 4
    assert found["interaction"] == pytest.approx(100 * (d_val[1:].mean() - d_ref[1:].mean()))
    found = _decide(_row(1, d_ref[:1], [0]), _row(2, d_val[:1], [0]))
    assert found["verdict"] == TOO_FEW_SEEDS and found["interaction"] is None


def test_a_row_at_its_floor_or_withheld_gives_no_interaction():
    rng = np.random.default_rng(5)
    d_ref, d_val = _simulate(rng, 0.0)
    assert _decide(_row(1, d_ref, list(range(SEEDS))),
                   _row(2, d_val, list(range(SEEDS)), at_floor=True))["verdict"] == "at floor"
    assert _decide(_row(1, d_ref, list(range(SEEDS)), withheld="low clean accuracy"),
                   _row(2, d_val, list(range(SEEDS))))["verdict"] == "withheld"


def test_crossed_transfer_rows_pair_by_source_and_target_seed():
    """Transfer from other seeds' sources: units are (source seed, target seed) pairs, the interval the crossed
    one; coverage at no interaction."""
    rng = np.random.default_rng(6)
    units = [(s, t) for t in range(SEEDS) for s in range(SEEDS) if s != t and (t - s) % SEEDS <= 2]
    cover = 0
    for _ in range(200):
        target = rng.normal(0, 0.02, SEEDS)  # the target pair's training noise, shared by both values in part
        rows = []
        for stride in (1, 2):
            own = 0.6 * target + 0.8 * rng.normal(0, 0.02, SEEDS)
            d = np.stack([own[t] + rng.normal(0, 0.01) + rng.normal(0, 0.3, N) for s, t in units])
            rows.append(_row(stride, d, units, design="other-seeds", scenario="transfer from vgg"))
        found = _decide(*rows)
        cover += found["ci_low"] <= 0 <= found["ci_high"]
    assert cover / 200 >= 0.93 and "crossed" in found["method"]


def test_each_value_is_set_against_the_reference_in_its_own_family():
    """Three values of an axis: 2 and 4 each against 1 (the first listed), two families, each decided."""
    rng = np.random.default_rng(7)
    d = _simulate(rng, 0.1) + _simulate(rng, 0.0)[1:]
    rows = [_row(stride, x, list(range(SEEDS))) for stride, x in zip((1, 2, 4), d)]
    paired = {(r["dataset"], r["attention_model"], r["baseline_model"], r["scenario"], r["attack"]): p for r, p in rows}
    found = interactions([r for r, _ in rows], paired, [("model_args.stem_stride", [1, 2, 4])], VerdictSection())
    assert [(f["value"], f["reference"], f["family_size"]) for f in found] == [(2, 1, 1), (4, 1, 1)]
    assert found[0]["verdict"] == CHANGES and found[1]["verdict"] in (NO_CHANGE, "inconclusive")
