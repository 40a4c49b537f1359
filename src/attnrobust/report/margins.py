"""The equivalence margins as statements of relevance, and how much the verdicts depend on them.

A margin says which effect is negligible to a reader: an attention module that changes robust accuracy by less than
it would change no practitioner's choice of architecture and no reviewer's reading of the paper. Noise sets how
many seeds a study needs to decide at that margin (the power plan), not the margin itself. The reasons for the
defaults are in docs/method.md ("Margins as relevance") and in `MARGIN_REASONS`, shown in every report; the margins
a run used are its config's `[verdict]`, written before the run.

`margin_sensitivity` recomputes every verdict row at 0.5x, 1x and 2x both margins (the floor rule moves with the
margin too: settings usable at +-1 pp may be at the floor at +-4), so a reader sees which verdicts the choice
decides.
"""

from __future__ import annotations

from dataclasses import replace

from attnrobust.config import VerdictSection
from attnrobust.report.tables import markdown_table
from attnrobust.report.verdicts import verdicts
from attnrobust.report.verdict_text import marked_verdict

__all__ = ["FACTORS", "MARGIN_REASONS", "SENSITIVITY_KEYS", "margin_lines", "margin_sensitivity"]

FACTORS = (0.5, 1.0, 2.0)
SENSITIVITY_KEYS = ["dataset", "attention_model", "baseline_model", "scenario", "family", "attack", "unit",
                    "margin", "verdict_x0.5", "verdict_x1", "verdict_x2"]

# Why the defaults: sources named, numbers as they publish them (docs/method.md gives the same argument).
MARGIN_REASONS = (
    "**Why these margins** (relevance, not noise; declared in the config's `[verdict]` before the run). "
    "±2 pp of robust accuracy: architecture choices that the robustness literature reports as worth adopting "
    "move AutoAttack accuracy by 1-3 pp on CIFAR-10/100 (Peng et al., *Robust Principles: Architectural Design "
    "Principles for Adversarially Robust CNNs*, BMVC 2023: depth/width, stem and block design together), up to "
    "9.3 pp for one change (Xie et al., *Smooth Adversarial Training*, 2020: ReLU to a smooth activation, "
    "ResNet-50 on ImageNet, 33.0% to 42.3%); the paper's own Fashion-MNIST gaps, on which it rests its "
    "conclusions, are −4.09 pp (white-box FGSM, averaged over eps) and −14.59 pp (PGD transferred from VGG). An "
    "effect under 2 pp is below the smallest architecture effect those works act on and under half the paper's "
    "white-box FGSM gap: it would change neither a practitioner's choice nor a reader's verdict on the paper. "
    "±0.5/255 of minimal eps: the perturbation budgets on which robustness is compared are whole multiples of "
    "1/255 (RobustBench: 8/255 on CIFAR, 4/255 on ImageNet), so an attention module that buys an image less than "
    "half a step of that grid moves no model across a budget a reader compares at. The sensitivity table below "
    "shows each verdict at half and twice these margins.")


def margin_sensitivity(records: list[dict], verdict: VerdictSection | None = None, *, min_clean_accuracy=None,
                       pairs=(), rows: list[dict] | None = None) -> list[dict]:
    """Every verdict row at 0.5x, 1x and 2x the margins (keys SENSITIVITY_KEYS; verdicts as `marked_verdict`
    shows them). rows: the 1x verdicts when already computed."""
    verdict = verdict or VerdictSection()
    by_factor = {}
    for k in FACTORS:
        scaled = replace(verdict, margin_pp=k * verdict.margin_pp, margin_eps=k * verdict.margin_eps)
        found = rows if k == 1.0 and rows is not None else verdicts(
            records, min_clean_accuracy=min_clean_accuracy, pairs=pairs, verdict=scaled)
        by_factor[k] = {_key(r): r for r in found}
    out = []
    for key, r in by_factor[1.0].items():
        out.append({"dataset": r["dataset"], "attention_model": r["attention_model"],
                    "baseline_model": r["baseline_model"], "scenario": r["scenario"], "family": r["family"],
                    "attack": r["attack"], "unit": r["unit"], "margin": r["margin"],
                    **{f"verdict_x{k:g}": marked_verdict(by_factor[k][key]) if key in by_factor[k] else "-"
                       for k in FACTORS}})
    return out


def _key(r: dict) -> tuple:
    return r["dataset"], r["attention_model"], r["baseline_model"], r["scenario"], r["attack"]


def margin_lines(sensitivity: list[dict]) -> list[str]:
    """The report's margins paragraph and its sensitivity table."""
    if not sensitivity:
        return []
    margins = {r["unit"]: r["margin"] for r in sensitivity}
    defaults = VerdictSection()
    default = all(v == {"pp": defaults.margin_pp, "/255": defaults.margin_eps}.get(u) for u, v in margins.items())
    reasons = MARGIN_REASONS if default else (
        "**Margins** (declared in the config's `[verdict]` before the run): " + ", ".join(
            f"±{v:g} {u}" for u, v in margins.items()) + ", not the defaults, whose reasons are in docs/method.md; "
        "a margin should say which effect is negligible to a reader.")

    def at(k: float) -> str:
        return ", ".join(f"±{k * v:g} {u}" for u, v in margins.items())

    header = ["dataset", "attention vs twin", "scenario", "measure", "family"] + [
        f"x{k:g} ({at(k)})" for k in FACTORS]
    body = [[str(r["dataset"]), f"{r['attention_model']} vs {r['baseline_model']}", r["scenario"], r["attack"],
             r["family"]] + [r[f"verdict_x{k:g}"] for k in FACTORS] for r in sensitivity]
    return [reasons, "", "**Margin sensitivity**: every verdict at half, once and twice the declared margins "
            "(the floor rule moves with the margin). Also in [margin_sensitivity.csv](margin_sensitivity.csv).", "",
            markdown_table(header, body), ""]
