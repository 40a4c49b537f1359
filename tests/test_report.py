"""The report stage: tables, statistics, verdicts, paper reference data, files on disk, bad input.

Records are synthetic but consistent (counts, ratios and per-image outcomes agree, robust <= clean); an "effect"
added to the CBAM model's robust accuracy makes verdicts known in advance. Images are ordered by a shared
difficulty (every model gets the first k right), as real models' errors are correlated.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from attnrobust.errors import UserError
from attnrobust.report import build_report
from attnrobust.report.paper import load_paper, paper_value
from attnrobust.report.stats import mean_ci, proportion_diff_se, t_quantile
from attnrobust.report.verdicts import verdicts
from attnrobust.report.verdict_text import summaries, verdict_table
from attnrobust.results import Panel, Setting, make_record, pack_bits, unpack_bits

EPS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
STEPS = [5, 10, 20]
MODELS = ["resnet14", "cbam_resnet14", "vgg16_bn"]
DATASETS = ["fashion-mnist-mini", "cifar10"]


def _record(dataset, seed, source, target, attack, eps, steps, n, clean, source_clean, robust, source_seed=None):
    # Robust-correct images are taken among the clean-correct ones (true for FGSM/PGD in practice).
    both = min(clean, source_clean)
    first = [[i < k for i in range(n)] for k in (robust, clean)]
    setting = Setting(attack, eps) if attack == "fgsm" else Setting(attack, eps, steps, 0.01, iterate="final")
    return make_record(dataset=dataset, seed=seed, source=source, target=target, setting=setting,
                       images=f"test[:{n}]",
                       robust_bits=pack_bits(first[0]), clean_bits=pack_bits(first[1]),
                       counts={"n": n, "target_clean_correct": clean, "source_clean_correct": source_clean,
                               "both_clean_correct": both, "robust_correct": robust,
                               "robust_correct_on_both": min(robust, both),
                               "robust_correct_on_target_clean": robust},
                       flags={"robust_le_clean": {"ok": True, "detail": ""}} if source == target else {},
                       source_seed=source_seed)


def make_records(seeds=(0,), effect=0.0, datasets=DATASETS, n=500, cross=False, same_seed_excess=0.0):
    """Full transfer matrices for 3 models; `effect` (fraction, or {seed: fraction}) is added to the CBAM
    model's robust accuracy as a target, so attention helps (> 0) or hurts (< 0) by construction. cross: every
    transfer also from the sources of every other seed (eval.transfer_sources = "other-seeds"); same_seed_excess
    (fraction) is added to the CBAM target's accuracy on attacks from its own seed's source only."""
    records = []
    for d in datasets:
        for seed in seeds:
            extra = effect[seed] if isinstance(effect, dict) else effect
            clean = {m: round(n * (0.84 + 0.02 * i + 0.005 * seed)) for i, m in enumerate(MODELS)}
            for src in MODELS:
                for tgt in MODELS:
                    strength = 1.0 if src == tgt else 0.4  # white-box attacks are stronger than transferred
                    for source_seed in (seeds if cross and src != tgt else [seed]):
                        excess = same_seed_excess if source_seed == seed and src != tgt else 0.0

                        def robust(fraction_of_clean):
                            acc = clean[tgt] / n * fraction_of_clean + (extra + excess if tgt.startswith("cbam_")
                                                                        else 0.0)
                            return max(0, min(clean[tgt], round(acc * n)))

                        def add(attack, eps, steps, r):
                            records.append(_record(d, seed, src, tgt, attack, eps, steps, n, clean[tgt], clean[src],
                                                   r, source_seed))

                        for eps in EPS:
                            add("fgsm", eps, None,
                                clean[tgt] if eps == 0 else robust(0.15 + 0.85 * math.exp(-10 * strength * eps)))
                        for steps in STEPS:
                            add("pgd", 0.2, steps, robust(0.2 + 0.5 * math.exp(-0.05 * strength * steps)))
    return records


def write_run(tmp_path, records, name="run"):
    run = tmp_path / name
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- statistics -------------------------------------------------------------------------------------------------


def test_t_quantile_known_values():
    # Student t 0.975 quantiles (two-sided 95%) from tables.
    for df, expected in [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (30, 2.0422725)]:
        assert t_quantile(df) == pytest.approx(expected, abs=1e-6)


def test_mean_ci_known_value():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.30265273 / math.sqrt(3), rel=1e-7)  # t(0.975, 2) * sd / sqrt(k), sd = 1
    assert mean_ci([5.0]) == (5.0, None)


def test_proportion_se_never_zero():
    # 100% vs 100% (PGD error 0 on both) must not give a zero-width interval.
    assert proportion_diff_se(500, 500, 500, 500) > 0
    assert proportion_diff_se(250, 500, 250, 500) == pytest.approx(math.sqrt(2 * 0.25 / 502), rel=1e-9)


# ---- paper reference data ---------------------------------------------------------------------------------------


def test_paper_json_complete_and_in_range():
    ref = load_paper()
    eps_keys = [f"{e:g}" for e in ref["fgsm_eps"]]
    steps_keys = [str(s) for s in ref["pgd"]["steps"]]
    assert eps_keys == ["0", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3"] and steps_keys == ["5", "10", "20"]
    assert set(ref["table2"]) == set(ref["table3"]) == {"cifar10", "cifar100", "fashion-mnist"}
    pairs = [("resnet50", "resnet50"), ("resnet50", "cbam_resnet50"), ("cbam_resnet50", "cbam_resnet50"),
             ("cbam_resnet50", "resnet50"), ("vgg16", "vgg16"), ("vgg16", "resnet50"), ("vgg16", "cbam_resnet50")]
    for d in ref["table2"]:
        assert set(ref["table2"][d]) == {"resnet50", "cbam_resnet50"}
        entries = list(ref["table2"][d].values()) + ref["table3"][d]
        assert [(c["source"], c["target"]) for c in ref["table3"][d]] == pairs
        for e in entries:
            assert list(e["fgsm_accuracy"]) == eps_keys and list(e["pgd_error"]) == steps_keys
            for v in list(e["fgsm_accuracy"].values()) + list(e["pgd_error"].values()):
                assert 0 <= v <= 100
            assert e["fgsm_accuracy"]["0"] > 70  # clean accuracies are all 71-93%
            assert all(v >= 35 for v in e["pgd_error"].values())
        # Table III's source columns repeat Table II (the check that its columns were read in the right order).
        for m in ("resnet50", "cbam_resnet50"):
            own = next(c for c in ref["table3"][d] if c["source"] == c["target"] == m)
            assert own["fgsm_accuracy"] == ref["table2"][d][m]["fgsm_accuracy"]
            assert own["pgd_error"] == ref["table2"][d][m]["pgd_error"]


def test_paper_json_spot_checks_against_the_text():
    ref = load_paper()
    t2, t3 = ref["table2"], ref["table3"]

    def cell(d, s, t):
        return next(c for c in t3[d] if (c["source"], c["target"]) == (s, t))

    assert t2["cifar10"]["cbam_resnet50"]["fgsm_accuracy"]["0.05"] == 0.37
    assert t2["cifar10"]["resnet50"]["pgd_error"]["5"] == 99.98
    assert t2["cifar100"]["cbam_resnet50"]["pgd_error"]["20"] == 97.16
    assert t2["fashion-mnist"]["resnet50"]["fgsm_accuracy"]["0.05"] == 42.42
    assert cell("fashion-mnist", "vgg16", "vgg16")["pgd_error"]["20"] == 90.55
    assert cell("cifar10", "resnet50", "cbam_resnet50")["fgsm_accuracy"]["0"] == 74.52  # as printed
    assert cell("cifar10", "cbam_resnet50", "resnet50")["pgd_error"]["20"] == 70.75
    assert cell("cifar100", "vgg16", "cbam_resnet50")["pgd_error"]["10"] == 82.18
    assert cell("cifar100", "resnet50", "cbam_resnet50")["fgsm_accuracy"]["0.05"] == 18.3
    assert cell("fashion-mnist", "cbam_resnet50", "resnet50")["fgsm_accuracy"]["0.05"] == 69.29
    assert cell("fashion-mnist", "vgg16", "resnet50")["pgd_error"]["5"] == 37.63
    assert ref["conclusion"]["white-box"] == {"cifar10": "hurts", "cifar100": "helps", "fashion-mnist": "hurts"}


PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "paper" / "000_0a12998f8b2ea3fc.txt"


def _numeric_rows(lines):
    """Rows of a text table that are a row label followed by numbers (tab-separated, cells possibly shifted)."""
    rows = []
    for line in lines:
        cells = [c for c in line.strip().split("\t") if c]
        if cells and all(re.fullmatch(r"[0-9.]+", c) for c in cells):
            rows.append([float(c) for c in cells])
    return rows


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason="the paper's text is not beside the repository")
def test_paper_json_matches_every_number_of_the_text():
    ref = load_paper()
    lines = PAPER_TEXT.read_text().splitlines()
    start2 = next(i for i, line in enumerate(lines) if line.startswith("TABLE II "))
    start3 = next(i for i, line in enumerate(lines) if line.startswith("TABLE III"))
    datasets = ["cifar10", "cifar100", "fashion-mnist"]
    rows2 = _numeric_rows(lines[start2:start2 + 20])
    assert len(rows2) == 10  # 7 FGSM rows, 3 PGD rows; columns: (ResNet-50, CBAM) per dataset
    for row in rows2:
        label, values = row[0], row[1:]
        for j, d in enumerate(datasets):
            for k, m in enumerate(["resnet50", "cbam_resnet50"]):
                entry = ref["table2"][d][m]
                got = entry["fgsm_accuracy"][f"{label:g}"] if label < 1 else entry["pgd_error"][f"{label:g}"]
                assert got == values[2 * j + k], (d, m, label)
    rows3 = _numeric_rows(lines[start3:start3 + 60])
    assert len(rows3) == 30 and all(len(r) == 8 for r in rows3)  # per dataset: 7 + 3 rows of label + 7 values
    for b, d in enumerate(datasets):
        for row in rows3[10 * b:10 * (b + 1)]:
            label, values = row[0], row[1:]
            for col, value in zip(ref["table3"][d], values):
                got = col["fgsm_accuracy"][f"{label:g}"] if label < 1 else col["pgd_error"][f"{label:g}"]
                assert got == value, (d, col["source"], col["target"], label)


def test_paper_value_maps_names_by_family():
    fgsm05 = Setting("fgsm", 0.05)
    pgd20 = Setting("pgd", 0.2, 20, 0.01)
    assert paper_value(Panel("fashion-mnist-mini"), "cbam_resnet14", "cbam_resnet14", fgsm05) == 17.59
    assert paper_value(Panel("cifar10"), "vgg16_bn", "vgg16_bn", pgd20) == 100
    assert paper_value(Panel("cifar100"), "vgg16_bn", "cbam_resnet26", pgd20) == 88.51
    assert paper_value(Panel("cifar10"), "resnet14", "cbam_resnet14", Setting("clean")) == 80.4  # Table II, not 74.52
    assert paper_value(Panel("cifar10"), "se_resnet14", "se_resnet14", fgsm05) is None
    assert paper_value(Panel("cifar10"), "resnet14", "resnet14", Setting("pgd", 0.1, 20, 0.01)) is None
    assert paper_value(Panel("cifar10"), "resnet14", "resnet14", Setting("fgsm", 0.07)) is None


# ---- verdicts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
@pytest.mark.parametrize("effect,expected", [(0.15, "helps"), (-0.15, "hurts")])
def test_verdicts_clear_effects(seeds, effect, expected):
    rows = verdicts(make_records(seeds, effect=effect))
    # 2 datasets x 1 pair x 4 scenarios (white-box, from VGG; twin transfer, as a source on VGG) x 2 attacks
    assert len(rows) == 16
    source = [r for r in rows if r["scenario"].startswith("as a source")]
    # the effect is on the attention model as a target: its attacks are as strong as its twin's, exactly
    assert {r["verdict"] for r in source} == {"equivalent"} and all(r["family"] == "transferability" for r in source)
    rows = [r for r in rows if r not in source]
    assert {r["verdict"] for r in rows} == {expected}
    assert all((r["difference"] > 0) == (effect > 0) and r["ci_low"] <= r["difference"] <= r["ci_high"]
               for r in rows)
    assert {r["seeds"] for r in rows} == {len(seeds)}
    fgsm = [r for r in rows if (r["scenario"], r["attack"]) == ("white-box", "fgsm")]
    # The paper: attention hurts under white-box FGSM on CIFAR-10 and Fashion-MNIST.
    assert {r["paper_verdict"] for r in fgsm} == {"hurts"}
    # one seed is indicative: never set against the paper's conclusion
    agreement = ({"n/a"} if len(seeds) == 1 else {"reproduced", "direction reproduced (gap size not)"}
                 if expected == "hurts" else {"not reproduced"})
    assert {r["reproduced"] for r in fgsm} <= agreement
    assert all(r["indicative"] == (len(seeds) == 1) and r["p_holm"] >= r["p_value"] for r in rows)


def test_verdict_noise_is_not_significant():
    # Three seeds whose attention effects disagree in sign: the interval over seeds contains 0.
    rows = verdicts(make_records((0, 1, 2), effect={0: 0.05, 1: -0.05, 2: 0.01}))
    assert {r["verdict"] for r in rows if not r["scenario"].startswith("as a source")} == {"inconclusive"}
    # "not reproduced" exactly where the paper's gap lies outside our simultaneous interval (no row at a floor)
    judged = [r for r in rows if r["paper_difference"] is not None]
    assert judged and not any(r["saturated"] for r in judged)
    assert all((r["reproduced"] == "not reproduced") == (not r["sim_low"] <= r["paper_difference"] <= r["sim_high"])
               for r in judged)
    assert all(r["sim_low"] < r["ci_low"] and r["sim_high"] > r["ci_high"] for r in judged)
    # One seed: whatever it finds is indicative, and never set against the paper.
    rows = verdicts(make_records((0,), effect=0.0))
    assert all(r["indicative"] and r["reproduced"] == "n/a" for r in rows)


def test_seeds_that_agree_exactly_keep_the_test_set_noise():
    # The same outcomes in every seed: zero spread over seeds, so a bare t interval over seeds would have zero
    # width; every seed is scored on the same images, so the test-set noise is the floor of the interval.
    one = make_records((0,), effect=0.004, datasets=["cifar10"])
    single = {(r["scenario"], r["attack"]): r for r in verdicts(one)}
    rows = verdicts([{**r, "seed": seed} for seed in (0, 1, 2) for r in one])
    assert {r["seeds"] for r in rows} == {3}
    for r in rows:
        s = single[(r["scenario"], r["attack"])]
        assert r["difference"] == pytest.approx(s["difference"])
        assert r["ci_high"] - r["ci_low"] >= s["ci_high"] - s["ci_low"] - 1e-9


def test_verdicts_definitions():
    rows = verdicts(make_records((0, 1, 2), effect=-0.1, datasets=["cifar10"]))
    by = {(r["scenario"], r["attack"]): r for r in rows}
    assert set(by) == {(s, a) for s in ("white-box", "transfer (twin)", "transfer from vgg16_bn",
                                        "as a source, on vgg16_bn") for a in ("fgsm", "pgd")}
    assert {s for (s, _), r in by.items() if r["family"] == "robustness"} == {"white-box", "transfer from vgg16_bn"}
    fgsm = by[("white-box", "fgsm")]
    assert fgsm["settings"] == ["FGSM 0.05", "FGSM 0.1", "FGSM 0.15", "FGSM 0.2", "FGSM 0.25", "FGSM 0.3"]
    assert by[("white-box", "pgd")]["settings"] == ["PGD 5", "PGD 10", "PGD 20"]
    assert fgsm["attention_model"] == "cbam_resnet14" and fgsm["baseline_model"] == "resnet14"
    assert fgsm["difference"] == pytest.approx(fgsm["attention_accuracy"] - fgsm["baseline_accuracy"])
    # The paper's own numbers under the same comparison: CIFAR-10 white-box FGSM, CBAM minus ResNet-50.
    paper = (sum([0.37, 1.79, 4.6, 5.95, 6.51, 6.85]) - sum([13.57, 12.4, 11.91, 11.34, 10.88, 9.3])) / 6
    assert fgsm["paper_difference"] == pytest.approx(paper)
    assert fgsm["paper_verdict"] == "hurts"
    # ... while its CIFAR-10 white-box PGD gap (0.02% vs 0% accuracy at 5 iterations) is within test-set noise.
    assert by[("white-box", "pgd")]["paper_verdict"] == "no significant difference"
    assert by[("white-box", "pgd")]["reproduced"] == "not reproduced"
    # Twin transfer: CBAM as target of ResNet's attacks vs ResNet as target of CBAM's (paper: 37.6 vs 42.54 ...).
    twin = by[("transfer (twin)", "fgsm")]
    paper = (sum([37.6, 19, 13.11, 11.65, 11.49, 11.58]) - sum([42.54, 20.91, 14.12, 11.83, 10.88, 10.47])) / 6
    assert twin["paper_difference"] == pytest.approx(paper)
    text = verdict_table(make_records((0, 1, 2), effect=-0.1, datasets=["cifar10"]))
    assert "cbam_resnet14 vs resnet14" in text and "hurts" in text and "reproduced" in text
    one_seed = verdict_table(make_records((0,), effect=-0.1, datasets=["cifar10"]))
    assert "indicative, 1 seed" in one_seed and "not judged (1 seed: indicative)" in one_seed


def test_summaries_check_the_paper_conclusion():
    rows = verdicts(make_records((0, 1, 2), effect=0.15, datasets=["cifar100", "cifar10"]))
    by = {(s["dataset"], s["scope"]): s for s in summaries(rows)}
    assert by[(Panel("cifar100"), "white-box")]["agreement"] == "reproduced"  # the paper: helps on CIFAR-100
    # the paper: hurts on CIFAR-10; opposite directions are "not reproduced" (our design is not the paper's), never
    # "contradicted"
    assert by[(Panel("cifar10"), "white-box")]["agreement"] == "not reproduced (ours: helps)"
    assert by[(Panel("cifar100"), "transfer")]["agreement"] == "not reproduced (ours: helps)"  # paper: "very low"
    assert by[(Panel("cifar10"), "white-box")]["paper_tables"] == "hurts"
    rows = verdicts(make_records((0, 1, 2), effect={0: 0.05, 1: -0.05, 2: 0.0}, datasets=["cifar10"]))
    assert {s["agreement"] for s in summaries(rows)} == {"inconclusive (neither a difference nor equivalence shown)"}


def test_verdict_withheld_when_a_model_did_not_learn():
    records = make_records((0, 1, 2), effect=-0.1, datasets=["cifar10"])
    rows = verdicts(records, min_clean_accuracy=0.9)  # the models reach 84-89%
    assert {r["verdict"] for r in rows} == {"withheld"} and all("floor of 90%" in r["withheld"] for r in rows)
    assert {s["agreement"] for s in summaries(rows)} <= {"not judged (verdict withheld)", "n/a"}
    assert "withheld" in verdict_table(records, min_clean_accuracy=0.9)


def test_holm_controls_the_family():
    # A significant raw p-value can fail the family's Holm adjustment: the verdict follows the adjusted one.
    rows = [r for r in verdicts(make_records((0, 1, 2), effect=-0.1, datasets=["cifar10"]))
            if r["family"] == "robustness"]
    ranked = sorted(r["p_value"] for r in rows)
    assert all(r["p_holm"] >= r["p_value"] for r in rows)
    assert min(r["p_holm"] for r in rows) == pytest.approx(min(1.0, len(rows) * ranked[0]))


def test_verdict_table_without_pairs():
    records = [r for r in make_records() if "cbam" not in r["source"] + r["target"]]
    assert verdict_table(records).startswith("verdicts: none")


# ---- the report on disk -----------------------------------------------------------------------------------------


def _check_latex(text):
    assert text.count("{") == text.count("}")
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
    assert text.count(r"\begin{table}") == text.count(r"\end{table}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text).group(1)
    body = text.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert rows and all(line.count("&") - line.count(r"\&") == len(spec) - 1 for line in rows)
    assert "_" not in re.sub(r"\\_", "", body)  # underscores escaped


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_build_report_files(tmp_path, seeds):
    records = make_records(seeds, effect=-0.1, cross=True)
    run = write_run(tmp_path, records)
    (run / "config.toml").write_text('[study]\nname = "t"\n[train]\nwidth = 16\n')
    report = build_report(run)
    assert report == run / "report"
    names = {p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file()}
    expected = {"README.md", "verdicts.csv", "verdicts.txt", "paired.csv", "paper_comparison.csv",
                "paper_settings.csv", "margin_sensitivity.csv"}
    expected |= {f"table{i}.{ext}" for i in (2, 3) for ext in ("md", "csv", "tex")}
    expected |= {f"figures/whitebox_{d}.png" for d in DATASETS}
    expected |= {f"figures/transfer_{d}_{m}.png" for d in DATASETS for m in MODELS}
    assert names == expected
    assert not list(run.glob(".report*"))  # no temporary folder left behind

    value_cols = ["clean"] + [f"fgsm_{e:g}" for e in EPS[1:]] + [f"pgd_{s}" for s in STEPS]
    t2 = read_csv(report / "table2.csv")
    assert list(t2[0]) == ["dataset", "model", "seeds", "n"] + [c for v in value_cols for c in (v, f"{v}_ci95")]
    assert [(r["dataset"], r["model"]) for r in t2] == [(d, m) for d in sorted(DATASETS) for m in MODELS]
    assert {r["seeds"] for r in t2} == {str(len(seeds))}
    several = len(seeds) > 1
    assert all((r["clean_ci95"] != "") == several for r in t2)
    # clean column = mean clean accuracy in percent over seeds
    mine = [r for r in records if (r["dataset"], r["target"], r["source"]) == ("cifar10", "vgg16_bn", "vgg16_bn")
            and r["attack"] == "pgd" and r["steps"] == 10]
    row = next(r for r in t2 if (r["dataset"], r["model"]) == ("cifar10", "vgg16_bn"))
    assert float(row["clean"]) == pytest.approx(100 * sum(r["clean_accuracy"] for r in mine) / len(mine), abs=0.005)
    assert float(row["pgd_10"]) == pytest.approx(100 * sum(r["error"] for r in mine) / len(mine), abs=0.005)

    t3 = read_csv(report / "table3.csv")
    assert len(t3) == len(DATASETS) * len(MODELS) ** 2
    assert list(t3[0])[:6] == ["dataset", "source", "target", "kind", "seeds", "n"]
    assert sum(r["kind"] == "white-box" for r in t3) == len(DATASETS) * len(MODELS)

    md = (report / "table2.md").read_text().splitlines()
    assert len(md) == 2 + len(t2) and all(line.count("|") == md[0].count("|") for line in md)
    for name in ("table2.tex", "table3.tex"):
        _check_latex((report / name).read_text())

    comparison = read_csv(report / "paper_comparison.csv")
    # every dataset maps (fashion-mnist-mini -> fashion-mnist); the paper has 7 of our 9 cells (no VGG target)
    assert len(comparison) == len(DATASETS) * 7 * 10
    assert list(comparison[0]) == ["dataset", "source", "target", "setting", "ours", "ours_ci95", "paper",
                                   "difference"]
    assert not [r for r in comparison if r["target"] == "vgg16_bn" and r["source"] != "vgg16_bn"]
    row = next(r for r in comparison if (r["dataset"], r["source"], r["target"], r["setting"]) ==
               ("cifar10", "cbam_resnet14", "cbam_resnet14", "FGSM 0.05"))
    assert float(row["paper"]) == 0.37
    assert float(row["difference"]) == pytest.approx(float(row["ours"]) - 0.37, abs=1e-3)
    readme = (report / "README.md").read_text()
    for needle in ("## Verdicts", "## Table II", "## Table III", "## Comparison with the paper",
                   "indicative only", "figures/whitebox_cifar10.png", "## Config", "reduced width",
                   "Denominators", "attention **hurts**"):
        assert needle in readme
    assert ("Several seeds: the crossed seeds x images estimator" in readme) == several
    assert ("**One seed**" in readme) == (not several)
    assert "Holm-adjusted" in readme and "## Threat model" in readme
    assert "*power: with" in readme and "+-2 pp" in readme  # the power note leads, the default margin is named
    assert "## Warnings" in readme and "warnings: none" in readme  # a clean bill in one line
    verdict_rows = read_csv(report / "verdicts.csv")
    assert len(verdict_rows) == 16
    for key in ("verdict", "margin", "sim_low", "sim_high", "detectable", "seeds_needed", "df", "df_verdict",
                "verdict_satterthwaite", "both_correct_difference", "relative_gap", "flags"):
        assert key in verdict_rows[0], key
    assert {r["verdict"] for r in verdict_rows} <= {"helps", "hurts", "equivalent", "inconclusive"}
    assert len(read_csv(report / "paired.csv")) == len(DATASETS) * 4 * 9  # 4 scenarios x 9 settings
    # every verdict at 0.5x, 1x and 2x the margins; the 1x column is the verdict table's own
    sensitivity = read_csv(report / "margin_sensitivity.csv")
    assert len(sensitivity) == 16 and [r["verdict_x1"].split(" ")[0] for r in sensitivity] == [
        r["verdict"].split(" ")[0] for r in verdict_rows]
    assert "Why these margins" in readme and "Margin sensitivity" in readme and "Like for like" in readme
    # the paper's gaps per setting: 3 scenarios it has (white-box, from VGG, twin) x 9 settings per dataset
    like = read_csv(report / "paper_settings.csv")
    assert len(like) == len(DATASETS) * 3 * 9
    assert all(r["reading"] for r in like) and "contradicted" not in readme


@pytest.mark.slow
@pytest.mark.figures
def test_rebuild_is_identical_and_replaces_stale_files(tmp_path):
    run = write_run(tmp_path, make_records((0, 1), datasets=["cifar10"]))
    first = build_report(run)
    snapshot = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    pngs = [v for k, v in snapshot.items() if k.suffix == ".png"]
    assert pngs and all(v.startswith(b"\x89PNG") for v in pngs)  # drawn, not placeholders: same bytes again
    (first / "stale.txt").write_text("from an older report")
    second = build_report(run)
    assert {p.relative_to(second): p.read_bytes() for p in second.rglob("*") if p.is_file()} == snapshot


def test_deviations_and_reductions_read_from_the_config_without_checkpoints(tmp_path):
    # a published report is rebuilt from results.jsonl and config.toml alone: the CBAM momentum of the quick
    # configs and their stride-2 stem are still stated
    run = write_run(tmp_path, make_records(datasets=["fashion-mnist-mini"]))
    (run / "config.toml").write_text('[study]\nname = "t"\nmodels = ["resnet14", "cbam_resnet14", "vgg16_bn"]\n'
                                     '[train]\nwidth = 8\nmodel_args = {cbam_bn_momentum = 0.1, stem_stride = 2}\n')
    readme = (build_report(run) / "README.md").read_text()
    assert "## Deviations from the paper" in readme and "momentum 0.1 instead of the official 0.01" in readme
    assert "first convolution has stride 2" in readme
    (run / "config.toml").write_text('[study]\nname = "t"\nmodels = ["resnet14", "cbam_resnet14", "vgg16_bn"]\n')
    readme = (build_report(run) / "README.md").read_text()
    assert "## Deviations from the paper" not in readme and "stride 2" not in readme


def test_missing_results_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="results.jsonl not found"):
        build_report(tmp_path)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("content", ["", "\n\n", '{"dataset": "cifar10"\n', "[1, 2]\n", '{"dataset": "x"}\n'])
def test_empty_or_malformed_results_is_a_user_error(tmp_path, content):
    (tmp_path / "results.jsonl").write_text(content)
    with pytest.raises(UserError, match="results.jsonl") as err:
        build_report(tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
@pytest.mark.figures
def test_attention_maps_from_a_checkpoint(tmp_path):
    # An untrained tiny CBAM model on the embedded Fashion-MNIST subset: enough to exercise the plumbing.
    torch = pytest.importorskip("torch")
    from attnrobust.checkpoint import save_checkpoint
    from attnrobust.models import build_model

    run = write_run(tmp_path, make_records((0,), datasets=["fashion-mnist-mini"]))
    torch.manual_seed(0)
    model = build_model("cbam_resnet14", 10, in_channels=1, width=8)
    for seed in (1, 0):  # the lowest seed is the one drawn
        save_checkpoint(run / "checkpoints" / f"fashion-mnist-mini-cbam_resnet14-s{seed}.safetensors", model,
                        {"dataset": "fashion-mnist-mini", "seed": seed})
    save_checkpoint(run / "checkpoints" / "fashion-mnist-mini-resnet14-s0.safetensors",
                    build_model("resnet14", 10, in_channels=1, width=8), {"dataset": "fashion-mnist-mini", "seed": 0})
    report = build_report(run)
    figure = report / "figures" / "attention_fashion-mnist-mini_cbam_resnet14.png"
    assert figure.stat().st_size > 10_000
    readme = (report / "README.md").read_text()
    assert "figures/attention_fashion-mnist-mini_cbam_resnet14.png" in readme
    assert "fashion-mnist-mini-cbam_resnet14-s0.safetensors" in readme


@pytest.mark.figures
def test_curves_draws_every_kind_of_series(tmp_path):
    """The one drawing function of the report's line figures, with every style it offers: a line, a dashed line
    with error bars, a published curve, and a band (the range over seeds of the minimal-eps figure)."""
    from attnrobust.report.figures import PALETTE, Plot, Series, curves

    x = [0.0, 0.05, 0.1]
    panel = Plot("every style", "eps", "accuracy (%)", [
        Series("line", x, [90.0, 50.0, 10.0], PALETTE[0]),
        Series("dashed, error bars", x, [88.0, 45.0, 8.0], PALETTE[1], style="dashed", err=[1.0, None, 2.0]),
        Series("paper", x, [91.0, 40.0, 5.0], PALETTE[2], style="paper"),
        Series("band", x, [89.0, 48.0, 9.0], PALETTE[3], low=[87.0, 44.0, 7.0], high=[91.0, 52.0, 11.0])],
        xticks=x)
    # a panel of differences (the width trend): its own y range and a line at 0
    gaps = Plot("differences", "width", "gap (pp)", [
        Series("gap", [8.0, 16.0], [-1.0, 0.5], PALETTE[0], low=[-3.0, -1.0], high=[1.0, 2.0])],
        ylim=None, zero_line=True)
    path = tmp_path / "every.png"
    curves(path, "styles", [panel, gaps])
    png = path.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


# ---- issue 22: margins, confounds, flags --------------------------------------------------------------------


def test_margin_decides_equivalence():
    from attnrobust.config import VerdictSection

    records = make_records((0, 1, 2), effect=0.0, datasets=["cifar10"])
    wide = {(r["scenario"], r["attack"]): r for r in verdicts(records, verdict=VerdictSection(margin_pp=10.0))}
    narrow = {(r["scenario"], r["attack"]): r for r in verdicts(records, verdict=VerdictSection(margin_pp=0.01))}
    key = ("white-box", "fgsm")
    assert wide[key]["verdict"] == "equivalent" and wide[key]["margin"] == 10.0
    assert -10 < wide[key]["sim_low"] and wide[key]["sim_high"] < 10  # equivalence = the simultaneous interval fits
    assert narrow[key]["verdict"] == "inconclusive" and narrow[key]["seeds_needed"] != 2
    assert narrow[key]["detectable"] > 0


def test_both_correct_comparison_removes_the_clean_accuracy_gap():
    # CBAM loses 5 of 500 images clean and, with them, 5 robust ones: the plain gap moves by about 1 pp, the gap on
    # the images both models classify correctly hardly moves (it only loses 5 images with no difference)
    def row(records):
        return next(r for r in verdicts(records) if (r["scenario"], r["attack"]) == ("white-box", "fgsm"))

    records = make_records((0, 1, 2), effect=0.0, datasets=["cifar10"], n=500)
    before = row(records)
    for r in records:
        if r["target"] == "cbam_resnet14":
            bits = unpack_bits(r["robust_bits"], r["n"]).copy()
            clean = unpack_bits(r["clean_bits"], r["n"]).copy()
            clean[:5] = False
            bits[:5] = False
            r["robust_bits"], r["clean_bits"] = pack_bits(list(bits)), pack_bits(list(clean))
    after = row(records)
    assert after["difference"] - before["difference"] < -0.25
    assert after["both_correct_difference"] == pytest.approx(before["both_correct_difference"], abs=0.02)
    assert after["both_correct_n"] == before["both_correct_n"] - 5
    assert after["relative_gap"] == pytest.approx(100 * after["difference"] / after["baseline_accuracy"])


def test_failed_flags_are_listed_and_mark_their_rows():
    records = make_records((0, 1, 2), effect=0.0, datasets=["cifar10"], cross=True)
    bad = next(r for r in records if (r["source"], r["target"], r["attack"], r["seed"]) ==
               ("cbam_resnet14", "cbam_resnet14", "pgd", 1))
    bad["flags"] = {**bad["flags"], "pgd_ge_fgsm": {"ok": False, "detail": "PGD 10 accuracy 40% > FGSM 30%"},
                    "gradient_masking": {"ok": False, "detail": "Square broke 3 images no gradient attack did"}}
    rows = verdicts(records)
    marked = {(r["scenario"], r["attack"]) for r in rows if r["flags"]}
    assert marked == {("white-box", "pgd")}
    text = verdict_table(records)
    assert "[flag]" in text
    assert "warnings: 2 of" in text and "pgd_ge_fgsm: cifar10, cbam_resnet14 -> cbam_resnet14, seed 1" in text
    assert "GRADIENT MASKING flagged: cbam_resnet14 seed 1" in text
    clean = make_records((0, 1, 2), effect=0.0, datasets=["cifar10"], cross=True)
    assert verdict_table(clean).splitlines()[-1].startswith("warnings: none")


def test_transfer_rows_from_other_seeds_sources_and_the_same_seed_flag():
    """Every transfer row scores its targets on the other seeds' sources when the records hold them; a same-seed
    design (eval.transfer_sources = "same-seed", or records without other seeds' sources) is flagged, with the
    same-seed excess where it can be measured: here the CBAM target gains 6 pp on its own seed's sources only."""
    records = make_records((0, 1, 2, 3), datasets=["cifar10"], cross=True, same_seed_excess=0.06)
    rows = [r for r in verdicts(records) if r["scenario"] != "white-box"]
    assert rows and {r["transfer_sources"] for r in rows} == {"other-seeds"}
    assert all(r["seed_pairs"] == 12 and r["seeds"] == 4 and "same_seed_sources" not in r["flags"] for r in rows)
    from_vgg = {r["attack"]: r for r in rows if r["scenario"] == "transfer from vgg16_bn"}
    assert from_vgg["pgd"]["same_seed_excess"] == pytest.approx(6, abs=0.5)
    assert "crossed sources x targets" in from_vgg["pgd"]["method"]
    assert verdict_table(records).splitlines()[-1].startswith("warnings: none")

    same = [r for r in verdicts(records, transfer_sources="same-seed") if r["scenario"] != "white-box"]
    assert {r["transfer_sources"] for r in same} == {"same-seed"}
    assert all("same_seed_sources" in r["flags"] and r["seed_pairs"] == 4 for r in same)
    # the same-seed rows carry the excess the other-seeds rows leave out
    assert {r["attack"]: r for r in same if r["scenario"] == "transfer from vgg16_bn"}["pgd"]["difference"] \
        - from_vgg["pgd"]["difference"] == pytest.approx(6, abs=0.5)
    text = verdict_table(records, transfer_sources="same-seed")
    assert "same_seed_sources: cifar10, cbam_resnet14 vs resnet14, transfer from vgg16_bn, pgd" in text
    assert "moves this gap by +6." in text and "[flag]" in text

    old = make_records((0, 1, 2, 3), datasets=["cifar10"])  # the design before: the flag fires, unmeasured
    text = verdict_table(old)
    assert "same_seed_sources" in text and "cannot be measured here" in text
    assert all(r["transfer_sources"] in (None, "same-seed") for r in verdicts(old))


def test_a_comparison_at_a_floor_tests_nothing():
    # both models at ~0% under PGD: the paper's gap cannot occur there
    records = make_records((0, 1, 2), effect=0.0, datasets=["cifar10"])
    for r in records:
        if r["attack"] == "pgd":
            r["robust_bits"] = pack_bits([False] * r["n"])
            r["robust_correct"], r["robust_accuracy"], r["error"] = 0, 0.0, 1.0
    row = next(r for r in verdicts(records) if (r["scenario"], r["attack"]) == ("white-box", "pgd"))
    assert row["saturated"] and row["reproduced"] == "not tested at this scale (floor/ceiling)"
