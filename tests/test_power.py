"""The power plan a study prints before it trains: read off a pilot's variance components, consistent with the
verdict's own detectable-effect column, and its bad input is one line."""

from __future__ import annotations

import pytest

from attnrobust.config import VerdictSection, load_config
from attnrobust.errors import UserError
from attnrobust.report.power import pilot_records, power_plan, power_plan_lines
from attnrobust.report.stats import Components, detectable_effect
from attnrobust.report.verdicts import verdicts
from conftest import REPO

PILOT = REPO / "results" / "fashion-mnist-cpu-3seeds"  # the first published study (3 seeds): its records are here


def test_plan_at_the_pilots_own_seeds_is_the_verdicts_detectable_effect():
    records = pilot_records(PILOT)
    rows = {(r["scenario"], r["attack"]): r for r in verdicts(records) if r["family"] == "robustness"}
    plan = power_plan(records, 3, VerdictSection())
    assert plan and {p["scenario"] for p in plan} == {"white-box", "transfer from vgg16_bn"}
    for p in plan:
        row = rows[(p["scenario"], p["attack"])]
        assert p["detectable"] == pytest.approx(row["detectable"], rel=1e-9)
        assert p["wanted"] == row["margin"]  # nothing asked: the margin it will test
        assert p["seeds_needed"] is None or p["seeds_needed"] >= 2


def test_more_seeds_detect_smaller_effects_and_the_plan_states_the_seeds_needed():
    records = pilot_records(PILOT / "results.jsonl")
    three = {(p["scenario"], p["attack"]): p for p in power_plan(records, 3, VerdictSection())}
    ten = {(p["scenario"], p["attack"]): p for p in power_plan(records, 10, VerdictSection(detect_eps=0.25))}
    for key, p in ten.items():
        assert p["detectable"] < three[key]["detectable"]
        if p["seeds_needed"] is not None:  # the stated number does detect the effect asked for, one fewer does not
            components = Components(p["seed_sd"] ** 2, p["image_sd"] ** 2, p["n"])
            at = [detectable_effect(components, k, family=p["family_size"]) for k in (p["seeds_needed"] - 1,
                                                                                   p["seeds_needed"])]
            assert at[1] <= p["wanted"] + 1e-12 and (p["seeds_needed"] == 2 or at[0] > p["wanted"])
    minimal = ten[("white-box", "minimal")]
    assert minimal["wanted"] == 0.25 and minimal["seeds_needed"] > three[("white-box", "minimal")]["seeds_needed"]
    text = "\n".join(power_plan_lines(list(ten.values()), 10, "the pilot"))
    assert "| white-box | minimal | 3 |" in text and "seeds needed" in text


def test_bad_pilot_and_detect_values_are_one_line(tmp_path):
    with pytest.raises(UserError, match="verdict.pilot: .* not found"):
        pilot_records(tmp_path / "nothing")
    for bad in ("verdict.detect_pp=-1", "verdict.detect_eps=0"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            load_config("quick", [bad])


def test_a_study_prints_its_power_plan_first_keeps_it_and_the_report_shows_it(tmp_path, capsys):
    from attnrobust.cli import main
    from attnrobust.study import run_study
    from test_study import TINY

    pilot = f"verdict.pilot='{PILOT}'"
    # --power-plan: the plan, then nothing else (no run folder)
    assert main(["run", "quick", "--out", str(tmp_path / "plan"), "--set", pilot, "--set", "study.seeds=[0,1,2,3]",
                 "--power-plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Power plan (4 seeds") and "| white-box | minimal |" in out
    assert not (tmp_path / "plan").exists()
    code = main(["run", "quick", "--out", str(tmp_path / "none"), "--power-plan"])
    assert code == 2 and "--power-plan: set verdict.pilot" in capsys.readouterr().err
    # a run: the plan is printed before the first job and kept in the run folder and the report
    run = run_study("quick", out=tmp_path / "run", quiet=True,
                    overrides=[*TINY, pilot, 'attack.attacks=["fgsm"]', "attack.corruptions=[]",
                               "study.models=['resnet14','cbam_resnet14']"])
    printed = capsys.readouterr().out
    assert printed.index("Power plan (1 seed;") < printed.index("done  train")
    kept = (run / "power_plan.md").read_text()
    assert kept.startswith("Power plan (1 seed;") and kept.rstrip() in (run / "report" / "README.md").read_text()
