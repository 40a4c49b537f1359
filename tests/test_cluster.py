"""A study's executors: the local pool on several (fake) CUDA devices, and the Slurm path through submitit, run here
with submitit's local executor (eval.executor = "submitit-local"): same bytes as the pool, detached runs collected
by a rerun, failed jobs resubmitted, the [slurm] table checked."""

from __future__ import annotations

import json
import os
import time

import pytest

from attnrobust.cli import main
from attnrobust.errors import UserError
from attnrobust.results import read_records
from attnrobust.study import list_runs, run_study
from test_study import TINY

# two models, FGSM only: the smallest study with a transfer matrix (4 jobs)
SMALL = [*TINY, 'attack.attacks=["fgsm"]', "study.models=['resnet14','vgg16_bn']", "train.model_args={}"]


def _submitit():
    return pytest.importorskip("submitit", reason="submitit is not installed (pip install \"attnrobust[slurm]\")")


# ---- local pool, one job per CUDA device --------------------------------------------------------------------


def test_workers_default_to_one_per_cuda_device(monkeypatch):
    import torch

    from attnrobust import study
    from attnrobust.config import load_config

    monkeypatch.setattr(study, "torch_device_count", lambda: 4)
    config = {"study": {"name": "gpus", "datasets": ["fashion-mnist-mini"], "models": ["resnet14"]}}
    unset = load_config(config)  # eval.workers left out: the default
    assert unset.eval.workers is None
    assert study._workers(unset, torch.device("cuda", 0)) == 4
    assert study._workers(unset, torch.device("cuda", 1), spread=False) == 1  # --device cuda:1: that device only
    assert study._workers(unset, torch.device("cpu")) == 1
    assert study._workers(load_config("quick", [*TINY, "eval.workers=6"]), torch.device("cuda", 0)) == 6
    assert study.gpu_slots(4, 4, None) == ["0", "1", "2", "3"]
    assert study.gpu_slots(3, 8, "4,5") == ["4", "5", "4"]  # more workers than asked-for devices: they share


def _device_of_worker(delay: float) -> tuple[int, str | None]:
    time.sleep(delay)  # long enough that the two jobs run at once, in two processes
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_pool_worker_owns_one_device():
    from attnrobust import study

    with study._pool(2, study.gpu_slots(2, 2, None)) as pool:
        seen = [f.result() for f in [pool.submit(_device_of_worker, 1.0) for _ in range(2)]]
        seen += [f.result() for f in [pool.submit(_device_of_worker, 0.0) for _ in range(4)]]
    devices = {}
    for pid, device in seen:
        devices.setdefault(pid, set()).add(device)
    # two processes, each always on its own device, never the same one
    assert len(devices) == 2 and sorted(d for ds in devices.values() for d in ds) == ["0", "1"]


# ---- the [slurm] table -------------------------------------------------------------------------------------


def test_slurm_table_is_checked_and_passed_to_submitit(tmp_path):
    from attnrobust.cluster import submitit_parameters
    from attnrobust.config import load_config

    with pytest.raises(UserError, match="slurm.timeout_min: expected int"):
        load_config("quick", [*TINY, "slurm.timeout_min='long'"])
    with pytest.raises(UserError, match="eval.executor: must be one of local, slurm"):
        load_config("quick", [*TINY, "eval.executor='kubernetes'"])
    _submitit()
    cfg = load_config("quick", [*TINY, "eval.executor='slurm'", "slurm.partition='gpu'", "slurm.qos='high'",
                                "slurm.timeout_min=60"])
    params = submitit_parameters(cfg, "slurm")
    assert params["slurm_partition"] == "gpu" and params["slurm_qos"] == "high" and params["timeout_min"] == 60
    assert params["gpus_per_node"] == 1 and params["slurm_array_parallelism"] == 64
    assert "qos = \"high\"" in __import__("attnrobust.config", fromlist=["to_toml"]).to_toml(cfg.to_dict())
    with pytest.raises(UserError, match=r"slurm.qoss: unknown key; valid keys: partition, .*qos"):
        submitit_parameters(load_config("quick", [*TINY, "eval.executor='slurm'", "slurm.qoss='x'"]), "slurm")
    with pytest.raises(UserError, match="slurm.time: unknown key"):  # timeout_min says it
        submitit_parameters(load_config("quick", [*TINY, "eval.executor='slurm'", "slurm.time=5"]), "slurm")


def test_slurm_without_submitit_and_detach_without_slurm_are_one_line(capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed: importing it raises ImportError
    out = tmp_path / "x"
    assert main(["run", "quick", "--out", str(out), *[a for o in [*SMALL, "eval.executor='slurm'"]
                                                      for a in ("--set", o)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "attnrobust[slurm]"' in err[0]
    assert main(["run", "quick", "--out", str(out), "--detach", *[a for o in SMALL for a in ("--set", o)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--detach" in err[0] and 'eval.executor = "slurm"' in err[0]


# ---- the Slurm path, with submitit's local executor --------------------------------------------------------


@pytest.mark.slow
def test_detached_submitit_run_is_collected_by_a_rerun_with_the_pools_bytes(tmp_path, monkeypatch):
    _submitit()
    monkeypatch.setenv("ATTNROBUST_THREADS", "1")  # the pool's workers take one thread each: so do the jobs
    pool = run_study("quick", out=tmp_path / "pool", overrides=[*SMALL, "eval.workers=2"], quiet=True)
    overrides = [*SMALL, "eval.workers=2", "eval.executor='submitit-local'"]
    out = tmp_path / "slurm"
    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)
    # the study process has left: the training array is submitted, nothing is collected, no report yet
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(ledger) == ["train-fashion-mnist-mini-resnet14-s0", "train-fashion-mnist-mini-vgg16_bn-s0"]
    assert not (out / "results.jsonl").exists() and not (out / "report").exists()
    assert "slurm: 2 " in list_runs(tmp_path)  # queued or running, or done if they were quick
    run_study("quick", out=out, overrides=overrides, quiet=True)  # the rerun: collects, submits the attacks
    assert (out / "results.jsonl").read_bytes() == (pool / "results.jsonl").read_bytes()
    assert (out / "report" / "README.md").is_file()
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    assert len(ledger) == 4 and {e["attempt"] for e in ledger.values()} == {1}  # nothing submitted twice
    assert list((out / "slurm" / "logs").glob("*_log.out"))  # each job's log in the run folder
    assert "slurm: 4 done" in list_runs(tmp_path) and "4/4 jobs done" in list_runs(tmp_path)
    # the same study may be resumed with the local executor: only where jobs run changed
    from attnrobust.config import load_config
    from attnrobust.study import _claim_run_dir

    _claim_run_dir(out, load_config("quick", [*SMALL, "eval.workers=2"]), is_main=True)
    stored = (out / "config.toml").read_text()
    assert 'executor = "local"' in stored and "[slurm]" not in stored


FLAKY = """\
import os
from pathlib import Path

import torch


def net(num_classes, in_channels, **kw):
    # the first build inside a submitted job fails once (the study process builds it too, to check the config)
    marker = Path(__file__).with_name("failed-once")
    if os.environ.get("SUBMITIT_EXECUTOR") and not marker.exists():
        marker.touch()
        raise RuntimeError("a flaky node")
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 28 * 28, num_classes))
"""


@pytest.mark.slow
def test_a_failed_submitted_job_stops_the_study_and_is_resubmitted_by_a_rerun(tmp_path, monkeypatch):
    _submitit()
    (tmp_path / "flaky.py").write_text(FLAKY)
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, 'attack.attacks=["fgsm"]', "study.models=['./flaky.py:net']", "train.model_args={}",
                 "eval.executor='submitit-local'", "study.pairs=[]"]
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"job train .*flaky.py:net seed 0 failed on local: model '\./flaky.py:net' "
                                        r"failed to build: RuntimeError: a flaky node; its log: .*rerun the same command to resubmit it"):
        run_study("quick", out=out, overrides=overrides, quiet=True)
    assert "slurm: 1 failed" in list_runs(tmp_path)
    run_study("quick", out=out, overrides=overrides, quiet=True)
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    assert [e["attempt"] for k, e in sorted(ledger.items())] == [1, 2]  # attack once, training twice
    assert len(read_records(out / "results.jsonl")) == 3  # one model, white-box, 3 FGSM eps


def test_a_job_the_scheduler_lost_is_found_and_the_local_executor_keeps_off_it(tmp_path):
    # A job whose process is gone without a "done" or "failed" status (a node lost, an out-of-memory kill): the
    # study sees it as lost (and resubmits it, the path the failed job above takes); until then, ls shows it as
    # running and a local run of the same folder refuses to work beside it.
    _submitit()
    from attnrobust.cluster import SubmititExecutor, job_key, ledger_path, status_path
    from attnrobust.config import load_config
    from attnrobust.study import plan

    cfg = load_config("quick", [*SMALL, "eval.executor='submitit-local'"])
    out = tmp_path / "run"
    job = plan(cfg)[0]
    key = job_key(cfg, job)
    ledger_path(out).parent.mkdir(parents=True)
    ledger_path(out).write_text(json.dumps({key: {"id": "999999999", "attempt": 1, "job": str(job)}}))
    status_path(out, key).parent.mkdir(parents=True)
    status_path(out, key).write_text(json.dumps({"state": "running", "host": "node7"}))
    state, status = SubmititExecutor(cfg, out).state(key)
    assert state == "lost" and status["scheduler"] == "process gone"
    with pytest.raises(UserError, match=r"1 of its jobs were submitted to Slurm and have not finished; rerun with "
                                        r"eval.executor = \"slurm\""):
        run_study("quick", out=out, overrides=SMALL, quiet=True)
    assert "slurm: 1 running;" in list_runs(tmp_path)
    assert not (out / "checkpoints").exists()  # nothing trained beside the lost job
