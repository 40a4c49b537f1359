"""The width trend tested: the attention gap's slope per doubling of width, with its interval and a three-way
verdict, so "no trend from width 8 to 32" is a measured statement, not a reading of three intervals.

Each width is its own paired comparison (its own seeds, its own verdict row), so the per-width gaps y_w are
independent, each with its standard error se_w (from the row's 95% interval at df = seeds - 1). The slope is the
ordinary least-squares slope of y on x = log2(width), slope = sum c_w y_w with c_w = (x_w - mean x) / sum (x -
mean x)^2 (unweighted: weights from estimated se's would be noisy), var = sum c_w^2 se_w^2, and Welch-
Satterthwaite df over the widths' own df. Rows at a floor or withheld leave the fit; a group needs two widths.

Verdicts, Holm over each panel's robustness slopes (as the rows' own family): *grows* / *shrinks* (the gap rises or
falls with width: p of 'no slope' < alpha; > 0: attention gains robustness as the networks grow), *flat within the
margin* (two one-sided tests: the change the slope implies across the widths measured, slope x doublings, lies
within the rows' margin; i.e. the gap at the widest and the narrowest width would be equivalent), else
*inconclusive*. Checked by simulation in tests/test_slopes.py (coverage, false trends, false flatness).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from attnrobust.report.stats import _p_values, _quantile, holm, t_quantile
from attnrobust.report.tables import markdown_table

__all__ = ["GROWS", "SHRINKS", "FLAT", "SLOPE_KEYS", "slope_interval", "width_slopes", "slope_lines"]

GROWS, SHRINKS, FLAT, INCONCLUSIVE = "grows", "shrinks", "flat within the margin", "inconclusive"
SLOPE_KEYS = ["panel", "attention_model", "baseline_model", "scenario", "family", "attack", "unit", "widths",
              "slope", "slope_low", "slope_high", "df", "p_holm", "p_flat_holm", "margin_per_doubling", "verdict"]


def slope_interval(log2_widths, gaps, ses, dfs) -> tuple[float, float, float]:
    """(slope per doubling, its standard error, Welch-Satterthwaite df) of independent gaps measured at
    log2_widths with standard errors ses and df dfs (math.inf for a normal interval)."""
    x = np.asarray(log2_widths, dtype=float)
    c = (x - x.mean()) / np.square(x - x.mean()).sum()
    terms = np.square(c) * np.square(np.asarray(ses, dtype=float))
    var = float(terms.sum())
    denom = sum(t * t / d for t, d in zip(terms, dfs) if math.isfinite(d) and d > 0)
    df = var * var / denom if denom > 0 else math.inf
    return float(c @ np.asarray(gaps, dtype=float)), math.sqrt(var), df


def _se(row: dict) -> tuple[float, float]:
    """(se, df) of a verdict row's estimate, back from its 95% interval at df = seeds - 1 (normal for one seed)."""
    df = float(row["df_verdict"]) if row.get("df_verdict") else math.inf
    q = t_quantile(df) if math.isfinite(df) else float(stats.norm.ppf(0.975))
    return (row["ci_high"] - row["ci_low"]) / (2 * q), df


def width_slopes(trend: list[dict]) -> list[dict]:
    """One row per panel x pair x scenario x measure with two or more usable widths (keys: SLOPE_KEYS), from
    widths.width_trend's rows (decided at their alpha)."""
    groups: dict[tuple, list[dict]] = {}
    for r in trend:
        if r["withheld"] is None and not r.get("saturated"):
            key = (r["panel"], r["attention_model"], r["baseline_model"], r["scenario"], r["family"], r["attack"])
            groups.setdefault(key, []).append(r)
    out = []
    for (panel, attn, base, scenario, family, attack), rows in groups.items():
        if len({r["width"] for r in rows}) < 2:
            continue
        x = [math.log2(r["width"]) for r in rows]
        se_df = [_se(r) for r in rows]
        slope, se, df = slope_interval(x, [r["difference"] for r in rows], [s for s, _ in se_df],
                                       [d for _, d in se_df])
        doublings = max(x) - min(x)
        out.append({"panel": panel, "attention_model": attn, "baseline_model": base, "scenario": scenario,
                    "family": family, "attack": attack, "unit": rows[0]["unit"],
                    "widths": [r["width"] for r in rows], "slope": slope, "se": se, "df": df,
                    "margin_per_doubling": rows[0]["margin"] / doublings})
    for panel in dict.fromkeys(s["panel"] for s in out):
        for family in dict.fromkeys(s["family"] for s in out):
            _decide([s for s in out if s["panel"] == panel and s["family"] == family],
                    trend[0].get("alpha", 0.05))
    for s in out:
        del s["se"]
    return out


def _decide(slopes: list[dict], alpha: float) -> None:
    """Three-way verdicts over one panel's family of slopes (Holm, as stats.decide does for rows)."""
    ps = [_p_values(s["slope"], s["se"], s["df"], s["margin_per_doubling"]) for s in slopes]
    p_trend, p_flat = holm([p for p, _ in ps]), holm([p for _, p in ps])
    for s, pt, pf in zip(slopes, p_trend, p_flat):
        q = _quantile(0.975, s["df"])
        s.update(slope_low=s["slope"] - q * s["se"], slope_high=s["slope"] + q * s["se"], p_holm=pt,
                 p_flat_holm=pf, verdict=(GROWS if s["slope"] > 0 else SHRINKS) if pt < alpha
                 else FLAT if pf < alpha else INCONCLUSIVE)


def slope_lines(slopes: list[dict]) -> list[str]:
    """The README's slope table, below the per-width table."""
    if not slopes:
        return []
    header = ["panel", "attention vs twin", "scenario", "measure", "widths", "gap change per doubling [95% CI]",
              "flat means within", "verdict (Holm)"]
    body = [[str(s["panel"]), f"{s['attention_model']} vs {s['baseline_model']}", s["scenario"], s["attack"],
             "/".join(map(str, s["widths"])),
             f"{s['slope']:+.2f} [{s['slope_low']:+.2f}, {s['slope_high']:+.2f}] {s['unit']}",
             f"+-{s['margin_per_doubling']:.2g} {s['unit']}", f"**{s['verdict']}**"] for s in slopes]
    return ["**The trend, tested.** The gap's least-squares slope against log2(width): its change per doubling of "
            "width, with a 95% interval (each width an independent comparison; Welch-Satterthwaite df). *grows* / "
            "*shrinks*: Holm over each panel's slopes; *flat within the margin*: the change across the widths "
            "measured lies within the rows' margin (two one-sided tests, Holm); else *inconclusive*. Rows at a "
            "floor leave the fit. Also in [width_slopes.csv](width_slopes.csv).", "",
            markdown_table(header, body), ""]
