"""Does attention help, hurt, or make no significant difference? Paired comparisons, seeds, and a controlled family.

For each dataset and each attention model A whose no-attention twin B is in the results (the registry's ModelInfo
says which is which), one comparison per scenario and measure:

- white-box: A attacked white-box vs B attacked white-box;
- transfer (twin): A scored on attacks crafted on B vs B scored on attacks crafted on A (the paper's first two
  transfer scenarios; it mixes A's robustness with B's transferability, as the paper's comparison does);
- transfer from V (every model without attention that is neither A nor B, e.g. VGG): A vs B as targets of the
  same attacks crafted on V (the paper's third).

A measure is an attack's robust accuracy, averaged over its settings (FGSM at every eps > 0, PGD/APGD at every
iteration count), per image: d_i = mean over settings of (A correct on image i) - (B correct on image i), in
percentage points (> 0: attention more robust); or, for "minimal", the per-image minimal adversarial eps of A
minus B, in 1/255 (> 0: A needs a larger perturbation). The latter is the primary white-box measure when
present: at the paper's budgets every standard model is at ~0% robust accuracy, a ceiling, not evidence.

Statistics (see attnrobust.report.stats; coverage checked by simulation in tests/test_stats.py):
- paired: A and B are scored on the same images, so they are compared image by image;
- one seed: a paired interval over the images (Agresti-Min adjusted). It is about these weights, not the
  architecture: training noise is not in it, and the verdict says "indicative (1 seed)";
- several seeds (A and B paired by seed): an interval with both training noise (spread of the per-seed
  differences) and test-set noise (shared by every seed, since every seed is scored on the same images);
- multiplicity: every comparison of a dataset (all pairs, scenarios and measures) is one family; Holm-Bonferroni
  adjusted p-values decide "helps"/"hurts" at a family-wise 5%. The 95% intervals shown are per comparison;
- no verdict from models that did not learn: when a compared model's clean accuracy is below the dataset's floor
  (`clean_floor`), the row is withheld and says why.
The paper's own numbers go through the unpaired one-seed rule (only counts are published, n = 10000): e.g. its
CIFAR-10 white-box PGD gap (0.02% vs 0% accuracy at 5 iterations) is no significant difference.
"""

from __future__ import annotations

import numpy as np

from attnrobust.report.grid import Grid, registered_info
from attnrobust.report.paper import PAPER_N, load_paper, paper_dataset, paper_model, paper_value
from attnrobust.report.stats import Z95, holm, paired_interval, proportion_diff_se, seeds_interval
from attnrobust.report.tables import column_titles
from attnrobust.results import Setting, panel_dataset, unpack_bits, unpack_floats

HELPS, HURTS, NONE, WITHHELD = "helps", "hurts", "no significant difference", "withheld"
ALPHA = 0.05
_SHORT = {NONE: "n.s."}
# Clean accuracy a compared model must reach for its robustness to mean anything (a model near chance is
# "robust" to nothing); per dataset, else DEFAULT_FLOOR. Override with [eval] min_clean_accuracy.
CLEAN_FLOORS = {"fashion-mnist": 0.80, "fashion-mnist-mini": 0.75, "cifar10": 0.70, "cifar100": 0.40}
DEFAULT_FLOOR = 0.5


def clean_floor(dataset: str, override: float | None = None) -> float:
    return override if override is not None else CLEAN_FLOORS.get(panel_dataset(dataset), DEFAULT_FLOOR)


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
    """(scenario, attention cell, baseline cell, what is compared) as (source, target) cells."""
    yield ("white-box", (attn, attn), (base, base),
           f"{attn} vs {base}, each attacked white-box")
    yield ("transfer (twin)", (base, attn), (attn, base),
           f"{attn} on attacks crafted on {base} vs {base} on attacks crafted on {attn}")
    for v in models:
        if v not in (attn, base) and _has_attention(v, declared) is False:
            yield (f"transfer from {v}", (v, attn), (v, base),
                   f"{attn} vs {base} as targets of attacks crafted on {v}")


def _per_image_scores(record: dict, s: Setting) -> np.ndarray:
    """What a measure scores per image: correct (1/0) for accuracies; for minimal eps the eps itself, an image
    not broken up to the largest eps tried counted at that eps (censored: a lower bound, which can only shrink a
    difference)."""
    if s.attack == "minimal":
        return np.minimum(unpack_floats(record["min_eps"], record["n"]), record["eps"])
    key = "clean_bits" if s.attack == "clean" else "robust_bits"
    return unpack_bits(record[key], record["n"]).astype(np.float64)


def _per_image_differences(grid: Grid, d: str, a_cell, b_cell, settings: list[Setting], seed: int):
    """d_i for one seed: mean over settings of A's minus B's per-image score (None if the images differ)."""
    total = None
    for s in settings:
        ra, rb = grid.runs(d, *a_cell, s)[seed], grid.runs(d, *b_cell, s)[seed]
        if ra["n"] != rb["n"] or ra["images"] != rb["images"]:
            return None
        diff = _per_image_scores(ra, s) - _per_image_scores(rb, s)
        total = diff if total is None else total + diff
    return total / len(settings)


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


def _compare(grid: Grid, d: str, a_cell, b_cell, settings: list[Setting], floor: float) -> dict | None:
    settings = [s for s in settings if grid.runs(d, *a_cell, s) and grid.runs(d, *b_cell, s)]
    if not settings:
        return None
    seed_sets = [set(grid.runs(d, *a_cell, s)) & set(grid.runs(d, *b_cell, s)) for s in settings]
    seeds = sorted(set.intersection(*seed_sets))
    per_seed = [_per_image_differences(grid, d, a_cell, b_cell, settings, seed) for seed in seeds]
    pairs = [(seed, v) for seed, v in zip(seeds, per_seed) if v is not None]
    if not pairs:
        return None
    seeds = [seed for seed, _ in pairs]
    diffs = np.stack([v for _, v in pairs])
    unit, scale = _unit(settings[0].attack)
    bound = max(s.eps for s in settings) if unit == "/255" else 1.0
    if len(seeds) >= 2:
        iv = seeds_interval(diffs, bound=bound)
    else:
        iv = paired_interval(diffs[0], bound=bound)
    attn_model, base_model = a_cell[1], b_cell[1]
    clean = {m: _clean_accuracy(grid, d, m, seeds) for m in (attn_model, base_model)}
    low_clean = [f"{m} {100 * c:.1f}%" for m, c in clean.items() if c is not None and c < floor]

    def mean_accuracy(cell):  # or, for minimal eps, the mean per-image eps (censored at the largest tried)
        return scale * float(np.mean([_per_image_scores(grid.runs(d, *cell, s)[seed], s).mean() if unit == "/255"
                                      else s.accuracy(grid.runs(d, *cell, s)[seed])
                                      for s in settings for seed in seeds]))

    paper_diff, paper_verdict = _paper_verdict(d, a_cell, b_cell, settings)
    return {
        "settings": column_titles(settings),
        "seeds": len(seeds),
        "n": int(diffs.shape[1]),
        "attention_accuracy": mean_accuracy(a_cell),
        "baseline_accuracy": mean_accuracy(b_cell),
        "unit": unit,
        "difference": scale * iv.estimate,
        "ci_low": scale * iv.low,
        "ci_high": scale * iv.high,
        "p_value": iv.p_value,
        "method": iv.method,
        "withheld": (f"clean accuracy below the floor of {100 * floor:.0f}% ({', '.join(low_clean)}): the model "
                     f"did not learn enough for its robustness to mean anything") if low_clean else None,
        "paper_difference": paper_diff,
        "paper_verdict": paper_verdict,
    }


def _measures(grid: Grid, d: str) -> list[str]:
    attacks = {s.attack for s in grid.settings(d) if s.attack != "clean"}
    return sorted(attacks, key=lambda a: Setting(a).sort_key())


def _decide(rows: list[dict]) -> None:
    """Holm over the family (the rows of one dataset that are not withheld); sets adjusted p and verdict."""
    live = [r for r in rows if r["withheld"] is None]
    for r, p in zip(live, holm([r["p_value"] for r in live])):
        r["p_holm"] = p
        significant = p < ALPHA and (r["ci_low"] > 0 or r["ci_high"] < 0)
        r["verdict"] = (HELPS if r["difference"] > 0 else HURTS) if significant else NONE
        r["indicative"] = r["seeds"] < 2
    for r in rows:
        if r["withheld"] is not None:
            r.update(p_holm=None, verdict=WITHHELD, indicative=r["seeds"] < 2)


def verdicts(records: list[dict], *, min_clean_accuracy: float | None = None, pairs=()) -> list[dict]:
    """One dict per dataset x (attention model, twin) x scenario x measure; see the module docstring.

    Keys: dataset, attention_model, baseline_model, scenario, attack, compared, settings, seeds, n,
    attention_accuracy, baseline_accuracy, difference, ci_low, ci_high (percentage points), p_value, p_holm,
    method, withheld (None or why), verdict ("helps" | "hurts" | "no significant difference" | "withheld"),
    indicative (one seed), paper_difference, paper_verdict, reproduced ("yes" | "no" | "inconclusive" | "n/a").
    """
    grid = Grid.from_records(records)
    out = []
    for d in grid.datasets():
        models = grid.models(d)
        floor = clean_floor(d, min_clean_accuracy)
        family = []
        for attn, base in attention_pairs(models, pairs):
            for scenario, a_cell, b_cell, compared in _scenarios(models, attn, base, pairs):
                for attack in _measures(grid, d):
                    settings = [s for s in grid.settings(d) if s.attack == attack]
                    row = _compare(grid, d, a_cell, b_cell, settings, floor)
                    if row is not None:
                        family.append({"dataset": d, "attention_model": attn, "baseline_model": base,
                                       "scenario": scenario, "attack": attack, "compared": compared, **row})
        _decide(family)
        for r in family:
            r["reproduced"] = _agreement(r)
        out += family
    return out


def _agreement(row: dict) -> str:
    if row["paper_verdict"] is None or row["indicative"] or row["verdict"] == WITHHELD:
        return "n/a"
    if row["verdict"] == row["paper_verdict"]:
        return "yes"
    return "inconclusive" if row["verdict"] == NONE else "no"


def _combine(found: list[str]) -> str:
    significant = {v for v in found if v not in (NONE, WITHHELD)}
    if not significant:
        return WITHHELD if found and all(v == WITHHELD for v in found) else NONE
    return significant.pop() if len(significant) == 1 else "mixed"


def summaries(rows: list[dict]) -> list[dict]:
    """Per dataset and attention pair: white-box and transfer verdicts against the paper's conclusion.

    Ours for a scope is the direction of its rows that are significant after Holm (FGSM, PGD, ... and, for
    transfer, every scenario): all agreeing -> that direction, some disagreeing -> "mixed", none -> no
    significant difference. With one seed it is "indicative" and never "reproduced" or "not reproduced": one
    training run says something about those weights, not about the architecture.
    """
    conclusion = load_paper()["conclusion"]
    out = []
    keys = sorted({(r["dataset"], r["attention_model"], r["baseline_model"]) for r in rows})
    for d, attn, base in keys:
        pd = paper_dataset(d)
        paper_pair = paper_model(attn) == "cbam_resnet50" and paper_model(base) == "resnet50"
        for scope in ("white-box", "transfer"):
            mine = [r for r in rows if (r["dataset"], r["attention_model"], r["baseline_model"]) == (d, attn, base)
                    and r["scenario"].startswith(scope)]
            if not mine:
                continue
            # White-box: the minimal eps per image is the primary measure when measured (the paper's budgets
            # saturate: every standard model is at ~0% there, and "no difference" would be a ceiling).
            primary = [r for r in mine if r["attack"] == "minimal"] if scope == "white-box" else []
            ours = _combine([r["verdict"] for r in (primary or mine)])
            seeds = min(r["seeds"] for r in mine)
            paper = conclusion[scope].get(pd) if paper_pair and pd else None
            if paper is None:
                agreement = "n/a"
            elif seeds < 2:
                agreement = "not judged (1 seed: indicative)"
            elif ours == WITHHELD:
                agreement = "not judged (verdict withheld)"
            elif paper == "no clear difference":
                agreement = "reproduced" if ours == NONE else f"not reproduced (ours: {ours})"
            elif ours == paper:
                agreement = "reproduced"
            elif ours == NONE:
                agreement = "not reproduced (no significant difference)"
            elif ours == "mixed":
                agreement = "partly (mixed)"
            else:
                agreement = "contradicted"
            # The paper's text and its tables can disagree (CIFAR-100 transfer: "very low" difference in the
            # text, significant gaps in Table III), so its tables' verdict by our rule is given beside it.
            from_tables = [r["paper_verdict"] for r in mine if r["paper_verdict"] is not None]
            withheld = [r["withheld"] for r in mine if r["withheld"]]
            out.append({"dataset": d, "attention_model": attn, "baseline_model": base, "scope": scope,
                        "ours": ours, "paper": paper, "agreement": agreement,
                        "paper_tables": _combine(from_tables) if from_tables else None,
                        "seeds": seeds, "withheld": withheld[0] if withheld else None,
                        "primary": "minimal eps" if primary else "all measures"})
    return out


def verdict_label(verdict: str, seeds: int) -> str:
    """The verdict as a reader should take it: one seed is about these weights, not the architecture."""
    if verdict in (WITHHELD,) or seeds >= 2:
        return verdict
    return f"{verdict} (indicative, 1 seed)"


def format_diff(row: dict) -> str:
    unit = "" if row.get("unit", "pp") == "pp" else f" {row['unit']}"
    return f"{row['difference']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]{unit}"


def format_paper(row: dict) -> str:
    if row["paper_difference"] is None:
        return "-"
    return f"{row['paper_difference']:+.2f} ({row['paper_verdict']})"


def verdict_table(records: list[dict], *, min_clean_accuracy: float | None = None, pairs=()) -> str:
    """Plain-text verdict table of the records (verdicts.txt, printed at the end of a study), then the per-dataset
    summary."""
    return verdict_text(verdicts(records, min_clean_accuracy=min_clean_accuracy, pairs=pairs))


def verdict_text(rows: list[dict]) -> str:
    """verdict_table from rows that `verdicts` already computed."""
    if not rows:
        return "verdicts: none (no attention model with its no-attention twin in the results)"
    header = ["dataset", "attention vs twin", "scenario", "attack", "seeds", "diff pp [95% CI]", "p (Holm)",
              "verdict", "paper", "reproduced"]
    body = [[r["dataset"], f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["attack"],
             str(r["seeds"]), format_diff(r), "-" if r["p_holm"] is None else f"{r['p_holm']:.3g}",
             _SHORT.get(r["verdict"], r["verdict"]), format_paper(r).replace(NONE, "n.s."), r["reproduced"]]
            for r in rows]
    lines = _aligned([header] + body)
    lines.append("")
    lines.append("diff = robust accuracy of the attention model minus its twin's, per image, averaged over the "
                 "attack's settings (pp; > 0: attention more robust); minimal: the per-image minimal eps, "
                 "attention minus twin, in 1/255 (the primary white-box measure); verdicts from Holm-adjusted p "
                 "over each dataset's comparisons; n.s. = no significant difference")
    for s in summaries(rows):
        paper = f"paper: {s['paper']} -> {s['agreement']}" if s["paper"] else "paper: n/a"
        if s["paper_tables"] is not None and s["paper_tables"] != s["paper"]:
            paper += f"; the paper's own tables by this rule: {s['paper_tables']}"
        ours = verdict_label(s["ours"], s["seeds"])
        if s["withheld"]:
            ours += f" ({s['withheld']})"
        lines.append(f"{s['dataset']}: {s['scope']}: {s['attention_model']} vs {s['baseline_model']}: "
                     f"{ours} ({paper})")
    return "\n".join(lines)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


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
            for scenario, a_cell, b_cell, _ in _scenarios(models, attn, base, pairs):
                for s in settings:
                    row = _compare(grid, d, a_cell, b_cell, [s], floor)
                    if row is not None:
                        del row["settings"]
                        low, high = row["ci_low"], row["ci_high"]
                        row["verdict"] = (WITHHELD if row["withheld"] else HELPS if low > 0 else
                                          HURTS if high < 0 else NONE)
                        out.append({"dataset": d, "attention_model": attn, "baseline_model": base,
                                    "scenario": scenario, "setting": titles[s], **row})
    return out
