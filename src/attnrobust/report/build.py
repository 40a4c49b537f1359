"""`attnrobust report RUN`: rebuild RUN/report/ from RUN/results.jsonl alone.

Writes Tables II and III (Markdown, CSV, LaTeX), the paired attention-vs-twin comparison, the paper's numbers
beside ours, verdicts, figures (PNG) and a README.md that shows all of it. Only results.jsonl is required;
config.toml and env.json (for the header) and checkpoints/ (for the attention maps) are used when present.

The whole folder is written beside the old one and swapped in, so a reader never sees half a report, and the
same results give the same bytes (no timestamps; figures with fixed metadata).
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

from attnrobust.errors import UserError
from attnrobust.paper import (comparison_rows, load_paper, matches_paper_pgd, paper_model,
                              paper_value, reduced_notes)
from attnrobust.results import read_records
from attnrobust.tables import (CLEAN, Grid, Setting, csv_text, markdown_table, model_sort_key, table2, table3,
                               to_csv, to_latex, to_markdown)
from attnrobust.verdicts import (format_diff, format_paper, paired_rows, summaries, verdict_label, verdict_table,
                                 verdicts)

__all__ = ["build_report", "load_records", "verdicts", "verdict_table"]  # verdicts: re-exported for the study


# ---- input ------------------------------------------------------------------------------------------------------


def load_records(path: str | Path) -> list[dict]:
    """The records of a results.jsonl; UserError (one line) when it is missing, empty or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run the study first (`attnrobust run`), or point `attnrobust report` "
                        f"at a run folder that holds results.jsonl")
    records = read_records(path)  # checks every record's keys; UserError naming the file and line
    if not records:
        raise UserError(f"{path} holds no result records; run the attacks (`attnrobust run`) before the report")
    return records


def _read_config(run_dir: Path) -> tuple[str | None, dict | None]:
    path = run_dir / "config.toml"
    if not path.is_file():
        return None, None
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text, None  # shown verbatim; only the reduced-size notes use its values


def _read_env(run_dir: Path) -> dict:
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return env if isinstance(env, dict) else {}


# ---- figures ----------------------------------------------------------------------------------------------------


def _fgsm_settings(grid: Grid, d: str) -> list[Setting]:
    return [s for s in grid.settings(d) if s.attack == "fgsm"]


def _pgd_settings(grid: Grid, d: str) -> list[Setting]:
    """The PGD settings of one variant (eps, alpha, start, keep-best): the paper's if we ran it, else the first."""
    pgd = [s for s in grid.settings(d) if s.attack == "pgd"]
    variants: dict[tuple, list[Setting]] = {}
    for s in pgd:
        variants.setdefault((s.eps, s.alpha, s.random_start, s.keep_best), []).append(s)
    for group in variants.values():
        if any(matches_paper_pgd(s) for s in group):
            return group
    return next(iter(variants.values()), [])


def _points(settings: list[Setting], clean_at_zero: bool) -> list[tuple[float, Setting]]:
    """(x, setting) along a curve: eps for FGSM (clean accuracy at eps 0), iterations for PGD."""
    head = [(0.0, CLEAN)] if clean_at_zero else []
    return head + [(s.eps if s.attack == "fgsm" else s.steps, s) for s in settings]


def _series(grid: Grid, d: str, src: str, tgt: str, settings: list[Setting], label: str, color: str,
            style: str, clean_at_zero: bool) -> dict | None:
    found = [(x, grid.summary(d, src, tgt, s)) for x, s in _points(settings, clean_at_zero)]
    found = [(x, v) for x, v in found if v is not None]
    if not found:
        return None
    return {"label": label, "x": [x for x, _ in found], "y": [v[0] for _, v in found],
            "err": [v[1] for _, v in found], "color": color, "style": style}


def _paper_series(d: str, src: str, tgt: str, settings: list[Setting], clean_at_zero: bool, color: str,
                  label: str) -> dict | None:
    found = [(x, paper_value(d, src, tgt, s)) for x, s in _points(settings, clean_at_zero)]
    found = [(x, y) for x, y in found if y is not None]
    if not found:
        return None
    return {"label": label, "x": [x for x, _ in found], "y": [y for _, y in found], "color": color,
            "style": "paper"}


def _figures(grid: Grid, out: Path) -> list[tuple[str, str]]:
    """Line figures; returns (relative path, caption) in README order."""
    from attnrobust.figures import PALETTE, curves

    made = []
    names = load_paper()["models"]
    for d in grid.datasets():
        models = grid.models(d)
        color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
        fgsm, pgd = _fgsm_settings(grid, d), _pgd_settings(grid, d)
        pgd_title = "PGD" + (f" eps {pgd[0].eps:g}, step {pgd[0].alpha:g}" if pgd and pgd[0].alpha else "")
        # White-box (Figs 2-4): every model, with the paper's curve of its family dotted.
        panels = [{"title": "FGSM (white-box)", "xlabel": "eps", "ylabel": "accuracy (%)", "settings": fgsm,
                   "zero": True},
                  {"title": f"{pgd_title} (white-box)", "xlabel": "iterations", "ylabel": "error (%)",
                   "settings": pgd, "zero": False}]
        for p in panels:
            p["series"], seen = [], set()
            for m in models:
                s = _series(grid, d, m, m, p["settings"], m, color[m], "solid", p["zero"])
                if s is not None:
                    p["series"].append(s)
                ref = paper_model(m)
                if ref is not None and ref not in seen:
                    seen.add(ref)
                    s = _paper_series(d, m, m, p["settings"], p["zero"], color[m], f"paper: {names[ref]}")
                    if s is not None:
                        p["series"].append(s)
            p["xticks"] = sorted({x for s in p["series"] for x in s["x"]})
        panels = [p for p in panels if p["series"]]
        if panels:
            rel = f"figures/whitebox_{d}.png"
            curves(out / rel, f"{d}: white-box attacks", panels)
            made.append((rel, f"{d}: white-box FGSM accuracy vs eps and PGD error vs iterations, every model "
                              f"(paper's published curves dotted, for the matching families)"))
        # Transfer (Figs 5-7): per source, its own white-box curve and every target's.
        for src in models:
            targets = [t for t in models if t != src and grid.has(d, src, t)]
            if not targets or not grid.has(d, src, src):
                continue
            panels = []
            for title, settings, zero, ylabel, xlabel in (
                    ("FGSM", fgsm, True, "accuracy (%)", "eps"), (pgd_title, pgd, False, "error (%)", "iterations")):
                series = [_series(grid, d, src, src, settings, f"{src} (source, white-box)", color[src], "solid",
                                  zero)]
                series += [_series(grid, d, src, t, settings, f"{src} -> {t}", color[t], "dashed", zero)
                           for t in targets]
                series = [s for s in series if s is not None]
                if series:
                    panels.append({"title": f"{title}: crafted on {src}", "xlabel": xlabel, "ylabel": ylabel,
                                   "series": series, "xticks": sorted({x for s in series for x in s["x"]})})
            if panels:
                from attnrobust.models import file_stem  # a user model's name may hold '/' and ':'

                rel = f"figures/transfer_{d}_{file_stem(src)}.png"
                curves(out / rel, f"{d}: attacks crafted on {src}", panels)
                made.append((rel, f"{d}: attacks crafted on {src}, scored on {src} itself (white-box, solid) "
                                  f"and on {', '.join(targets)} (transfer, dashed)"))
    return made


def _minimal_records(grid: Grid, d: str, model: str) -> dict[int, dict]:
    """seed -> the model's minimal-eps record (white-box), {} when not measured."""
    settings = [s for s in grid.settings(d) if s.attack == "minimal"]
    return grid.runs(d, model, model, settings[0]) if settings else {}


def _median_ci(values, level_z: float = 1.959963984540054) -> tuple[float, float, float]:
    """Median of per-image minimal eps with a distribution-free 95% interval (order statistics of a binomial)."""
    import math

    import numpy as np

    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    lo = max(0, int(math.floor(n / 2 - level_z * math.sqrt(n) / 2)))
    hi = min(n - 1, int(math.ceil(n / 2 + level_z * math.sqrt(n) / 2)))
    return float(np.median(v)), float(v[lo]), float(v[hi])


def _minimal_section(grid: Grid, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The non-saturated white-box measure: median minimal eps per model, fine-grid robust accuracy, figures."""
    import numpy as np

    from attnrobust.figures import PALETTE, curves
    from attnrobust.results import unpack_floats
    from attnrobust.stats import mean_ci
    from attnrobust.verdicts import attention_pairs

    lines, figures = [], []
    for d in grid.datasets():
        models = [m for m in grid.models(d) if _minimal_records(grid, d, m)]
        if not models:
            continue
        header, body = ["model", "seeds", "n", "median minimal eps (x255) [95% CI]", "not broken up to max"], []
        grid_eps = None
        curves_of = {}
        for m in models:
            runs = _minimal_records(grid, d, m)
            values = {seed: unpack_floats(r["min_eps"], r["n"]) for seed, r in sorted(runs.items())}
            per_seed = [[255 * x for x in _median_ci(v)] for v in values.values()]
            if len(values) >= 2:
                mean, half = mean_ci([m for m, _, _ in per_seed])
                # medians on a 1/255 grid often agree exactly across seeds: never narrower than the images' own
                # (order-statistic) interval, which every seed shares
                half = max(half, sum((hi - lo) / 2 for _, lo, hi in per_seed) / len(per_seed))
                text = f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}] (over seeds)"
            else:
                med, lo, hi = (255 * x for x in _median_ci(next(iter(values.values()))))
                text = f"{med:.2f} [{lo:.2f}, {hi:.2f}] (over images)"
            first = next(iter(runs.values()))
            unbroken = np.mean([np.isinf(v).mean() for v in values.values()])
            body.append([m, str(len(runs)), str(first["n"]), text, f"{100 * unbroken:.1f}% (max {255 * first['eps']:.1f})"])
            grid_eps = first["fine_grid"]
            curves_of[m] = np.array([[100 * c / r["n"] for c in r["fine_correct"]] for r in runs.values()])
        lines += [f"### {d}", "", markdown_table(header, body), ""]
        ticks = [e for e in grid_eps]
        fine_header = ["model"] + [f"{round(255 * e)}/255" for e in ticks[::2]]
        fine_body = [[m] + [f"{v:.1f}" for v in curves_of[m].mean(axis=0)[::2]] for m in models]
        lines += ["Robust accuracy (%) on the fine grid, read off the per-image minimal eps (mean over seeds):", "",
                  markdown_table(fine_header, fine_body), ""]
        color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(grid.models(d))}
        panels = []
        for attn, base in attention_pairs(models):
            series = []
            for m, style in ((attn, "solid"), (base, "dashed")):
                c = curves_of[m]
                series.append({"label": f"{m} ({c.shape[0]} seed{'s' if c.shape[0] > 1 else ''})",
                               "x": [255 * e for e in grid_eps], "y": list(c.mean(axis=0)),
                               "low": list(c.min(axis=0)) if c.shape[0] > 1 else None,
                               "high": list(c.max(axis=0)) if c.shape[0] > 1 else None,
                               "color": color[m], "style": style})
            panels.append({"title": f"{attn} vs {base}", "xlabel": "eps (x 1/255)",
                           "ylabel": "robust accuracy (%)", "series": series, "xticks": list(range(0, 17, 2))})
        if panels:
            rel = f"figures/minimal_eps_{d}.png"
            curves(out / rel, f"{d}: white-box robust accuracy on the fine eps grid", panels)
            figures.append((rel, f"{d}: robust accuracy vs eps on the fine grid (PGD bisection per image), "
                                 f"attention model solid, its twin dashed, band = range over seeds"))
    return lines, figures


def _attention_figures(grid: Grid, run_dir: Path, out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """CBAM attention maps from the run's checkpoints, when they and the dataset files are at hand."""
    folder = run_dir / "checkpoints"
    paths = sorted(p for p in folder.glob("*.safetensors") if not p.name.endswith(".state.safetensors")) \
        if folder.is_dir() else []
    if not paths:
        return [], ["attention maps: no checkpoints in the run folder (the report needs only results.jsonl)"]
    try:
        from attnrobust.checkpoint import read_meta
        from attnrobust.figures import attention_figure
    except ImportError as err:
        return [], [f"attention maps skipped: {err}"]
    chosen: dict[tuple[str, str], tuple[int, Path]] = {}
    notes = []
    for p in paths:
        try:
            meta = read_meta(p)
        except (UserError, OSError) as err:
            notes.append(f"attention maps: skipped {p.name}: {err}")
            continue
        name, dataset, seed = meta["build_args"].get("name", ""), meta.get("dataset"), meta.get("seed", 0)
        if _attention_kind(name) == "cbam" and dataset in grid.datasets():
            if (dataset, name) not in chosen or seed < chosen[(dataset, name)][0]:
                chosen[(dataset, name)] = (seed, p)
    made = []
    for (dataset, name), (_, p) in sorted(chosen.items()):
        fgsm = [s.eps for s in _fgsm_settings(grid, dataset)]
        # The smallest budget: the perturbation stays nearly invisible, yet it is where accuracy falls most.
        eps = min(fgsm) if fgsm else 0.05
        rel = f"figures/attention_{dataset}_{name}.png"
        try:
            made.append((rel, attention_figure(out / rel, p, eps)))
        except (ImportError, UserError, OSError, RuntimeError, KeyError, ValueError) as err:
            notes.append(f"attention maps: skipped {p.name}: {str(err).splitlines()[0] if str(err) else err!r}")
    return made, notes


def _attention_kind(name: str) -> str | None:
    from attnrobust.models import model_info

    try:
        return model_info(name).attention
    except UserError:  # not a registered model
        return None


# ---- README -----------------------------------------------------------------------------------------------------


def _verdict_markdown(rows: list[dict]) -> str:
    header = ["dataset", "attention vs twin", "scenario", "attack", "seeds", "n", "attention acc", "twin acc",
              "diff pp [95% CI]", "p (Holm)", "verdict", "paper: diff pp (verdict)", "reproduced"]
    body = [[r["dataset"], f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["attack"].upper(),
             str(r["seeds"]), str(r["n"]), f"{r['attention_accuracy']:.2f}", f"{r['baseline_accuracy']:.2f}",
             format_diff(r), "-" if r["p_holm"] is None else f"{r['p_holm']:.3g}",
             f"**{verdict_label(r['verdict'], r['seeds'])}**", format_paper(r), r["reproduced"]]
            for r in rows]
    return markdown_table(header, body)


_VERDICT_KEYS = ["dataset", "attention_model", "baseline_model", "scenario", "attack", "seeds", "n",
                 "attention_accuracy", "baseline_accuracy", "difference", "ci_low", "ci_high", "p_value", "p_holm",
                 "verdict", "indicative", "withheld", "paper_difference", "paper_verdict", "reproduced", "method",
                 "settings"]
_PAIRED_KEYS = ["dataset", "attention_model", "baseline_model", "scenario", "setting", "seeds", "n",
                "attention_accuracy", "baseline_accuracy", "difference", "ci_low", "ci_high", "p_value", "verdict",
                "withheld", "paper_difference", "paper_verdict", "method"]


_COMPARISON_KEYS = ["dataset", "source", "target", "setting", "ours", "ours_ci95", "paper", "difference"]


def _comparison_markdown(rows: list[dict]) -> str:
    header = ["dataset", "model (source -> target)", "setting", "ours", "paper", "ours - paper (pp)"]
    body = [[r["dataset"], r["source"] if r["source"] == r["target"] else f"{r['source']} -> {r['target']}",
             r["setting"], f"{r['ours']:.2f}" + ("" if r["ours_ci95"] is None else f" ± {r['ours_ci95']:.2f}"),
             f"{r['paper']:.2f}", f"{r['difference']:+.2f}"] for r in rows]
    return markdown_table(header, body, right=3)


def _rows_csv(rows: list[dict], keys: list[str]) -> str:
    return csv_text(keys, [[_csv_value(r[k]) for k in keys] for r in rows])


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return "; ".join(map(str, v))
    return str(v)


def _paired_markdown(rows: list[dict]) -> str:
    header = ["dataset", "attention vs twin", "scenario", "setting", "seeds", "diff pp [95% CI]", "verdict",
              "paper: diff pp (verdict)"]
    body = [[r["dataset"], f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["setting"],
             str(r["seeds"]), format_diff(r), r["verdict"], format_paper(r)] for r in rows]
    return markdown_table(header, body)


def _summary_lines(rows: list[dict]) -> list[str]:
    """Per dataset and attention pair: the white-box and transfer verdicts against the paper's conclusion (the
    numbers are in the table below)."""
    lines = []
    for s in summaries(rows):
        ours = {"no significant difference": "**no significant difference**",
                "withheld": f"**verdict withheld**: {s['withheld']}",
                "mixed": "**mixed** (significant effects in both directions)"}.get(s["ours"],
                                                                                 f"attention **{s['ours']}**")
        if s["seeds"] < 2 and s["ours"] != "withheld":
            ours += " — *indicative (1 seed): about these weights, not the architecture*"
        paper = (f" The paper concluded: {s['paper']} -> **{s['agreement']}**." if s["paper"]
                 else " (No counterpart in the paper.)")
        if s["paper_tables"] is not None and s["paper_tables"] != s["paper"]:
            paper += f" (The paper's own tables, judged by the same rule: {s['paper_tables']}.)"
        lines.append(f"- **{s['dataset']}**, {s['attention_model']} vs {s['baseline_model']}, {s['scope']} "
                     f"attacks ({s['seeds']} seed{'s' if s['seeds'] != 1 else ''}): {ours}.{paper}")
    return lines


def _header(run_dir: Path, grid: Grid, records: list[dict], env: dict) -> list[str]:
    datasets = grid.datasets()
    models = sorted({m for d in datasets for m in grid.models(d)}, key=model_sort_key)
    ns = sorted({r["n"] for r in records})
    lines = [f"# attnrobust report: {run_dir.resolve().name}", "",
             "Does an attention module (CBAM) make an image classifier more or less robust to adversarial "
             "examples? A reproduction of Agrawal et al. (2021), *Impact of Attention on Adversarial Robustness "
             "of Image Classification Models*.", "",
             f"- Built by `attnrobust report` from `results.jsonl` alone ({len(records)} records); rebuilding "
             f"from the same results gives the same files.",
             f"- Datasets: {', '.join(datasets)}. Models: {', '.join(models)}. Seeds: "
             f"{', '.join(map(str, grid.seeds()))}. Test images attacked per model (n): "
             f"{', '.join(map(str, ns))}."]
    shown = [k for k in ("attnrobust", "python", "torch", "cuda", "device", "device_name", "cpu_model",
                         "cpu_capability", "threads", "world_size", "git_commit") if env.get(k) is not None]
    if shown:
        lines.append("- Environment (env.json): " + ", ".join(f"{k} {env[k]}" for k in shown) + ". Results differ "
                     "slightly between CPUs (float sums; cpu_capability is the instruction set torch uses): "
                     "compare verdicts, which carry their seeds, rather than single numbers.")
    return lines


def _readme(run_dir: Path, grid: Grid, records: list[dict], config_text: str | None, config: dict | None,
            env: dict, tables: dict, rows: list[dict], paired: list[dict], comparison: list[dict],
            figures: list[tuple[str, str]], notes: list[str], minimal_lines: list[str]) -> str:
    several = len(grid.seeds()) > 1
    out = _header(run_dir, grid, records, env)
    out += ["", "## Verdicts", "",
            "Does attention help, hurt, or make no significant difference? Each attention model is compared with "
            "its no-attention twin (same network, same width, same training seed) on the same test images, image "
            "by image: robust accuracy averaged over the attack's settings (FGSM: every eps > 0; PGD: every "
            "iteration count), attention minus twin, in percentage points (pp; > 0: attention more robust). "
            "Scenarios: *white-box* (each model attacked on its own gradients); *transfer (twin)*: the attention "
            "model scored on attacks crafted on its twin vs the twin scored on attacks crafted on the attention "
            "model (the paper's first two transfer scenarios); *transfer from V*: both as targets of the same "
            "attacks crafted on a third model without attention (VGG).", ""]
    out += _summary_lines(rows) or ["- No attention model with its no-attention twin in the results."]
    if rows:
        seeds = sorted({r["seeds"] for r in rows})
        out += ["", "**Method.** " + (
            "Several seeds: the interval adds training noise (the spread of the per-seed paired differences) to "
            "the test-set noise shared by every seed (all are scored on the same images); t quantile with "
            "Welch-Satterthwaite degrees of freedom. " if max(seeds) >= 2 else
            "**One seed**: the interval is paired over the test images (Agresti-Min adjusted) and reflects the "
            "finite test set only, not how much another training run would move the numbers: the verdict is "
            "*indicative*, about these weights rather than the architectures; it is not set against the paper's "
            "conclusion. Run several seeds (`study.seeds`). ") +
            f"**Multiplicity**: the {len(rows)} comparisons of each dataset's table below form one family; "
            "a verdict says helps/hurts only when its Holm-Bonferroni adjusted p-value is below 0.05 (family-wise "
            "error 5%); the 95% intervals are per comparison. A row is *withheld* when a compared model's clean "
            "accuracy is below the dataset's floor (`eval.min_clean_accuracy`).", "", _verdict_markdown(rows)]
        out.append("The paper column applies the same comparison to the paper's published numbers, over the "
                   "final-iterate settings we share with it, judged by an unpaired one-run rule with n = 10000 "
                   "(the paper publishes accuracies, not per-image outcomes). Full rows: [verdicts.csv](verdicts.csv).")
    reduced = reduced_notes(grid, config)
    if reduced:
        out += ["", "**Indicative only, next to the paper**: " + "; ".join(reduced) + "."]
    out += ["", "## Threat model", ""] + _threat_model(grid, records)
    deviations = _deviations(run_dir)
    if deviations:
        out += ["", "## Deviations from the paper", ""] + [f"- {d}" for d in deviations]
    if minimal_lines:
        out += ["", "## Minimal adversarial eps (white-box, not saturated)", "",
                "At the paper's budgets every standard model is broken almost completely, so its tables cannot tell "
                "models apart. Per image, the smallest L-inf eps at which PGD (bisection on the grid of 1/255, "
                "with early stopping) finds an adversarial example: 0 for images misclassified clean, 'not broken' "
                "above the largest eps tried. This is the verdict's primary white-box measure (row *minimal*).",
                ""] + minimal_lines
    out += ["", "## Table II: white-box attacks", "",
            "Clean and FGSM columns are accuracy (%), PGD/APGD columns error (%) = 100 - accuracy under attack, all "
            "over the n test images" + (", mean ± 95% CI half-width over seeds" if several else "") +
            ". Files: [md](table2.md), [csv](table2.csv), [tex](table2.tex).", "", tables["table2"],
            "## Table III: transfer attacks", "",
            "Row = attacks crafted on *source*, scored on *target*; source = target is the white-box result. "
            "Clean = the target's clean accuracy. Files: [md](table3.md), [csv](table3.csv), "
            "[tex](table3.tex).", "", tables["table3"]]
    if paired:
        out += ["## Paired comparison per setting", "",
                "Attention model minus its twin, robust accuracy in pp, for every setting (the verdicts "
                "average these). Also in [paired.csv](paired.csv).", "", _paired_markdown(paired)]
    out += ["## Comparison with the paper", ""]
    if comparison:
        out += ["Our numbers beside the paper's Tables II and III (reference data: "
                "`attnrobust/reference/paper.json`, see its README) for every setting the paper also measured. "
                "Models are matched by family: resnet* -> ResNet-50, cbam_resnet* -> CBAM+ResNet-50, vgg16* -> "
                "VGG-16; fashion-mnist-mini -> Fashion-MNIST. Clean accuracy is compared with the target's own clean "
                "accuracy (Table II; VGG-16: Table III's VGG-16 source column), also in transfer rows. Also in "
                "[paper_comparison.csv](paper_comparison.csv)."]
        if reduced:
            out += ["", "**The comparison is indicative only**: " + "; ".join(reduced) + "."]
        out += ["", _comparison_markdown(comparison)]
    else:
        out += ["None of our settings matches one of the paper's (datasets, model families, FGSM eps or PGD "
                "eps 0.2 / step 0.01).", ""]
    out += ["## Figures", ""]
    for rel, caption in figures:
        out += [f"![{caption}]({rel})", "", f"*{caption}.*", ""]
    if not figures:
        out += ["No figures.", ""]
    if notes:
        out += [f"- {n}" for n in notes] + [""]
    out += ["## Caveats and definitions", "",
            "- Denominators: clean accuracy, robust accuracy and error are over all n attacked test images; error "
            "= 1 - robust accuracy (not the attack success rate). The attack success rate in results.jsonl is "
            "over the images the target classified correctly when clean (`target_clean_correct`).",
            "- eps is an L-inf budget in [0, 1] pixel units (0.05 = 12.75/255); the models normalize inside.",
            "- Transfer (twin) mixes two effects, as the paper's comparison does: how robust the target is and "
            "how well the source's attacks transfer. The VGG-source scenario isolates the target.",
            "- Which model is an attention model, and its twin, comes from the model registry "
            "(`attnrobust.models.model_info`)."]
    if config_text is not None:
        out += ["", "## Config", "", "The run's resolved `config.toml`:", "", "```toml", config_text.rstrip(),
                "```"]
    return "\n".join(out).rstrip() + "\n"


def _threat_model(grid: Grid, records: list[dict]) -> list[str]:
    """What the attacker may do, stated once: norm, budgets, pixels, random start, iterate rule."""
    from attnrobust.data import get_spec

    lines = ["- Norm: L-inf; eps in [0, 1] pixel units (0.05 = 12.75/255). Models normalise inside, so the "
             "budget applies to raw pixels, clipped to [0, 1]."]
    for d in grid.datasets():
        try:
            spec = get_spec(d)
            pixels = f"{spec.channels}x{spec.height}x{spec.width} (the dataset's own pixels, no padding)"
        except UserError:
            pixels = "input as given"
        mine = [r for r in records if r["dataset"] == d]
        images = sorted({f"{r['attack']}: {r['images']}" for r in mine})
        lines.append(f"- {d}: every pixel of the {pixels} image may change; attacked images: {'; '.join(images)}.")
    rs = sorted({r["random_start"] for r in records if r["attack"] in ("pgd", "apgd")})
    if rs:
        lines.append("- PGD/APGD random start: " + ("yes (uniform in the eps-ball, seeded)" if rs == [True] else
                                                   "no (start at the clean image)" if rs == [False] else "both"))
    iterates = sorted({(r["kind"], r["attack"], r["iterate"]) for r in records if r["iterate"]})
    if iterates:
        lines.append("- Iterate scored: " + "; ".join(f"{a.upper()} {k}: {it}" for k, a, it in iterates) +
                     " (final: the paper's convention; best: a sample counts as broken once any iterate fooled "
                     "the attacked model; best-on-source: the iterate that fooled the source, passed to the "
                     "targets).")
    return lines


def _deviations(run_dir: Path) -> list[str]:
    """Where the run's models differ from the paper's recipe on purpose, with the reason (from the checkpoints'
    build arguments, so the report says what was actually trained)."""
    from attnrobust.checkpoint import read_meta

    out = []
    momenta = set()
    for path in sorted((run_dir / "checkpoints").glob("*.safetensors")) if (run_dir / "checkpoints").is_dir() else []:
        if path.name.endswith(".state.safetensors"):
            continue
        try:
            args = read_meta(path).get("build_args") or {}
        except UserError:
            continue
        if "cbam_bn_momentum" in args:
            momenta.add(args["cbam_bn_momentum"])
    for m in sorted(momenta - {0.01}):
        out.append(f"CBAM spatial-gate BatchNorm momentum {m:g} instead of the official 0.01: in runs of a few "
                   f"hundred steps the running statistics would still carry their initial values with 0.01, so "
                   f"the eval-mode gate (attacks run in eval mode) would differ from the one the network trained "
                   f"with.")
    return out


# ---- build ------------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_report(out: Path, run_dir: Path, records: list[dict]) -> None:
    grid = Grid.from_records(records)
    config_text, config = _read_config(run_dir)
    env = _read_env(run_dir)
    tables = {}
    for table in (table2(grid), table3(grid)):
        tables[table.name] = to_markdown(table)
        _write(out / f"{table.name}.md", tables[table.name])
        _write(out / f"{table.name}.csv", to_csv(table))
        _write(out / f"{table.name}.tex", to_latex(table))
    floor = ((config or {}).get("eval") or {}).get("min_clean_accuracy")
    pairs = ((config or {}).get("study") or {}).get("pairs") or ()  # declared comparisons (study.pairs)
    rows = verdicts(records, min_clean_accuracy=floor, pairs=pairs)
    paired = paired_rows(grid, min_clean_accuracy=floor, pairs=pairs)
    _write(out / "verdicts.csv", _rows_csv(rows, _VERDICT_KEYS))
    _write(out / "verdicts.txt", verdict_table(records, min_clean_accuracy=floor, pairs=pairs) + "\n")
    _write(out / "paired.csv", _rows_csv(paired, _PAIRED_KEYS))
    comparison = comparison_rows(grid)
    _write(out / "paper_comparison.csv", _rows_csv(comparison, _COMPARISON_KEYS))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figures = _figures(grid, out)
    attention, notes = _attention_figures(grid, run_dir, out)
    minimal_lines, minimal_figures = _minimal_section(grid, out)
    _write(out / "README.md", _readme(run_dir, grid, records, config_text, config, env, tables, rows, paired,
                                      comparison, minimal_figures + figures + attention, notes, minimal_lines))


def build_report(run_dir: str | Path) -> Path:
    """Rebuild run_dir/report/ from run_dir/results.jsonl; returns the report folder.

    Raises UserError (one line) when results.jsonl is missing, empty or malformed.
    """
    run_dir = Path(run_dir)
    records = load_records(run_dir / "results.jsonl")
    final = run_dir / "report"
    tmp = run_dir / f".report.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_report(tmp, run_dir, records)
        # Swap the finished folder in: the old report stays whole until the new one is complete.
        old = run_dir / f".report.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
