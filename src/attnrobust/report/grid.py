"""Result records -> a grid of cells, the data behind the report's tables, figures and verdicts.

A cell is one (panel, source, target) triple, a panel (`attnrobust.results.Panel`) being a dataset under one
training regime at one width (the code calls it `dataset`; str(panel) is its label): source == target is the
white-box result, anything else a transfer result. Each cell holds, per attack setting
(`attnrobust.results.Setting.column`, a column of the tables) and per seed, the record that measured it. `summary`
gives a cell's value in percent: with several seeds the mean and the half-width of the 95% t interval over seeds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from attnrobust.errors import UserError
from attnrobust.models import model_info
from attnrobust.report.stats import mean_ci
from attnrobust.results import CLEAN, Panel, Setting, is_cross_seed, source_seed_of

# Model order, as in the paper's tables: each no-attention network before its attention variants (in the
# registry's order of attention kinds), VGG last; unregistered names after them.
_ATTENTION_ORDER = {None: 0, "cbam": 1, "se": 2, "eca": 3, "mhsa": 4}


def registered_info(name: str):
    """The registry's ModelInfo of `name` (a user's entry point: itself, attention unknown), or None for a name
    that is neither (e.g. a checkpoint told apart by its file name)."""
    try:
        return model_info(name)
    except UserError:
        return None


def model_sort_key(name: str) -> tuple:
    info = registered_info(name)
    if info is None:
        return (2, "", 9, name)
    return (1 if info.base.startswith("vgg") else 0, info.base, _ATTENTION_ORDER.get(info.attention, 9), name)


@dataclass
class Grid:
    """cells[(dataset, source, target)][setting][seed] = record, a source and target of one seed; and every
    transfer record, the source's seed crossed with the target's (eval.transfer_sources = "other-seeds"),
    pairs[(dataset, source, target)][setting][(source seed, target seed)] = record: only the transfer verdict
    rows read those (the tables and figures show each seed's own cells)."""

    cells: dict[tuple[str, str, str], dict[Setting, dict[int, dict]]] = field(default_factory=dict)
    pairs: dict[tuple[str, str, str], dict[Setting, dict[tuple[int, int], dict]]] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: list[dict]) -> "Grid":
        cells: dict = defaultdict(lambda: defaultdict(dict))
        pairs: dict = defaultdict(lambda: defaultdict(dict))
        for r in records:
            key = (Panel.of(r), r["source"], r["target"])
            seed = int(r["seed"])
            s = Setting.of(r).column  # one column for APGD's white-box and transfer iterates
            if r["kind"] == "transfer" and not (s.attack == "fgsm" and s.eps == 0):
                pairs[key][s][(source_seed_of(r), seed)] = r
            if is_cross_seed(r):
                continue
            # FGSM at eps 0 is the clean image: the clean column already shows it.
            if not (s.attack == "fgsm" and s.eps == 0):
                cells[key][s][seed] = r  # a later record of the same key supersedes an earlier one
            cells[key][CLEAN].setdefault(seed, r)
        return cls({k: dict(v) for k, v in cells.items()}, {k: dict(v) for k, v in pairs.items()})

    def datasets(self) -> list[str]:
        # panels in name order, axis values in numeric order ("width 8" before "width 16"): Panel.sort_key
        return sorted({d for d, _, _ in self.cells})

    def models(self, dataset: str) -> list[str]:
        names = {m for d, s, t in self.cells if d == dataset for m in (s, t)}
        return sorted(names, key=model_sort_key)

    def has(self, dataset: str, source: str, target: str) -> bool:
        return (dataset, source, target) in self.cells

    def settings(self, dataset: str | None = None) -> list[Setting]:
        found = {s for (d, _, _), cell in self.cells.items() if dataset in (None, d) for s in cell}
        return sorted(found, key=Setting.sort_key)

    def runs(self, dataset: str, source: str, target: str, setting: Setting) -> dict[int, dict]:
        """seed -> record for one cell and setting ({} when not measured)."""
        return self.cells.get((dataset, source, target), {}).get(setting, {})

    def pair_runs(self, dataset: str, source: str, target: str, setting: Setting) -> dict[tuple[int, int], dict]:
        """(source seed, target seed) -> transfer record for one cell and setting ({} when not measured)."""
        return self.pairs.get((dataset, source, target), {}).get(setting, {})

    def summary(self, dataset: str, source: str, target: str, setting: Setting) -> tuple[float, float | None] | None:
        """(mean, CI half-width) in percent of the value shown for this cell and setting, over seeds."""
        runs = self.runs(dataset, source, target, setting)
        if not runs:
            return None
        mean, half = mean_ci([100 * setting.value(runs[seed]) for seed in sorted(runs)])
        return mean, half

    def seeds(self, dataset: str | None = None) -> list[int]:
        return sorted({seed for (d, _, _), cell in self.cells.items() if dataset in (None, d)
                       for runs in cell.values() for seed in runs})

    def n_images(self, dataset: str, source: str, target: str) -> list[int]:
        return sorted({r["n"] for runs in self.cells.get((dataset, source, target), {}).values()
                       for r in runs.values()})
