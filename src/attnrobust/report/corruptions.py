"""The corruption half of the report: accuracy under common corruptions (records with attack "corruption",
attnrobust.evaluate.corruption_scores), attention vs twin.

- the tables: accuracy per corruption and severity for every model (mean ± 95% CI over seeds), its mean
  corruption accuracy, and each attention model's corruption error relative to its twin (`ce_vs_twin`): per
  corruption CE = sum over severities of the attention model's error / the same sum for the twin (as ImageNet-C's
  CE is relative to AlexNet), and their mean over corruptions (mCE; < 100%: attention fewer errors); beside it
  Hendrycks & Dietterich's *relative* CE, each error minus the model's clean error (the drop the corruption
  causes, without the clean accuracy's confound);
- `corruption_verdicts`: the paired verdicts, one row per attention pair and corruption (accuracy averaged over its
  severities, per image) plus one over every corruption and severity (mean corruption accuracy), computed by the
  adversarial rows' own machinery (verdicts.compare_cells: paired per image, several seeds with training noise; the
  clean-accuracy floor). The corruption rows of a panel are a Holm family of their own, separate from the
  adversarial one: they answer a different question, and joining the families would make each weaker;
- `corruption_text` / `corruption_summary`: the rows in verdicts.txt and the one-line answers beside the
  adversarial ones in the README;
- `corruption_section`: the README section with the tables and verdicts, the accuracy-vs-severity figure (one small
  panel per corruption, every model) and a sample grid of the corruptions on a few test images, for a person to
  judge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnrobust.config import VerdictSection
from attnrobust.corruptions import ALL_NAMES, corrupt
from attnrobust.data import get_spec, load_dataset
from attnrobust.errors import UserError
from attnrobust.report import figures  # figures.small_multiples etc. looked up at call time (tests draw placeholders)
from attnrobust.report.figures import PALETTE, Plot, Series
from attnrobust.report.grid import Grid, registered_info
from attnrobust.report.readme import rows_csv
from attnrobust.report.stats import mean_ci
from attnrobust.report.tables import aligned_lines, csv_text, markdown_table
from attnrobust.report.verdicts import attention_pairs, clean_floor, compare_cells, decide_family
from attnrobust.report.verdict_text import format_diff, format_sim, verdict_label
from attnrobust.results import CLEAN, Panel, Setting, file_name_part

__all__ = ["is_corruption", "corruption_verdicts", "corruption_text", "corruption_summary", "corruption_section",
           "CORRUPTION_KEYS"]

CORRUPTION = "corruption"
ALL = "all corruptions"
CORRUPTION_KEYS = ["dataset", "attention_model", "baseline_model", "attack", "seeds", "n", "attention_accuracy",
                   "baseline_accuracy", "difference", "ci_low", "ci_high", "p_value", "p_holm", "verdict",
                   "indicative", "withheld", "method", "ce_vs_twin", "relative_ce_vs_twin"]


def is_corruption(record: dict) -> bool:
    return record["attack"] == CORRUPTION


def _settings(grid: Grid, d: str) -> list[Setting]:
    return [s for s in grid.settings(d) if s.attack == CORRUPTION]


def _names(grid: Grid, d: str) -> list[str]:
    """The panel's corruptions in their family's order (attnrobust.corruptions), unknown names last."""
    found = {s.corruption for s in _settings(grid, d)}
    return [n for n in ALL_NAMES if n in found] + sorted(found - set(ALL_NAMES))


def _family_label(records: list[dict], d: str) -> str:
    labels = sorted({r.get("corruption_family", "") for r in records if Panel.of(r) == d and is_corruption(r)})
    return "/".join(x for x in labels if x) or "corruptions"


def _mean_accuracy(grid: Grid, d: str, model: str, settings: list[Setting]) -> tuple[float, float | None] | None:
    """(mean, 95% CI half-width over seeds) in percent of the model's accuracy averaged over `settings`."""
    per_seed: dict[int, list[float]] = {}
    for s in settings:
        for seed, r in grid.runs(d, model, model, s).items():
            per_seed.setdefault(seed, []).append(r["robust_accuracy"])
    complete = [np.mean(v) for v in per_seed.values() if len(v) == len(settings)]
    return mean_ci([100 * float(v) for v in complete]) if complete else None


def ce_vs_twin(grid: Grid, d: str, attn: str, base: str, settings: list[Setting],
               relative: bool = False) -> float | None:
    """Sum over `settings` of the attention model's error / the same sum of its twin's (errors averaged over
    seeds), in percent; relative: each error minus the model's clean error (ImageNet-C's "relative CE"). None
    when the twin's sum is not positive (no errors, or relative: the corruption cost the twin nothing, so there
    is no drop to compare with)."""
    def errors(model):
        clean = grid.summary(d, model, model, CLEAN)
        values = [100 - grid.summary(d, model, model, s)[0] for s in settings if grid.runs(d, model, model, s)]
        if len(values) != len(settings) or (relative and clean is None):
            return None
        return sum(values) - (len(values) * (100 - clean[0]) if relative else 0.0)

    a, b = errors(attn), errors(base)
    return None if a is None or b is None or b <= 0 else 100 * a / b


def corruption_verdicts(records: list[dict], *, min_clean_accuracy: float | None = None, pairs=(),
                        verdict: VerdictSection | None = None) -> list[dict]:
    """One row per panel x (attention model, twin) x measure (each corruption over its severities, and all of
    them); keys as verdicts.verdicts' rows (scenario "corruptions", attack = the measure) plus ce_vs_twin and
    relative_ce_vs_twin (means over the row's corruptions)."""
    grid = Grid.from_records([r for r in records if is_corruption(r)])
    out = []
    for d in grid.datasets():
        settings = _settings(grid, d)
        floor = clean_floor(d, min_clean_accuracy)
        family = []
        for attn, base in attention_pairs(grid.models(d), pairs):
            measures = [(ALL, settings)] + [(c, [s for s in settings if s.corruption == c]) for c in _names(grid, d)]
            for measure, chosen in measures:
                row = compare_cells(grid, d, (attn, attn), (base, base), chosen, floor)
                if row is None:
                    continue
                names = dict.fromkeys(s.corruption for s in chosen)
                by_name = [[s for s in chosen if s.corruption == c] for c in names]
                ce = [ce_vs_twin(grid, d, attn, base, group) for group in by_name]
                relative = [ce_vs_twin(grid, d, attn, base, group, relative=True) for group in by_name]
                family.append({"dataset": d, "attention_model": attn, "baseline_model": base,
                               "scenario": "corruptions", "attack": measure,
                               "compared": f"{attn} vs {base} on the same corrupted test images", **row,
                               # the mean of the per-corruption CEs: ImageNet-C's mCE, relative to the twin
                               "ce_vs_twin": None if None in ce else float(np.mean(ce)),
                               "relative_ce_vs_twin": None if None in relative else float(np.mean(relative))})
        # three-way decisions (helps / hurts / equivalent within verdict.margin_pp / inconclusive), Holm over this
        # panel's corruption rows only: their own family
        decide_family(family, verdict or VerdictSection())
        out += family
    return out


def corruption_text(rows: list[dict]) -> str:
    """The corruption verdicts as plain text (verdicts.txt, printed at the end of a study)."""
    if not rows:
        return ""
    header = ["dataset", "attention vs twin", "corruption", "seeds", "diff pp [95% CI]", "simultaneous",
              "p (Holm)", "verdict", "CE vs twin"]
    body = [[str(r["dataset"]), f"{r['attention_model']} vs {r['baseline_model']}", r["attack"], str(r["seeds"]),
             format_diff(r), format_sim(r), "-" if r["p_holm"] is None else f"{r['p_holm']:.3g}",
             verdict_label(r["verdict"], r["seeds"]),
             "-" if r["ce_vs_twin"] is None else f"{r['ce_vs_twin']:.1f}%"] for r in rows]
    return "\n".join(["", "", "Common corruptions (accuracy, attention minus twin, per image, averaged over the "
                      "severities; 'all corruptions' = mean corruption accuracy; Holm over each dataset's corruption "
                      "rows, a family of their own; CE vs twin = attention errors / twin errors summed over "
                      "severities, < 100%: attention fewer):", *aligned_lines([header] + body)])


def corruption_summary(rows: list[dict]) -> list[str]:
    """One README line per panel and attention pair, the corruption half of the answer: the verdict on the mean
    corruption accuracy and the mCE relative to the twin, with the per-corruption verdicts that are significant."""
    lines = []
    for r in [r for r in rows if r["attack"] == ALL]:
        same = [x for x in rows if (x["dataset"], x["attention_model"], x["baseline_model"]) ==
                (r["dataset"], r["attention_model"], r["baseline_model"]) and x["attack"] != ALL]
        significant = [f"{x['attack']}: {x['verdict']}" for x in same if x["verdict"] in ("helps", "hurts")]
        verdict = verdict_label(r["verdict"], r["seeds"])
        if r["withheld"]:
            verdict += f" ({r['withheld']})"
        ce = "" if r["ce_vs_twin"] is None else f", mCE {r['ce_vs_twin']:.1f}% of the twin's"
        lines.append(f"- **{r['dataset']}**, {r['attention_model']} vs {r['baseline_model']}, common corruptions "
                     f"({r['seeds']} seed{'s' if r['seeds'] != 1 else ''}): mean corruption accuracy "
                     f"{format_diff(r)} pp: **{verdict}**{ce}"
                     + (f"; significant per corruption: {'; '.join(significant)}" if significant else "")
                     + " (see *Common corruptions*).")
    return lines


# ---- README section, tables, figures ----------------------------------------------------------------------------


def _pct(v: tuple[float, float | None] | None) -> str:
    if v is None:
        return "-"
    return f"{v[0]:.2f}" if v[1] is None else f"{v[0]:.2f} ± {v[1]:.2f}"


def _accuracy_table(grid: Grid, d: str) -> tuple[str, list[list[str]]]:
    """Markdown (rows: clean, each corruption x severity, the mean; columns: models) and CSV rows."""
    models = grid.models(d)
    settings = _settings(grid, d)
    body, csv_rows = [], []
    clean = [grid.summary(d, m, m, CLEAN) for m in models]
    body.append(["clean", "-"] + [_pct(v) for v in clean])
    for c in _names(grid, d):
        for s in [s for s in settings if s.corruption == c]:
            values = [grid.summary(d, m, m, s) for m in models]
            body.append([c, str(s.severity)] + [_pct(v) for v in values])
            for m, v in zip(models, values):
                if v is not None:
                    csv_rows.append([d, m, c, str(s.severity), str(len(grid.runs(d, m, m, s))), f"{v[0]:.4f}",
                                     "" if v[1] is None else f"{v[1]:.4f}"])
    body.append(["**mean corruption accuracy**", "all"] + [_pct(_mean_accuracy(grid, d, m, settings))
                                                           for m in models])
    return markdown_table(["corruption", "severity"] + models, body), csv_rows


def _ce_table(grid: Grid, d: str, pairs) -> str | None:
    settings = _settings(grid, d)
    rows = []
    for attn, base in attention_pairs(grid.models(d), pairs):
        for relative, what in ((False, "CE"), (True, "relative CE")):
            ces = [ce_vs_twin(grid, d, attn, base, [s for s in settings if s.corruption == c], relative)
                   for c in _names(grid, d)]
            mean = None if None in ces else float(np.mean(ces))
            rows.append([f"{attn} vs {base}", what] + ["-" if v is None else f"{v:.1f}" for v in ces + [mean]])
    if not rows:
        return None
    return markdown_table(["attention vs twin", ""] + _names(grid, d) + ["mean (mCE)"], rows)


def _verdict_markdown(rows: list[dict]) -> str:
    header = ["attention vs twin", "corruption", "seeds", "n", "attention acc", "twin acc", "diff pp [95% CI]",
              "simultaneous", "margin", "p (Holm)", "verdict", "CE vs twin %"]
    body = [[f"{r['attention_model']} vs {r['baseline_model']}", r["attack"], str(r["seeds"]), str(r["n"]),
             f"{r['attention_accuracy']:.2f}", f"{r['baseline_accuracy']:.2f}", format_diff(r), format_sim(r),
             f"±{r['margin']:g}", "-" if r["p_holm"] is None else f"{r['p_holm']:.3g}",
             f"**{verdict_label(r['verdict'], r['seeds'])}**",
             "-" if r["ce_vs_twin"] is None else f"{r['ce_vs_twin']:.1f}"] for r in rows]
    return markdown_table(header, body)


def _at_chance(grid: Grid, d: str, margin: float = 5.0) -> list[str]:
    """The corruptions at which every model is within `margin` pp of chance (1 / classes) at every severity."""
    try:
        chance = 100 / get_spec(d.dataset).num_classes
    except UserError:  # a user dataset no longer at hand: nothing said
        return []
    settings = _settings(grid, d)
    out = []
    for c in _names(grid, d):
        values = [grid.summary(d, m, m, s) for m in grid.models(d) for s in settings if s.corruption == c]
        if values and all(v is not None and v[0] <= chance + margin for v in values):
            out.append(c)
    return out


def _severity_figure(grid: Grid, d: str, out: Path) -> str | None:
    models = grid.models(d)
    settings = _settings(grid, d)
    panels = []
    for c in _names(grid, d):
        chosen = [(0, CLEAN)] + [(s.severity, s) for s in settings if s.corruption == c]
        panel = Plot(c, "severity (0 = clean)", "accuracy (%)", xticks=[x for x, _ in chosen])
        for i, m in enumerate(models):
            found = [(x, grid.summary(d, m, m, s)) for x, s in chosen]
            found = [(x, v) for x, v in found if v is not None]
            if found:
                info = registered_info(m)
                style = "solid" if info is not None and info.attention else "dashed"
                panel.series.append(Series(m, [x for x, _ in found], [v[0] for _, v in found],
                                           PALETTE[i % len(PALETTE)], style, err=[v[1] for _, v in found]))
        if panel.series:
            panels.append(panel)
    if not panels:
        return None
    rel = f"figures/corruptions_{file_name_part(d)}.png"
    figures.small_multiples(out / rel, f"{d}: accuracy under common corruptions (attention models solid)", panels)
    return rel


def _sample_grid(grid: Grid, d: str, out: Path, count: int = 3) -> tuple[str | None, str | None]:
    """(figure, None) or (None, why not): each corruption (rows) at each severity (columns) on the first `count`
    test images, made by the same code the study scored, from the dataset files when they are at hand."""
    dataset = d.dataset
    try:
        images = load_dataset(dataset, "test", download=False)[0][:count].numpy()
    except (UserError, OSError) as err:
        return None, f"corruption samples of {d} skipped: {str(err).splitlines()[0]}"
    settings = _settings(grid, d)
    severities = sorted({s.severity for s in settings})
    rows = []
    try:
        for c in _names(grid, d):
            rows.append([images] + [corrupt(images, c, sev, dataset=dataset) for sev in severities])
    except UserError as err:
        return None, f"corruption samples of {d} skipped: {err}"
    rel = f"figures/corruption_samples_{file_name_part(d)}.png"
    figures.image_grid(out / rel, f"{d}: each corruption at each severity, first {count} test images", rows,
               _names(grid, d), ["clean"] + [f"severity {s}" for s in severities])
    return rel, None


def corruption_section(records: list[dict], rows: list[dict], out: Path, pairs=()) -> list[str]:
    """The README section (a missing sample grid says why in it); writes corruptions.csv, corruption_verdicts.csv
    and the figures into `out`."""
    corrupted = [r for r in records if is_corruption(r)]
    if not corrupted:
        return []
    grid = Grid.from_records(corrupted)
    lines = ["## Common corruptions", "",
             "Accuracy on the test images under common corruptions generated in code (attnrobust.corruptions; "
             "see docs/corruptions.md): *MNIST-C-style* (Mu & Gilmer 2019) for grey 28x28 images, "
             "*CIFAR-10-C-style* (Hendrycks & Dietterich 2019) for RGB 32x32 images — the same recipes, not the "
             "published files (only motion blur is another algorithm, matching ImageMagick's to 1/255 on the test "
             "fixtures; MNIST-C's single settings are extended to severities 1-5). Every model and seed is scored on "
             "the same corrupted images (seeded per image), so the comparison is paired, as the adversarial one.", ""]
    if rows:
        lines += ["**Verdicts.** Attention model minus its twin, accuracy per image averaged over the corruption's "
                  "severities (pp; > 0: attention more robust); *all corruptions* is the mean corruption accuracy. "
                  "Same statistics as the adversarial verdicts; **multiplicity**: the corruption rows of each "
                  "dataset are one Holm family of their own (family-wise error 5%), separate from the adversarial "
                  "family. *CE vs twin*: the attention model's errors summed over severities / its twin's "
                  "(< 100%: fewer errors; ImageNet-C's CE is relative to AlexNet in the same way); on the *all "
                  "corruptions* row, their mean (mCE). Also in "
                  "[corruption_verdicts.csv](corruption_verdicts.csv).", "", _verdict_markdown(rows), ""]
    csv_rows, notes = [], []
    for d in grid.datasets():
        table, found = _accuracy_table(grid, d)
        csv_rows += found
        lines += [f"### {d}: accuracy (%) per corruption and severity ({_family_label(corrupted, d)})", "",
                  "Mean ± 95% CI half-width over seeds where there are several. Also in "
                  "[corruptions.csv](corruptions.csv).", "", table, ""]
        ce = _ce_table(grid, d, pairs)
        if ce is not None:
            lines += ["Corruption error of each attention model relative to its twin (%), per corruption: *CE* = "
                      "its errors summed over the severities / the twin's (ImageNet-C's CE, relative to AlexNet, "
                      "made relative to the twin); *relative CE* = the same with each model's clean error "
                      "subtracted from every error first (Hendrycks & Dietterich's relative CE: the drop the "
                      "corruption causes, without the clean accuracy's confound). Below 100: fewer errors than "
                      "the twin.", "", ce, ""]
        floor = _at_chance(grid, d)
        if floor:
            lines += [f"**At chance**: {', '.join(floor)}: every model is within 5 pp of chance accuracy at every "
                      f"severity, so these corruptions cannot tell the models apart (a floor, not evidence); their "
                      f"verdict rows test nothing.", ""]
        figure = _severity_figure(grid, d, out)
        if figure is not None:
            caption = f"{d}: accuracy against severity, one panel per corruption (attention models solid)"
            lines += [f"![{caption}]({figure})", "", f"*{caption}.*", ""]
        sample, why = _sample_grid(grid, d, out)
        if sample is not None:
            caption = f"{d}: the corruptions as scored, first test images (rows: corruption; columns: severity)"
            lines += [f"![{caption}]({sample})", "", f"*{caption}.*", ""]
        else:
            notes.append(why)
    (out / "corruptions.csv").write_text(csv_text(["dataset", "model", "corruption", "severity", "seeds",
                                                   "accuracy_pct", "ci95_pct"], csv_rows), encoding="utf-8")
    (out / "corruption_verdicts.csv").write_text(rows_csv(rows, CORRUPTION_KEYS), encoding="utf-8")
    return lines + [f"- {n}" for n in notes]

