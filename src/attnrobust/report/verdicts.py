"""Does attention help, hurt, is it equivalent within a declared margin, or can the study not tell? Paired
comparisons, seeds, and a controlled family.

For each dataset and each attention model A whose no-attention twin B is in the results (the registry's ModelInfo
says which is which), one comparison per scenario and measure. Robustness rows (the verdict's family):

- white-box: A attacked white-box vs B attacked white-box;
- transfer from V (every model without attention that is neither A nor B, e.g. VGG): A vs B *as targets* of the
  same attacks crafted on V (the paper's third scenario): the transfer direction that is evidence about A's
  robustness.

Transferability rows (their own family, never in the robustness verdict):

- transfer (twin): A scored on attacks crafted on B vs B scored on attacks crafted on A (the paper's first two
  scenarios). It mixes A's robustness as a target with B's attacks' strength as a source;
- as a source, on V (every other model V): V attacked by attacks crafted on A vs by attacks crafted on B (> 0: A's
  attacks transfer less). In results/attention-kinds BoTNet's twin-transfer "hurts" was this, not robustness.

A measure is an attack's robust accuracy, averaged over its settings (FGSM at every eps > 0, PGD/APGD at every
iteration count), per image: d_i = mean over settings of (A correct on image i) - (B correct on image i), in
percentage points (> 0: attention more robust); or, for "minimal", the per-image minimal adversarial eps of A
minus B, in 1/255, an image not broken up to the cap counted at the cap: the restricted mean up to the cap, i.e.
the area under the robust-accuracy-vs-eps curve (> 0: A needs a larger perturbation). The latter is the primary
white-box measure when present: at the paper's budgets every standard model is at ~0% robust accuracy, a floor.

Statistics (attnrobust.report.stats; coverage, false positives and false equivalences checked by simulation in
tests/test_stats.py):
- paired: A and B are scored on the same images, so they are compared image by image;
- one seed: a paired interval over the images (Agresti-Min adjusted). It is about these weights, not the
  architecture: the verdict says "indicative (1 seed)";
- several seeds (A and B paired by seed): the crossed seeds x images estimator, tests at df = seeds - 1; the
  Satterthwaite df and what the verdict would be there (the sensitivity column) beside it;
- three-way verdicts over each family (a dataset panel's robustness rows): helps / hurts (Holm over the family),
  equivalent within +-margin ([verdict] margin_pp / margin_eps; TOST, Holm over the same family), else
  inconclusive, with the smallest effect the row could have detected and, for an inconclusive row, the seeds it
  would take to decide at the margin. Simultaneous (Bonferroni) intervals beside the per-comparison ones: claims
  over several rows use them;
- confounds shown: the same difference on the images both models classify correctly (clean accuracy leaks into
  robust accuracy: a misclassified image counts as broken at eps 0), and the gap relative to the twin's value;
- sanity flags: a row whose input records carry a failed flag names it;
- no verdict from models that did not learn: when a compared model's clean accuracy is below the dataset's floor
  (`clean_floor`), the row is withheld and says why;
- settings away from the floor (report/floors.py): a row averages only the settings where both models leave room
  for a margin-sized change either way, lists those it left out, reads "at floor" when none is left (and leaves
  the family), and claims no equivalence within twice the margin of 0% or 100% (near_floor).
The paper's own numbers go through the unpaired one-seed rule (only counts are published, n = 10000). "Not
reproduced" is said only where the paper's gap lies outside our simultaneous interval, the row is not at a floor,
and the gap could occur at our accuracies at all (floors.paper_gap_possible); setting by setting, with relative
gaps, in report/paper_settings.py.
"""

from __future__ import annotations


import numpy as np
from scipy import stats as scipy_stats

from attnrobust.config import VerdictSection
from attnrobust.report.equivalence import equivalence_chances
from attnrobust.report.floors import AT_FLOOR, near_floor, no_equivalence_near_floor, paper_gap_possible, usable
from attnrobust.report.crossed import (OTHER_SEEDS, SAME_SEED, CrossedComponents, crossed_interval,
                                       same_seed_excess)
from attnrobust.report.grid import Grid, registered_info
from attnrobust.report.interactions import PairedData, interaction_key
from attnrobust.report.loso import leave_one_seed_out
from attnrobust.report.paper import PAPER_N, paper_value
from attnrobust.report.stats import EQUIVALENT, Z95, decide, paired_interval, proportion_diff_se, seeds_interval
from attnrobust.report.tables import column_titles
from attnrobust.results import Setting, unpack_bits, unpack_floats

HELPS, HURTS, NONE, WITHHELD = "helps", "hurts", "no significant difference", "withheld"
_SHORT = {NONE: "n.s."}
# Clean accuracy a compared model must reach for its robustness to mean anything (a model near chance is
# "robust" to nothing); per dataset, else DEFAULT_FLOOR. Override with [eval] min_clean_accuracy.
CLEAN_FLOORS = {"fashion-mnist": 0.80, "fashion-mnist-mini": 0.75, "cifar10": 0.70, "cifar100": 0.40}
DEFAULT_FLOOR = 0.5
ROBUSTNESS, TRANSFERABILITY = "robustness", "transferability"


def clean_floor(dataset: str, override: float | None = None) -> float:
    return override if override is not None else CLEAN_FLOORS.get(dataset.dataset, DEFAULT_FLOOR)


def attention_pairs(models: list[str], declared=()) -> list[tuple[str, str]]:
    """(attention model, its no-attention twin) for every attention model whose twin is also present. Names the
    registry does not know (e.g. two checkpoints of one model told apart by file name) are not paired.
    declared: a config's study.pairs ([attention model, model compared with(, label)]), added after the
    registry's pairs when both models are present."""
    infos = {m: info for m in models if (info := registered_info(m)) is not None}  # unknown names: nothing known
    pairs = [(m, i.twin) for m, i in infos.items() if i.twin is not None and i.twin in models]
    return pairs + [(p[0], p[1]) for p in declared if p[0] in models and p[1] in models
                    and (p[0], p[1]) not in pairs]


def _has_attention(name: str, declared=()) -> bool | None:
    for p in declared:  # a declared pair says which of its two models has the attention
        if name in p[:2]:
            return name == p[0]
    if ":" in name:  # a user model: nothing known about its attention unless declared
        return None
    info = registered_info(name)
    return None if info is None else info.attention is not None


def _scenarios(models: list[str], attn: str, base: str, declared=()):
    """(scenario, attention cell, baseline cell, what is compared, family) as (source, target) cells."""
    yield ("white-box", (attn, attn), (base, base), f"{attn} vs {base}, each attacked white-box", ROBUSTNESS)
    for v in models:
        if v not in (attn, base) and _has_attention(v, declared) is False:
            yield (f"transfer from {v}", (v, attn), (v, base),
                   f"{attn} vs {base} as targets of attacks crafted on {v}", ROBUSTNESS)
    yield ("transfer (twin)", (base, attn), (attn, base),
           f"{attn} on attacks crafted on {base} vs {base} on attacks crafted on {attn} (mixes robustness as a "
           f"target with strength as a source)", TRANSFERABILITY)
    for v in models:
        if v not in (attn, base):
            yield (f"as a source, on {v}", (attn, v), (base, v),
                   f"{v} attacked by attacks crafted on {attn} vs on {base} (> 0: {attn}'s attacks transfer less)",
                   TRANSFERABILITY)


def _per_image_scores(record: dict, s: Setting) -> np.ndarray:
    """What a measure scores per image: correct (1/0) for accuracies; for minimal eps the eps itself, an image
    not broken up to the largest eps tried counted at that eps (censored: its mean is the restricted mean up to
    the cap, the area under the robust-accuracy curve)."""
    if s.attack == "minimal":
        return np.minimum(unpack_floats(record["min_eps"], record["n"]), record["eps"])
    key = "clean_bits" if s.attack == "clean" else "robust_bits"
    return unpack_bits(record[key], record["n"]).astype(np.float64)


def _per_image_differences(runs, a_cell, b_cell, settings: list[Setting], unit):
    """(d_i, both-correct mask) for one unit (a seed, or a (source seed, target seed) pair; `runs(cell, setting)`
    gives unit -> record): mean over settings of A's minus B's per-image score, and the images both compared
    targets classify correctly (None if the images differ)."""
    total, both = None, None
    for s in settings:
        ra, rb = runs(a_cell, s)[unit], runs(b_cell, s)[unit]
        if ra["n"] != rb["n"] or ra["images"] != rb["images"]:
            return None
        diff = _per_image_scores(ra, s) - _per_image_scores(rb, s)
        total = diff if total is None else total + diff
        if both is None:
            both = unpack_bits(ra["clean_bits"], ra["n"]) & unpack_bits(rb["clean_bits"], rb["n"])
    return total / len(settings), both


def _failed_flags(runs, cells, settings: list[Setting], units: list) -> list[str]:
    """Names of the failed sanity flags on the records a row is computed from (sorted, each once)."""
    found = set()
    for cell in cells:
        for s in settings:
            for unit, record in runs(cell, s).items():
                if unit in units:
                    found |= {name for name, f in (record.get("flags") or {}).items() if not f.get("ok", True)}
    return sorted(found)


# ---- the transfer rows' sources ------------------------------------------------------------------------------------
# A transfer row scores its targets of seed t on attacks crafted on sources of seed s. Under eval.transfer_sources
# = "other-seeds" (the default) every s != t measured (independent sources; attnrobust.report.crossed's estimator);
# under "same-seed", or where the records hold no other seed's source (a study run before it existed, or with one
# seed), s = t, and the row carries the failed flag SAME_SEED_FLAG (with two seeds or more: one seed has no other).
SAME_SEED_FLAG = "same_seed_sources"


def _transfer_runs(grid: Grid, d: str, a_cell, b_cell, settings: list[Setting], transfer_sources: str):
    """(runs, design) of a row: runs(cell, setting) -> unit -> record, and the design (None: white-box, seeds as
    units; OTHER_SEEDS: (source seed, target seed) pairs, never the same seed; SAME_SEED: seeds as units)."""
    def by_seed(cell, s):
        return grid.runs(d, *cell, s)

    if a_cell[0] == a_cell[1]:
        return by_seed, None

    def other_seeds(cell, s):
        return {u: r for u, r in grid.pair_runs(d, *cell, s).items() if u[0] != u[1]}

    measured = [s for s in settings if other_seeds(a_cell, s) and other_seeds(b_cell, s)]
    if transfer_sources == OTHER_SEEDS and measured and set.intersection(
            *(set(other_seeds(a_cell, s)) & set(other_seeds(b_cell, s)) for s in measured)):
        return other_seeds, OTHER_SEEDS
    return by_seed, SAME_SEED


def _same_seed_excess(grid: Grid, d: str, a_cell, b_cell, settings: list[Setting]):
    """`crossed.same_seed_excess` of the row's gap (A's minus B's accuracy, mean over settings) over every
    (source seed, target seed) pair both cells measured: how much a target's own seed's source moves it."""
    pairs = [grid.pair_runs(d, *cell, s) for s in settings for cell in (a_cell, b_cell)]
    units = sorted(set.intersection(*(set(p) for p in pairs))) if pairs else []
    if not units:
        return None
    gaps = [np.mean([s.accuracy(grid.pair_runs(d, *a_cell, s)[u]) - s.accuracy(grid.pair_runs(d, *b_cell, s)[u])
                     for s in settings]) for u in units]
    return same_seed_excess(np.array(gaps), [u[0] for u in units], [u[1] for u in units])


def _unit(attack: str) -> tuple[str, float]:
    """(unit, scale) of a measure's differences: accuracy in percentage points, minimal eps in 1/255 steps."""
    return ("/255", 255.0) if attack == "minimal" else ("pp", 100.0)


def _clean_accuracy(grid: Grid, d: str, model: str, seeds: list[int]) -> float | None:
    """The model's lowest clean accuracy over the seeds (from its white-box cell)."""
    values = []
    for seed in seeds:
        run = grid.runs(d, model, model, Setting("clean")).get(seed)
        if run is not None:
            values.append(run["clean_accuracy"])
    return min(values) if values else None


def _paper_verdict(d: str, a_cell, b_cell, settings: list[Setting]) -> tuple[float | None, str | None]:
    """The same comparison on the paper's numbers (final-iterate settings it shares with ours), judged by the
    unpaired one-seed rule with its n: the paper publishes one run's accuracies, not per-image outcomes."""
    diffs, ses = [], []
    for s in settings:
        pa, pb = paper_value(d, *a_cell, s), paper_value(d, *b_cell, s)
        if pa is not None and pb is not None:
            acc_pa, acc_pb = (100 - pa, 100 - pb) if s.is_error else (pa, pb)  # error -> accuracy
            diffs.append(acc_pa - acc_pb)
            ses.append(proportion_diff_se(round(acc_pa * PAPER_N / 100), PAPER_N,
                                          round(acc_pb * PAPER_N / 100), PAPER_N))
    if not diffs:
        return None, None
    diff, half = sum(diffs) / len(diffs), 100 * Z95 * sum(ses) / len(ses)
    return diff, HELPS if diff - half > 0 else HURTS if diff + half < 0 else NONE


def _wilcoxon_p(d: np.ndarray) -> float | None:
    """Paired Wilcoxon signed-rank p over the images of the seed-averaged differences: a secondary,
    distribution-free check of the minimal-eps row (it sees the images' noise, not the training noise)."""
    x = d.mean(axis=0)
    if not np.any(x != 0):
        return 1.0
    return float(scipy_stats.wilcoxon(x, zero_method="wilcox").pvalue)


def _mean_value(runs, cell, settings: list[Setting], units) -> float:
    """A cell's value in its row's unit, averaged over settings and units (seeds, or (source, target) seed pairs;
    `runs(cell, setting)` maps each to its run): robust accuracy in %, or, for minimal eps, the restricted mean eps
    up to the cap in 1/255."""
    unit, scale = _unit(settings[0].attack)
    return scale * float(np.mean([_per_image_scores(runs(cell, s)[u], s).mean() if unit == "/255"
                                  else s.accuracy(runs(cell, s)[u]) for s in settings for u in units]))


def compare_away_from_floor(grid: Grid, d: str, a_cell, b_cell, settings: list[Setting], floor: float,
                            verdict: VerdictSection, transfer_sources: str = OTHER_SEEDS) -> dict | None:
    """`compare_cells` over the settings where both models leave room for a margin-sized change either way
    (report/floors.py; judged on each seed's own cells, the levels a transfer row's sources hardly move); with
    none, over all of them, marked at_floor. Adds at_floor, near_floor (no equivalence claim) and settings_at_floor
    (the settings left out)."""
    settings = [s for s in settings if grid.runs(d, *a_cell, s) and grid.runs(d, *b_cell, s)]
    if not settings:
        return None
    unit, scale = _unit(settings[0].attack)
    margin = verdict.margin_eps if unit == "/255" else verdict.margin_pp

    def top(s: Setting) -> float:  # the measure's ceiling: 100%, or the minimal eps's cap
        return scale * s.eps if unit == "/255" else 100.0

    def cell_runs(cell, s):
        return grid.runs(d, *cell, s)

    def values(s: Setting) -> tuple[float, float]:
        seeds = sorted(set(cell_runs(a_cell, s)) & set(cell_runs(b_cell, s)))
        return _mean_value(cell_runs, a_cell, [s], seeds), _mean_value(cell_runs, b_cell, [s], seeds)

    used = [s for s in settings if usable(*values(s), margin, top(s))]
    row = compare_cells(grid, d, a_cell, b_cell, used or settings, floor, transfer_sources)
    if row is None:
        return None
    left_out = [s for s in settings if s not in used]
    row.update(at_floor=not used, settings_at_floor=column_titles(left_out) if used else [],
               near_floor=near_floor(row["attention_accuracy"], row["baseline_accuracy"], margin,
                                     min(top(s) for s in used or settings)))
    return row


def compare_cells(grid: Grid, d: str, a_cell, b_cell, settings: list[Setting], floor: float,
                  transfer_sources: str = OTHER_SEEDS) -> dict | None:
    runs, design = _transfer_runs(grid, d, a_cell, b_cell, settings, transfer_sources)
    settings = [s for s in settings if runs(a_cell, s) and runs(b_cell, s)]
    if not settings:
        return None
    unit_sets = [set(runs(a_cell, s)) & set(runs(b_cell, s)) for s in settings]
    units = sorted(set.intersection(*unit_sets))
    per_unit = [_per_image_differences(runs, a_cell, b_cell, settings, u) for u in units]
    pairs = [(u, v) for u, v in zip(units, per_unit) if v is not None]
    if not pairs:
        return None
    units = [u for u, _ in pairs]
    diffs = np.stack([v[0] for _, v in pairs])
    masks = [v[1] for _, v in pairs]
    unit, scale = _unit(settings[0].attack)
    bound = max(s.eps for s in settings) if unit == "/255" else 1.0
    if design == OTHER_SEEDS:
        iv = crossed_interval(diffs, [u[0] for u in units], [u[1] for u in units], bound=bound)
        seeds = sorted({x for u in units for x in u})  # every seed whose models the row uses
    else:
        seeds = units
        iv = seeds_interval(diffs, bound=bound) if len(seeds) >= 2 else paired_interval(diffs[0], bound=bound)
    # both models targets of the comparison (white-box / as a target); in a source row the target is shared
    attn_model, base_model = a_cell[1], b_cell[1]
    clean = {m: _clean_accuracy(grid, d, m, seeds) for m in {attn_model, base_model, a_cell[0], b_cell[0]}}
    low_clean = [f"{m} {100 * c:.1f}%" for m, c in sorted(clean.items()) if c is not None and c < floor]

    baseline = _mean_value(runs, b_cell, settings, units)
    both = [float(x[m].mean()) for x, m in zip(diffs, masks) if m.any()]
    paper_diff, paper_verdict = _paper_verdict(d, a_cell, b_cell, settings)
    flags = _failed_flags(runs, (a_cell, b_cell), settings, units)
    excess = None if design is None else _same_seed_excess(grid, d, a_cell, b_cell, settings)
    if design == SAME_SEED and len(units) >= 2:  # one seed: no other to take, and the row is indicative anyway
        flags = sorted(flags + [SAME_SEED_FLAG])

    def on_settings(others: list[Setting]) -> PairedData | None:  # the same comparison on other settings
        again = compare_cells(grid, d, a_cell, b_cell, others, floor, transfer_sources)
        return None if again is None else again["_paired"]

    return {
        "settings": column_titles(settings),
        "seeds": iv.seeds,
        "n": int(diffs.shape[1]),
        # which sources a transfer row's targets were scored on (None: white-box), how many (source, target) seed
        # pairs, and what a target's own seed's source does to the gap where both were measured (crossed.Excess)
        "transfer_sources": design,
        "seed_pairs": len(units) if design is not None else None,
        "same_seed_excess": None if excess is None else scale * excess.estimate,
        "same_seed_excess_low": None if excess is None else scale * excess.low,
        "same_seed_excess_high": None if excess is None else scale * excess.high,
        "same_seed_excess_p": None if excess is None else excess.p_value,
        "attention_accuracy": _mean_value(runs, a_cell, settings, units),
        "baseline_accuracy": baseline,
        "unit": unit,
        "difference": scale * iv.estimate,
        "ci_low": scale * iv.low,
        "ci_high": scale * iv.high,
        "p_value": iv.p_value,
        "df": iv.df,
        "method": iv.method,
        # the confounds: the same difference on the images both targets classify correctly (mean over seeds),
        # and the gap as a fraction of the twin's own value
        "both_correct_difference": scale * float(np.mean(both)) if both else None,
        "both_correct_n": int(round(np.mean([m.sum() for m in masks]))),
        "relative_gap": 100 * scale * iv.estimate / baseline if baseline > 0 else None,
        "wilcoxon_p": _wilcoxon_p(diffs) if unit == "/255" else None,
        "flags": flags,
        "withheld": (f"clean accuracy below the floor of {100 * floor:.0f}% ({', '.join(low_clean)}): the model "
                     f"did not learn enough for its robustness to mean anything") if low_clean else None,
        "paper_difference": paper_diff,
        "paper_verdict": paper_verdict,
        "_interval": iv,
        "_scale": scale,
        # for the leave-one-seed-out check (report/loso.py): the row's interval without one seed's models
        "_without": lambda seed: _interval_without(diffs, units, design, bound, seed),
        "_seeds": seeds,
        # for the interaction verdicts (report/interactions.py): what the row averaged, and the same on others
        "_paired": PairedData(settings, units, diffs, design, bound, on=on_settings),
    }


def _interval_without(diffs: np.ndarray, units: list, design: str | None, bound: float, seed: int):
    """The row's interval on its units (seeds, or (source, target) seed pairs) that do not use `seed`'s models."""
    if design == OTHER_SEEDS:
        keep = [i for i, u in enumerate(units) if seed not in u]
        return crossed_interval(diffs[keep], [units[i][0] for i in keep], [units[i][1] for i in keep], bound=bound)
    keep = [i for i, u in enumerate(units) if u != seed]
    return seeds_interval(diffs[keep], bound=bound)


# verdicts.csv's columns of the transfer rows' sources, after readme.VERDICT_KEYS
TRANSFER_KEYS = ["transfer_sources", "seed_pairs", "same_seed_excess", "same_seed_excess_low", "same_seed_excess_high",
                 "same_seed_excess_p", "target_var", "source_var", "pair_var"]


def _measures(grid: Grid, d: str) -> list[str]:
    attacks = {s.attack for s in grid.settings(d) if s.attack != "clean"}
    return sorted(attacks, key=lambda a: Setting(a).sort_key())


def _margin(row: dict, verdict: VerdictSection) -> float:
    """The row's equivalence margin in its own unit (pp or 1/255)."""
    return verdict.margin_eps if row["unit"] == "/255" else verdict.margin_pp


def decide_family(rows: list[dict], verdict: VerdictSection) -> None:
    """Three-way decisions over one family (the rows of one dataset and family kind that are not withheld or at a
    floor), at df = seeds - 1 and, for the sensitivity column, at the Satterthwaite df."""
    # a row at a floor (no usable setting, report/floors.py) tests nothing: it leaves the family like a withheld one
    live = [r for r in rows if r["withheld"] is None and not r.get("at_floor")]
    intervals = [r["_interval"] for r in live]
    margins = [_margin(r, verdict) / r["_scale"] for r in live]
    main = decide(intervals, margins, alpha=verdict.alpha)
    loose = decide(intervals, margins, alpha=verdict.alpha, satterthwaite=True)
    for r, dec, alt, mg in zip(live, main, loose, margins):
        scale, near = r["_scale"], bool(r.get("near_floor"))
        r.update(p_holm=dec.p_holm, p_equivalence_holm=dec.p_equivalence_holm,
                 verdict=no_equivalence_near_floor(dec.verdict, near), margin=mg * scale,
                 sim_low=scale * dec.sim_low, sim_high=scale * dec.sim_high, detectable=scale * dec.detectable,
                 seeds_needed=dec.seeds_needed, df_verdict=r["seeds"] - 1 if r["seeds"] >= 2 else None,
                 verdict_satterthwaite=no_equivalence_near_floor(alt.verdict, near),
                 family_size=len(live), indicative=r["seeds"] < 2, alpha=verdict.alpha)
    for r in rows:
        if r["withheld"] is not None or r.get("at_floor"):
            r.update(p_holm=None, p_equivalence_holm=None, margin=_margin(r, verdict),
                     verdict=WITHHELD if r["withheld"] is not None else AT_FLOOR,
                     sim_low=None, sim_high=None, detectable=None, seeds_needed=None, df_verdict=None,
                     verdict_satterthwaite=None, family_size=len(live), indicative=r["seeds"] < 2,
                     alpha=verdict.alpha)


def verdicts(records: list[dict], *, min_clean_accuracy: float | None = None, pairs=(),
             verdict: VerdictSection | None = None, transfer_sources: str = OTHER_SEEDS,
             paired: dict | None = None) -> list[dict]:
    """One dict per dataset x (attention model, twin) x scenario x measure; see the module docstring.

    Keys: dataset, attention_model, baseline_model, scenario, family ("robustness" | "transferability"), attack,
    compared, settings, seeds, n, attention_accuracy, baseline_accuracy, unit, difference, ci_low, ci_high (per
    comparison), sim_low, sim_high (simultaneous over the family), margin, p_value, p_holm, p_equivalence_holm,
    df (Satterthwaite), df_verdict (seeds - 1), alpha (the family-wise error of the decisions), verdict ("helps" |
    "hurts" | "equivalent" | "inconclusive" | "withheld" | "at floor"), verdict_satterthwaite (the sensitivity column),
    detectable, seeds_needed, family_size, both_correct_difference, both_correct_n, relative_gap (% of the twin's
    value), wilcoxon_p (minimal eps), flags (failed sanity flags of its records), method, withheld (None or why),
    indicative (one seed), at_floor / saturated (no setting away from the floor: verdict "at floor"), near_floor
    (no equivalence claim), settings_at_floor (settings left out of the average), decided_by_seed /
    estimate_without_seed (leave one seed out, report/loso.py), equivalent_at_0 /
    equivalent_at_half (the chance of "equivalent" at a true effect of 0 / half the margin), paper_difference,
    paper_verdict, reproduced; for transfer rows (TRANSFER_KEYS): transfer_sources ("other-seeds" | "same-seed",
    None for white-box), seed_pairs, same_seed_excess (with _low, _high, _p), target_var, source_var, pair_var.

    transfer_sources (eval.transfer_sources): "other-seeds" scores a transfer row's targets on the sources of
    every other seed where the records hold them (else the same seed's, flagged SAME_SEED_FLAG); "same-seed" on
    their own seed's source only (flagged too).

    paired: a dict to fill with each row's interactions.PairedData, keyed (dataset, attention_model,
    baseline_model, scenario, attack): what the interaction verdicts need (report/interactions.py).
    """
    verdict = verdict or VerdictSection()
    grid = Grid.from_records(records)
    out = []
    for d in grid.datasets():
        models = grid.models(d)
        floor = clean_floor(d, min_clean_accuracy)
        families: dict[str, list[dict]] = {ROBUSTNESS: [], TRANSFERABILITY: []}
        for attn, base in attention_pairs(models, pairs):
            for scenario, a_cell, b_cell, compared, family in _scenarios(models, attn, base, pairs):
                for attack in _measures(grid, d):
                    settings = [s for s in grid.settings(d) if s.attack == attack]
                    row = compare_away_from_floor(grid, d, a_cell, b_cell, settings, floor, verdict,
                                                  transfer_sources)
                    if row is not None:
                        families[family].append({"dataset": d, "attention_model": attn, "baseline_model": base,
                                                 "scenario": scenario, "family": family, "attack": attack,
                                                 "compared": compared, **row})
        for family in families.values():
            decide_family(family, verdict)
            leave_one_seed_out(family, verdict)
            for r in family:
                r["saturated"] = r["at_floor"]  # the name earlier reports and width_trend.csv use
                r["reproduced"] = _agreement(r)
                # the variance components in the row's unit (squared), which a power plan reads back
                iv, scale = r.pop("_interval"), r.pop("_scale")
                if paired is not None:
                    paired[interaction_key(r)] = r["_paired"]
                del r["_without"], r["_seeds"], r["_paired"]
                c = iv.components
                r.update(seed_var=scale ** 2 * c.seed_var, image_var=scale ** 2 * c.image_var,
                         **{k: scale ** 2 * getattr(c, k) if isinstance(c, CrossedComponents) else None
                            for k in ("target_var", "source_var", "pair_var")})
                r.update(equivalence_chances(r))  # beside "seeds to decide": the chance of "equivalent" as run
            out += family
    return out


def _agreement(row: dict) -> str:
    """Does the paper's gap survive our row? Only where it lies outside our simultaneous interval, away from a
    floor or ceiling, is it "not reproduced"."""
    if row["paper_verdict"] is None or row["indicative"] or row["verdict"] == WITHHELD:
        return "n/a"
    if row["saturated"]:
        return "not tested at this scale (floor/ceiling)"
    if row["unit"] == "pp" and not paper_gap_possible(row["attention_accuracy"], row["baseline_accuracy"],
                                                      row["paper_difference"]):
        return "cannot occur at our accuracies (see the paper comparison per setting)"
    inside = row["sim_low"] <= row["paper_difference"] <= row["sim_high"]
    if row["verdict"] in (HELPS, HURTS) and row["verdict"] == row["paper_verdict"]:
        return "reproduced" if inside else "direction reproduced (gap size not)"
    if not inside:
        return "not reproduced"
    if row["verdict"] == EQUIVALENT and row["paper_verdict"] == NONE:
        return "reproduced"
    return "inconclusive"


def paired_rows(grid: Grid, *, min_clean_accuracy: float | None = None, pairs=()) -> list[dict]:
    """Like `verdicts`, but one row per single setting (each FGSM eps, each PGD iteration count): descriptive,
    outside the verdict's family (no multiplicity control; the verdicts average these)."""
    out = []
    for d in grid.datasets():
        models = grid.models(d)
        floor = clean_floor(d, min_clean_accuracy)
        settings = [s for s in grid.settings(d) if s.attack != "clean"]
        titles = dict(zip(settings, column_titles(settings)))
        for attn, base in attention_pairs(models, pairs):
            for scenario, a_cell, b_cell, _, _ in _scenarios(models, attn, base, pairs):
                for s in settings:
                    row = compare_cells(grid, d, a_cell, b_cell, [s], floor)
                    if row is not None:
                        del row["settings"], row["_interval"], row["_scale"]
                        low, high = row["ci_low"], row["ci_high"]
                        row["verdict"] = (WITHHELD if row["withheld"] else HELPS if low > 0 else
                                          HURTS if high < 0 else NONE)
                        out.append({"dataset": d, "attention_model": attn, "baseline_model": base,
                                    "scenario": scenario, "setting": titles[s], **row})
    return out
