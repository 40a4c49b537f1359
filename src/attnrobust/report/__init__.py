"""The report: RUN/results.jsonl -> RUN/report/ (`build_report`, behind `attnrobust report RUN`).

Parts:
- build.py: `build_report`; reads the run (config.toml, env.json), assembles the line figures and the attention
  maps, writes every file and swaps the finished folder in;
- grid.py: records -> `Grid` of (dataset, source, target) cells per setting and seed;
- tables.py: Tables II and III as Markdown, CSV, LaTeX; column labels of settings;
- verdicts.py: paired attention-vs-twin comparisons over seeds, three-way Holm-controlled verdicts; verdict_text.py:
  how those rows are worded (summaries, verdicts.txt, the power note, warnings);
- stats.py: the intervals, tests and power behind them (scipy's distributions);
- power.py: the power plan a study prints before it trains (from a pilot run's variance components);
- corruptions.py: the common-corruptions section, its verdicts and figures;
- widths.py: the width trend (each width's verdict rows side by side);
- paper.py: the paper's published numbers and how our names and settings map onto them;
- minimal.py: the minimal-eps section (the white-box measure that does not saturate);
- figures.py: the PNG figures (matplotlib);
- readme.py: the report's README.md and the rows of its CSV files.
"""

from __future__ import annotations

__all__ = ["build_report"]


def __getattr__(name: str):
    # Imported on first use, so that `attnrobust.report.stats` and friends load without the whole report.
    if name == "build_report":
        from attnrobust.report.build import build_report

        return build_report
    raise AttributeError(f"module 'attnrobust.report' has no attribute {name!r}")
