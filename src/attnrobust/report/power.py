"""The power plan: before a study trains, what it will be able to decide.

From a pilot (a previous run's records: `[verdict] pilot`), each robustness row's variance components (seed term
and shared image term, `stats.Components`) predict the new study's: the smallest effect it detects with 80% power
at its seeds and the family's level, and the seeds it would need to detect `detect_pp` / `detect_eps` (unset: the
equivalence margins it will test). Training noise is what more seeds shrink; the image term is shared by every
seed, so past some number of seeds only more test images help (seeds needed: "not by seeds").

The pilot's own images (n) are assumed: a study attacking more or fewer images changes the image term only.
"""

from __future__ import annotations

from pathlib import Path

from attnrobust.config import VerdictSection
from attnrobust.errors import UserError
from attnrobust.report.crossed import components_of
from attnrobust.report.stats import detectable_effect, seeds_needed
from attnrobust.report.verdicts import ROBUSTNESS, verdicts
from attnrobust.results import load_records

__all__ = ["pilot_records", "power_plan", "power_plan_lines"]


def pilot_records(pilot: str | Path) -> list[dict]:
    """The records of a pilot: a run folder (its results.jsonl) or a results.jsonl itself."""
    path = Path(pilot).expanduser()
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise UserError(f"verdict.pilot: {path} not found; name a previous run's folder (or its results.jsonl)")
    return load_records(path)


def power_plan(records: list[dict], seeds: int, verdict: VerdictSection, *, pairs=(),
               min_clean_accuracy: float | None = None) -> list[dict]:
    """One row per robustness row of the pilot that has a seed term (>= 2 seeds, not withheld): its components,
    the effect detectable at `seeds`, the effect wanted (detect_* or the margin) and the seeds that detect it."""
    out = []
    for r in verdicts(records, min_clean_accuracy=min_clean_accuracy, pairs=pairs, verdict=verdict):
        if r["family"] != ROBUSTNESS or r["withheld"] is not None or r["at_floor"] or r["seeds"] < 2:
            continue
        per_eps = r["unit"] == "/255"
        wanted = (verdict.detect_eps if per_eps else verdict.detect_pp) or r["margin"]
        components = components_of(r)
        family = r["family_size"]
        out.append({"dataset": r["dataset"], "attention_model": r["attention_model"],
                    "baseline_model": r["baseline_model"], "scenario": r["scenario"], "attack": r["attack"],
                    "unit": r["unit"], "pilot_seeds": r["seeds"], "n": r["n"], "family_size": family,
                    "seed_sd": r["seed_var"] ** 0.5, "image_sd": r["image_var"] ** 0.5, "margin": r["margin"],
                    "seeds": seeds, "detectable": detectable_effect(components, seeds, family=family,
                                                                    alpha=verdict.alpha),
                    "wanted": wanted, "seeds_needed": seeds_needed(components, wanted, family=family,
                                                                   alpha=verdict.alpha)})
    return out


def power_plan_lines(plan: list[dict], seeds: int, source: str) -> list[str]:
    """The plan as Markdown lines: printed before a study trains and kept in its report."""
    if not plan:
        return [f"Power plan: the pilot {source} has no robustness row with two or more seeds to predict from."]
    k = f"{seeds} seed{'s' if seeds != 1 else ''}"
    lines = [f"Power plan ({k}; variance components from the pilot {source}; 80% power at the family's level, "
             f"Bonferroni over each row's family; n = the pilot's images):", "",
             f"| dataset | attention vs twin | scenario | measure | pilot seeds | detectable at {k} | "
             "margin (equivalence) | to detect | seeds needed |", "|---|---|---|---|---|---|---|---|---|"]
    for p in plan:
        unit = "/255" if p["unit"] == "/255" else " pp"
        needed = "not by seeds (more images)" if p["seeds_needed"] is None else str(p["seeds_needed"])
        enough = "" if p["seeds_needed"] is None or p["seeds_needed"] > seeds else " (enough)"
        lines.append(f"| {p['dataset']} | {p['attention_model']} vs {p['baseline_model']} | {p['scenario']} | "
                     f"{p['attack']} | {p['pilot_seeds']} | {p['detectable']:.2f}{unit} | ±{p['margin']:g}{unit} | "
                     f"{p['wanted']:g}{unit} | {needed}{enough} |")
    return lines
