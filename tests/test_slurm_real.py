"""The Slurm path against a real Slurm: the one-node cluster of scripts/slurm-up.sh (Debian's Slurm 22.05, no
accounting database, so sacct answers nothing), or any cluster whose login node this runs on. Skipped, with one
line, where no Slurm answers; ATTNROBUST_REQUIRE_SLURM=1 (.ci/run) makes that a failure.

What each test claims, on the real scheduler: a tiny study's results.jsonl equals the local pool's byte for byte,
through a detached run and an attached rerun; `attnrobust ls` shows the jobs queued and running; a training job
cancelled with scancel is seen to have ended by the study waiting for it (one line) and by the next run, which
resubmits it, and it resumes from its checkpoint to the same weights; a job failing inside stops the waiting study
with one line while the other jobs go on, and the rerun after the fix completes; a job stopped by its time limit is
requeued by submitit and resumes; jobs a partition will never start (PartitionTimeLimit) stop the study in one
line.

The jobs that must be caught in the middle use a user model (NETS) whose training forward crawls (sleeps) while
the test's control file says so: a job then runs for as long as the test needs, costing no CPU, and the test
controls it from outside as a user would. The model also counts its training forwards per process, which shows
from where each attempt started."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from attnrobust.cli import main
from attnrobust.results import read_records
from attnrobust.study import run_study
from test_cluster import SMALL

# the tiny study of test_cluster.py on a node's one core and little memory
ON_SLURM = ["eval.executor=slurm", "slurm.gpus_per_job=0", "slurm.cpus_per_task=1", "slurm.mem_gb=1"]

NETS = '''
import os
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        if self.training:
            control = (HERE / "control").read_text().split() if (HERE / "control").exists() else []
            if control[:1] == ["fail"]:
                raise RuntimeError("a bug in the model's forward")
            if control[:1] == ["crawl"]:
                time.sleep(float(control[1]))
            (HERE / "forwards").mkdir(exist_ok=True)
            with open(HERE / "forwards" / str(os.getpid()), "a") as counter:
                counter.write(".")
        return self.head(torch.relu(self.conv(x - 0.5)).mean((2, 3)))


def net(num_classes, in_channels, mean=None, std=None):
    return Net(num_classes, in_channels)
'''


def _slurm_answers() -> str | None:
    """Why no Slurm can be used here, or None when its controller answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "no Slurm here (no sbatch on the PATH)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "scontrol ping did not answer within 20 s"
    if "UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines() or ["nothing"]
        return f"no Slurm controller answers (scontrol ping: {said[-1][:120]})"
    return None


@pytest.fixture(scope="module")
def slurm():
    why = _slurm_answers()
    if why is not None:
        message = f"{why}; start a one-node Slurm with `sudo scripts/slurm-up.sh`"
        if os.environ.get("ATTNROBUST_REQUIRE_SLURM") == "1":
            pytest.fail(f"ATTNROBUST_REQUIRE_SLURM=1: {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def on_slurm(slurm, monkeypatch, tmp_path):
    from attnrobust import cluster

    monkeypatch.setattr(cluster, "SLURM_POLL_S", 0.5)  # a waiting study asks squeue every half second
    # every job one thread, exported to the jobs by sbatch (a one-node Slurm without cgroups binds no cores),
    # and so the in-process runs they are compared with
    monkeypatch.setenv("ATTNROBUST_THREADS", "1")
    yield
    # a failed test leaves no job of its own behind on the cluster
    ids = {e["id"] for ledger in tmp_path.glob("**/slurm/jobs.json") for e in json.loads(ledger.read_text()).values()}
    if ids:
        subprocess.run(["scancel", "--quiet", *sorted(ids)], check=False)


def _ledger(out) -> dict:
    return json.loads((out / "slurm" / "jobs.json").read_text())


def _wait(what: str, ready, timeout: float = 90.0, every: float = 0.2):
    """ready() until it is true (returned), failing after `timeout` seconds with what was awaited."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(every)
    return value


def _scontrol_job(job_id: str) -> dict:
    line = subprocess.run(["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True,
                          check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _ls(capsys, root) -> str:
    capsys.readouterr()
    assert main(["ls", str(root)]) == 0
    return capsys.readouterr().out


def _run(out, overrides, *flags) -> int:
    """`attnrobust run quick --out OUT FLAGS --set ...`, as a user types it; its exit status."""
    return main(["run", "quick", "--out", str(out), *flags, *[a for o in overrides for a in ("--set", o)]])


@pytest.mark.slow
def test_a_study_on_slurm_detached_then_attached_gives_the_pools_bytes(tmp_path, on_slurm, capsys):
    pool = run_study("quick", out=tmp_path / "pool", overrides=[*SMALL, "eval.workers=1"], quiet=True)
    out = tmp_path / "runs" / "slurm"
    overrides = [*SMALL, *ON_SLURM]
    # --detach: submits the training array and exits
    assert _run(out, overrides, "--detach", "--quiet") == 0
    ledger = _ledger(out)
    assert sorted(ledger) == ["train-fashion-mnist-mini-resnet14-s0-w4", "train-fashion-mnist-mini-vgg16_bn-s0-w4"]
    assert len({e["id"].split("_")[0] for e in ledger.values()}) == 1  # one array
    assert not (out / "results.jsonl").exists() and not (out / "report").exists()
    # the rerun, attached: collects the training jobs, submits the attack jobs, waits for them, builds the report
    assert _run(out, overrides, "--quiet") == 0
    assert (out / "results.jsonl").read_bytes() == (pool / "results.jsonl").read_bytes()
    assert (out / "report" / "README.md").is_file()
    ledger = _ledger(out)
    assert len(ledger) == 4 and {e["attempt"] for e in ledger.values()} == {1}
    for entry in ledger.values():  # each job ran on the cluster, and ends (after its status) as COMPLETED
        assert (out / "slurm" / "logs" / f"{entry['id']}_0_log.out").is_file()
    from attnrobust.cluster import slurm_queue_states

    _wait("the jobs to leave their nodes", lambda: set(slurm_queue_states(e["id"] for e in ledger.values())
                                                          .values()) == {"COMPLETED"})
    assert "4/4 jobs done; slurm: 4 done;" in _ls(capsys, out.parent)


def _user_model_study(tmp_path, *extra, beside=()):
    """A study of the user model of NETS (and the models `beside` it), with the control file the test steers its
    jobs by and the folder of its forward counts."""
    (tmp_path / "nets.py").write_text(NETS)
    models = [*beside, f"{tmp_path / 'nets.py'}:net"]
    overrides = [*SMALL, f"study.models={models!r}", *ON_SLURM, *extra]
    return overrides, tmp_path / "control", tmp_path / "forwards"


def _forwards(folder) -> dict[int, int]:
    """Training forwards per process that ran them, in the order the processes last ran one."""
    files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    return {int(p.name): len(p.read_text()) for p in files}


def _uninterrupted(overrides, tmp_path, forwards):
    """The same training job run here, whole: its weights and how many training forwards it takes."""
    from attnrobust import train as training
    from attnrobust.config import load_config
    from attnrobust.jobs import plan

    (job,) = [j for j in plan(load_config("quick", overrides)) if j.kind == "train"]
    weights = training.train(job.train, tmp_path / "whole", quiet=True)
    whole = _forwards(forwards)[os.getpid()]
    (forwards / str(os.getpid())).unlink()  # only the jobs' counts are left
    return weights, whole


def _same_weights(a, b) -> bool:
    import safetensors.torch

    a, b = safetensors.torch.load_file(a), safetensors.torch.load_file(b)
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def _resumed(forwards, whole: int, epochs: int) -> None:
    """Two attempts, the first stopped after at least one whole epoch, the second starting from the checkpoint of
    the first's last whole epoch: it trains exactly the epochs the first did not finish."""
    per_epoch = whole // epochs
    attempts = list(_forwards(forwards).values())
    assert len(attempts) == 2 and attempts[0] >= per_epoch, (attempts, whole, per_epoch)
    assert attempts[1] == whole - per_epoch * (attempts[0] // per_epoch) < whole, (attempts, whole, per_epoch)


@pytest.mark.slow
def test_a_cancelled_training_job_is_resubmitted_and_resumes_from_its_checkpoint(tmp_path, on_slurm, capsys):
    epochs = 3
    overrides, control, forwards = _user_model_study(tmp_path, f"train.epochs={epochs}")
    whole, whole_forwards = _uninterrupted(overrides, tmp_path, forwards)
    control.write_text("crawl 1.0")  # one second per training step: the job is still training when cancelled
    out = tmp_path / "runs" / "cancel"
    assert _run(out, overrides, "--detach", "--quiet") == 0
    (key,) = _ledger(out)
    job_id = _ledger(out)[key]["id"]
    assert "slurm: 1 queued;" in _ls(capsys, out.parent)  # submitted, its Python not yet started
    _wait("the job to start", (out / "slurm" / "status" / f"{key}.json").exists)
    assert "slurm: 1 running;" in _ls(capsys, out.parent)

    # an attached study waits for it; scancel'ed after its first epoch, it is seen to have ended (sacct knows
    # nothing here: no accounting), and the study stops with one line
    state = out / "checkpoints" / f"{key.removeprefix('train-')}.state.safetensors"

    def cancel_after_the_first_epoch():
        deadline = time.monotonic() + 90
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(["scancel", job_id], check=True)

    canceller = threading.Thread(target=cancel_after_the_first_epoch)
    canceller.start()
    try:
        assert _run(out, overrides, "--quiet") == 2
    finally:
        canceller.join()
    assert state.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"^attnrobust: error: job train fashion-mnist-mini \S+nets.py:net seed 0 "
                                       r"failed on slurm: ended without finishing \(CANCELLED: node lost, out of "
                                       r"memory or cancelled\); its log: ", err[0]), err
    assert "slurm: 1 running;" in _ls(capsys, out.parent)  # ls reads the run folder: the job never said it ended

    # the next run sees it ended too, and resubmits it
    control.unlink()
    assert _run(out, overrides, "--detach") == 0
    said = capsys.readouterr().out
    assert re.search(r"resubmit train +fashion-mnist-mini \S+nets.py:net seed 0  \(attempt 1 ended without "
                     r"finishing: CANCELLED\)", said), said
    assert _ledger(out)[key]["attempt"] == 2 and _ledger(out)[key]["id"] != job_id
    assert _run(out, overrides, "--quiet") == 0  # waits for it, then attacks
    _resumed(forwards, whole_forwards, epochs)
    assert _same_weights(whole, out / "checkpoints" / f"{key.removeprefix('train-')}.safetensors")
    assert (out / "report" / "README.md").is_file() and len(read_records(out / "results.jsonl")) == 3


@pytest.mark.slow
def test_a_job_failing_inside_stops_the_waiting_study_in_one_line_and_the_others_go_on(tmp_path, on_slurm, capsys):
    overrides, control, _ = _user_model_study(tmp_path, beside=["resnet14"])
    control.write_text("fail")  # the user's model has a bug
    out = tmp_path / "runs" / "fail"
    capsys.readouterr()
    assert _run(out, overrides, "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    ledger = _ledger(out)
    (failed,) = [k for k in ledger if k.startswith("train-") and "resnet14" not in k]
    log = out / "slurm" / "logs" / f"{ledger[failed]['id']}_0_log.err"
    assert re.search(rf"job train fashion-mnist-mini \S*nets.py:net seed 0 failed on slurm: RuntimeError: a bug in "
                     rf"the model's forward; its log: {re.escape(str(log))}; the other submitted jobs go on", err[0])
    # the traceback is in the log: submitit saves the job's error result first and re-raises, so Python writes the
    # traceback as the job's process exits, when the study may have read the result already (once, in CI, the
    # log held the traceback's first lines only)
    _wait("the traceback's last line in the job's log",
          lambda: "RuntimeError: a bug in the model's forward" in log.read_text(), timeout=30)
    # the other training job goes on without the study process, and finishes
    other = ledger["train-fashion-mnist-mini-resnet14-s0-w4"]["id"]
    _wait("the other training job", lambda: _scontrol_job(other)["JobState"] == "COMPLETED")
    assert json.loads((out / "slurm" / "status" / "train-fashion-mnist-mini-resnet14-s0-w4.json").read_text())[
        "state"] == "done"

    control.unlink()  # the bug fixed: the rerun resubmits the failed job and completes the study
    assert _run(out, overrides) == 0
    said = capsys.readouterr().out
    assert re.search(r"resubmit train +fashion-mnist-mini \S+nets.py:net seed 0  \(attempt 1 RuntimeError: a bug "
                     r"in the model's forward\)", said), said
    ledger = _ledger(out)
    assert ledger[failed]["attempt"] == 2 and ledger["train-fashion-mnist-mini-resnet14-s0-w4"]["attempt"] == 1
    assert (out / "report" / "README.md").is_file() and len(read_records(out / "results.jsonl")) == 2 * 2 * 3


@pytest.mark.slow
def test_a_job_stopped_by_its_time_limit_is_requeued_by_submitit_and_resumes(tmp_path, on_slurm, capsys):
    epochs = 4
    overrides, control, forwards = _user_model_study(tmp_path, f"train.epochs={epochs}", "slurm.timeout_min=10")
    whole, whole_forwards = _uninterrupted(overrides, tmp_path, forwards)
    control.write_text("crawl 3.0")  # an epoch takes 12 s or more: the job is still training when the limit falls due
    out = tmp_path / "runs" / "limit"
    assert _run(out, overrides, "--detach", "--quiet") == 0
    (key,) = _ledger(out)
    job_id = _ledger(out)[key]["id"]
    _wait("the job's first epoch", (out / "checkpoints" / f"{key.removeprefix('train-')}.state.safetensors").exists)
    # The limit lowered to 2 minutes, as an admin may: with submitit's 90 s warning (--signal=USR2@90) Slurm sends
    # the signal at its next time-limit check (every 30 s); submitit checkpoints the call and requeues the job
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=2"], check=True)
    _wait("Slurm's time-limit signal and submitit's requeue", lambda: _scontrol_job(job_id)["Restarts"] != "0",
          timeout=90)
    # the second attempt gets its 10 minutes back (else it too is warned at once), and no longer crawls
    control.unlink()
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], check=True)
    log = (out / "slurm" / "logs" / f"{job_id}_0_log.err")
    said = log.read_text()
    assert "Caught signal SIGUSR2 on" in said and "this job is timed-out" in said and "DUE TO JOB REQUEUE" in said
    assert _run(out, overrides, "--quiet") == 0  # collects it, attacks
    assert _ledger(out)[key]["id"] == job_id and _ledger(out)[key]["attempt"] == 1  # the same job, requeued
    assert _scontrol_job(job_id)["Restarts"] == "1"
    _resumed(forwards, whole_forwards, epochs)
    assert _same_weights(whole, out / "checkpoints" / f"{key.removeprefix('train-')}.safetensors")


@pytest.mark.slow
def test_jobs_a_partition_will_never_start_stop_the_study_in_one_line(tmp_path, on_slurm, capsys):
    # A partition whose MaxTime is below the jobs' limit: Slurm (EnforcePartLimits=NO, its default) accepts them and
    # keeps them pending for ever; the study says so instead of waiting for them
    subprocess.run(["scontrol", "create", "PartitionName=attnrobust-short", "Nodes=ALL", "MaxTime=1"], check=True)
    out = tmp_path / "runs" / "short"
    overrides = [*SMALL, *ON_SLURM, "slurm.partition=attnrobust-short", "slurm.timeout_min=5"]
    try:
        assert _run(out, overrides, "--detach") == 0  # submitted; Slurm has not looked at the jobs yet
        ids = [e["id"] for e in _ledger(out).values()]
        from attnrobust.cluster import slurm_queue_states

        _wait("Slurm's reason", lambda: "(PartitionTimeLimit)" in str(slurm_queue_states(ids)), 20)
        capsys.readouterr()
        assert _run(out, overrides) == 2  # a rerun, which would wait for them: stops at its first look
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(
            r"^attnrobust: error: job train fashion-mnist-mini resnet14 seed 0 cannot start on slurm: Slurm keeps job "
            rf"{ids[0]} pending for PartitionTimeLimit \(slurm.timeout_min is above the partition's MaxTime; see "
            r"`sinfo`\); scancel the ids in \S+/slurm/jobs.json", err[0]), err
    finally:
        subprocess.run(["scancel", *[e["id"] for e in _ledger(out).values()]], check=False)
        _wait("the partition's jobs to end", lambda: subprocess.run(
            ["scontrol", "delete", "PartitionName=attnrobust-short"], capture_output=True).returncode == 0, 20)
