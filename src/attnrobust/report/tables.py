"""Tables II and III from the grid, as Markdown, CSV and LaTeX, and the column labels of attack settings.

Values are kept as fractions and shown in percent with 2 decimals, like the paper; with several seeds a value is
"mean ± half-width of the 95% t interval over seeds".
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass

from attnrobust.report.grid import Grid
from attnrobust.results import Setting


# ---- column labels ----------------------------------------------------------------------------------------------


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _labels(settings: list[Setting], sep: str, titles: bool) -> list[str]:
    """Short column labels that show only what differs between settings of the same attack."""
    by_attack: dict[str, list[Setting]] = defaultdict(list)
    for s in settings:
        by_attack[s.attack].append(s)

    def varies(attack: str, attr: str) -> bool:
        return len({getattr(s, attr) for s in by_attack[attack]}) > 1

    out = []
    for s in settings:
        if s.attack == "clean":
            out.append("clean")
            continue
        if s.attack == "corruption":  # a common corruption at a severity (attnrobust.corruptions)
            out.append(sep.join([s.corruption, str(s.severity)]))
            continue
        name = s.attack.upper() if titles else s.attack
        parts = [name]
        if s.attack == "fgsm":
            parts.append(_fmt_num(s.eps))
        elif s.attack == "autoattack":  # its eps is its own, not PGD's: always shown
            parts.append(f"eps{s.eps:.4g}")
        else:
            if varies(s.attack, "eps"):
                parts.append(f"eps{_fmt_num(s.eps)}")
            if varies(s.attack, "alpha") and s.alpha is not None:
                parts.append(f"a{_fmt_num(s.alpha)}")
            parts.append(str(s.steps))
            if varies(s.attack, "random_start") and s.random_start:
                parts.append("rs")
            if s.keep_best and s.attack == "pgd":  # always said: a best-iterate PGD is not the paper's PGD
                parts.append("best")
        out.append(sep.join(parts))
    return out


def column_names(settings: list[Setting]) -> list[str]:
    """Machine-friendly names for CSV headers: clean, fgsm_0.05, pgd_5, ..."""
    return _labels(settings, "_", titles=False)


def column_titles(settings: list[Setting]) -> list[str]:
    """Human titles: 'clean', 'FGSM 0.05', 'PGD 5' (FGSM = accuracy, PGD = error, said in the caption)."""
    return _labels(settings, " ", titles=True)


# ---- tables -----------------------------------------------------------------------------------------------------


@dataclass
class Table:
    """Key columns (strings) followed by value columns (one per setting) holding (mean, half-width) or None."""

    name: str
    caption: str
    keys: list[str]
    settings: list[Setting]
    rows: list[tuple[list[str], list[tuple[float, float | None] | None]]]


def _cell_text(v: tuple[float, float | None] | None, pm: str) -> str:
    if v is None:
        return "-"
    mean, half = v
    return f"{mean:.2f}" if half is None else f"{mean:.2f}{pm}{half:.2f}"


def _table_settings(grid: Grid) -> list[Setting]:
    # minimal eps is a per-image distribution, not an accuracy at a budget: it has its own section
    return [s for s in grid.settings() if s.attack != "minimal"]


def table2(grid: Grid) -> Table:
    """White-box: one row per dataset x model (the diagonal cells)."""
    settings = _table_settings(grid)
    rows = []
    for d in grid.datasets():
        for m in grid.models(d):
            if not grid.has(d, m, m):
                continue
            seeds = sorted({s for st in settings for s in grid.runs(d, m, m, st)})
            n = "/".join(str(v) for v in grid.n_images(d, m, m))
            rows.append(([d, m, str(len(seeds)), n], [grid.summary(d, m, m, st) for st in settings]))
    return Table("table2", "White-box attacks (cf. the paper's Table II): clean and FGSM accuracy (%), "
                 "PGD/APGD/AutoAttack error (%) = 100 - accuracy under attack, over the n test images (FGSM may "
                 "use more images than the others: see n).",
                 ["dataset", "model", "seeds", "n"], settings, rows)


def table3(grid: Grid) -> Table:
    """Transfer: one row per dataset x source x target (the diagonal, source == target, is white-box)."""
    settings = _table_settings(grid)
    rows = []
    for d in grid.datasets():
        models = grid.models(d)
        for src in models:
            for tgt in models:
                if not grid.has(d, src, tgt):
                    continue
                seeds = sorted({s for st in settings for s in grid.runs(d, src, tgt, st)})
                n = "/".join(str(v) for v in grid.n_images(d, src, tgt))
                kind = "white-box" if src == tgt else "transfer"
                rows.append(([d, src, tgt, kind, str(len(seeds)), n],
                             [grid.summary(d, src, tgt, st) for st in settings]))
    return Table("table3", "Transfer attacks (cf. the paper's Table III): crafted on the source, scored on the "
                 "target; clean = the target's clean accuracy; FGSM accuracy (%), PGD/APGD error (%), over all n "
                 "test images.", ["dataset", "source", "target", "kind", "seeds", "n"], settings, rows)


def to_markdown(table: Table) -> str:
    rows = [keys + [_cell_text(v, " ± ") for v in values] for keys, values in table.rows]
    return markdown_table(table.keys + column_titles(table.settings), rows, right=len(table.settings))


def to_csv(table: Table) -> str:
    """Means in percent (2 decimals) and, beside each, its 95% CI half-width over seeds (empty with one seed)."""
    names = column_names(table.settings)
    rows = []
    for keys, values in table.rows:
        cells = []
        for v in values:
            cells += ["", ""] if v is None else [f"{v[0]:.2f}", "" if v[1] is None else f"{v[1]:.2f}"]
        rows.append(keys + cells)
    return csv_text(table.keys + [c for name in names for c in (name, f"{name}_ci95")], rows)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: object) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def to_latex(table: Table) -> str:
    """A standalone `table` environment using only core LaTeX (tabular, hline)."""
    header = table.keys + column_titles(table.settings)
    spec = "l" * len(table.keys) + "r" * len(table.settings)
    lines = [r"\begin{table}[ht]", r"\centering", r"\caption{" + tex_escape(table.caption) + "}",
             r"\label{tab:" + table.name + "}", r"\begin{tabular}{" + spec + "}", r"\hline",
             " & ".join(tex_escape(h) for h in header) + r" \\", r"\hline"]
    for keys, values in table.rows:
        cells = [tex_escape(k) for k in keys] + [_cell_text(v, r" $\pm$ ") for v in values]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def markdown_table(header: list[str], rows: list[list], right: int = 0) -> str:
    """A plain Markdown table of str(cell) (a panel shows its label); the last `right` columns are right-aligned
    (numbers)."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * (len(header) - right) + ["---:"] * right) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def aligned_lines(rows: list[list]) -> list[str]:
    """Rows of str(cell) in left-aligned columns (a panel shows its label)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
