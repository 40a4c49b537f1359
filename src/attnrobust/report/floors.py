"""Which settings a verdict row may average: those away from a floor or ceiling, where an effect of the margin's
size could show in either direction.

A measure has a range: robust accuracy 0-100%, the minimal eps 0 up to its cap (the restricted mean cannot pass
the largest eps tried). At a setting where the twin keeps 1% accuracy, attention cannot lower it by 2 pp; where
both keep 99%, it cannot raise it by 2: a 2 pp margin tests nothing there, and averaging that setting in pulls the
row's difference and its interval towards 0, which reads as "equivalent". So:

- a setting is **usable** when both models' values there (mean over the row's seeds) lie within [margin,
  top - margin]: each could move by the margin either way (top: 100 pp, or the minimal eps's cap in 1/255);
- a row averages its usable settings only; with none it reads **at floor** (it tests nothing, leaves the family,
  and does not count towards a summary);
- an **equivalence** claim needs more room: both models' averaged values at least twice the margin from 0 and
  from the top (`near_floor`). Within that band a margin-sized change is half or more of what is left, and a
  true effect of relative size (a gap proportional to the value, as a weaker attack setting would show it) is
  squeezed below the margin by the floor itself; such a row can still read helps or hurts, not equivalent.

The paper's numbers obey the same arithmetic (`paper_gap_possible`): a gap of g pp can only occur at our
accuracies if our twin's value plus g and our attention model's value minus g both stay within [0, top].
"""

from __future__ import annotations

__all__ = ["AT_FLOOR", "near_floor", "no_equivalence_near_floor", "paper_gap_possible", "usable"]

AT_FLOOR = "at floor"
EQUIVALENT, INCONCLUSIVE = "equivalent", "inconclusive"  # stats' verdict words


def usable(a: float, b: float, margin: float, top: float) -> bool:
    """Both values (the attention model's, the twin's, in the row's unit) leave room for a margin-sized change
    either way: margin <= value <= top - margin."""
    return all(margin <= v <= top - margin for v in (a, b))


def near_floor(a: float, b: float, margin: float, top: float) -> bool:
    """Either value within twice the margin of 0 or of the top: too close to a bound for an equivalence claim."""
    return any(v < 2 * margin or v > top - 2 * margin for v in (a, b))


def paper_gap_possible(a: float, b: float, gap: float, top: float = 100.0) -> bool:
    """Could a gap of `gap` (attention minus twin) occur at our values a (attention) and b (twin)? Our twin moved
    by the gap, and our attention model moved back by it, must both stay within [0, top]."""
    return 0.0 <= b + gap <= top and 0.0 <= a - gap <= top


def no_equivalence_near_floor(verdict: str, near: bool) -> str:
    """A decided verdict with the near-floor rule applied: "equivalent" near a floor reads "inconclusive"."""
    return INCONCLUSIVE if verdict == EQUIVALENT and near else verdict
