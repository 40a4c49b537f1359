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

    A margin states which effect is negligible to a reader (relevance, not noise; docs/method.md "Margins as
    relevance", report/margins.py): margin_pp = 2.0 (robust accuracy, percentage points): below the 1-3 pp by which
    adopted architecture choices move AutoAttack accuracy (Peng et al., BMVC 2023) and under half the paper's
    white-box FGSM gap (-4.09 pp). margin_eps = 0.5 (minimal eps, in 1/255): half a step of the 1/255 grid on which
    budgets are compared (RobustBench: 8/255, 4/255). Every report shows its verdicts at 0.5x, 1x and 2x these.
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
