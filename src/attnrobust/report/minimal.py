"""The report's minimal-eps section: the white-box measure that does not saturate.

Per model, the median over images of the smallest L-inf eps at which PGD finds an adversarial example (with a
95% interval over seeds, or over images with one seed), the robust accuracy it implies on the fine eps grid, and
a figure per attention model and its twin.

The median is the Kaplan-Meier median over the cap: an image not broken up to the largest eps tried is censored
there, and with every image censored at the same cap the Kaplan-Meier curve is the empirical one up to the cap,
so its median (and the order-statistic interval, Brookmeyer-Crowley's here) is the plain median when fewer than
half the images are censored, and "> cap" otherwise. The verdict compares a different summary, the restricted
mean up to the cap (the area under the robust-accuracy curve): see attnrobust.report.verdicts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from attnrobust.report import figures  # figures.curves looked up at call time (the tests draw placeholders)
from attnrobust.report.figures import PALETTE, Plot, Series
from attnrobust.report.grid import Grid
from attnrobust.report.stats import mean_ci
from attnrobust.report.tables import markdown_table
from attnrobust.report.verdicts import attention_pairs
from attnrobust.results import file_name_part, unpack_floats


def _minimal_records(grid: Grid, d: str, model: str) -> dict[int, dict]:
    """seed -> the model's minimal-eps record (white-box), {} when not measured."""
    settings = [s for s in grid.settings(d) if s.attack == "minimal"]
    return grid.runs(d, model, model, settings[0]) if settings else {}


def _median_ci(values, level_z: float = 1.959963984540054) -> tuple[float, float, float]:
    """Median of per-image minimal eps with a distribution-free 95% interval (order statistics of a binomial)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    lo = max(0, int(math.floor(n / 2 - level_z * math.sqrt(n) / 2)))
    hi = min(n - 1, int(math.ceil(n / 2 + level_z * math.sqrt(n) / 2)))
    return float(np.median(v)), float(v[lo]), float(v[hi])


def minimal_section(grid: Grid, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The non-saturated white-box measure: median minimal eps per model, fine-grid robust accuracy, figures."""
    lines, made = [], []
    for d in grid.datasets():
        models = [m for m in grid.models(d) if _minimal_records(grid, d, m)]
        if not models:
            continue
        header, body = ["model", "seeds", "n", "median minimal eps (x255, Kaplan-Meier over the cap) [95% CI]",
                        "restricted mean up to the cap (x255)", "not broken up to max"], []
        grid_eps = None
        curves_of = {}
        for m in models:
            runs = _minimal_records(grid, d, m)
            values = {seed: unpack_floats(r["min_eps"], r["n"]) for seed, r in sorted(runs.items())}
            per_seed = [[255 * x for x in _median_ci(v)] for v in values.values()]
            if len(values) >= 2:
                mean, half = mean_ci([m for m, _, _ in per_seed])
                # medians on a 1/255 grid often agree exactly across seeds: never narrower than the images' own
                # (order-statistic) interval, which every seed shares
                half = max(half, sum((hi - lo) / 2 for _, lo, hi in per_seed) / len(per_seed))
                text = f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}] (over seeds)"
            else:
                med, lo, hi = (255 * x for x in _median_ci(next(iter(values.values()))))
                text = f"{med:.2f} [{lo:.2f}, {hi:.2f}] (over images)"
            first = next(iter(runs.values()))
            cap = 255 * first["eps"]
            text = text.replace("inf", f">{cap:.1f}").replace("nan", f">{cap:.1f}")  # past the cap: censored
            unbroken = np.mean([np.isinf(v).mean() for v in values.values()])
            restricted = np.mean([255 * np.minimum(v, first["eps"]).mean() for v in values.values()])
            body.append([m, str(len(runs)), str(first["n"]), text, f"{restricted:.2f}",
                         f"{100 * unbroken:.1f}% (max {cap:.1f})"])
            grid_eps = first["fine_grid"]
            curves_of[m] = np.array([[100 * c / r["n"] for c in r["fine_correct"]] for r in runs.values()])
        lines += [f"### {d}", "", markdown_table(header, body), ""]
        ticks = [e for e in grid_eps]
        fine_header = ["model"] + [f"{round(255 * e)}/255" for e in ticks[::2]]
        fine_body = [[m] + [f"{v:.1f}" for v in curves_of[m].mean(axis=0)[::2]] for m in models]
        lines += ["Robust accuracy (%) on the fine grid, read off the per-image minimal eps (mean over seeds):", "",
                  markdown_table(fine_header, fine_body), ""]
        color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(grid.models(d))}
        panels = []
        for attn, base in attention_pairs(models):
            series = []
            for m, style in ((attn, "solid"), (base, "dashed")):
                c = curves_of[m]
                band = c.shape[0] > 1
                series.append(Series(f"{m} ({c.shape[0]} seed{'s' if band else ''})", [255 * e for e in grid_eps],
                                     list(c.mean(axis=0)), color[m], style,
                                     low=list(c.min(axis=0)) if band else None,
                                     high=list(c.max(axis=0)) if band else None))
            panels.append(Plot(f"{attn} vs {base}", "eps (x 1/255)", "robust accuracy (%)", series,
                                list(range(0, 17, 2))))
        if panels:
            rel = f"figures/minimal_eps_{file_name_part(d)}.png"
            figures.curves(out / rel, f"{d}: white-box robust accuracy on the fine eps grid", panels)
            made.append((rel, f"{d}: robust accuracy vs eps on the fine grid (PGD bisection per image), "
                                 f"attention model solid, its twin dashed, band = range over seeds"))
    return lines, made
