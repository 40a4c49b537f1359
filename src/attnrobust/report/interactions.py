"""Interaction verdicts: does an axis of the study (study.axes: a reduction such as the stem stride, the width, a
BN momentum, ...) change the attention effect?

For every axis with two values or more, every other value v is set against the axis' first value r (the
reference: list the paper's setting first) within each panel that differs in that axis alone, for every verdict
row (attention model and twin, scenario, measure) that both panels have:

    interaction = gap(v) - gap(r)        (gap: attention model minus its twin, the verdict row's difference)

paired by seed and image. Each row's per-image differences d_v[u, i] and d_r[u, i] live on the same units u (the
seeds, or for a transfer row from other seeds' sources the (source seed, target seed) pairs, report/crossed.py)
and the same test images, so the interaction's are d_v[u, i] - d_r[u, i] on the units both measured, and the
row's own estimator gives its interval: `stats.seeds_interval` (crossed seeds x images) or
`crossed.crossed_interval`. Seeds are the units (df = seeds - 1, as every verdict row); a seed number names
different networks at two axis values (another architecture or recipe), so pairing by seed removes only what the
seed shares across them (its data order, its initial draw where the shapes agree), and costs nothing where it
shares nothing. Both rows average the same settings: those both kept away from the floor (report/floors.py); a
row at its floor or withheld on either side gives no interaction ("at floor" / "withheld"), nor do fewer than two
seeds measured at both values ("too few seeds"); one near its floor on either side makes no "no change" claim (the
floor squeezes both gaps alike).

Three-way verdict per family (one axis, one value against the reference, one panel), Holm over its rows as the
verdicts' own families (`stats.decide`): *changes* (Holm p of 'no change' < alpha: the axis moves the attention
effect, up or down as the sign says), *no change within the margin* (two one-sided tests: the interaction lies
within the row's own margin, the size a verdict calls equivalent), else *inconclusive*, with the seeds at which
an interaction of one margin would be found with 80% power (`stats.decide` on the interaction's own variance
components: an interaction carries two gaps' noise, so it needs more seeds than either row). Simulated in
tests/test_interactions.py: coverage and false "changes" at 95% / 5% with no interaction, false "no change" at
most 5% with an interaction of one margin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from attnrobust.config import VerdictSection
from attnrobust.report.crossed import OTHER_SEEDS, crossed_interval
from attnrobust.report.stats import EQUIVALENT, HELPS, HURTS, INCONCLUSIVE, decide, seeds_interval
from attnrobust.report.floors import AT_FLOOR
from attnrobust.report.tables import aligned_lines, column_titles, markdown_table
from attnrobust.results import axis_name

__all__ = ["PairedData", "CHANGES", "NO_CHANGE", "INTERACTION_KEYS", "interactions", "interaction_key",
           "interaction_lines", "interaction_text"]

CHANGES, NO_CHANGE, WITHHELD = "changes", "no change within the margin", "withheld"
TOO_FEW_SEEDS = "too few seeds"  # fewer than two units measured at both values: no interval

INTERACTION_KEYS = ["axis", "reference", "value", "panel", "attention_model", "baseline_model", "scenario", "family",
                    "attack", "unit", "settings", "seeds", "n", "gap_reference", "gap_value", "interaction", "ci_low",
                    "ci_high", "sim_low", "sim_high", "margin", "p_value", "p_holm", "p_equivalence_holm", "verdict",
                    "seeds_needed", "family_size", "method"]


@dataclass(frozen=True)
class PairedData:
    """What a verdict row averaged, kept for the interactions: its settings, units (seeds, or (source seed, target
    seed) pairs), per-image differences d[unit, image] in the row's own fraction (not yet scaled to pp or /255),
    its design (None / "same-seed": seeds as units; "other-seeds": crossed pairs), the bound of a difference, and
    `on(settings)`: the same on other settings (None where the cells lack one)."""

    settings: list
    units: list
    diffs: np.ndarray
    design: str | None
    bound: float
    on: Callable[[list], "PairedData | None"]


def _interval(ref: PairedData, val: PairedData):
    """The interaction's interval on the units both rows measured (None: fewer than two, or other images)."""
    common = [u for u in val.units if u in set(ref.units)]
    if len(common) < 2 or ref.diffs.shape[1] != val.diffs.shape[1]:
        return None, 0
    at_r, at_v = ({u: i for i, u in enumerate(p.units)} for p in (ref, val))
    d = val.diffs[[at_v[u] for u in common]] - ref.diffs[[at_r[u] for u in common]]
    # the variance floor's unit (stats.crossed_components): one image's outcome moving by one step, as in a row
    bound = max(ref.bound, val.bound)
    if val.design == OTHER_SEEDS:
        return crossed_interval(d, [u[0] for u in common], [u[1] for u in common], bound=bound), d.shape[1]
    return seeds_interval(d, bound=bound), d.shape[1]


def _same_settings(ref: PairedData, val: PairedData) -> tuple[PairedData | None, PairedData | None]:
    """Both rows on the settings both used (a floor may have left different ones out of each)."""
    both = [s for s in ref.settings if s in val.settings]
    if not both:
        return None, None
    return (ref if ref.settings == both else ref.on(both)), (val if val.settings == both else val.on(both))


def _families(rows: list[dict], axes: list[tuple[str, list]]):
    """(axis key, reference value, value, base panel) -> [(reference row, row at value)], per verdict row that both
    panels have."""
    index = {interaction_key(r): r for r in rows}
    out: dict[tuple, list[tuple[dict, dict]]] = {}
    for key, values in axes:
        if len(values) < 2:
            continue
        reference = values[0]
        for (panel, *rest), row in index.items():
            if panel.value(key) not in values[1:]:
                continue
            ref_panel = replace(panel, point=tuple((k, reference if k == key else v) for k, v in panel.point))
            ref = index.get((ref_panel, *rest))
            if ref is not None:
                out.setdefault((key, reference, panel.value(key), panel.without(key)), []).append((ref, row))
    return out


def interactions(rows: list[dict], paired: dict[tuple, PairedData], axes: list[tuple[str, list]],
                 verdict: VerdictSection, power: bool = True) -> list[dict]:
    """One row per axis x value x panel x verdict row (keys: INTERACTION_KEYS), decided per family (see the module
    docstring). rows: `verdicts.verdicts`' rows; paired: their PairedData by (dataset, attention_model,
    baseline_model, scenario, attack), as `verdicts(..., paired=...)` fills it; axes: `config.study_axes`.
    power=False: no seeds_needed (what simulations that decide thousands of interactions leave out)."""
    out = []
    for (key, reference, value, panel), pairs in _families(rows, axes).items():
        family, live = [], []
        for ref_row, row in pairs:
            entry = {"axis": axis_name(key), "reference": reference, "value": value, "panel": panel,
                     **{k: row[k] for k in ("attention_model", "baseline_model", "scenario", "attack", "unit")},
                     "family": row.get("family", "robustness"),  # a corruption row is about robustness
                     "gap_reference": ref_row["difference"], "gap_value": row["difference"],
                     "margin": row["margin"], "settings": [], "seeds": None, "n": None, "interaction": None,
                     "ci_low": None, "ci_high": None, "sim_low": None, "sim_high": None, "p_value": None,
                     "p_holm": None, "p_equivalence_holm": None, "seeds_needed": None, "method": None}
            family.append(entry)
            if row["withheld"] or ref_row["withheld"]:
                entry["verdict"] = WITHHELD
                continue
            ref, val = _same_settings(*(paired[interaction_key(r)] for r in (ref_row, row)))
            if ref is None or val is None or row.get("at_floor") or ref_row.get("at_floor"):
                entry["verdict"] = AT_FLOOR
                continue
            iv, n = _interval(ref, val)
            if iv is None:
                entry["verdict"] = TOO_FEW_SEEDS
                continue
            scale = 255.0 if row["unit"] == "/255" else 100.0
            entry.update(settings=column_titles(val.settings), seeds=iv.seeds, n=n, interaction=scale * iv.estimate,
                         ci_low=scale * iv.low, ci_high=scale * iv.high, p_value=iv.p_value, method=iv.method)
            # near a floor both gaps are squeezed: no "no change" claim there (report/floors.py's rule)
            near_floor = bool(row.get("near_floor") or ref_row.get("near_floor"))
            live.append((entry, iv, row["margin"] / scale, scale, near_floor))
        decisions = decide([iv for _, iv, _, _, _ in live], [m for _, _, m, _, _ in live], alpha=verdict.alpha,
                           power=power)
        for (entry, _, _, scale, near_floor), dec in zip(live, decisions):
            said = {HELPS: CHANGES, HURTS: CHANGES, EQUIVALENT: NO_CHANGE}.get(dec.verdict, INCONCLUSIVE)
            if near_floor and said == NO_CHANGE:
                said = INCONCLUSIVE
            entry.update(p_holm=dec.p_holm, p_equivalence_holm=dec.p_equivalence_holm, sim_low=scale * dec.sim_low,
                         sim_high=scale * dec.sim_high, verdict=said,
                         # inconclusive: the seeds at which an interaction of one margin is found with 80% power
                         seeds_needed=dec.seeds_needed if said == INCONCLUSIVE else None)
        for entry in family:
            entry["family_size"] = len(live)
        out += family
    return out


def interaction_key(row: dict) -> tuple:
    """What PairedData is kept by: (dataset, attention_model, baseline_model, scenario, attack)."""
    return row["dataset"], row["attention_model"], row["baseline_model"], row["scenario"], row["attack"]


def _change(r: dict) -> str:
    return "–" if r["interaction"] is None else \
        f"{r['interaction']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] {r['unit']}"


def interaction_text(found: list[dict]) -> str:
    """The interaction verdicts as plain text (verdicts.txt, printed at the end of a study); "" without axes."""
    if not found:
        return ""
    header = ["axis", "value vs reference", "panel", "attention vs twin", "scenario", "measure", "change [95% CI]",
              "verdict"]
    body = [[r["axis"], f"{r['value']} vs {r['reference']}", str(r["panel"]),
             f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["attack"], _change(r), r["verdict"]]
            for r in found]
    return "\n".join(["", "", "What the axes change in the attention effect (the gap at each axis value minus the gap "
                      "at the axis' first value, paired by seed and image; Holm over each axis value and panel):",
                      *aligned_lines([header] + body)])


def interaction_lines(found: list[dict]) -> list[str]:
    """The README section: per axis, value and panel, each row's gap at both values and their difference."""
    if not found:
        return []
    lines = ["## What the axes change in the attention effect (interaction verdicts)", "",
             "Per axis of the study, each value against the first one listed (the reference), within panels that "
             "differ in that axis alone: the attention model's gap to its twin at the value minus the same gap at "
             "the reference, paired by seed and image, with its 95% interval. *changes*: Holm over each family "
             "(one axis value and panel); *no change within the margin*: the change lies within the row's margin "
             "(two one-sided tests); else *inconclusive*, with the seeds at which a change of one margin would be "
             "found with 80% power. A row at its floor on either side tests nothing. Also in "
             "[interactions.csv](interactions.csv).", ""]
    header = ["axis", "value vs reference", "panel", "attention vs twin", "scenario", "measure", "gap at reference",
              "gap at value", "change [95% CI]", "verdict", "seeds to decide"]
    body = []
    for r in found:
        body.append([r["axis"], f"{r['value']} vs {r['reference']}", str(r["panel"]),
                     f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["attack"],
                     f"{r['gap_reference']:+.2f}", f"{r['gap_value']:+.2f}", _change(r), f"*{r['verdict']}*",
                     "–" if r["seeds_needed"] is None else str(r["seeds_needed"])])
    return lines + markdown_table(header, body).splitlines() + [""]
