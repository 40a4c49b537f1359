"""The width trend: in a study that crosses widths (study.widths), each verdict row's attention-minus-twin gap set
against the width it was measured at, as a table and a figure, for the scale question (does the answer at width 8
hold as the networks grow toward the paper's 64?).

Every point is a paired comparison within one width (its own verdict row, with its own interval); the trend
itself is tested by the gap's slope per doubling of width (report/slopes.py), with its interval and a three-way
verdict. An extrapolation beyond the widths measured is the reader's, stated as such in the report.
"""

from __future__ import annotations

from pathlib import Path

from attnrobust.runfolder import file_stem
from attnrobust.report import figures  # figures.curves looked up at call time (the tests draw placeholders)
from attnrobust.report.figures import PALETTE, Plot, Series
from attnrobust.report.slopes import slope_lines, width_slopes
from attnrobust.report.tables import markdown_table
from attnrobust.report.verdict_text import format_diff, marked_verdict
from attnrobust.results import file_name_part

# The measures the trend shows, in this order: the primary white-box measure first, then robust accuracy.
TREND_ATTACKS = ("minimal", "autoattack", "fgsm", "pgd", "apgd")

TREND_KEYS = ["panel", "width", "attention_model", "baseline_model", "scenario", "attack", "unit", "seeds", "n",
              "attention_accuracy", "baseline_accuracy", "difference", "ci_low", "ci_high", "verdict", "saturated",
              "flags"]


def width_trend(rows: list[dict]) -> list[dict]:
    """The verdict rows of width panels, each with its `panel` (the dataset, and regime, without the width) and
    `width`, ordered by panel, pair, scenario, measure and width; [] when no row comes from a width panel."""
    out = []
    for r in rows:
        panel, width = r["dataset"].without("width"), r["dataset"].value("width")
        if width is not None and r["attack"] in TREND_ATTACKS:
            out.append({**r, "panel": panel, "width": width})
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))  # the verdicts' own order: white-box first
    return sorted(out, key=lambda r: (r["panel"], r["attention_model"], r["baseline_model"],
                                      scenarios.index(r["scenario"]), TREND_ATTACKS.index(r["attack"]), r["width"]))


def _groups(trend: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in trend:
        groups.setdefault((r["panel"], r["attention_model"], r["baseline_model"], r["scenario"], r["attack"]),
                          []).append(r)
    return groups


def _cell(r: dict) -> str:
    return f"{format_diff(r)}{' pp' if r['unit'] == 'pp' else ''}: {marked_verdict(r)}"


def width_markdown(trend: list[dict]) -> list[str]:
    """One table per panel: a row per (pair, scenario, measure), a column per width."""
    lines = []
    widths = sorted({r["width"] for r in trend})
    header = ["attention vs twin", "scenario", "measure"] + [f"width {w}" for w in widths]
    for panel in dict.fromkeys(r["panel"] for r in trend):
        body = []
        for (p, attn, base, scenario, attack), group in _groups(trend).items():
            if p == panel:
                by_width = {r["width"]: r for r in group}
                body.append([f"{attn} vs {base}", scenario, attack]
                            + [_cell(by_width[w]) if w in by_width else "–" for w in widths])
        lines += [f"**{panel}**", "", markdown_table(header, body)]
    return lines


def width_figures(trend: list[dict], out: Path) -> list[tuple[str, str]]:
    """Per panel and attention pair, the gaps of every scenario against width: one panel for the minimal eps
    (1/255), one for robust accuracy (pp), each (measure, scenario) a line with its interval as a band."""
    made = []
    groups = _groups(trend)
    for panel, attn, base in dict.fromkeys((k[0], k[1], k[2]) for k in groups):
        panels = []
        for unit, measure in (("/255", "minimal eps"), ("pp", "robust accuracy")):
            series = []
            for (p, a, b, scenario, attack), group in groups.items():
                if (p, a, b) != (panel, attn, base) or group[0]["unit"] != unit:
                    continue
                series.append(Series(
                    label=f"{attack}, {scenario}", x=[float(r["width"]) for r in group],
                    y=[r["difference"] for r in group], low=[r["ci_low"] for r in group],
                    high=[r["ci_high"] for r in group], color=PALETTE[len(series) % len(PALETTE)],
                    style="solid" if scenario == "white-box" else "dashed"))
            if series:
                panels.append(Plot(title=f"{attn} minus {base}: {measure}", xlabel="width",
                                    ylabel=f"{measure} gap ({'1/255' if unit == '/255' else 'pp'})", series=series,
                                    xticks=sorted({x for s in series for x in s.x}), ylim=None, zero_line=True))
        if panels:
            rel = f"figures/width_trend_{file_name_part(panel)}_{file_stem(attn)}.png"
            caption = (f"{panel}: {attn} minus its twin {base} against network width, with 95% intervals "
                       f"(bands; each width its own paired comparison; above 0: attention more robust)")
            figures.curves(out / rel, f"{panel}: the attention gap against width", panels)
            made.append((rel, caption))
    return made


def width_section(rows: list[dict], out: Path) -> tuple[list[str], list[tuple[str, str]], list[dict], list[dict]]:
    """(the README section's lines, its figures, the trend rows for width_trend.csv, the slopes for
    width_slopes.csv); all empty without widths."""
    trend = width_trend(rows)
    if not trend:
        return [], [], [], []
    lines = ["## The width trend (the scale question)", "",
             "Attention model minus its twin at each width the study trained (each a paired comparison within one "
             "width, with its own 95% interval and verdict). A gap that keeps "
             "its sign and size as the width grows suggests the answer holds toward the paper's width 64; one that "
             "moves with width says it does not transfer from small networks, and anything past the widest network "
             "measured is an extrapolation. Also in [width_trend.csv](width_trend.csv).", ""]
    lines += width_markdown(trend)
    slopes = width_slopes(trend)
    lines += [""] + slope_lines(slopes) if slopes else []
    return lines, width_figures(trend, out), trend, slopes
