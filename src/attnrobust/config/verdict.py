"""[verdict]: VerdictSection, the equivalence margins and error rate a study's rows are judged against, and its
checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnrobust.config.coerce import build_section
from attnrobust.errors import UserError


@dataclass
class VerdictSection:
    """[verdict]: the equivalence margins a row is judged against, declared before the run.

    margin_pp = 2.0 (robust accuracy, percentage points): about the seed-to-seed standard deviation of one model's
    robust accuracy in our runs (results/fashion-mnist-cpu-3seeds: median 0.9 pp white-box, 2.0 pp in transfer); a
    difference a retraining moves by is not a property of the architecture. margin_eps = 0.5 (minimal eps, in
    1/255): half a step of the 1/255 grid the minimal eps is measured on, ~14% of a standard Fashion-MNIST model's
    mean minimal eps (3.7/255 there).
    alpha = 0.05: the family-wise error of each kind of decision (Holm over a dataset panel's rows).
    The power plan a study prints before it trains (attnrobust.report.power): pilot = a previous run's folder (or
    its results.jsonl) whose variance components predict this study's; detect_pp / detect_eps = the effects it
    should be able to find (unset: the margins), for which the plan states the seeds needed.
    """

    margin_pp: float = 2.0
    margin_eps: float = 0.5
    alpha: float = 0.05
    pilot: str | None = None
    detect_pp: float | None = None
    detect_eps: float | None = None

    def validate(self) -> VerdictSection:
        for name in ("margin_pp", "margin_eps", "detect_pp", "detect_eps"):
            value = getattr(self, name)
            if value is None and name.startswith("detect"):
                continue
            if not value > 0 or not math.isfinite(value):
                raise UserError(f"verdict.{name}: must be a positive number, got {value!r}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"verdict.alpha: must be in (0, 0.5), got {self.alpha!r}")
        return self


def verdict_section(table: dict | None, where: str = "verdict") -> VerdictSection:
    """A [verdict] table (as TOML gives it, None: the defaults) as a checked VerdictSection; the report reads it
    from a run's config.toml, the study from its config."""
    if table is not None and not isinstance(table, dict):
        raise UserError(f"{where}: [verdict] must be a table")
    return build_section(VerdictSection, table or {}, "verdict").validate()
