"""End to end: a tiny study produces every report file; it resumes after an interruption with the same results."""

from __future__ import annotations

import csv
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
from attnrobust.runfolder import list_runs
from attnrobust.study import run_study
from conftest import use_placeholder_figures

MODELS = ["resnet14", "cbam_resnet14", "vgg16_bn"]
# Seconds, not minutes: tiny widths, a few hundred training images, 1 epoch, 48 attacked images.
TINY = ["study.seeds=[0]", "eval.workers=1", "attack.minimal_steps=2",
        "train.width=4", "train.epochs=1", "train.n_train=256", "train.batch_size=64", "eval.n=48",
        "eval.batch_size=24", "attack.pgd_steps=[1,2,4]", "attack.fgsm_eps=[0.0,0.1,0.3]", "eval.strong_n=32"]


def _stable(records):
    """The records without wall-clock fields, in a canonical order (run order may not matter)."""
    volatile = {"seconds", "time", "images_per_s"}
    rows = [{k: v for k, v in r.items() if k not in volatile} for r in records]
    return sorted(rows, key=lambda r: repr(sorted(r.items())))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    # module scope: the autouse per-test fixtures (private cache, placeholder figures) are not set up yet
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNROBUST_CACHE", str(tmp_path_factory.mktemp("cache")))
        use_placeholder_figures(patch)
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
    # 3 sources x 3 targets x (3 FGSM eps + 3 PGD step counts), each model's minimal eps (white-box), and each
    # model's accuracy under the quick config's 4 corruptions at 3 severities (scored in its own attack job)
    assert len(records) == 3 * 3 * (3 + 3) + 3 + 3 * 4 * 3
    corrupted = [r for r in records if r["attack"] == "corruption"]
    assert {(r["source"], r["target"]) for r in corrupted} == {(m, m) for m in MODELS}
    assert {r["clean_bits"] for r in corrupted if r["source"] == "resnet14"} == \
        {r["clean_bits"] for r in records if r["attack"] == "fgsm" and r["target"] == "resnet14"}
    assert {r["source"] for r in records if r["attack"] == "minimal"} == set(MODELS)
    # clean, FGSM and (eval.corruption_images = "all") the corruptions on all 48 images, the costly attacks on the
    # seeded 32 of them (eval.strong_n), named as such
    assert {r["n"] for r in records if r["attack"] in ("fgsm", "corruption")} == {48}
    assert {(r["n"], r["images"]) for r in records if r["attack"] in ("pgd", "minimal")} == \
        {(32, "test[:48], 32 drawn with seed 0")}
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
    assert "## Common corruptions" in readme and (report / "corruption_verdicts.csv").is_file()


def test_rerun_of_finished_study_does_nothing_new(tiny_run):
    before = (tiny_run / "results.jsonl").read_bytes()
    mtimes = {p: p.stat().st_mtime_ns for p in (tiny_run / "checkpoints").glob("*.safetensors")}
    run_study("quick", out=tiny_run, overrides=TINY, quiet=True)
    assert (tiny_run / "results.jsonl").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_corruptions_can_be_scored_on_the_strong_subset(tiny_run):
    """eval.corruption_images = "strong": the corruptions go to the seeded strong_n subset, paired with the PGD
    records' images (the same clean outcomes), and the job's other records are unchanged."""
    import attnrobust.jobs as jobs
    from attnrobust.config import load_config

    cfg = load_config("quick", [*TINY, "eval.corruption_images=\"strong\""])
    job = next(j for j in jobs.plan(cfg) if j.kind == "attack" and j.model == "resnet14")
    records = jobs.run_attack_job(cfg, job, tiny_run, device="cpu", quiet=True)
    corrupted = [r for r in records if r["attack"] == "corruption"]
    pgd = next(r for r in records if r["attack"] == "pgd" and r["target"] == "resnet14")
    assert len(corrupted) == 4 * 3 and {(r["n"], r["images"], r["clean_bits"]) for r in corrupted} == \
        {(32, pgd["images"], pgd["clean_bits"])}
    def outcomes(rs):  # the attacks' per-image outcomes (the stored records also carry cross-record flags)
        return [(r["target"], r["attack"], r["eps"], r["steps"], r["robust_bits"]) for r in rs
                if r["source"] == "resnet14" and r["attack"] in ("fgsm", "pgd")]

    assert outcomes(records) == outcomes(read_records(tiny_run / "results.jsonl"))
    with pytest.raises(UserError, match=r"^eval\.corruption_images: must be"):
        load_config("quick", [*TINY, "eval.corruption_images=\"some\""])


def test_changed_config_in_existing_folder_is_refused(tiny_run):
    before = (tiny_run / "results.jsonl").read_bytes()
    with pytest.raises(UserError, match="different config.*train.epochs"):
        run_study("quick", out=tiny_run, overrides=[*TINY, "train.epochs=2"], quiet=True)
    assert (tiny_run / "results.jsonl").read_bytes() == before


def test_interrupted_study_resumes_to_the_same_results(tiny_run, tmp_path, monkeypatch):
    import attnrobust.jobs as jobs

    real_craft, calls = jobs.craft_and_score, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # a job crafts twice: FGSM on all images, the rest on the strong subset
            raise KeyboardInterrupt  # as if killed during the second attack job
        return real_craft(*args, **kwargs)

    out = tmp_path / "resumed"
    shutil.copytree(tiny_run / "checkpoints", out / "checkpoints")  # trained: the interruption is in the attacks
    monkeypatch.setattr(jobs, "craft_and_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study("quick", out=out, overrides=TINY, quiet=True)
    # the first job only, whole (+ minimal, + 4 corruptions x 3 severities)
    assert len(read_records(out / "results.jsonl")) == 3 * (3 + 3) + 1 + 4 * 3
    monkeypatch.setattr(jobs, "craft_and_score", real_craft)
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
    run_study("quick", out=out, overrides=TINY, quiet=True)  # the rerun: in this process, no second start-up
    assert _stable(read_records(out / "results.jsonl")) == _stable(read_records(tiny_run / "results.jsonl"))


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


def test_a_cells_attack_jobs_load_its_checkpoints_once(tiny_run, tmp_path):
    import torch

    from attnrobust.jobs import _cell_models

    paths = sorted((tiny_run / "checkpoints").glob("*.safetensors"))
    first = _cell_models(paths, torch.device("cpu"), [])
    assert all(a is b for a, b in zip(first, _cell_models(paths, torch.device("cpu"), [])))
    copies = [tmp_path / p.name for p in paths]  # another run's checkpoints: other models
    for p, c in zip(paths, copies):
        shutil.copy(p, c)
    second = _cell_models(copies, torch.device("cpu"), [])
    assert not any(a is b for a, b in zip(first, second))
    os.utime(copies[0], ns=(0, 0))  # as if rewritten (another file identity): loaded again
    third = _cell_models(copies, torch.device("cpu"), [])
    assert third[0] is not second[0] and third[0].meta == second[0].meta
    with pytest.raises(UserError, match="not found"):
        _cell_models([tmp_path / "missing.safetensors"], torch.device("cpu"), [])
