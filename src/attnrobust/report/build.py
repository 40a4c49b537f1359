"""`attnrobust report RUN`: rebuild RUN/report/ from RUN/results.jsonl alone.

Writes Tables II and III (Markdown, CSV, LaTeX), the paired attention-vs-twin comparison, the paper's numbers
beside ours, verdicts, figures (PNG) and a README.md that shows all of it. Only results.jsonl is required;
config.toml and env.json (for the header) and checkpoints/ (for the attention maps) are used when present.

The whole folder is written beside the old one and swapped in, so a reader never sees half a report, and the
same results give the same bytes (no timestamps; figures with fixed metadata).
"""

from __future__ import annotations

import json
from dataclasses import replace
import os
import shutil
import tomllib
from pathlib import Path

from attnrobust.checkpoint import read_meta
from attnrobust.config import point_of_train, study_axes, verdict_section
from attnrobust.errors import UserError
from attnrobust.report.corruptions import ALL as ALL_CORRUPTIONS
from attnrobust.report.corruptions import (corruption_section, corruption_summary, corruption_text,
                                          corruption_verdicts, is_corruption)
from attnrobust.report import figures  # figures.curves etc. looked up at call time (the tests draw placeholders)
from attnrobust.report.figures import PALETTE, Plot, Series
from attnrobust.report.grid import Grid, registered_info
from attnrobust.report.interactions import (INTERACTION_KEYS, interaction_key, interaction_lines, interaction_text,
                                            interactions)
from attnrobust.report.margins import SENSITIVITY_KEYS, margin_lines, margin_sensitivity
from attnrobust.report.minimal import minimal_section
from attnrobust.report.paper import comparison_rows, load_paper, matches_paper_pgd, paper_model, paper_value
from attnrobust.report.paper_settings import (PAPER_SETTING_KEYS, design_differences, paper_setting_lines,
                                              paper_setting_rows)
from attnrobust.report.readme import (COMPARISON_KEYS, PAIRED_KEYS, VERDICT_KEYS, ReadmeInputs, readme_text,
                                      rows_csv)
from attnrobust.report.tables import table2, table3, to_csv, to_latex, to_markdown
from attnrobust.report.crossed import OTHER_SEEDS
from attnrobust.report.slopes import SLOPE_KEYS
from attnrobust.report.verdicts import TRANSFER_KEYS, paired_rows, verdicts
from attnrobust.report.verdict_text import verdict_text
from attnrobust.report.widths import TREND_KEYS, width_section
from attnrobust.results import CLEAN, STANDARD, Panel, Setting, file_name_part, load_records
from attnrobust.runfolder import RunFolder, file_stem

__all__ = ["build_report"]


# ---- input ------------------------------------------------------------------------------------------------------


def _read_config(folder: RunFolder) -> tuple[str | None, dict | None]:
    path = folder.config
    if not path.is_file():
        return None, None
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text, None  # shown verbatim; only the reduced-size notes use its values


def _read_env(folder: RunFolder) -> dict:
    try:
        env = json.loads(folder.env.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return env if isinstance(env, dict) else {}


# ---- figures ----------------------------------------------------------------------------------------------------


def _fgsm_settings(grid: Grid, d: str) -> list[Setting]:
    return [s for s in grid.settings(d) if s.attack == "fgsm"]


def _pgd_settings(grid: Grid, d: str) -> list[Setting]:
    """The PGD settings of one variant (the setting without its iteration count: eps, alpha, start, keep-best): the
    paper's if we ran it, else the first."""
    pgd = [s for s in grid.settings(d) if s.attack == "pgd"]
    variants: dict[Setting, list[Setting]] = {}
    for s in pgd:
        variants.setdefault(replace(s, steps=0), []).append(s)
    for group in variants.values():
        if any(matches_paper_pgd(s) for s in group):
            return group
    return next(iter(variants.values()), [])


def _points(settings: list[Setting], clean_at_zero: bool) -> list[tuple[float, Setting]]:
    """(x, setting) along a curve: eps for FGSM (clean accuracy at eps 0), iterations for PGD."""
    head = [(0.0, CLEAN)] if clean_at_zero else []
    return head + [(s.eps if s.attack == "fgsm" else s.steps, s) for s in settings]


def _series(grid: Grid, d: str, src: str, tgt: str, settings: list[Setting], label: str, color: str,
            style: str, clean_at_zero: bool) -> Series | None:
    found = [(x, grid.summary(d, src, tgt, s)) for x, s in _points(settings, clean_at_zero)]
    found = [(x, v) for x, v in found if v is not None]
    if not found:
        return None
    return Series(label, [x for x, _ in found], [v[0] for _, v in found], color, style,
                  err=[v[1] for _, v in found])


def _paper_series(d: str, src: str, tgt: str, settings: list[Setting], clean_at_zero: bool, color: str,
                  label: str) -> Series | None:
    found = [(x, paper_value(d, src, tgt, s)) for x, s in _points(settings, clean_at_zero)]
    found = [(x, y) for x, y in found if y is not None]
    if not found:
        return None
    return Series(label, [x for x, _ in found], [y for _, y in found], color, "paper")


def _xticks(series: list[Series]) -> list[float]:
    return sorted({x for s in series for x in s.x})


def _figures(grid: Grid, out: Path) -> list[tuple[str, str]]:
    """Line figures; returns (relative path, caption) in README order."""
    made = []
    names = load_paper()["models"]
    for d in grid.datasets():
        models = grid.models(d)
        color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
        fgsm, pgd = _fgsm_settings(grid, d), _pgd_settings(grid, d)
        pgd_title = "PGD" + (f" eps {pgd[0].eps:g}, step {pgd[0].alpha:g}" if pgd and pgd[0].alpha else "")
        # White-box (Figs 2-4): every model, with the paper's curve of its family dotted.
        panels = []
        for p, settings, zero in ((Plot("FGSM (white-box)", "eps", "accuracy (%)"), fgsm, True),
                                  (Plot(f"{pgd_title} (white-box)", "iterations", "error (%)"), pgd, False)):
            seen = set()
            for m in models:
                s = _series(grid, d, m, m, settings, m, color[m], "solid", zero)
                if s is not None:
                    p.series.append(s)
                ref = paper_model(m)
                if ref is not None and ref not in seen:
                    seen.add(ref)
                    s = _paper_series(d, m, m, settings, zero, color[m], f"paper: {names[ref]}")
                    if s is not None:
                        p.series.append(s)
            if p.series:
                p.xticks = _xticks(p.series)
                panels.append(p)
        if panels:
            rel = f"figures/whitebox_{file_name_part(d)}.png"
            figures.curves(out / rel, f"{d}: white-box attacks", panels)
            made.append((rel, f"{d}: white-box FGSM accuracy vs eps and PGD error vs iterations, every model "
                              f"(paper's published curves dotted, for the matching families)"))
        # Transfer (Figs 5-7): per source, its own white-box curve and every target's.
        for src in models:
            targets = [t for t in models if t != src and grid.has(d, src, t)]
            if not targets or not grid.has(d, src, src):
                continue
            panels = []
            for title, settings, zero, ylabel, xlabel in (
                    ("FGSM", fgsm, True, "accuracy (%)", "eps"), (pgd_title, pgd, False, "error (%)", "iterations")):
                series = [_series(grid, d, src, src, settings, f"{src} (source, white-box)", color[src], "solid",
                                  zero)]
                series += [_series(grid, d, src, t, settings, f"{src} -> {t}", color[t], "dashed", zero)
                           for t in targets]
                series = [s for s in series if s is not None]
                if series:
                    panels.append(Plot(f"{title}: crafted on {src}", xlabel, ylabel, series, _xticks(series)))
            if panels:
                rel = f"figures/transfer_{file_name_part(d)}_{file_stem(src)}.png"
                figures.curves(out / rel, f"{d}: attacks crafted on {src}", panels)
                made.append((rel, f"{d}: attacks crafted on {src}, scored on {src} itself (white-box, solid) "
                                  f"and on {', '.join(targets)} (transfer, dashed)"))
    return made


def _checkpoint_metas(folder: RunFolder) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(path, metadata) of every model checkpoint in the run folder, read once for the attention figures and the
    recipe notes; a note for each unreadable one."""
    metas, notes = [], []
    for p in folder.model_files():
        try:
            metas.append((p, read_meta(p)))
        except (UserError, OSError) as err:
            notes.append(f"attention maps: skipped {p.name}: {err}")
    return metas, notes


def _panel_of_checkpoint(meta: dict, panels: list[Panel]) -> Panel | None:
    """The panel a checkpoint's model belongs to: its dataset and regime, and the panel's values of the study's
    axes read from its training config (None: no panel of the grid)."""
    train = meta.get("train") or {}
    return next((p for p in panels if p.dataset == meta.get("dataset") and p.regime == meta.get("regime", STANDARD)
                 and point_of_train(train, p.point) == p.point), None)


def _attention_figures(grid: Grid, metas: list[tuple[Path, dict]], out: Path) -> tuple[list[tuple[str, str]],
                                                                                        list[str]]:
    """CBAM attention maps from the run's checkpoints (their metadata read by _checkpoint_metas), when they and the
    dataset files are at hand."""
    if not metas:
        return [], ["attention maps: no checkpoints in the run folder (the report needs only results.jsonl)"]
    chosen: dict[tuple[str, str], tuple[int, Path]] = {}
    notes = []
    for p, meta in metas:
        name, seed = meta["build_args"].get("name", ""), meta.get("seed", 0)
        dataset = _panel_of_checkpoint(meta, grid.datasets())
        info = registered_info(name)
        if info is not None and info.attention == "cbam" and dataset is not None:
            if (dataset, name) not in chosen or seed < chosen[(dataset, name)][0]:
                chosen[(dataset, name)] = (seed, p)
    made = []
    for (dataset, name), (_, p) in sorted(chosen.items()):
        fgsm = [s.eps for s in _fgsm_settings(grid, dataset)]
        # The smallest budget: the perturbation stays nearly invisible, yet it is where accuracy falls most.
        eps = min(fgsm) if fgsm else 0.05
        rel = f"figures/attention_{file_name_part(dataset)}_{name}.png"
        try:
            made.append((rel, figures.attention_figure(out / rel, p, eps)))
        except (ImportError, UserError, OSError, RuntimeError, KeyError, ValueError) as err:
            notes.append(f"attention maps: skipped {p.name}: {str(err).splitlines()[0] if str(err) else err!r}")
    return made, notes


# ---- build ------------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_report(out: Path, folder: RunFolder, records: list[dict]) -> None:

    all_records, records = records, [r for r in records if not is_corruption(r)]  # corruptions: their own section
    grid = Grid.from_records(records)
    config_text, config = _read_config(folder)
    env = _read_env(folder)
    tables = {}
    for table in (table2(grid), table3(grid)):
        tables[table.name] = to_markdown(table)
        _write(out / f"{table.name}.md", tables[table.name])
        _write(out / f"{table.name}.csv", to_csv(table))
        _write(out / f"{table.name}.tex", to_latex(table))
    floor = ((config or {}).get("eval") or {}).get("min_clean_accuracy")
    pairs = ((config or {}).get("study") or {}).get("pairs") or ()  # declared comparisons (study.pairs)
    # the margins the config declared ([verdict]; its defaults for a run folder written before the section existed)
    verdict = verdict_section((config or {}).get("verdict"), str(folder.config))
    paired_data: dict = {}  # each verdict row's per-image differences, for the interactions
    rows = verdicts(records, min_clean_accuracy=floor, pairs=pairs, verdict=verdict,
                    transfer_sources=((config or {}).get("eval") or {}).get("transfer_sources", OTHER_SEEDS),
                    paired=paired_data)
    paired = paired_rows(grid, min_clean_accuracy=floor, pairs=pairs)
    corruption_rows = corruption_verdicts(all_records, min_clean_accuracy=floor, pairs=pairs, verdict=verdict)
    _write(out / "verdicts.csv", rows_csv(rows, VERDICT_KEYS + TRANSFER_KEYS))
    _write(out / "paired.csv", rows_csv(paired, PAIRED_KEYS))
    comparison = comparison_rows(grid)
    _write(out / "paper_comparison.csv", rows_csv(comparison, COMPARISON_KEYS))
    like_for_like = paper_setting_rows(records, min_clean_accuracy=floor, pairs=pairs, verdict=verdict)
    if like_for_like:
        _write(out / "paper_settings.csv", rows_csv(like_for_like, PAPER_SETTING_KEYS))
    sensitivity = margin_sensitivity(records, verdict, min_clean_accuracy=floor, pairs=pairs, rows=rows)
    if sensitivity:
        _write(out / "margin_sensitivity.csv", rows_csv(sensitivity, SENSITIVITY_KEYS))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    line_figures = _figures(grid, out)
    metas, notes = _checkpoint_metas(folder)
    attention, figure_notes = _attention_figures(grid, metas, out)
    minimal_lines, minimal_figures = minimal_section(grid, out)
    corruption_lines = corruption_section(all_records, corruption_rows, out, pairs)
    study = (config or {}).get("study") or {}
    # the axes' interactions: every verdict row, and the corruptions' mean row
    mean_corruption = [r for r in corruption_rows if r["attack"] == ALL_CORRUPTIONS]
    paired_data.update({interaction_key(r): r["_paired"] for r in mean_corruption})
    found = interactions(rows + mean_corruption, paired_data, study_axes(study.get("widths"), study.get("axes")),
                         verdict)
    if found:
        _write(out / "interactions.csv", rows_csv(found, INTERACTION_KEYS))
    _write(out / "verdicts.txt", verdict_text(rows, records) + corruption_text(corruption_rows) +
           interaction_text(found) + "\n")
    width_lines, width_figures, trend, slopes = width_section(rows, out)
    if trend:
        _write(out / "width_trend.csv", rows_csv(trend, TREND_KEYS))
    if slopes:
        _write(out / "width_slopes.csv", rows_csv(slopes, SLOPE_KEYS))
    _write(out / "README.md", readme_text(ReadmeInputs(
        name=folder.root.resolve().name, grid=grid, records=all_records, config_text=config_text, config=config,
        env=env, tables=tables, rows=rows, paired=paired, comparison=comparison,
        figures=width_figures + minimal_figures + line_figures + attention,
        notes=notes + figure_notes, checkpoint_args=[meta.get("build_args") or {} for _, meta in metas],
        minimal_lines=minimal_lines, corruption_lines=corruption_lines,
        corruption_summary=corruption_summary(corruption_rows), width_lines=width_lines,
        interaction_lines=interaction_lines(found),
        power_plan=_read_power_plan(folder), margin_lines=margin_lines(sensitivity),
        paper_setting_lines=paper_setting_lines(like_for_like, design_differences(grid, config)))))


def _read_power_plan(folder: RunFolder) -> list[str]:
    path = folder.power_plan
    return path.read_text(encoding="utf-8").rstrip("\n").splitlines() if path.is_file() else []


def build_report(run_dir: str | Path) -> Path:
    """Rebuild run_dir/report/ from run_dir/results.jsonl; returns the report folder.

    Raises UserError (one line) when results.jsonl is missing, empty or malformed.
    """
    folder = RunFolder(run_dir)
    records = load_records(folder.results)
    final = folder.report
    tmp = folder.root / f".report.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_report(tmp, folder, records)
        # Swap the finished folder in: the old report stays whole until the new one is complete.
        old = folder.root / f".report.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
