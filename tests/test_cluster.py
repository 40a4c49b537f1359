"""A study's executors: the local pool on several (fake) CUDA devices, and the Slurm path through submitit: with
submitit's local executor (eval.executor = "submitit-local"), the same bytes as the pool and a detached run
collected by a rerun; with fake sbatch/squeue/srun on the PATH and the jobs run from their pickles in this process,
as a node would, the sbatch script, a failed job resubmitted, a lost node's job resumed from its checkpoint; the
[slurm] table checked."""

from __future__ import annotations

import json
import os

import pytest

from attnrobust.cli import main
from attnrobust.errors import UserError
from attnrobust.results import read_records
from attnrobust.runfolder import list_runs
from attnrobust.study import run_study
from pool_probe import device_of_worker
from test_study import TINY

# two models, FGSM only: the smallest study with a transfer matrix (4 jobs)
SMALL = [*TINY, 'attack.attacks=["fgsm"]', "attack.corruptions=[]", "study.models=['resnet14','vgg16_bn']",
         "train.model_args={}"]


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


def test_each_pool_worker_owns_one_device():
    from attnrobust import study

    with study._pool(2, study.gpu_slots(2, 2, None)) as pool:
        seen = [f.result() for f in [pool.submit(device_of_worker, 1.0) for _ in range(2)]]
        seen += [f.result() for f in [pool.submit(device_of_worker, 0.0) for _ in range(4)]]
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
    # one thread for the submitit jobs and for the local run they are compared with (in this process: the same
    # bytes as the pool's one-thread workers, without spawning them)
    monkeypatch.setenv("ATTNROBUST_THREADS", "1")
    pool = run_study("quick", out=tmp_path / "pool", overrides=[*SMALL, "eval.workers=1"], quiet=True)
    overrides = [*SMALL, "eval.workers=2", "eval.executor='submitit-local'"]
    out = tmp_path / "slurm"
    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)
    # the study process has left: the training array is submitted, nothing is collected, no report yet
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(ledger) == ["train-fashion-mnist-mini-resnet14-s0-w4",
                             "train-fashion-mnist-mini-vgg16_bn-s0-w4"]
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
    from attnrobust.runfolder import RunFolder
    from attnrobust.study import _claim_run_dir

    _claim_run_dir(RunFolder(out), load_config("quick", [*SMALL, "eval.workers=2"]), leader=True)
    stored = (out / "config.toml").read_text()
    assert 'executor = "local"' in stored and "[slurm]" not in stored


def test_a_job_the_scheduler_lost_is_found_and_the_local_executor_keeps_off_it(tmp_path):
    # A job whose process is gone without a "done" or "failed" status (a node lost, an out-of-memory kill): the
    # study sees it as lost (and resubmits it, the path the failed job above takes); until then, ls shows it as
    # running and a local run of the same folder refuses to work beside it.
    _submitit()
    from attnrobust.cluster import SubmititExecutor, job_key
    from attnrobust.runfolder import RunFolder
    from attnrobust.config import load_config
    from attnrobust.jobs import plan

    cfg = load_config("quick", [*SMALL, "eval.executor='submitit-local'"])
    out = tmp_path / "run"
    job = plan(cfg)[0]
    key = job_key(job)
    RunFolder(out).slurm_ledger.parent.mkdir(parents=True)
    RunFolder(out).slurm_ledger.write_text(json.dumps({key: {"id": "999999999", "attempt": 1, "job": str(job)}}))
    RunFolder(out).slurm_status(key).parent.mkdir(parents=True)
    RunFolder(out).slurm_status(key).write_text(json.dumps({"state": "running", "host": "node7"}))
    state, status = SubmititExecutor(cfg, out).state(key)
    assert state == "lost" and status["scheduler"] == "process gone"
    with pytest.raises(UserError, match=r"1 of its jobs were submitted to Slurm and have not finished; rerun with "
                                        r"eval.executor = \"slurm\""):
        run_study("quick", out=out, overrides=SMALL, quiet=True)
    assert "slurm: 1 running;" in list_runs(tmp_path)
    assert not (out / "checkpoints").exists()  # nothing trained beside the lost job


FAKE_SBATCH = """#!/bin/sh
# stands in for Slurm's sbatch: keeps the script it was given, queues the job (or each task of its array) in the
# fake squeue's $SQUEUE_STATES and answers as sbatch does
n=$(ls "$SBATCH_SEEN" | wc -l)
cp "$1" "$SBATCH_SEEN/$n.sh"
last=$(sed -n 's/^#SBATCH --array=0-\\([0-9]*\\).*/\\1/p' "$1")
if [ -z "$last" ]; then echo "$((4242 + n))|PENDING" >> "$SQUEUE_STATES"; fi
for task in $(seq 0 "${last:--1}"); do echo "$((4242 + n))_$task|PENDING" >> "$SQUEUE_STATES"; done
echo "Submitted batch job $((4242 + n))"
"""
# stands in for squeue: the job states in $SQUEUE_STATES (queued by sbatch, changed by the test)
FAKE_SQUEUE = """#!/bin/sh
cat "$SQUEUE_STATES" 2>/dev/null
"""


def test_squeue_says_which_jobs_ended_and_a_silent_squeue_ends_none(tmp_path, monkeypatch):
    from attnrobust.cluster import slurm_queue_states

    squeue = tmp_path / "squeue"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    squeue.write_text(f"#!/bin/sh\necho \"$*\" > {tmp_path / 'args'}\n"
                      "printf '7_0|RUNNING|None\\n7_1|PENDING|Resources\\n9|CANCELLED|None\\n"
                      "11|PENDING|PartitionTimeLimit'\n")
    squeue.chmod(0o755)
    # one call for all: array tasks one per line, ended jobs with their final state, a job that never starts why
    assert slurm_queue_states(["7_0", "7_1", "9", "7_0", "11"]) == {
        "7_0": "RUNNING", "7_1": "PENDING", "9": "CANCELLED", "11": "PENDING (PartitionTimeLimit)"}
    assert (tmp_path / "args").read_text().split() == ["--noheader", "--array", "--states=all", "--format=%i|%T|%r",
                                                       "--jobs=11,7,9"]
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    assert slurm_queue_states(["7_0"]) == {}  # every job forgotten: all ended
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    assert slurm_queue_states(["7_0"]) is None  # no answer: nothing is known to have ended
    squeue.unlink()
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_queue_states(["7_0"]) is None and slurm_queue_states([]) == {}


class FakeSlurm:
    """sbatch, srun and squeue on the PATH, and the jobs they were given run in this process, as a node would."""

    def __init__(self, root, monkeypatch):
        self.bin, self.seen, self.states = root / "bin", root / "seen", root / "squeue-states"
        self.bin.mkdir()
        self.seen.mkdir()
        for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("srun", "#!/bin/sh\n")):
            (self.bin / name).write_text(text)  # submitit looks for srun to know it is on a cluster
            (self.bin / name).chmod(0o755)
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("SBATCH_SEEN", str(self.seen))
        monkeypatch.setenv("SQUEUE_STATES", str(self.states))
        # the jobs run in this process, which may share its cores with other test processes: one thread, as in
        # the pool's workers (two spinning OpenMP threads on a busy core ran these jobs 10x slower)
        monkeypatch.setenv("ATTNROBUST_THREADS", "1")

    def script(self, n: int) -> str:
        return (self.seen / f"{n}.sh").read_text()

    @staticmethod
    def run_jobs(out, kind: str, lose=()) -> None:
        """Run the submitted jobs of this kind not yet done, from their pickles, as submitit does on a node."""
        import submitit

        from attnrobust.runfolder import RunFolder

        for key, entry in json.loads((out / "slurm" / "jobs.json").read_text()).items():
            if key.startswith(kind) and RunFolder(out).read_slurm_status(key).get("state") != "done":
                paths = submitit.core.utils.JobPaths(out / "slurm" / "logs", job_id=entry["id"])
                try:
                    submitit.core.utils.DelayedSubmission.load(paths.submitted_pickle).result()
                except (RuntimeError, KeyboardInterrupt):  # the job's failure, or its node lost: the job ends
                    pass


@pytest.mark.slow
def test_slurm_path_with_a_fake_sbatch_and_jobs_run_as_a_node_would(tmp_path, monkeypatch):
    """The real Slurm branch up to sbatch (the script it gets: array, resources, logs in the run folder), then
    each submitted job run from its submitit pickle, as a node would; one fails, stops a study waiting for it,
    and is resubmitted by the next run; detached reruns collect the rest and build the report."""
    _submitit()
    from attnrobust.cluster import SubmititExecutor, job_key
    from attnrobust.config import load_config
    from attnrobust.jobs import plan

    overrides = [*SMALL, "eval.executor=slurm", "slurm.partition=gpu", "slurm.qos=high", "slurm.timeout_min=60",
                 "slurm.array_parallelism=1"]
    out = tmp_path / "runs" / "paper"
    with monkeypatch.context() as no_slurm:
        no_slurm.setenv("PATH", str(tmp_path))  # no srun, no sbatch: not a cluster
        with pytest.raises(UserError, match='eval.executor = "slurm": Could not detect "srun".*login node'):
            run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)
    slurm = FakeSlurm(tmp_path, monkeypatch)

    def run_on_nodes(kind: str) -> None:
        slurm.run_jobs(out, kind)

    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)
    script = slurm.script(0)
    for line in ["#SBATCH --partition=gpu", "#SBATCH --qos=high", "#SBATCH --time=60", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --array=0-1%1",
                 f"#SBATCH --output={out / 'slurm' / 'logs'}/%A_%a_0_log.out"]:
        assert line in script, line
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(e["id"] for e in ledger.values()) == ["4242_0", "4242_1"]  # one array
    assert "slurm: 2 queued;" in list_runs(out.parent)  # submitted, not started (ls reads the status files only)

    # one training job fails on its node
    from attnrobust import jobs

    real_train = jobs.run_train_job

    def fails_for_resnet(cfg, job, *args, **kwargs):
        if job.model == "resnet14":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_train(cfg, job, *args, **kwargs)

    monkeypatch.setattr(jobs, "run_train_job", fails_for_resnet)
    run_on_nodes("train")
    monkeypatch.setattr(jobs, "run_train_job", real_train)
    assert "slurm: 1 failed, 1 done;" in list_runs(out.parent)
    # a study waiting for it stops with one line naming the job, its error and its log
    waiting = SubmititExecutor(load_config("quick", overrides), out)
    waiting.running = {key: job for job in plan(waiting.cfg) if (key := job_key(job)) in ledger}
    with pytest.raises(UserError, match=r"^job train fashion-mnist-mini resnet14 seed 0 failed on slurm: "
                                        r"RuntimeError: CUDA error: an illegal memory access was encountered; its "
                                        r"log: .*/slurm/logs/4242_0_0_log.err; the other submitted jobs go on: "
                                        r"rerun the same command to resubmit it"):
        waiting.collect(True, [])
    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)  # resubmits it
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    assert ledger["train-fashion-mnist-mini-resnet14-s0-w4"] == {
        "id": "4243", "attempt": 2, "job": "train fashion-mnist-mini resnet14 seed 0"}  # an array of one: a job
    run_on_nodes("train")
    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)  # collects, submits the attacks
    assert sorted(e["id"] for e in json.loads((out / "slurm" / "jobs.json").read_text()).values()) == \
        ["4242_1", "4243", "4244_0", "4244_1"]
    run_on_nodes("attack")
    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)  # collects, builds the report
    assert len(read_records(out / "results.jsonl")) == 2 * 2 * 3 and (out / "report" / "README.md").is_file()
    assert "4/4 jobs done; slurm: 4 done;" in list_runs(out.parent)


@pytest.mark.slow
def test_a_job_whose_node_is_lost_is_resubmitted_and_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    submitit = _submitit()
    import safetensors.torch

    from attnrobust import train as training
    from attnrobust.config import load_config
    from attnrobust.jobs import plan

    overrides = [*SMALL, "study.models=['resnet14']", "train.epochs=2", "eval.executor=slurm"]
    out = tmp_path / "runs" / "lost"
    slurm = FakeSlurm(tmp_path, monkeypatch)
    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)
    real_step, real_log, steps = training.train_step, training._write_log, []

    def counted_step(*args, **kwargs):
        steps.append(1)
        return real_step(*args, **kwargs)

    def node_lost(path, history):  # after epoch 1's state and checkpoint are written: the node goes down
        real_log(path, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_step", counted_step)
    with monkeypatch.context() as lost:
        lost.setattr(training, "_write_log", node_lost)
        slurm.run_jobs(out, "train")
    first_epoch = len(steps)
    assert "slurm: 1 running;" in list_runs(out.parent)  # the job said it started, and nothing since
    slurm.states.write_text("4242|NODE_FAIL\n")
    run_study("quick", out=out, overrides=overrides, quiet=True, detach=True)  # finds it lost, resubmits it
    assert json.loads((out / "slurm" / "jobs.json").read_text())["train-fashion-mnist-mini-resnet14-s0-w4"][
        "attempt"] == 2
    slurm.run_jobs(out, "train")
    assert len(steps) == 2 * first_epoch  # the second attempt trained epoch 2 only
    # a time limit or preemption: submitit asks the job for its next submission, which is the same call
    submitted = submitit.core.utils.DelayedSubmission.load(submitit.core.utils.JobPaths(
        out / "slurm" / "logs", job_id="4243").submitted_pickle)
    assert submitted.function.checkpoint().function == submitted.function
    # and ended where an uninterrupted run ends, weight for weight
    cfg = load_config("quick", overrides)
    job = plan(cfg)[0]
    whole = training.train(job.train, tmp_path / "whole", quiet=True)
    resumed = training.checkpoint_path(job.train, out)
    a, b = safetensors.torch.load_file(whole), safetensors.torch.load_file(resumed)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
