"""End to end: a tiny study produces every report file; it resumes after an interruption with the same results."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from attnrobust.cli import main
from attnrobust.errors import UserError
from attnrobust.results import read_records
from attnrobust.study import list_runs, run_study

MODELS = ["resnet14", "cbam_resnet14", "vgg16_bn"]
# Seconds, not minutes: tiny widths, a few hundred training images, 1 epoch, 48 attacked images.
TINY = ["study.seeds=[0]", "eval.workers=1", "attack.minimal_steps=2",
        "train.width=4", "train.epochs=1", "train.n_train=256", "train.batch_size=64", "eval.n=48",
        "eval.batch_size=24", "attack.pgd_steps=[1,2,4]", "attack.fgsm_eps=[0.0,0.1,0.3]"]


def _stable(records):
    """The records without wall-clock fields, in a canonical order (run order may not matter)."""
    volatile = {"seconds", "time", "images_per_s"}
    rows = [{k: v for k, v in r.items() if k not in volatile} for r in records]
    return sorted(rows, key=lambda r: repr(sorted(r.items())))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse per-test cache is not set up yet
        patch.setenv("ATTNROBUST_CACHE", str(tmp_path_factory.mktemp("cache")))
        run_study("quick", out=out, overrides=TINY, quiet=True)
    return out


def test_tiny_study_writes_every_report_file(tiny_run):
    for name in ["config.toml", "env.json", "results.jsonl", "report/README.md"]:
        assert (tiny_run / name).is_file(), name
    assert len(list((tiny_run / "checkpoints").glob("*.safetensors"))) >= 3
    assert list((tiny_run / "logs").glob("*.jsonl"))
    report = tiny_run / "report"
    for table in ["table2", "table3"]:
        for suffix in [".md", ".csv", ".tex"]:
            assert (report / f"{table}{suffix}").is_file(), table + suffix
    assert list(report.glob("figures/*.png"))
    records = read_records(tiny_run / "results.jsonl")
    # 3 sources x 3 targets x (3 FGSM eps + 3 PGD step counts), and each model's minimal eps (white-box)
    assert len(records) == 3 * 3 * (3 + 3) + 3
    assert {r["source"] for r in records if r["attack"] == "minimal"} == set(MODELS)
    assert {(r["source"], r["target"]) for r in records} == {(s, t) for s in MODELS for t in MODELS}
    with open(report / "table2.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + 3  # header + one row per model (one dataset)
    readme = (report / "README.md").read_text()
    verdicts = readme[readme.index("## Verdicts"):readme.index("## Threat model")]
    # one seed: every verdict about cbam_resnet14 vs its twin is marked indicative, minimal eps included
    assert "| cbam_resnet14 vs resnet14 | white-box | MINIMAL |" in verdicts
    assert "indicative, 1 seed" in verdicts or "withheld" in verdicts
    assert "every pixel of the 1x28x28" in readme  # the threat model: the dataset's own pixels


def test_rerun_of_finished_study_does_nothing_new(tiny_run):
    before = (tiny_run / "results.jsonl").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (tiny_run / "checkpoints").glob("*.safetensors")}
    run_study("quick", out=tiny_run, overrides=TINY, quiet=True)
    assert (tiny_run / "results.jsonl").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_changed_config_in_existing_folder_is_refused(tiny_run):
    before = (tiny_run / "results.jsonl").read_bytes()
    with pytest.raises(UserError, match="different config.*train.epochs"):
        run_study("quick", out=tiny_run, overrides=[*TINY, "train.epochs=2"], quiet=True)
    assert (tiny_run / "results.jsonl").read_bytes() == before


def test_interrupted_study_resumes_to_the_same_results(tiny_run, tmp_path, monkeypatch):
    import attnrobust.evaluate as evaluate

    real_craft, calls = evaluate.craft_and_score, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed during the second attack job
        return real_craft(*args, **kwargs)

    out = tmp_path / "resumed"
    monkeypatch.setattr(evaluate, "craft_and_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study("quick", out=out, overrides=TINY, quiet=True)
    assert len(read_records(out / "results.jsonl")) == 3 * (3 + 3) + 1  # the first job only, whole (+ minimal)
    monkeypatch.setattr(evaluate, "craft_and_score", real_craft)
    run_study("quick", out=out, overrides=TINY, quiet=True)
    assert _stable(read_records(out / "results.jsonl")) == _stable(read_records(tiny_run / "results.jsonl"))


@pytest.mark.slow
def test_study_killed_with_sigkill_resumes_to_the_same_results(tiny_run, tmp_path):
    out = tmp_path / "killed"
    # the trained checkpoints are adopted (a study folder may start from finished training runs), so the kill
    # lands in the attack phase, whose resume this is about; a kill mid-training is test_train's
    shutil.copytree(tiny_run / "checkpoints", out / "checkpoints")
    command = [sys.executable, "-m", "attnrobust", "run", "quick", "--out", str(out), "--quiet"]
    command += [arg for o in TINY for arg in ("--set", o)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "results.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the kill landed mid-study (else this test would prove nothing): some attack jobs are still missing
    assert proc.returncode == -signal.SIGKILL
    assert len(read_records(out / "results.jsonl")) < len(read_records(tiny_run / "results.jsonl"))
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _stable(read_records(out / "results.jsonl")) == _stable(read_records(tiny_run / "results.jsonl"))


def test_workers_run_jobs_side_by_side_with_one_thread_each(tmp_path):
    out = tmp_path / "parallel"
    run_study("quick", out=out, overrides=[*TINY, "eval.workers=2", 'attack.attacks=["fgsm"]',
                                           "study.models=['resnet14','vgg16_bn']", "train.model_args={}"],
              quiet=True)
    jobs = [json.loads(line) for line in (out / "logs" / "jobs.jsonl").read_text().splitlines()]
    assert sorted((j["job"], j["model"]) for j in jobs) == [("attack", "resnet14"), ("attack", "vgg16_bn"),
                                                            ("train", "resnet14"), ("train", "vgg16_bn")]
    assert {(j["threads"], j["workers"]) for j in jobs} == {(1, 2)}
    records = read_records(out / "results.jsonl")
    assert len(records) == 2 * 2 * 3 and not (out / ".lock").exists()


def test_second_study_into_a_running_folder_is_refused(tiny_run):
    from attnrobust.runlock import hold_run_lock

    before = (tiny_run / "results.jsonl").read_bytes()
    with hold_run_lock(tiny_run, is_main=True):  # as if another `attnrobust run` were working in it
        code = subprocess.run([sys.executable, "-m", "attnrobust", "run", "quick", "--out", str(tiny_run),
                               *[a for o in TINY for a in ("--set", o)]], capture_output=True, text=True)
    assert code.returncode == 2
    assert len(code.stderr.strip().splitlines()) == 1 and f"pid {os.getpid()}" in code.stderr
    assert (tiny_run / "results.jsonl").read_bytes() == before


def test_ls_shows_jobs_and_report(tiny_run, capsys):
    text = list_runs(tiny_run.parent)
    assert "tiny:" in text and "6/6 jobs done" in text and "report/README.md" in text
    assert main(["ls", str(tiny_run.parent)]) == 0
    assert "6/6 jobs done" in capsys.readouterr().out


def test_cli_run_bad_override_is_one_line(capsys, tmp_path):
    assert main(["run", "quick", "--out", str(tmp_path / "x"), "--set", "study.models=['resnet15']"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet15" in err[0]
    assert not (tmp_path / "x").exists()  # nothing written for a config that does not validate


def test_study_refuses_a_folder_that_is_not_a_run_and_adopts_a_train_folder(tmp_path):
    from attnrobust.config import load_config
    from attnrobust.study import _claim_run_dir

    cfg = load_config("quick", TINY)
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(UserError, match="not a run folder.*chapter1.tex"):
        _claim_run_dir(other, cfg, is_main=True)
    assert not (other / "config.toml").exists()
    trained = tmp_path / "trained"  # what `attnrobust train --out trained` leaves
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "env.json").write_text("{}")
    _claim_run_dir(trained, cfg, is_main=True)
    assert (trained / "config.toml").is_file()


def test_regimes_are_a_study_axis_and_never_mix(tmp_path):
    """Two training regimes: each model is trained and attacked once per regime, records carry the regime, the
    report compares within a regime, and ls names the regimes."""
    out = tmp_path / "regimes"
    regimes = '[{adversarial = "none"}, {adversarial = "fgsm-rs", adv_eps = 0.1, adv_check_n = 0}]'
    run_study("quick", out=out, overrides=[*TINY, f"study.regimes={regimes}", 'attack.attacks=["fgsm"]',
                                           "study.models=['resnet14','cbam_resnet14']"], quiet=True)
    names = sorted(p.name for p in (out / "checkpoints").glob("*.safetensors"))
    assert names == ["fashion-mnist-mini-cbam_resnet14-s0-fgsm-rs-eps-0.1.safetensors",
                     "fashion-mnist-mini-cbam_resnet14-s0.safetensors",
                     "fashion-mnist-mini-resnet14-s0-fgsm-rs-eps-0.1.safetensors",
                     "fashion-mnist-mini-resnet14-s0.safetensors"]
    records = read_records(out / "results.jsonl")
    adversarial = [r for r in records if r.get("regime") == "FGSM-RS eps 0.1"]
    standard = [r for r in records if "regime" not in r]
    assert len(adversarial) == len(standard) == 2 * 2 * 3  # 2 sources x 2 targets x 3 FGSM eps, per regime
    report = (out / "report" / "README.md").read_text()
    assert "fashion-mnist-mini · FGSM-RS eps 0.1" in report
    # the side-by-side matrix: one row for the CBAM pair, a white-box and a transfer column per regime
    assert "| cbam (cbam_resnet14 vs resnet14) |" in report
    assert "| fashion-mnist-mini · FGSM-RS eps 0.1: transfer |" in report
    figures = [p.name for p in (out / "report" / "figures").iterdir()]
    assert "whitebox_fashion-mnist-mini-FGSM-RS-eps-0.1.png" in figures and all(" " not in f for f in figures)
    verdicts = list(csv.DictReader((out / "report" / "verdicts.csv").open()))
    assert {v["dataset"] for v in verdicts} == {"fashion-mnist-mini", "fashion-mnist-mini · FGSM-RS eps 0.1"}
    assert "trained standard; FGSM-RS eps 0.1; 8/8 jobs done" in list_runs(tmp_path)


def test_bad_regime_is_one_line(capsys, tmp_path):
    code = main(["run", "quick", "--out", str(tmp_path / "x"), "--set", "study.regimes=[{lr = 0.1}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "study.regimes[0].lr: unknown key" in err[0]
    code = main(["run", "quick", "--out", str(tmp_path / "x"), "--set",
                 'study.regimes=[{adversarial = "pgd"}, {adversarial = "pgd", adv_eps = 0.1}]'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "two regimes are the same" in err[0]
