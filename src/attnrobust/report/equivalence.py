"""How likely a row was to read "equivalent" with the seeds it ran: the honest other half of "seeds to decide".

"Seeds to decide" is the seed count at which a true effect *equal to the margin* is found with 80% power. It does
not say how often a study of that size would call a harmless architecture change equivalent: a true effect of 0
reads "equivalent" only when the whole interval fits inside the margin and the difference is not significant,
which at the seeds that give 80% power at the margin happens well below 80% of the time. So every decided-or-not row also
states the chance of "equivalent" at a true effect of 0 and of half the margin, with its own seeds, images and
variance components.

The verdict reads "equivalent" when the difference is not significant and the (1 - alpha) interval lies inside
+-margin (stats.decide: helps/hurts first, then the two one-sided tests); at the family's strictest level
(Bonferroni alpha / family, the first step of Holm, as `stats.detectable_effect` uses) that is
|estimate| < min(q se_hat, margin - q se_hat), q the t quantile at df = seeds - 1. The estimated se_hat varies with
the seeds: se_hat^2 ~ se^2 chi2_f / f, f the Satterthwaite df of the seed term (seeds - 1) and the image term
(n - 1), so the chance is averaged over that law (a fixed grid of its quantiles). Checked by simulation in tests/test_equivalence.py.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from attnrobust.report.stats import ALPHA, Components, _quantile, verdict_df

__all__ = ["equivalence_chance", "equivalence_chances"]

# quantiles of the chi-square law of se_hat the chance is averaged over: the error of the average is far below the
# simulation's own (1/2000 of the probability mass each)
_GRID = (np.arange(2000) + 0.5) / 2000


def equivalence_chance(components: Components, seeds: int, margin: float, effect: float = 0.0, *, family: int = 1,
                       alpha: float = ALPHA) -> float:
    """P(the verdict reads "equivalent") for a row with these components, seeds and margin, at a true difference
    `effect` (same units as the margin and the components)."""
    if margin <= 0 or seeds < 1 or family < 1:
        raise ValueError(f"margin, seeds and family must be positive, got {margin}, {seeds}, {family}")
    df = verdict_df(seeds)
    se = math.sqrt(components.variance(seeds))
    if se == 0:
        return 1.0 if abs(effect) < margin else 0.0
    q = _quantile(1 - alpha / (2 * family), df)
    # se_hat's own law: the seed term has seeds - 1 df, the image term n - 1 (Satterthwaite over the two), so
    # a large shared image term steadies it even when the test's df is small
    seed_term, image_term = components.seed_var / seeds, components.image_var / components.n
    law_df = math.inf if not math.isfinite(df) else (seed_term + image_term) ** 2 / (
        seed_term ** 2 / (seeds - 1) + image_term ** 2 / max(components.n - 1, 1))
    se_hat = np.array([se]) if not math.isfinite(law_df) else se * np.sqrt(stats.chi2.ppf(_GRID, law_df) / law_df)
    half = np.clip(np.minimum(q * se_hat, margin - q * se_hat), 0.0, None)  # |estimate| < half: "equivalent"
    inside = stats.norm.cdf((half - effect) / se) - stats.norm.cdf((-half - effect) / se)
    return float(np.mean(np.where(half > 0, inside, 0.0)))


def equivalence_chances(row: dict) -> dict:
    """{equivalent_at_0, equivalent_at_half}: a verdict row's chance of "equivalent" at a true effect of 0 and of
    half its margin (None for a row withheld or at a floor); reads the row's own seed_var, image_var, n, seeds,
    margin, family_size and alpha."""
    if row["verdict"] in ("withheld", "at floor") or row.get("seed_var") is None:
        return {"equivalent_at_0": None, "equivalent_at_half": None}
    components = Components(row["seed_var"], row["image_var"], row["n"])
    chance = [equivalence_chance(components, row["seeds"], row["margin"], effect, family=row["family_size"],
                                 alpha=row["alpha"]) for effect in (0.0, row["margin"] / 2)]
    if row.get("near_floor"):  # the verdict claims no equivalence there, whatever the interval says
        chance = [0.0, 0.0]
    return {"equivalent_at_0": chance[0], "equivalent_at_half": chance[1]}
