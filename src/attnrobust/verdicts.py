"""Does attention help, hurt, or make no significant difference? Precise comparisons and a significance rule.

For each dataset and each attention model A with a no-attention twin B in the results (cbam_resnetX / se_resnetX
vs resnetX), and for each attack (FGSM, PGD, APGD), one comparison per scenario:

- white-box: A attacked white-box vs B attacked white-box;
- transfer (twin): A scored on attacks crafted on B vs B scored on attacks crafted on A (the paper's first two
  transfer scenarios; it mixes A's robustness with B's transferability, as the paper's comparison does);
- transfer from V (every VGG model V): A vs B as targets of the same attacks crafted on V (the paper's third).

The quantity compared is the robust accuracy averaged over the attack's settings that both sides have: FGSM at
every eps > 0, PGD/APGD at every iteration count (accuracy = 100 - the error the tables show). The difference
is A - B in percentage points: positive means attention is more robust.

Significance, at 95%:
- several seeds: the difference is computed per seed (a model and its twin paired by seed) and a t interval is
  taken over seeds. It measures training randomness; every seed is scored on the same test images, so it does
  not include the noise of having drawn this test set (small with the full 10000 images, not with a subset),
  and seeds that happen to agree give a near-zero width. So its half-width is at least the one-seed interval's
  below (averaged over seeds).
- one seed: nothing tells us how much retraining would move the numbers. The interval only reflects the finite
  test set: each accuracy is a binomial proportion over n images, its standard error Agresti-Caffo adjusted,
  the two treated as independent (conservative: both models see the same images), and the SE of the average over
  settings bounded by the average of their SEs (conservative: the settings share images).
The rule: "helps" when the interval lies above 0, "hurts" when it lies below 0, else "no significant difference".
The paper's own numbers go through the same comparison and the one-seed rule (n = 10000 test images), which
gives the paper's verdict for each row: e.g. its CIFAR-10 white-box PGD gap (0.02% vs 0% accuracy at 5
iterations) is no significant difference.
"""

from __future__ import annotations

from attnrobust.paper import PAPER_N, load_paper, paper_dataset, paper_model, paper_value
from attnrobust.stats import Z95, mean_ci, proportion_diff_se
from attnrobust.tables import Grid, Setting, column_titles

ATTENTION_PREFIXES = ("cbam_", "se_")
HELPS, HURTS, NONE = "helps", "hurts", "no significant difference"
_SHORT = {NONE: "n.s."}


def attention_pairs(models: list[str]) -> list[tuple[str, str]]:
    """(attention model, its no-attention twin) for every attention model whose twin is also present."""
    pairs = []
    for m in models:
        for prefix in ATTENTION_PREFIXES:
            if m.startswith(prefix) and m[len(prefix):] in models:
                pairs.append((m, m[len(prefix):]))
    return pairs


def _scenarios(models: list[str], attn: str, base: str):
    """(scenario, attention cell, baseline cell, what is compared) as (source, target) cells."""
    yield ("white-box", (attn, attn), (base, base),
           f"{attn} vs {base}, each attacked white-box")
    yield ("transfer (twin)", (base, attn), (attn, base),
           f"{attn} on attacks crafted on {base} vs {base} on attacks crafted on {attn}")
    for v in models:
        if v.startswith("vgg"):
            yield (f"transfer from {v}", (v, attn), (v, base),
                   f"{attn} vs {base} as targets of attacks crafted on {v}")


def _decide(low: float, high: float) -> str:
    return HELPS if low > 0 else HURTS if high < 0 else NONE


def _compare(grid: Grid, d: str, a_cell, b_cell, settings: list[Setting]) -> dict | None:
    settings = [s for s in settings if grid.runs(d, *a_cell, s) and grid.runs(d, *b_cell, s)]
    if not settings:
        return None
    seed_sets = [set(grid.runs(d, *a_cell, s)) & set(grid.runs(d, *b_cell, s)) for s in settings]
    seeds = sorted(set.intersection(*seed_sets))
    if not seeds:
        return None

    def avg_accuracy(cell, seed):
        return sum(100 * s.accuracy(grid.runs(d, *cell, s)[seed]) for s in settings) / len(settings)

    acc_a = [avg_accuracy(a_cell, seed) for seed in seeds]
    acc_b = [avg_accuracy(b_cell, seed) for seed in seeds]
    diffs = [a - b for a, b in zip(acc_a, acc_b)]

    def test_set_half(seed):  # the one-seed interval: binomial noise of the finite test set
        ses = []
        for s in settings:
            ra, rb = grid.runs(d, *a_cell, s)[seed], grid.runs(d, *b_cell, s)[seed]
            ses.append(proportion_diff_se(s.correct(ra), ra["n"], s.correct(rb), rb["n"]))
        return 100 * Z95 * sum(ses) / len(ses)

    if len(seeds) >= 2:
        # Seeds that agree closely (e.g. a 1-image gap in every seed) give a near-zero t interval; every seed
        # is scored on the same images, so the interval is never narrower than the test-set noise.
        diff, half = mean_ci(diffs)
        half = max(half, sum(test_set_half(seed) for seed in seeds) / len(seeds))
        method = f"paired by seed, t interval over {len(seeds)} seeds (at least the test-set noise)"
    else:
        diff, half = diffs[0], test_set_half(seeds[0])
        method = "1 seed: test-set (binomial) noise only, not training noise"
    # The same comparison on the paper's numbers, over the settings it shares with ours, judged by the one-seed
    # rule with its n (the paper reports one run on the full test split).
    paper_diffs, paper_ses = [], []
    for s in settings:
        pa, pb = paper_value(d, *a_cell, s), paper_value(d, *b_cell, s)
        if pa is not None and pb is not None:
            acc_pa, acc_pb = (100 - pa, 100 - pb) if s.is_error else (pa, pb)  # error -> accuracy
            paper_diffs.append(acc_pa - acc_pb)
            paper_ses.append(proportion_diff_se(round(acc_pa * PAPER_N / 100), PAPER_N,
                                                round(acc_pb * PAPER_N / 100), PAPER_N))
    paper_diff = paper_verdict = None
    if paper_diffs:
        paper_diff = sum(paper_diffs) / len(paper_diffs)
        paper_half = 100 * Z95 * sum(paper_ses) / len(paper_ses)
        paper_verdict = _decide(paper_diff - paper_half, paper_diff + paper_half)
    return {
        "settings": column_titles(settings),
        "seeds": len(seeds),
        "attention_accuracy": sum(acc_a) / len(acc_a),
        "baseline_accuracy": sum(acc_b) / len(acc_b),
        "difference": diff,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "method": method,
        "verdict": _decide(diff - half, diff + half),
        "paper_difference": paper_diff,
        "paper_verdict": paper_verdict,
    }


def _agreement(ours: str, paper: str | None) -> str:
    if paper is None:
        return "n/a"
    if ours == paper:
        return "yes"
    return "inconclusive" if ours == NONE else "no"


def verdicts(records: list[dict]) -> list[dict]:
    """One dict per dataset x (attention model, twin) x scenario x attack; see the module docstring.

    Keys: dataset, attention_model, baseline_model, scenario, attack, compared, settings, seeds,
    attention_accuracy, baseline_accuracy, difference, ci_low, ci_high (percentage points), method, verdict
    ("helps" | "hurts" | "no significant difference"), paper_difference, paper_verdict, reproduced
    ("yes" | "no" | "inconclusive" | "n/a").
    """
    grid = Grid.from_records(records)
    out = []
    for d in grid.datasets():
        models = grid.models(d)
        attacks = sorted({s.attack for s in grid.settings(d) if s.attack != "clean"},
                         key=lambda a: Setting(a).sort_key())
        for attn, base in attention_pairs(models):
            for scenario, a_cell, b_cell, compared in _scenarios(models, attn, base):
                for attack in attacks:
                    settings = [s for s in grid.settings(d) if s.attack == attack]
                    row = _compare(grid, d, a_cell, b_cell, settings)
                    if row is None:
                        continue
                    out.append({"dataset": d, "attention_model": attn, "baseline_model": base,
                                "scenario": scenario, "attack": attack, "compared": compared, **row,
                                "reproduced": _agreement(row["verdict"], row["paper_verdict"])})
    return out


def _combine(found: list[str]) -> str:
    significant = {v for v in found if v != NONE}
    if not significant:
        return NONE
    return significant.pop() if len(significant) == 1 else "mixed"


def summaries(rows: list[dict]) -> list[dict]:
    """Per dataset and attention pair: white-box and transfer verdicts against the paper's conclusion.

    Ours for a scope is the direction of its significant rows (FGSM, PGD, ... and, for transfer, every
    scenario): all agreeing -> that direction, some disagreeing -> "mixed", none significant -> no significant
    difference. The paper's is its stated conclusion (Section V) for the CBAM pair; paper_tables combines the
    rows' paper verdicts (its published numbers under our rule) the same way.
    """
    conclusion = load_paper()["conclusion"]
    out = []
    keys = sorted({(r["dataset"], r["attention_model"], r["baseline_model"]) for r in rows})
    for d, attn, base in keys:
        pd = paper_dataset(d)
        paper_pair = paper_model(attn) == "cbam_resnet50" and paper_model(base) == "resnet50"
        for scope in ("white-box", "transfer"):
            mine = [r for r in rows if (r["dataset"], r["attention_model"], r["baseline_model"]) == (d, attn, base)
                    and r["scenario"].startswith(scope)]
            if not mine:
                continue
            ours = _combine([r["verdict"] for r in mine])
            paper = conclusion[scope].get(pd) if paper_pair and pd else None
            if paper is None:
                agreement = "n/a"
            elif paper == "no clear difference":
                agreement = "reproduced" if ours == NONE else f"not reproduced (ours: {ours})"
            elif ours == paper:
                agreement = "reproduced"
            elif ours == NONE:
                agreement = "not reproduced (no significant difference)"
            elif ours == "mixed":
                agreement = "partly (mixed)"
            else:
                agreement = "contradicted"
            # The paper's text and its tables can disagree (CIFAR-100 transfer: "very low" difference in the
            # text, significant gaps in Table III), so its tables' verdict by our rule is given beside it.
            from_tables = [r["paper_verdict"] for r in mine if r["paper_verdict"] is not None]
            out.append({"dataset": d, "attention_model": attn, "baseline_model": base, "scope": scope,
                        "ours": ours, "paper": paper, "agreement": agreement,
                        "paper_tables": _combine(from_tables) if from_tables else None,
                        "seeds": min(r["seeds"] for r in mine)})
    return out


def format_diff(row: dict) -> str:
    return f"{row['difference']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"


def format_paper(row: dict) -> str:
    if row["paper_difference"] is None:
        return "-"
    return f"{row['paper_difference']:+.2f} ({row['paper_verdict']})"


def verdict_table(records: list[dict]) -> str:
    """Plain-text verdict table (for the terminal at the end of a study), then the per-dataset summary."""
    rows = verdicts(records)
    if not rows:
        return "verdicts: none (no attention model with its no-attention twin in the results)"
    header = ["dataset", "attention vs twin", "scenario", "attack", "seeds", "diff pp [95% CI]", "verdict",
              "paper", "reproduced"]
    body = [[r["dataset"], f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["attack"],
             str(r["seeds"]), format_diff(r), _SHORT.get(r["verdict"], r["verdict"]),
             format_paper(r).replace(NONE, "n.s."), r["reproduced"]] for r in rows]
    lines = _aligned([header] + body)
    lines.append("")
    lines.append("diff = robust accuracy of the attention model minus its twin's, averaged over the attack's "
                 "settings (pp; > 0: attention more robust); n.s. = no significant difference (95% CI contains 0)")
    for s in summaries(rows):
        paper = f"paper: {s['paper']} -> {s['agreement']}" if s["paper"] else "paper: n/a"
        if s["paper_tables"] is not None and s["paper_tables"] != s["paper"]:
            paper += f"; the paper's own tables by this rule: {s['paper_tables']}"
        lines.append(f"{s['dataset']}: {s['scope']}: {s['attention_model']} vs {s['baseline_model']}: "
                     f"{s['ours']} ({paper})")
    return "\n".join(lines)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def paired_rows(grid: Grid) -> list[dict]:
    """Like `verdicts`, but one row per single setting (each FGSM eps, each PGD iteration count)."""
    out = []
    for d in grid.datasets():
        models = grid.models(d)
        settings = [s for s in grid.settings(d) if s.attack != "clean"]
        titles = dict(zip(settings, column_titles(settings)))
        for attn, base in attention_pairs(models):
            for scenario, a_cell, b_cell, _ in _scenarios(models, attn, base):
                for s in settings:
                    row = _compare(grid, d, a_cell, b_cell, [s])
                    if row is not None:
                        del row["settings"]
                        out.append({"dataset": d, "attention_model": attn, "baseline_model": base,
                                    "scenario": scenario, "setting": titles[s], **row})
    return out
