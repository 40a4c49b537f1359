"""Studies beyond the shared tiny run: side-by-side workers, training regimes as an axis, and bad study input.

Apart from tests/test_study.py so that the test runner (pytest -n, --dist loadfile) can run the two halves side
by side; these tests build their own runs and do not need its module-scoped tiny study.
"""

from __future__ import annotations

import csv
import json

import pytest

from attnrobust.cli import main
from attnrobust.errors import UserError
from attnrobust.results import read_records
from attnrobust.runfolder import list_runs
from attnrobust.study import run_study
from test_study import TINY


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
    # 2 sources x 2 targets x 3 FGSM eps, and each model under the quick config's 4 corruptions x 3 severities
    assert len(records) == 2 * 2 * 3 + 2 * 4 * 3 and not (out / ".lock").exists()


@pytest.mark.parametrize("sources", ["same-seed", "other-seeds"])
def test_attack_jobs_start_once_their_targets_are_trained(tmp_path, sources):
    # The scheduler alone, with a pool that runs each job when it is submitted: an attack job is submitted only
    # after every training job whose model it scores has finished (same-seed: its own (dataset, regime, seed)
    # cell; other-seeds: every seed's, whose models are its independent targets), and no later than that, and
    # every job runs once.
    from concurrent.futures import Future

    import torch

    from attnrobust import study
    from attnrobust.config import load_config
    from attnrobust.jobs import plan

    cfg = load_config("quick", [*TINY, "study.seeds=[0, 1]", "eval.workers=2", f'eval.transfer_sources="{sources}"'])
    jobs = plan(cfg)
    events = []

    class RunAtSubmit:
        def submit(self, fn, cfg, job, *args):
            events.append(("start", job))
            future = Future()
            future.set_result((None, 0.0))
            return future

    def done(job, result, seconds, threads):
        events.append(("done", job))

    study._execute(jobs, cfg, tmp_path, torch.device("cpu"), None, True, {"train": done, "attack": done},
                   RunAtSubmit())
    starts = [job for event, job in events if event == "start"]
    assert sorted(starts, key=jobs.index) == jobs  # every job once
    for i, (event, job) in enumerate(events):
        if event == "start" and job.kind == "attack":
            trained_before = {j for e, j in events[:i] if e == "done" and j.kind == "train"}
            needed = {j for j in jobs if j.kind == "train" and (sources == "other-seeds" or j.seed == job.seed)}
            assert needed <= trained_before
            assert {s for _, s, _ in job.others} == ({1 - job.seed} if sources == "other-seeds" else set())
    # same-seed: seed 0's attacks were submitted before seed 1's training had all finished
    first_attack = next(i for i, (e, j) in enumerate(events) if e == "start" and j.kind == "attack")
    last_train = max(i for i, (e, j) in enumerate(events) if e == "done" and j.kind == "train")
    assert (first_attack < last_train) == (sources == "same-seed")


def test_transfer_seeds_scores_each_source_on_the_next_seeds_cyclically():
    # eval.transfer_seeds = k: seed i's attack jobs score the models of seeds i+1..i+k (in study.seeds order,
    # wrapping), of the other architectures only; every target seed is then scored by k sources
    from attnrobust.config import load_config
    from attnrobust.jobs import plan

    cfg = load_config("quick", [*TINY, "study.seeds=[3, 5, 7, 9]", "eval.transfer_seeds=2"])
    attacks = [j for j in plan(cfg) if j.kind == "attack"]
    chosen = {j.seed: {s for _, s, _ in j.others} for j in attacks}
    assert chosen == {3: {5, 7}, 5: {7, 9}, 7: {9, 3}, 9: {3, 5}}
    assert all({m for m, _, _ in j.others} == set(cfg.study.models) for j in attacks)
    # more than there are other seeds: all of them
    cfg = load_config("quick", [*TINY, "study.seeds=[0, 1]", "eval.transfer_seeds=5"])
    assert {s for j in plan(cfg) if j.kind == "attack" for _, s, _ in j.others} == {0, 1}


@pytest.mark.parametrize("value, message", [("0", "positive integer"), ("true", "int"),
                                            ("2", "other-seeds")])
def test_transfer_seeds_bad_values_are_one_line(value, message):
    from attnrobust.config import load_config

    extra = ['eval.transfer_sources="same-seed"'] if message == "other-seeds" else []
    with pytest.raises(UserError, match=f"eval.transfer_seeds: .*{message}"):
        load_config("quick", [*TINY, f"eval.transfer_seeds={value}", *extra])


def test_transfer_from_other_seeds_sources_end_to_end(tmp_path):
    # Two seeds: each attack job also scores the other seed's models of the other architectures; the records
    # name both seeds, the transfer rows use them, and a rerun finds every job done.
    from attnrobust.results import is_cross_seed

    out = tmp_path / "cross"
    overrides = [*TINY, "study.seeds=[0, 1]", 'attack.attacks=["fgsm"]', "attack.corruptions=[]"]
    run_study("quick", out=out, overrides=overrides, quiet=True)
    records = read_records(out / "results.jsonl")
    cross = [r for r in records if is_cross_seed(r)]
    assert {(r["source_seed"], r["target_seed"], r["seed"]) for r in cross} == {(0, 1, 1), (1, 0, 0)}
    # 3 sources x 2 other architectures x 2 FGSM eps > 0 and the clean one, per direction
    assert all(r["source"] != r["target"] and r["kind"] == "transfer" for r in cross) and len(cross) == 2 * 3 * 2 * 3
    with open(out / "report" / "verdicts.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["scenario"] != "white-box"]
    assert rows and {r["transfer_sources"] for r in rows} == {"other-seeds"}
    assert {r["seed_pairs"] for r in rows} == {"2"}
    before = (out / "results.jsonl").read_bytes()
    run_study("quick", out=out, overrides=overrides, quiet=True)
    assert (out / "results.jsonl").read_bytes() == before


def test_a_failed_job_cancels_the_queued_ones(tmp_path):
    # The first training job fails at once; the others are still queued in the pool: they are cancelled, so the
    # error reaches the user when the running jobs end, not after the whole study.
    from concurrent.futures import Future

    import torch

    from attnrobust import study
    from attnrobust.config import load_config
    from attnrobust.jobs import plan

    cfg = load_config("quick", [*TINY, "study.seeds=[0, 1]", "eval.workers=2"])
    futures = []

    class FirstFails:
        def submit(self, *args):
            future = Future()
            if not futures:
                future.set_exception(UserError("the first job failed"))
            futures.append(future)
            return future

    with pytest.raises(UserError, match="the first job failed"):
        study._execute(plan(cfg), cfg, tmp_path, torch.device("cpu"), None, True, {}, FirstFails())
    assert len(futures) == 6 and all(f.cancelled() for f in futures[1:])  # the 6 training jobs; no attack yet


def test_cli_run_bad_override_is_one_line(capsys, tmp_path):
    assert main(["run", "quick", "--out", str(tmp_path / "x"), "--set", "study.models=['resnet15']"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet15" in err[0]
    assert not (tmp_path / "x").exists()  # nothing written for a config that does not validate


def test_study_refuses_a_folder_that_is_not_a_run_and_adopts_a_train_folder(tmp_path):
    from attnrobust.config import load_config
    from attnrobust.runfolder import RunFolder
    from attnrobust.study import _claim_run_dir

    cfg = load_config("quick", TINY)
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(UserError, match="not a run folder.*chapter1.tex"):
        _claim_run_dir(RunFolder(other), cfg, leader=True)
    assert not (other / "config.toml").exists()
    trained = tmp_path / "trained"  # what `attnrobust train --out trained` leaves
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "env.json").write_text("{}")
    _claim_run_dir(RunFolder(trained), cfg, leader=True)
    assert (trained / "config.toml").is_file()


def test_regimes_are_a_study_axis_and_never_mix(tmp_path):
    """Two training regimes: each model is trained and attacked once per regime, records carry the regime, the
    report compares within a regime, and ls names the regimes."""
    out = tmp_path / "regimes"
    regimes = '[{adversarial = "none"}, {adversarial = "fgsm-rs", adv_eps = 0.1, adv_check_n = 0}]'
    run_study("quick", out=out, overrides=[*TINY, f"study.regimes={regimes}", 'attack.attacks=["fgsm"]',
                                           "study.models=['resnet14','cbam_resnet14']"], quiet=True)
    names = sorted(p.name for p in (out / "checkpoints").glob("*.safetensors"))
    assert names == ["fashion-mnist-mini-cbam_resnet14-s0-fgsm-rs-eps-0.1-w4.safetensors",
                     "fashion-mnist-mini-cbam_resnet14-s0-w4.safetensors",
                     "fashion-mnist-mini-resnet14-s0-fgsm-rs-eps-0.1-w4.safetensors",
                     "fashion-mnist-mini-resnet14-s0-w4.safetensors"]
    records = read_records(out / "results.jsonl")
    adversarial = [r for r in records if r.get("regime") == "FGSM-RS eps 0.1"]
    standard = [r for r in records if "regime" not in r]
    # per regime: 2 sources x 2 targets x 3 FGSM eps, and each model under 4 corruptions x 3 severities
    assert len(adversarial) == len(standard) == 2 * 2 * 3 + 2 * 4 * 3
    report = (out / "report" / "README.md").read_text()
    assert "fashion-mnist-mini · FGSM-RS eps 0.1" in report
    # the side-by-side matrix: one row for the CBAM pair, a white-box column per regime; no transfer column, as
    # two models have no third model whose attacks both are targets of (twin transfer is transferability)
    assert "| cbam (cbam_resnet14 vs resnet14) |" in report
    assert "| fashion-mnist-mini · FGSM-RS eps 0.1: white-box |" in report and ": transfer |" not in report
    figures = [p.name for p in (out / "report" / "figures").iterdir()]
    assert "whitebox_fashion-mnist-mini-FGSM-RS-eps-0.1.png" in figures and all(" " not in f for f in figures)
    verdicts = list(csv.DictReader((out / "report" / "verdicts.csv").open()))
    assert {v["dataset"] for v in verdicts} == {"fashion-mnist-mini", "fashion-mnist-mini · FGSM-RS eps 0.1"}
    assert "trained standard; FGSM-RS eps 0.1; 8/8 jobs done" in list_runs(tmp_path)


def test_axes_cross_and_never_mix(tmp_path):
    """Two widths (the study.widths spelling) x two stem strides (study.axes): each model is trained and attacked
    once per point, records carry the point, attacks are only scored on models of the crafting model's point, the
    report has a panel per point, the width trend is followed within each stride, and ls names the axes."""
    out = tmp_path / "axes"
    run_study("quick", out=out, overrides=[*TINY, "study.widths=[4, 8]", 'attack.attacks=["fgsm"]',
                                           'study.axes={"model_args.stem_stride" = [1, 2]}',
                                           "attack.corruptions=[]", "study.models=['resnet14','cbam_resnet14']"],
              quiet=True)
    names = sorted(p.name for p in (out / "checkpoints").glob("*resnet14-s0*.safetensors") if "cbam" not in p.name)
    # width 8 is the fashion-mnist-mini recipe's: its names carry no width part; the stride always has its part
    assert names == ["fashion-mnist-mini-resnet14-s0-stem-stride-1.safetensors",
                     "fashion-mnist-mini-resnet14-s0-stem-stride-2.safetensors",
                     "fashion-mnist-mini-resnet14-s0-w4-stem-stride-1.safetensors",
                     "fashion-mnist-mini-resnet14-s0-w4-stem-stride-2.safetensors"]
    from attnrobust.checkpoint import read_meta

    metas = [read_meta(p) for p in (out / "checkpoints").glob("*.safetensors")]
    assert len(metas) == 8 and {(m["train"]["width"], m["train"]["model_args"]["stem_stride"]) for m in metas} == \
        {(w, s) for w in (4, 8) for s in (1, 2)}
    records = read_records(out / "results.jsonl")
    points = [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert sorted({(r["axes"]["width"], r["axes"]["model_args.stem_stride"]) for r in records}) == points
    for width, stride in points:  # per point: 2 sources x 2 targets x 3 FGSM eps, scored on its own point only
        mine = [r for r in records if r["axes"] == {"width": width, "model_args.stem_stride": stride}]
        assert len(mine) == 12 and {(r["source"], r["target"]) for r in mine} == \
            {(s, t) for s in ("resnet14", "cbam_resnet14") for t in ("resnet14", "cbam_resnet14")}
    assert list(records[0])[:4] == ["dataset", "seed", "axes", "source"]  # the label sits beside the seed
    report = (out / "report" / "README.md").read_text()
    panels = [f"fashion-mnist-mini · width {w} · stem_stride {s}" for w, s in points]
    assert all(p in report for p in panels)
    verdicts = list(csv.DictReader((out / "report" / "verdicts.csv").open()))
    assert {v["dataset"] for v in verdicts} == set(panels)
    assert "widths 4,8; stem_stride 1,2; 16/16 jobs done" in list_runs(tmp_path)
    # the width trend lines up each width's own verdict row, within each stride
    assert "## The width trend" in report and "| white-box | fgsm | " in report
    trend = list(csv.DictReader((out / "report" / "width_trend.csv").open()))
    assert {r["panel"] for r in trend} == {f"fashion-mnist-mini · stem_stride {s}" for s in (1, 2)}
    by_panel = {(v["dataset"], v["scenario"]): v for v in verdicts}
    for r in trend:
        assert r["difference"] == by_panel[(f"fashion-mnist-mini · width {r['width']} · "
                                            f"{r['panel'].split(' · ')[1]}", r["scenario"])]["difference"]
    assert (out / "report" / "figures" / "width_trend_fashion-mnist-mini-stem-stride-1_cbam_resnet14.png").exists()
    jobs = [json.loads(line) for line in (out / "logs" / "jobs.jsonl").read_text().splitlines()]
    assert sorted({tuple(j["axes"].values()) for j in jobs}) == points
    # each axis' other value against its first, within the panels that differ in it alone (one seed: no interval)
    found = list(csv.DictReader((out / "report" / "interactions.csv").open()))
    assert {(r["axis"], r["value"], r["reference"], r["panel"]) for r in found} == \
        {("width", "8", "4", f"fashion-mnist-mini · stem_stride {s}") for s in (1, 2)} | \
        {("stem_stride", "2", "1", f"fashion-mnist-mini · width {w}") for w in (4, 8)}
    assert {r["verdict"] for r in found} <= {"too few seeds", "at floor", "withheld"}  # tiny models: withheld
    assert "## What the axes change in the attention effect" in report
    # a rerun finds every job done
    before = (out / "results.jsonl").read_bytes()
    run_study("quick", out=out, overrides=[*TINY, "study.widths=[4, 8]", 'attack.attacks=["fgsm"]',
                                           'study.axes={"model_args.stem_stride" = [1, 2]}',
                                           "attack.corruptions=[]", "study.models=['resnet14','cbam_resnet14']"],
              quiet=True)
    assert (out / "results.jsonl").read_bytes() == before


def test_a_width_study_written_before_axes_reads_the_same():
    """Records and job keys of a width study written before study.axes existed ("width": W) are the width axis'
    points: a resumed study finds their jobs done, the report puts them in the same panels."""
    from attnrobust.config import load_config
    from attnrobust.jobs import plan
    from attnrobust.results import Panel, attack_job_of, with_cell

    cfg = load_config("quick", [*TINY, "study.widths=[4, 8]"])
    job = next(j for j in plan(cfg) if j.kind == "attack" and j.point == (("width", 4),))
    old = {"dataset": job.dataset, "seed": job.seed, "width": 4, "source": job.model, "target": job.model}
    (new,) = with_cell([{k: v for k, v in old.items() if k != "width"}], job.regime, job.point)
    assert new["axes"] == {"width": 4}
    assert attack_job_of(old) == attack_job_of(new) == job.key and Panel.of(old) == Panel.of(new)


@pytest.mark.parametrize("axes, message", [
    ('{}', "at least one"), ('{lr = []}', "non-empty list of distinct"), ('{lr = [0.1, 0.1]}', "distinct"),
    ('{seed = [0, 1]}', "set by the study per job"), ('{adv_eps = [0.1]}', "study.regimes"),
    ('{lr_max = [0.1]}', "unknown [train] key"), ('{model_args = [1]}', "name the argument"),
    ('{"model_args.stem_strid" = [1]}', "no model of the study takes"),
    ('{"model_args.stem_stride" = [3]}', "stem_stride"), ('{width = [4]}', "given twice")])
def test_bad_axes_are_one_line(capsys, tmp_path, axes, message):
    extra = ["--set", "study.widths=[4, 8]"] if message == "given twice" else []
    code = main(["run", "quick", "--out", str(tmp_path / "x"), "--set", f"study.axes={axes}", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "study." in err[0] and message in err[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("widths", ["[]", "[0]", "[8, 8]", "[8.5]", "[true]"])
def test_bad_widths_are_one_line(capsys, tmp_path, widths):
    code = main(["run", "quick", "--out", str(tmp_path / "x"), "--set", f"study.widths={widths}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "study.widths" in err[0], err
    assert not (tmp_path / "x").exists()


def test_bad_regime_is_one_line(capsys, tmp_path):
    code = main(["run", "quick", "--out", str(tmp_path / "x"), "--set", "study.regimes=[{lr = 0.1}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "study.regimes[0].lr: unknown key" in err[0]
    code = main(["run", "quick", "--out", str(tmp_path / "x"), "--set",
                 'study.regimes=[{adversarial = "pgd"}, {adversarial = "pgd", adv_eps = 0.1}]'])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "two regimes are the same" in err[0]


def test_a_worker_that_dies_is_one_clear_error(tmp_path, monkeypatch):
    # A model whose builder ends its process when it runs in a worker (as an out-of-memory kill would): the pool
    # breaks, and the study says which job and what to do instead of a BrokenProcessPool traceback.
    (tmp_path / "dying.py").write_text(
        "import multiprocessing, os\n"
        "import torch\n"
        "def net(num_classes, in_channels, **kw):\n"
        "    if multiprocessing.parent_process() is not None:\n"
        "        os._exit(9)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"a worker process died in the train phase \(\d of its jobs unfinished;"
                                        r".*eval\.workers = 1"):
        run_study("quick", out=tmp_path / "run", quiet=True,
                  overrides=[*TINY, "eval.workers=2", "study.models=['./dying.py:net', 'vgg16_bn']",
                             'attack.attacks=["fgsm"]', "train.model_args={}"])
