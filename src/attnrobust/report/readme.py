"""The report's README.md, and the rows of its CSV files.

`readme_text` writes the README from a `ReadmeInputs` (the run, its grid and records, config and env, and the
parts built from them: tables, verdict rows, paired rows, paper comparison, figures, notes, minimal-eps section);
`rows_csv` with `VERDICT_KEYS`, `PAIRED_KEYS`, `COMPARISON_KEYS` writes verdicts.csv, paired.csv and
paper_comparison.csv.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from attnrobust.data import get_spec
from attnrobust.errors import UserError
from attnrobust.report.grid import Grid, model_sort_key, registered_info
from attnrobust.report.paper import reduced_notes
from attnrobust.report.tables import csv_text, markdown_table
from attnrobust.report.verdicts import ROBUSTNESS, TRANSFERABILITY
from attnrobust.report.verdict_text import (VERDICT_HEADER, format_diff, format_paper, power_note, summaries,
                                            verdict_cells, warnings_lines)
from attnrobust.results import Panel


@dataclass
class ReadmeInputs:
    """Everything the README shows: the run as read, and the report's parts built from it."""

    name: str  # the run folder's name
    grid: Grid
    records: list[dict]
    config_text: str | None  # config.toml verbatim, None when absent
    config: dict | None  # config.toml parsed, None when absent or not valid TOML
    env: dict  # env.json, {} when absent
    tables: dict[str, str]  # table name ("table2", "table3") -> Markdown
    rows: list[dict]  # verdict rows
    paired: list[dict]  # per-setting paired rows
    comparison: list[dict]  # our numbers beside the paper's
    figures: list[tuple[str, str]]  # (path relative to the report, caption), in README order
    notes: list[str]  # why figures are missing
    checkpoint_args: list[dict]  # build arguments of each model checkpoint in the run folder ([] when none)
    minimal_lines: list[str]  # the minimal-eps section's Markdown, [] when not measured
    corruption_lines: list[str] = ()  # the common-corruptions section (report/corruptions.py), () when not measured
    corruption_summary: list[str] = ()  # its one-line answers, shown with the adversarial ones
    width_lines: list[str] = ()  # the width trend (report/widths.py), () when the study does not cross widths
    interaction_lines: list[str] = ()  # what the axes change in the attention effect (report/interactions.py)
    power_plan: list[str] = ()  # RUN/power_plan.md, written before the run from a pilot; () when there was none
    margin_lines: list[str] = ()  # why the margins, and every verdict at 0.5x/1x/2x them (report/margins.py)
    paper_setting_lines: list[str] = ()  # the paper's gaps like for like, per setting (report/paper_settings.py)


def _verdict_markdown(rows: list[dict]) -> list[str]:
    """The power note, then one table per family: robustness (the verdict), transferability (descriptive)."""
    out = [f"*{power_note(rows)}.*", ""]
    for family, title in ((ROBUSTNESS, "Robustness (the verdict: white-box, and both models as targets of the "
                                       "same third model's attacks)"),
                          (TRANSFERABILITY, "Transferability (twin transfer mixes target and source; *as a source*: "
                                            "the same third model attacked by each one's attacks). Not evidence "
                                            "about robustness; its own Holm family")):
        mine = [r for r in rows if r["family"] == family]
        if mine:
            body = [[c.replace("|", "/") for c in verdict_cells(r)] for r in mine]
            for b in body:
                b[3], b[8] = b[3].upper(), f"**{b[8]}**"
            out += [f"{title}:", "", markdown_table(VERDICT_HEADER, body), ""]
    return out


VERDICT_KEYS = ["dataset", "attention_model", "baseline_model", "scenario", "family", "attack", "seeds", "n",
                "attention_accuracy", "baseline_accuracy", "unit", "difference", "ci_low", "ci_high", "sim_low",
                "sim_high", "margin", "p_value", "p_holm", "p_equivalence_holm", "verdict", "df_verdict", "df",
                "verdict_satterthwaite", "detectable", "seeds_needed", "seed_var", "image_var", "family_size", "alpha",
                "both_correct_difference", "both_correct_n", "relative_gap", "wilcoxon_p", "saturated", "flags",
                "indicative", "withheld", "paper_difference", "paper_verdict", "reproduced", "method", "settings",
                "settings_at_floor", "near_floor", "equivalent_at_0", "equivalent_at_half", "decided_by_seed",
                "borderline_seeds", "estimate_without_seed"]
PAIRED_KEYS = ["dataset", "attention_model", "baseline_model", "scenario", "setting", "seeds", "n",
                "attention_accuracy", "baseline_accuracy", "difference", "ci_low", "ci_high", "p_value", "verdict",
                "withheld", "paper_difference", "paper_verdict", "method"]


COMPARISON_KEYS = ["dataset", "source", "target", "setting", "ours", "ours_ci95", "paper", "difference"]


def _comparison_markdown(rows: list[dict]) -> str:
    header = ["dataset", "model (source -> target)", "setting", "ours", "paper", "ours - paper (pp)"]
    body = [[str(r["dataset"]), r["source"] if r["source"] == r["target"] else f"{r['source']} -> {r['target']}",
             r["setting"], f"{r['ours']:.2f}" + ("" if r["ours_ci95"] is None else f" ± {r['ours_ci95']:.2f}"),
             f"{r['paper']:.2f}", f"{r['difference']:+.2f}"] for r in rows]
    return markdown_table(header, body, right=3)


def rows_csv(rows: list[dict], keys: list[str]) -> str:
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
    body = [[str(r["dataset"]), f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["setting"],
             str(r["seeds"]), format_diff(r), r["verdict"], format_paper(r)] for r in rows]
    return markdown_table(header, body)


def _summary_lines(found: list[dict]) -> list[str]:
    """Per dataset and attention pair (`summaries`): the white-box and transfer (as a target) verdicts against the
    paper's conclusion (the numbers are in the table below)."""
    lines = []
    for s in found:
        ours = {"inconclusive": "**inconclusive** (neither a difference nor equivalence within the margin shown)",
                "equivalent": "**equivalent** within the margin",
                "withheld": f"**verdict withheld**: {s['withheld']}",
                "mixed": "**mixed** (effects in both directions)"}.get(s["ours"], f"attention **{s['ours']}**")
        if s["ours"] == "inconclusive" and s["seeds_needed"] is not None:
            ours += ("; more images, not more seeds, would decide it" if s["seeds_needed"] == "more images" else
                     f"; about {s['seeds_needed']} seeds would decide it at the margin")
        if s["seeds"] < 2 and s["ours"] != "withheld":
            ours += " — *indicative (1 seed): about these weights, not the architecture*"
        if s["flagged_rows"]:
            ours += f" ({s['flagged_rows']} of its rows rest on failed sanity flags: see Warnings)"
        if s["gradient_masking"]:
            ours += f" (**gradient masking flagged**: {', '.join(s['gradient_masking'])})"
        paper = (f" The paper concluded: {s['paper']} -> **{s['agreement']}**" + (
                 " by this design (see *Comparison with the paper*)" if s["agreement"].startswith("not reproduced")
                 else "") + "." if s["paper"] else " (No counterpart in the paper.)")
        if s["paper_tables"] is not None and s["paper_tables"] != s["paper"]:
            paper += f" (The paper's own tables, judged by the same rule: {s['paper_tables']}.)"
        lines.append(f"- **{s['dataset']}**, {s['attention_model']} vs {s['baseline_model']}, {s['scope']} "
                     f"attacks ({s['seeds']} seed{'s' if s['seeds'] != 1 else ''}): {ours}.{paper}")
    return lines


def _minimal_comparison(rows: list[dict]) -> list[str]:
    """The verdict's minimal-eps rows named for what they compare, with the Wilcoxon signed-rank p beside them."""
    mine = [r for r in rows if r["attack"] == "minimal"]
    if not mine:
        return []
    header = ["dataset", "attention vs twin", "restricted mean up to the cap, diff /255 [95% CI]", "verdict",
              "Wilcoxon signed-rank p (secondary)"]
    body = [[str(r["dataset"]), f"{r['attention_model']} vs {r['baseline_model']}", format_diff(r), r["verdict"],
             "-" if r["wilcoxon_p"] is None else f"{r['wilcoxon_p']:.3g}"] for r in mine]
    return ["Attention model minus its twin: the verdict compares the restricted mean of the per-image minimal eps "
            "up to the cap (the area under the robust-accuracy curve up to the cap; a median is not additive over "
            "seeds and images). Beside it, a paired Wilcoxon signed-rank test over the images of the seed-averaged "
            "differences: distribution-free, but blind to training noise, so a secondary check only.", "",
            markdown_table(header, body), ""]


def _family_size(rows: list[dict]) -> str:
    """How many comparisons one Holm family holds: the rows of one panel (a dataset, or one under a regime)."""
    sizes = sorted(set(Counter(r["dataset"] for r in rows if r["family"] == ROBUSTNESS).values()))
    regimes = any(r["dataset"] != Panel(r["dataset"].dataset) for r in rows)
    return (f"the {'/'.join(map(str, sizes))} comparisons of each dataset's table"
            + (" (a dataset under each training regime has a table of its own)" if regimes else ""))


def _attention_kind(model: str) -> str:
    """The kind of attention a model has, as the registry says (a user model: its name)."""
    info = registered_info(model)
    return (info.attention if info is not None else None) or model


def _kinds_matrix(found: list[dict]) -> list[str]:
    """The answer at a glance when a study compares several kinds of attention or several training regimes: a row
    per attention model and its twin, a column per panel (dataset, or dataset under a regime) and scope, the
    summary verdict in each cell (`summaries`). Nothing when there is one kind in one panel (the lines above say
    it all)."""
    panels = list(dict.fromkeys(s["dataset"] for s in found))
    pairs = list(dict.fromkeys((s["attention_model"], s["baseline_model"]) for s in found))
    if len(panels) < 2 and len({_attention_kind(a) for a, _ in pairs}) < 2:
        return []
    cell = {(s["dataset"], s["attention_model"], s["baseline_model"], s["scope"]):
            s["ours"] + (" (1 seed)" if s["seeds"] < 2 and s["ours"] != "withheld" else "") for s in found}
    columns = [(d, scope) for d in panels for scope in ("white-box", "transfer")
               if any(k[0] == d and k[3] == scope for k in cell)]
    header = ["attention (vs twin)"] + [f"{d}: {scope}" for d, scope in columns]
    body = [[f"{_attention_kind(a)} ({a} vs {b})"] + [cell.get((d, a, b, scope), "-") for d, scope in columns]
            for a, b in pairs]
    return ["", "Attention kinds and training regimes side by side (each cell: the verdict above; white-box by the "
            "minimal eps where measured):", "", markdown_table(header, body)]


def _header(name: str, grid: Grid, records: list[dict], env: dict) -> list[str]:
    datasets = grid.datasets()
    models = sorted({m for d in datasets for m in grid.models(d)}, key=model_sort_key)
    ns = sorted({r["n"] for r in records})
    lines = [f"# attnrobust report: {name}", "",
             "Does an attention module (CBAM) make an image classifier more or less robust to adversarial "
             "examples? A reproduction of Agrawal et al. (2021), *Impact of Attention on Adversarial Robustness "
             "of Image Classification Models*.", "",
             f"- Built by `attnrobust report` from `results.jsonl` alone ({len(records)} records); rebuilding "
             f"from the same results gives the same files.",
             f"- Datasets: {', '.join(map(str, datasets))}. Models: {', '.join(models)}. Seeds: "
             f"{', '.join(map(str, grid.seeds()))}. Test images attacked per model (n): "
             f"{', '.join(map(str, ns))}."]
    shown = [k for k in ("attnrobust", "python", "torch", "cuda", "device", "device_name", "cpu_model",
                         "cpu_capability", "threads", "world_size", "git_commit") if env.get(k) is not None]
    if shown:
        lines.append("- Environment (env.json): " + ", ".join(f"{k} {env[k]}" for k in shown) + ". Results differ "
                     "slightly between CPUs (float sums; cpu_capability is the instruction set torch uses): "
                     "compare verdicts, which carry their seeds, rather than single numbers.")
    return lines


def readme_text(inputs: ReadmeInputs) -> str:
    """The report's README.md: verdicts, threat model, deviations, minimal eps, tables, the paper, figures."""
    reduced = reduced_notes(inputs.grid, inputs.config)
    out = _header(inputs.name, inputs.grid, inputs.records, inputs.env)
    out += _verdicts_section(inputs, reduced)
    out += _measures_sections(inputs)
    out += _tables_sections(inputs)
    out += _paper_section(inputs, reduced)
    out += _figures_section(inputs)
    out += _caveats_section(inputs)
    return "\n".join(out).rstrip() + "\n"


def _verdicts_section(inputs: ReadmeInputs, reduced: list[str]) -> list[str]:
    """## Verdicts: the summaries, the method, the verdict table, the power plan, the reductions."""
    rows = inputs.rows
    out = ["", "## Verdicts", "",
            "Does attention help, hurt, is it equivalent within a declared margin, or can this study not tell? "
            "Each attention model is compared with "
            "its no-attention twin (same network, same width, same training seed) on the same test images, image "
            "by image: robust accuracy averaged over the attack's settings (FGSM: every eps > 0; PGD: every "
            "iteration count), attention minus twin, in percentage points (pp; > 0: attention more robust). "
            "Robustness scenarios: *white-box* (each model attacked on its own gradients); *transfer from V*: both "
            "as targets of the same attacks crafted on a third model without attention (VGG). Transferability "
            "(not robustness): *transfer (twin)*, the attention model scored on attacks crafted on its twin vs the "
            "twin scored on attacks crafted on the attention model (the paper's first two transfer scenarios, "
            "which mix a target's robustness with a source's attack strength), and *as a source, on V*.", ""]
    found = summaries(rows, inputs.records)
    out += _summary_lines(found) or ["- No attention model with its no-attention twin in the results."]
    out += list(inputs.corruption_summary)
    out += _kinds_matrix(found)
    if rows:
        seeds = sorted({r["seeds"] for r in rows})
        margins = {r["unit"]: r["margin"] for r in rows}
        out += ["", "**Method.** " + (
            "Several seeds: the crossed seeds x images estimator (training noise, the test-set noise every seed "
            "shares, their interaction counted once); t tests at df = seeds - 1, the Satterthwaite df beside it "
            "(*S*; '!' where it would decide otherwise: with 3 seeds it trusts a seed term that came out small by "
            "chance, and undercovers in simulation). " if max(seeds) >= 2 else
            "**One seed**: the interval is paired over the test images (Agresti-Min adjusted) and reflects the "
            "finite test set only, not how much another training run would move the numbers: the verdict is "
            "*indicative*, about these weights rather than the architectures; it is not set against the paper's "
            "conclusion. Run several seeds (`study.seeds`). ") +
            f"**Decisions**: {_family_size(rows)} form one family. *helps/hurts*: Holm-adjusted p < "
            f"{rows[0]['alpha']:g}; "
            f"*equivalent*: the difference lies within the declared margin "
            f"({', '.join(f'+-{v:g} {k}' for k, v in margins.items())}; `[verdict]` in the config), two one-sided "
            "tests Holm-adjusted over the same family; else *inconclusive* — not 'no effect'. *simultaneous*: "
            "Bonferroni intervals over the family, for any claim about several rows. *detectable*: the smallest "
            "effect the row finds with 80% power at the family's level; *seeds to decide*: the seeds at which an "
            "effect equal to the margin is found with 80% power. *both-correct*: the difference on images both targets classify "
            "correctly (clean accuracy leaks into robust accuracy); *rel. gap*: the difference over the twin's "
            "value. *Settings away from the floor*: a row averages only the settings where both models are at "
            "least one margin from 0% and 100% (room for a margin-sized change either way), lists those it left "
            "out, reads *at floor* (tests nothing, leaves the family) when none is left, and claims no "
            "equivalence within twice the margin of 0% or 100%. *P(equivalent) if 0 / m/2*: the chance the row reads equivalent with the seeds "
            "run, at a true effect of 0 and of half the margin. *[seed s decides]*: leaving seed s out changes "
            "the verdict (*borderline*: leaving out any of half the seeds or more does). A row is *withheld* when a compared model's clean accuracy is below the dataset's floor "
            "(`eval.min_clean_accuracy`); *[flag]*: built on records with a failed sanity flag.", ""]
        out += _verdict_markdown(rows)
        out.append("The paper column applies the same comparison to the paper's published numbers, over the "
                   "settings the row averages (final-iterate ones we share with it), judged by an unpaired one-run "
                   "rule with n = 10000 (the paper publishes accuracies, not per-image outcomes); *reproduced* "
                   "says whether its gap could occur at our accuracies at all (setting by setting: *Comparison "
                   "with the paper*). Full rows: [verdicts.csv](verdicts.csv).")
        at_floor = [f"{r['dataset']} {r['attention_model']} {r['scenario']} {r['attack']}: used "
                    f"{', '.join(r['settings'])}; left out {', '.join(r['settings_at_floor'])}" for r in rows
                    if r.get("settings_at_floor")]
        if at_floor:
            out += ["", "**Settings used and left out at the floor** (there a margin-sized change is not possible "
                    "either way; every row's settings are in verdicts.csv): " + "; ".join(at_floor) + "."]
        out += [""] + list(inputs.margin_lines)
    if inputs.power_plan:
        out += ["", "**Declared before the run** (`power_plan.md`, from `verdict.pilot`): what these seeds were "
                "expected to detect.", ""] + list(inputs.power_plan)
    if reduced:
        out += ["", "**Indicative only, next to the paper**: " + "; ".join(reduced) + "."]
    return out


def _measures_sections(inputs: ReadmeInputs) -> list[str]:
    """Warnings, threat model, deviations, minimal eps, corruptions, the axes' interactions and the width trend."""
    grid, rows = inputs.grid, inputs.rows
    out = ["", "## Warnings", ""] + [line.strip() if not line.startswith("  ") else f"- {line.strip()}"
                                      for line in warnings_lines(inputs.records, inputs.rows)]
    out += ["", "## Threat model", ""] + _threat_model(grid, inputs.records)
    deviations = _deviations(inputs.checkpoint_args, inputs.config)
    if deviations:
        out += ["", "## Deviations from the paper", ""] + [f"- {d}" for d in deviations]
    if inputs.minimal_lines:
        out += ["", "## Minimal adversarial eps (white-box, not saturated)", "",
                "At the paper's budgets every standard model is broken almost completely, so its tables cannot tell "
                "models apart. Per image, the smallest L-inf eps at which an attack finds an adversarial example "
                "(bisection on the grid of 1/255 with PGD per radius, the attack named in the threat model; never "
                "above the radius of any other recorded attack that broke the image): 0 for images misclassified "
                "clean, 'not broken' above the largest eps tried. This is the verdict's primary white-box measure "
                "(row *minimal*).",
                ""] + inputs.minimal_lines + _minimal_comparison(rows)
    if inputs.corruption_lines:
        out += [""] + list(inputs.corruption_lines)
    if inputs.interaction_lines:
        out += [""] + list(inputs.interaction_lines)
    if inputs.width_lines:
        out += [""] + list(inputs.width_lines)
    return out


def _tables_sections(inputs: ReadmeInputs) -> list[str]:
    """Tables II and III, and the paired comparison per setting."""
    several, paired = len(inputs.grid.seeds()) > 1, inputs.paired
    out = ["", "## Table II: white-box attacks", "",
            "Clean and FGSM columns are accuracy (%), PGD/APGD columns error (%) = 100 - accuracy under attack, all "
            "over the n test images" + (", mean ± 95% CI half-width over seeds" if several else "") +
            ". Files: [md](table2.md), [csv](table2.csv), [tex](table2.tex).", "", inputs.tables["table2"],
            "## Table III: transfer attacks", "",
            "Row = attacks crafted on *source*, scored on *target*; source = target is the white-box result. "
            "Clean = the target's clean accuracy. Files: [md](table3.md), [csv](table3.csv), "
            "[tex](table3.tex).", "", inputs.tables["table3"]]
    if paired:
        out += ["## Paired comparison per setting", "",
                "Attention model minus its twin, robust accuracy in pp, for every setting (the verdicts "
                "average these). Also in [paired.csv](paired.csv).", "", _paired_markdown(paired)]
    return out


def _paper_section(inputs: ReadmeInputs, reduced: list[str]) -> list[str]:
    """Our numbers beside the paper's."""
    comparison = inputs.comparison
    out = ["## Comparison with the paper", ""]
    if comparison:
        out += ["Our numbers beside the paper's Tables II and III (reference data: "
                "`attnrobust/reference/paper.json`, see its README) for every setting the paper also measured. "
                "Models are matched by family: resnet* -> ResNet-50, cbam_resnet* -> CBAM+ResNet-50, vgg16* -> "
                "VGG-16; fashion-mnist-mini -> Fashion-MNIST. Clean accuracy is compared with the target's own clean "
                "accuracy (Table II; VGG-16: Table III's VGG-16 source column), also in transfer rows. Also in "
                "[paper_comparison.csv](paper_comparison.csv)."]
        if reduced:
            out += ["", "**The comparison is indicative only**: " + "; ".join(reduced) + "."]
        out += ["", _comparison_markdown(comparison), ""] + list(inputs.paper_setting_lines)
    else:
        out += ["None of our settings matches one of the paper's (datasets, model families, FGSM eps or PGD "
                "eps 0.2 / step 0.01).", ""]
    return out


def _figures_section(inputs: ReadmeInputs) -> list[str]:
    """The figures with their captions, and the report's notes."""
    out = ["## Figures", ""]
    for rel, caption in inputs.figures:
        out += [f"![{caption}]({rel})", "", f"*{caption}.*", ""]
    if not inputs.figures:
        out += ["No figures.", ""]
    if inputs.notes:
        out += [f"- {n}" for n in inputs.notes] + [""]
    return out


def _caveats_section(inputs: ReadmeInputs) -> list[str]:
    """Denominators and definitions, and the run's resolved config."""
    out = ["## Caveats and definitions", "",
            "- Denominators: clean accuracy, robust accuracy and error are over all n attacked test images; error "
            "= 1 - robust accuracy (not the attack success rate). The attack success rate in results.jsonl is "
            "over the images the target classified correctly when clean (`target_clean_correct`).",
            "- eps is an L-inf budget in [0, 1] pixel units (0.05 = 12.75/255); the models normalize inside.",
            "- Transfer (twin) mixes two effects, as the paper's comparison does: how robust the target is and "
            "how well the source's attacks transfer. Only the VGG-source scenario (both models as targets) feeds "
            "the robustness verdict; the *as a source* rows show the other direction.",
            "- Which model is an attention model, and its twin, comes from the model registry "
            "(`attnrobust.models.model_info`)."]
    if inputs.config_text is not None:
        out += ["", "## Config", "", "The run's resolved `config.toml`:", "", "```toml",
                inputs.config_text.rstrip(), "```"]
    return out


def _threat_model(grid: Grid, records: list[dict]) -> list[str]:
    """What the attacker may do, stated once: norm, budgets, pixels, random start, iterate rule."""
    lines = ["- Norm: L-inf; eps in [0, 1] pixel units (0.05 = 12.75/255). Models normalise inside, so the "
             "budget applies to raw pixels, clipped to [0, 1]."]
    for d in grid.datasets():
        try:
            spec = get_spec(d.dataset)
            pixels = f"{spec.channels}x{spec.height}x{spec.width} (the dataset's own pixels, no padding)"
        except UserError:
            pixels = "input as given"
        mine = [r for r in records if Panel.of(r) == d]
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
    aa = sorted({_autoattack_label(r) for r in records if r["attack"] == "autoattack"})
    if aa:
        lines.append("- AutoAttack-grade ensemble (each attack on the images the previous ones left): " + "; ".join(aa)
                     + ".")
    minimal = sorted({_minimal_label(r) for r in records if r["attack"] == "minimal"})
    if minimal:
        lowered: dict[str, int] = {}
        for r in records:
            for attack, count in (r.get("min_eps_lowered_by") or {}).items():
                lowered[attack] = lowered.get(attack, 0) + count
        total = sum(r["n"] for r in records if r["attack"] == "minimal")
        lines.append("- Minimal eps: " + "; ".join(minimal) + "." + (
            " Images whose stored minimal eps is the radius of another recorded attack that broke them (the measure "
            "is never weaker than any attack the records hold): " + ", ".join(f"{k} {v}" for k, v in
                                                                           sorted(lowered.items()))
            + f" of {total} image-records." if lowered else ""))
    return lines


def _autoattack_label(r: dict) -> str:
    """The version and budgets of an autoattack record (records written before issue 23 name only the steps)."""
    a = r.get("autoattack")
    if a is None:
        return f"eps {r['eps']:.4g}, {r['steps']} APGD steps (version not recorded)"
    parts = [f"{a['steps']} steps" if name == "apgd-ce" else f"{a['targets']} targets x {a['steps']} steps"
             if name == "apgd-t" else f"{a['queries']} queries" for name in a["attacks"]]
    names = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "square": "Square"}
    return (f"version {a['version']} at eps {r['eps']:.4g} ({r['eps'] * 255:.3g}/255): "
            + ", ".join(f"{names.get(n, n)} {p}" for n, p in zip(a["attacks"], parts)))


def _minimal_label(r: dict) -> str:
    """How a minimal record's attack ran (records written before issue 23: cross-entropy PGD only)."""
    a = r.get("min_eps_attack")
    if a is None:
        return f"PGD-{r['steps']} on the cross-entropy per radius (recorded before the targeted default)"
    how = []
    if a["candidates"]:
        how.append(f"targeted margin towards the nearest of {a['candidates']} classes (linearized)")
    if a["cross_entropy"]:
        how.append("cross-entropy")
    grid = f"grid {r['min_eps_tol'] * 255:.3g}/255" if r.get("min_eps_tol") else "grid not recorded"
    return (f"PGD-{a['steps']} per radius on the " + ", then ".join(how) + f", {grid}; lowered to the radius of "
            "any other recorded white-box attack that broke the image")


def _deviations(checkpoint_args: list[dict], config: dict | None) -> list[str]:
    """Where the run's models differ from the paper's recipe on purpose, with the reason (from the checkpoints'
    build arguments, so the report says what was actually trained; from the config's train.model_args when the
    folder holds no checkpoints, e.g. a published report rebuilt from its results)."""
    out = []
    momenta = {args["cbam_bn_momentum"] for args in checkpoint_args if "cbam_bn_momentum" in args}
    if not checkpoint_args and config:
        models = (config.get("study") or {}).get("models") or []
        momentum = ((config.get("train") or {}).get("model_args") or {}).get("cbam_bn_momentum")
        if momentum is not None and any(getattr(registered_info(m), "attention", None) == "cbam" for m in models):
            momenta.add(momentum)
    for m in sorted(momenta - {0.01}):
        out.append(f"CBAM spatial-gate BatchNorm momentum {m:g} instead of the official 0.01: the eval-mode "
                   f"statistics (attacks run in eval mode) average over about the last {round(1 / m)} training "
                   f"steps instead of the last 100, so at the end of a short, high-learning-rate schedule they "
                   f"follow the weights the network ends with.")
    return out
