"""Leave one seed out: does a single training seed decide a row?

Ten seeds of which one is an outlier can move a mean a long way: on the full Fashion-MNIST, dropping seed 5 halved
the transfer-from-VGG estimates. A verdict that rests on one seed is a statement about that seed. So for each seed
of a family (three or more seeds: with two, dropping one leaves no training noise to measure), every row of the
family is recomputed without it (the crossed estimator on the other seeds, the same settings and margins) and the
family decided again (stats.decide, Holm as for the verdict); a row whose verdict changes without fewer than half
of its seeds names them (`decided_by_seed`); one that changes without half or more is at its threshold
(`borderline_seeds`: how many): any smaller study could read it otherwise, no single seed is special. The range
of its estimate without each seed is kept (`estimate_without_seed`).

The rows' usable settings (report/floors.py) stay those of all seeds. A flag is no verdict: a row near its
decision threshold can change with any seed; the flag says the reader should not lean on that row alone.
"""

from __future__ import annotations

import numpy as np

from attnrobust.config import VerdictSection
from attnrobust.report.floors import no_equivalence_near_floor
from attnrobust.report.stats import decide

__all__ = ["leave_one_seed_out"]


def leave_one_seed_out(rows: list[dict], verdict: VerdictSection) -> None:
    """Sets decided_by_seed (seeds whose omission changes the row's verdict, when fewer than half do; None: not
    checked), borderline_seeds (how many do, when half or more) and
    estimate_without_seed ([lowest, highest] estimate with one seed left out, in the row's unit) on each row of
    one decided family (rows still carrying _without, _seeds, _scale from verdicts.compare_cells)."""
    live = [r for r in rows if r["withheld"] is None and not r.get("at_floor") and r["seeds"] >= 3]
    for r in rows:
        r.update(decided_by_seed=None, borderline_seeds=0, estimate_without_seed=None)
    if not live:
        return
    margins = [r["margin"] / r["_scale"] for r in live]
    found: list[list[int]] = [[] for _ in live]
    estimates: list[list[float]] = [[] for _ in live]
    for seed in sorted({s for r in live for s in r["_seeds"]}):
        intervals = []
        for i, r in enumerate(live):
            iv = r["_without"](seed)
            intervals.append(iv)
            estimates[i].append(r["_scale"] * iv.estimate)
        for i, (r, dec) in enumerate(zip(live, decide(intervals, margins, alpha=verdict.alpha, power=False))):
            again = no_equivalence_near_floor(dec.verdict, bool(r.get("near_floor")))
            if seed in r["_seeds"] and again != r["verdict"]:
                found[i].append(seed)
    for r, seeds, est in zip(live, found, estimates):
        # half or more of the seeds changing it: not one seed but a row at its threshold (fewer seeds, wider
        # interval), which "borderline" says instead
        r.update(decided_by_seed=seeds if 2 * len(seeds) < r["seeds"] else [],
                 borderline_seeds=len(seeds) if 2 * len(seeds) >= r["seeds"] else 0,
                 estimate_without_seed=[float(np.min(est)), float(np.max(est))])
