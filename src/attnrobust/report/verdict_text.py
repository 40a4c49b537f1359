"""How the verdict rows are worded: the one-line answers (`summaries`), the table in verdicts.txt
(`verdict_text`, `verdict_cells`, `marked_verdict`), the formatted cells the README and the width, margin and
corruption sections reuse, the power note and the warnings.

verdicts.py computes the rows (paired comparisons, families, decisions); this module only reads them, so a change
of wording never touches a number.
"""

from __future__ import annotations

from attnrobust.config import VerdictSection
from attnrobust.report.crossed import OTHER_SEEDS
from attnrobust.report.floors import AT_FLOOR
from attnrobust.report.paper import load_paper, paper_dataset, paper_model
from attnrobust.report.stats import EQUIVALENT, INCONCLUSIVE, POWER
from attnrobust.report.tables import aligned_lines
from attnrobust.report.verdicts import (HELPS, HURTS, NONE, ROBUSTNESS, SAME_SEED_FLAG, TRANSFERABILITY, WITHHELD,
                                        verdicts)
from attnrobust.results import Panel
def _combine(found: list[str]) -> str:
    """A scope's verdict from its rows: the direction of the decided ones (both: "mixed"), else "equivalent" when
    every row is, else "inconclusive"."""
    live = [v for v in found if v != WITHHELD]
    if not live:
        return WITHHELD if found else INCONCLUSIVE
    directions = {v for v in live if v in (HELPS, HURTS)}
    if directions:
        return directions.pop() if len(directions) == 1 else "mixed"
    return EQUIVALENT if all(v == EQUIVALENT for v in live) else INCONCLUSIVE


def summaries(rows: list[dict], records: list[dict] | None = None) -> list[dict]:
    """Per dataset and attention pair: white-box and transfer (as a target) verdicts against the paper's
    conclusion. Only robustness rows count; the twin-transfer and as-a-source rows say how well attacks
    transfer, not how robust a model is.

    With one seed it is "indicative" and never "reproduced" or "not reproduced". records (optional): to say when
    the gradient-masking flag is set for either model.
    """
    conclusion = load_paper()["conclusion"]
    out = []
    keys = sorted({(r["dataset"], r["attention_model"], r["baseline_model"]) for r in rows})
    for d, attn, base in keys:
        pd = paper_dataset(d)
        paper_pair = paper_model(attn) == "cbam_resnet50" and paper_model(base) == "resnet50"
        masking = sorted({(r["target"], r["seed"]) for r in records or () if Panel.of(r) == d
                          and r["target"] in (attn, base) and not (r.get("flags") or {}).get(
                              "gradient_masking", {}).get("ok", True)})
        for scope in ("white-box", "transfer"):
            mine = [r for r in rows if (r["dataset"], r["attention_model"], r["baseline_model"]) == (d, attn, base)
                    and r["family"] == ROBUSTNESS and r["scenario"].startswith(scope)]
            if not mine:
                continue
            # White-box: the minimal eps per image is the primary measure when measured (the paper's budgets
            # saturate: every standard model is at ~0% there, a floor).
            primary = [r for r in mine if r["attack"] == "minimal"] if scope == "white-box" else []
            # a row at a floor or ceiling tests nothing: it does not count towards the scope's verdict
            ours = _combine([r["verdict"] for r in (primary or mine) if not r["saturated"]])
            seeds = min(r["seeds"] for r in mine)
            paper = conclusion[scope].get(pd) if paper_pair and pd else None
            if paper is None:
                agreement = "n/a"
            elif seeds < 2:
                agreement = "not judged (1 seed: indicative)"
            elif ours == WITHHELD:
                agreement = "not judged (verdict withheld)"
            elif ours == INCONCLUSIVE:
                agreement = "inconclusive (neither a difference nor equivalence shown)"
            elif paper == "no clear difference":
                agreement = "reproduced" if ours == EQUIVALENT else f"not reproduced (ours: {ours})"
            elif ours == paper:
                agreement = "reproduced"
            elif ours == EQUIVALENT:
                agreement = "not reproduced (equivalent within the margin)"
            elif ours == "mixed":
                agreement = "partly (mixed)"
            else:  # opposite directions; our models are not the paper's (report/paper.py reduced_notes)
                agreement = f"not reproduced (ours: {ours})"
            # The paper's text and its tables can disagree (CIFAR-100 transfer: "very low" difference in the
            # text, significant gaps in Table III), so its tables' verdict by our rule is given beside it.
            from_tables = [r["paper_verdict"] for r in mine if r["paper_verdict"] is not None]
            withheld = [r["withheld"] for r in mine if r["withheld"]]
            needed = [r["seeds_needed"] for r in (primary or mine) if r["verdict"] == INCONCLUSIVE]
            out.append({"dataset": d, "attention_model": attn, "baseline_model": base, "scope": scope,
                        "ours": ours, "paper": paper, "agreement": agreement,
                        "paper_tables": _combine_paper(from_tables) if from_tables else None,
                        "seeds": seeds, "withheld": withheld[0] if withheld else None,
                        "primary": "minimal eps" if primary else "all measures",
                        "seeds_needed": (None if not needed else "more images" if None in needed else max(needed)),
                        "flagged_rows": sum(1 for r in mine if r["flags"]),
                        "gradient_masking": [f"{m} seed {s}" for m, s in masking] if scope == "white-box" else []})
    return out


def _combine_paper(found: list[str]) -> str:
    significant = {v for v in found if v != NONE}
    if not significant:
        return NONE
    return significant.pop() if len(significant) == 1 else "mixed"


def verdict_label(verdict: str, seeds: int) -> str:
    """The verdict as a reader should take it: one seed is about these weights, not the architecture."""
    if verdict in (WITHHELD, AT_FLOOR) or seeds >= 2:
        return verdict
    return f"{verdict} (indicative, 1 seed)"


def format_diff(row: dict) -> str:
    unit = "" if row.get("unit", "pp") == "pp" else f" {row['unit']}"
    return f"{row['difference']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]{unit}"


def format_sim(row: dict) -> str:
    if row.get("sim_low") is None:
        return "-"
    return f"[{row['sim_low']:+.2f}, {row['sim_high']:+.2f}]"


def format_df(row: dict) -> str:
    """df of the verdict's test, the Satterthwaite df beside it, and the verdict there when it differs."""
    if row["seeds"] < 2:
        return "normal"
    text = f"{row['seeds'] - 1} (S {row['df']:.0f})"
    alt = row.get("verdict_satterthwaite")
    if alt is not None and alt != row["verdict"]:
        text += f" S: {alt}!"
    return text


def format_needed(row: dict) -> str:
    if row.get("verdict") != INCONCLUSIVE or row["seeds"] < 2:
        return "-"
    if row["seeds_needed"] is None:  # near a floor no number of seeds makes it equivalent
        return "-" if row.get("near_floor") else "more images"
    return str(row["seeds_needed"])


def format_chances(row: dict) -> str:
    """The chance of "equivalent" with the seeds run, at a true effect of 0 and of half the margin."""
    if row.get("equivalent_at_0") is None:
        return "-"
    return f"{100 * row['equivalent_at_0']:.0f}% / {100 * row['equivalent_at_half']:.0f}%"


def format_both(row: dict) -> str:
    if row.get("both_correct_difference") is None:
        return "-"
    return f"{row['both_correct_difference']:+.2f}"


def format_relative(row: dict) -> str:
    return "-" if row.get("relative_gap") is None else f"{row['relative_gap']:+.0f}%"


def format_paper(row: dict) -> str:
    if row["paper_difference"] is None:
        return "-"
    return f"{row['paper_difference']:+.2f} ({row['paper_verdict']})"


def power_note(rows: list[dict]) -> str:
    """The one line that leads a verdict table: what the study could have seen at all."""
    live = [r for r in rows if r["family"] == ROBUSTNESS and r.get("detectable") is not None]
    if not live:
        return "power: no robustness rows to judge"
    parts = []
    for unit in ("pp", "/255"):
        of = [r for r in live if r["unit"] == unit]
        if of:
            smallest = min(r["detectable"] for r in of)
            largest = max(r["detectable"] for r in of)
            margin = of[0]["margin"]
            u = "pp" if unit == "pp" else "/255"
            span = f"{smallest:.2f}" if f"{smallest:.2f}" == f"{largest:.2f}" else f"{smallest:.2f}-{largest:.2f}"
            parts.append(f"{span} {u} (margin +-{margin:g} {u})")
    seeds = sorted({r["seeds"] for r in live})
    inconclusive = [r for r in live if r["verdict"] == INCONCLUSIVE]
    needed = [r["seeds_needed"] for r in inconclusive if r["seeds"] >= 2]
    tail = ""
    if needed:
        finite = [k for k in needed if k is not None]
        tail = (f"; {len(inconclusive)} of {len(live)} rows inconclusive, deciding them at the margin would take "
                + (f"up to {max(finite)} seeds (80% power at an effect equal to the margin)" if finite else "")
                + (" (some: more images, not seeds)" if None in needed else ""))
    chances = [r["equivalent_at_0"] for r in live if r.get("equivalent_at_0") is not None]
    if chances:
        low, high = 100 * min(chances), 100 * max(chances)
        tail += (f"; with the seeds run, a true effect of 0 would read equivalent in "
                 f"{f'{low:.0f}' if round(low) == round(high) else f'{low:.0f}-{high:.0f}'}% of such studies")
    return (f"power: with {'/'.join(map(str, seeds))} seed(s), the smallest effects these rows detect with "
            f"{100 * POWER:.0f}% "
            f"power at the family's level: {'; '.join(parts)}{tail}")


def verdict_table(records: list[dict], *, min_clean_accuracy: float | None = None, pairs=(),
                  verdict: VerdictSection | None = None, transfer_sources: str = OTHER_SEEDS) -> str:
    """Plain-text verdict table of the records (verdicts.txt, printed at the end of a study), then the per-dataset
    summary and the warnings."""
    return verdict_text(verdicts(records, min_clean_accuracy=min_clean_accuracy, pairs=pairs, verdict=verdict,
                                 transfer_sources=transfer_sources), records)


def failed_flags(records: list[dict]) -> list[dict]:
    """Every failed sanity flag of the records: dataset, flag, target, source, seed, setting, detail."""
    out = []
    for r in records:
        for name, f in sorted((r.get("flags") or {}).items()):
            if not f.get("ok", True):
                setting = r["attack"] + (f" eps {r['eps']:.4g}" if r.get("eps") is not None else "") + (
                    f" {r['steps']} steps" if r.get("steps") else "")
                out.append({"dataset": r["dataset"] if not r.get("regime") else f"{r['dataset']} [{r['regime']}]",
                            "flag": name, "target": r["target"], "source": r["source"], "seed": r["seed"],
                            "setting": setting, "detail": f.get("detail", "")})
    return out


def same_seed_lines(rows: list[dict]) -> list[str]:
    """One line per transfer row whose targets were scored on their own seed's source (SAME_SEED_FLAG): the
    same-seed excess measured where the records hold other seeds' sources too, else that it cannot be."""
    out = []
    for r in rows:
        if SAME_SEED_FLAG not in r["flags"]:
            continue
        unit = "/255" if r["unit"] == "/255" else " pp"
        if r.get("same_seed_excess") is not None:
            how = (f"a target's own seed's source moves this gap by {r['same_seed_excess']:+.2f}{unit} "
                   f"[{r['same_seed_excess_low']:+.2f}, {r['same_seed_excess_high']:+.2f}] "
                   f"(p {r['same_seed_excess_p']:.2g}) against the other seeds' sources measured here")
        else:
            how = ("no other seed's source scored these targets, so the bias cannot be measured here; set "
                   "eval.transfer_sources = \"other-seeds\" (a finished study: scripts/rescore_transfer.py)")
        out.append(f"  {SAME_SEED_FLAG}: {r['dataset']}, {r['attention_model']} vs {r['baseline_model']}, "
                   f"{r['scenario']}, {r['attack']}: targets scored on attacks crafted on a source of their own seed "
                   f"(same data order: not independent of them); {how}")
    return out


def warnings_lines(records: list[dict], rows: list[dict] = ()) -> list[str]:
    """The warnings: a count per flag, then each failed flag with its model, seed, setting and detail; a clean
    bill in one line. rows: the verdict rows, for their own flag (`same_seed_lines`)."""
    failed = failed_flags(records)
    checked = sum(len(r.get("flags") or {}) for r in records)
    same_seed = same_seed_lines(rows)
    checked += sum(r.get("transfer_sources") is not None for r in rows)  # each transfer row's SAME_SEED_FLAG
    if same_seed:
        failed.extend({"flag": SAME_SEED_FLAG, "line": line} for line in same_seed)
    if not failed:
        return [f"warnings: none (all {checked} sanity flags of {len(records)} records passed)"]
    counts: dict[str, int] = {}
    for f in failed:
        counts[f["flag"]] = counts.get(f["flag"], 0) + 1
    lines = [f"warnings: {len(failed)} of {checked} sanity flags failed ("
             + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + "); verdict rows built on them are "
             "marked [flag]"]
    for f in failed:
        lines.append(f["line"] if "line" in f else f"  {f['flag']}: {f['dataset']}, {f['source']} -> {f['target']}, "
                     f"seed {f['seed']}, {f['setting']}: {f['detail']}")
    return lines


VERDICT_HEADER = ["dataset", "attention vs twin", "scenario", "attack", "seeds", "diff [95% CI]", "simultaneous",
                  "margin", "verdict", "df (S: Satterthwaite)", "detectable", "seeds to decide",
                  "P(equivalent) if 0 / m/2", "both-correct", "rel. gap", "paper", "reproduced"]


def marked_verdict(r: dict) -> str:
    """A row's verdict as a reader should take it: one seed indicative, no equivalence claim near a floor, a failed
    flag marked."""
    near = r.get("near_floor") and not r["saturated"] and r["verdict"] != WITHHELD
    deciders = r.get("decided_by_seed")
    return (verdict_label(r["verdict"], r["seeds"]) + (" (near floor: no equivalence claim)" if near else "")
            + (f" [seed{'s' if len(deciders) > 1 else ''} {', '.join(map(str, deciders))} "
               f"decide{'' if len(deciders) > 1 else 's'}]" if deciders else "")
            + (f" [borderline: {r['borderline_seeds']} of {r['seeds']} seeds change it]"
               if r.get("borderline_seeds") else "")
            + (" [flag]" if r["flags"] else ""))


def verdict_cells(r: dict) -> list[str]:
    """One row of the verdict table (text and Markdown share it)."""
    verdict = marked_verdict(r)
    return [str(r["dataset"]), f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["attack"],
            str(r["seeds"]), format_diff(r), format_sim(r), f"+-{r['margin']:g}", verdict, format_df(r),
            "-" if r["detectable"] is None else f"{r['detectable']:.2f}", format_needed(r), format_chances(r),
            format_both(r),
            format_relative(r), format_paper(r).replace(NONE, "n.s."), r["reproduced"]]


def verdict_text(rows: list[dict], records: list[dict] | None = None) -> str:
    """verdict_table from rows that `verdicts` already computed (records: for the warnings and the gradient-
    masking flag)."""
    if not rows:
        return "verdicts: none (no attention model with its no-attention twin in the results)"
    lines = [power_note(rows), ""]
    for family, title in ((ROBUSTNESS, "robustness (the verdict)"),
                          (TRANSFERABILITY, "transferability (how well attacks crafted on each transfer; not "
                                            "evidence about robustness)")):
        mine = [r for r in rows if r["family"] == family]
        if mine:
            lines += [f"{title}:"] + aligned_lines([VERDICT_HEADER] + [verdict_cells(r) for r in mine]) + [""]
    lines.append("diff = attention model minus its twin, per image, averaged over the attack's settings: robust "
                 "accuracy in pp (> 0: attention more robust); minimal: the restricted mean of the per-image minimal "
                 "eps up to the cap (area under the robust-accuracy curve), in 1/255. verdict: helps/hurts "
                 "(Holm-adjusted over each dataset's family), equivalent (the difference lies within +-margin, "
                 "TOST, Holm-adjusted), else inconclusive; tests at df = seeds - 1, 'S: X!' where the Satterthwaite "
                 "df would decide X. simultaneous: Bonferroni intervals over the family (claims over several rows "
                 "use them). detectable: the smallest effect found with 80% power at the family's level; seeds to "
                 "decide: the seeds at which an effect equal to the margin is found with 80% power; P(equivalent) "
                 "if 0 / m/2: the chance this row reads equivalent, with the seeds run, at a true effect of 0 and "
                 "of half the margin. at floor: no setting leaves room for a margin-sized change either way. "
                 "[seed s decides]: without seed s the verdict changes; [borderline]: without any of half the seeds "
                 "or more it changes. "
                 "both-correct: the diff on images both targets classify correctly; rel. gap: diff over the twin's "
                 "value")
    for s in summaries(rows, records):
        paper = f"paper: {s['paper']} -> {s['agreement']}" if s["paper"] else "paper: n/a"
        if s["paper_tables"] is not None and s["paper_tables"] != s["paper"]:
            paper += f"; the paper's own tables by this rule: {s['paper_tables']}"
        ours = verdict_label(s["ours"], s["seeds"])
        if s["ours"] == INCONCLUSIVE and s["seeds_needed"] is not None:
            ours += f" at {s['seeds']} seeds; deciding at the margin would take {s['seeds_needed']}" + (
                "" if s["seeds_needed"] == "more images" else " seeds")
        if s["withheld"]:
            ours += f" ({s['withheld']})"
        if s["flagged_rows"]:
            ours += f" ({s['flagged_rows']} row(s) built on failed sanity flags)"
        if s["gradient_masking"]:
            ours += f" (GRADIENT MASKING flagged: {', '.join(s['gradient_masking'])})"
        lines.append(f"{s['dataset']}: {s['scope']}: {s['attention_model']} vs {s['baseline_model']}: "
                     f"{ours} ({paper})")
    if records is not None:
        lines += [""] + warnings_lines(records, rows)
    return "\n".join(lines)
