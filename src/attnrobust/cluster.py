"""A study's jobs as Slurm jobs, through submitit (eval.executor = "slurm"; "submitit-local": the same path with
submitit's local executor, no Slurm, which is how the tests run it).

The study (attnrobust.study._schedule) hands jobs to a SubmititExecutor exactly as it hands them to the local
pool: the training jobs first, as one Slurm job array (`executor.batch()`), then each cell's attack jobs as soon
as the cell's models are trained, as a small array of their own.

Submission when a cell is trained, not a Slurm dependency (`--dependency=afterok:...`) on its training jobs, for
three reasons. (1) One scheduler for every executor: the pool, submitit's local executor and Slurm follow the same
code, so the byte-identity test of the local executor covers what runs on the cluster. (2) A failed training job
leaves no attack jobs behind that can never start (Slurm keeps afterok dependents pending as
"DependencyNeverSatisfied" until someone cancels them), and a resubmitted training job needs no rewiring of its
dependents. (3) The attack jobs are submitted only once the study process has seen the cell's checkpoints
finished. The cost: something must be there to submit them. Either the study process stays (it only polls: run
it in tmux, or as a small CPU job), or it is detached (`--detach`) and each rerun of the same command moves the
study on: it collects what finished, resubmits what failed or was lost, submits the attack jobs of the cells now
trained, and builds the report when nothing is left.

What the run folder holds (RUN/slurm/):
- logs/: submitit's files for each job (its pickled call, stdout and stderr logs, `JOBID_0_log.{out,err}`);
- jobs.json: for every job handed to Slurm, its Slurm job id and attempt (written by the study process,
  atomically);
- status/KEY.json: written by the job itself, atomically: "running" (with the host), then "done" (seconds,
  threads, and for an attack job its records) or "failed" (the error in one line). The study collects a job from
  this file, not from submitit's result pickle, and `attnrobust ls` reads these files without asking Slurm.

The submitted function is a SubmittedJob: the job and the paths, nothing else; it reloads the config from
RUN/config.toml, so what runs on a node is what the folder says. A training job goes through
attnrobust.train.train like a local one, which resumes from the checkpoint state it finds: a job requeued after a
time limit or preemption (SubmittedJob.checkpoint: submitit requeues it) or resubmitted after a lost node picks
up from its last epoch. A job whose scheduler state says it ended without writing "done" or "failed" (node lost,
out of memory, cancelled) counts as lost and is resubmitted by the next run.

Slurm's state of a job comes from squeue (slurm_queue_states), not from sacct as submitit's own watcher asks it:
sacct needs the accounting database, which small clusters run without ("Slurm accounting storage is disabled").
There submitit reports every job UNKNOWN forever, and a study waited without end for a job that was cancelled or
lost (seen on Debian's Slurm 22.05 without accounting; tests/test_slurm_real.py runs a cancellation there). squeue
answers on every cluster: it lists every job that may still run, and an ended one with its final state for
MinJobAge seconds (300 by default); a job it no longer knows has ended.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from attnrobust.config import load_config
from attnrobust.errors import UserError
from attnrobust.jobs import run_job
from attnrobust.runfolder import RunFolder, checkpoint_name
from attnrobust.runtime import atomic_write, set_threads

# [slurm] keys of our own, and the submitit parameter each one is (the rest of the table passes through as
# slurm_<key>). Passing one of these submitit names through too would set the same thing twice.
_OWN_AS = {"partition": "slurm_partition", "account": "slurm_account", "gpus_per_job": "gpus_per_node",
           "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "timeout_min": "timeout_min",
           "array_parallelism": "slurm_array_parallelism"}
_SET_BY_US = {"partition", "account", "gpus_per_node", "num_gpus", "gpus_per_task", "cpus_per_task", "time", "mem",
              "array_parallelism", "nodes", "ntasks_per_node", "job_name"}
# Slurm states of a job that may still write its status (squeue's names), and UNKNOWN: squeue did not answer (the
# controller busy or restarting), so nothing is known to have ended
_ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "UNKNOWN",
          "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED")
# squeue's reasons for a pending job that Slurm will not start unless someone changes the job or the partition
# (a partition that leaves EnforcePartLimits=NO, Slurm's default, accepts such jobs and keeps them pending)
_NEVER_STARTS = {"PartitionTimeLimit": "slurm.timeout_min is above the partition's MaxTime",
                 "PartitionNodeLimit": "the job asks for more than the partition's nodes allow",
                 "BadConstraints": "no node of the partition has what the job asks for (slurm.constraint?)"}
# how often a waiting study looks at the status files and asks squeue (one call for all its jobs)
SLURM_POLL_S = 30.0


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError('eval.executor = "slurm" needs submitit: pip install "attnrobust[slurm]"') from None
    return submitit


def job_key(job) -> str:
    """A file-safe name of a study job: its kind and its model's checkpoint name (dataset, model, seed, regime,
    axis values)."""
    return f"{job.kind}-{checkpoint_name(job.train)}"


def submitit_parameters(cfg, cluster: str) -> dict:
    """The executor parameters of the [slurm] table (errors name slurm.KEY)."""
    submitit = import_submitit()
    section = cfg.slurm
    valid = sorted(submitit.SlurmExecutor._valid_parameters() - _SET_BY_US)
    for key in section.extra:
        if key not in valid:
            raise UserError(f"slurm.{key}: unknown key; valid keys: {', '.join(_OWN_AS)}, and submitit's Slurm "
                            f"parameters {', '.join(valid)}")
    params = {_OWN_AS[k]: getattr(section, k) for k in _OWN_AS}
    params.update(nodes=1, tasks_per_node=1, name=f"attnrobust-{cfg.study.name}")
    if cluster == "local":
        # submitit's local executor refuses more GPUs than the machine has; its default time limit is 2 minutes
        params["gpus_per_node"] = min(section.gpus_per_job, torch.cuda.device_count())
    params.update({f"slurm_{k}": v for k, v in section.extra.items()})
    return {k: v for k, v in params.items() if v is not None}


# ---- in the job: what runs on a node --------------------------------------------------------------------------


def _write_status(run_dir: Path, key: str, status: dict) -> None:
    atomic_write(RunFolder(run_dir).slurm_status(key), json.dumps(status, allow_nan=False))


@dataclass(frozen=True)
class SubmittedJob:
    """What submitit pickles and runs on a node: one study job and the paths it needs (the config is reloaded
    from RUN/config.toml there)."""

    job: object  # attnrobust.jobs.Job
    key: str
    run_dir: str
    device: str | None = None
    data_dir: str | None = None

    def __call__(self) -> str:
        run_submitted(self.job, self.key, Path(self.run_dir), self.device, self.data_dir)
        return self.key

    def checkpoint(self, *args, **kwargs):
        """Called by submitit when Slurm stops the job (time limit, preemption): requeue the same call; a training
        job resumes from its last epoch's checkpoint state."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def run_submitted(job, key: str, run_dir: Path, device: str | None, data_dir: str | None) -> None:
    """Run one study job in this process and write its status file ("running", then "done" or "failed")."""
    _write_status(run_dir, key, {"state": "running", "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    try:
        cfg = load_config(RunFolder(run_dir).config, data_dir=data_dir)
        threads = set_threads()  # the job's cores (Slurm: cpus_per_task), or $ATTNROBUST_THREADS
        started = time.perf_counter()
        result = run_job(cfg, job, run_dir, device=device, data_dir=data_dir, quiet=True)
        seconds = time.perf_counter() - started
    except Exception as err:  # not SystemExit: submitit ends a job it requeues that way, and it is not a failure
        # a UserError's message is already the one line for the user; anything else is named by its type
        why = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        _write_status(run_dir, key, {"state": "failed", "error": " ".join(why.split())})
        raise
    _write_status(run_dir, key, {"state": "done", "seconds": seconds, "threads": threads,
                                 "records": result if job.kind == "attack" else None})


# ---- in the study process --------------------------------------------------------------------------------------


def slurm_queue_states(job_ids) -> dict[str, str] | None:
    """squeue's state of each of these Slurm job ids ("4242_0" for an array's task, "4243") that it still knows
    (absent: ended long enough ago to be forgotten), or None when squeue does not answer. A pending job that will
    never start says why: "PENDING (PartitionTimeLimit)"."""
    arrays = sorted({str(job_id).split("_")[0] for job_id in job_ids})
    if not arrays:
        return {}
    try:  # --array: one line per array task; --states=all: ended jobs too, with their final state
        answer = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
                                 f"--jobs={','.join(arrays)}"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if answer.returncode != 0:
        # every id forgotten: "slurm_load_jobs error: Invalid job id specified"; anything else says nothing
        return {} if "Invalid job id" in answer.stderr else None
    states = {}
    for line in answer.stdout.splitlines():
        job_id, state, reason = (line.strip().split("|", 2) + ["", ""])[:3]
        if state:
            states[job_id] = f"{state} ({reason})" if state == "PENDING" and reason in _NEVER_STARTS else state
    return states


def _pid_alive(pid: str) -> bool:
    """submitit's local executor names a job by its controller's process id: alive unless gone or a zombie."""
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


class SubmititExecutor:
    """The study's executor for Slurm (and submitit's local executor): see the module docstring."""

    def __init__(self, cfg, run_dir: Path, *, device: str | None = None, data_dir=None, say=print,
                 poll_s: float | None = None):
        self.submitit = import_submitit()
        self.cfg, self.run_dir, self.device, self.say = cfg, Path(run_dir), device, say
        self.run = RunFolder(run_dir)
        self.data_dir = None if data_dir is None else str(data_dir)
        self.cluster = "slurm" if cfg.eval.executor == "slurm" else "local"
        self.poll_s = poll_s if poll_s is not None else (SLURM_POLL_S if self.cluster == "slurm" else 0.2)
        self.folder = self.run.slurm / "logs"
        try:
            self.executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        except RuntimeError as err:  # no srun here: not a Slurm machine
            raise UserError(f"eval.executor = \"slurm\": {err} Run the study from a machine of the cluster (a "
                            f"login node), or set eval.executor = \"local\"") from None
        self.executor.update_parameters(**submitit_parameters(cfg, self.cluster))
        self.ledger = self.run.read_ledger()
        self.running: dict[str, object] = {}  # key -> Job, handed to us and not yet reported
        self.handles: dict[str, object] = {}  # key -> submitit Job (submitit's local executor only)
        self._queue: tuple[float, dict | None] | None = None  # (when, slurm_queue_states of the ledger's jobs)

    # -- states

    def _scheduler_alive(self, key: str) -> tuple[bool, str]:
        """Whether the scheduler still has the job (queued or running), and its state's name."""
        job_id = self.ledger[key]["id"]
        if self.cluster == "local":
            handle = self.handles.get(key)
            if handle is not None:
                state = handle.state
                return state == "RUNNING", state
            alive = _pid_alive(job_id)
            return alive, "RUNNING" if alive else "process gone"
        # one squeue call per pass over the jobs (a pass asks about each one within milliseconds)
        if self._queue is None or time.monotonic() - self._queue[0] > min(self.poll_s / 2, 5.0):
            self._queue = (time.monotonic(), slurm_queue_states(entry["id"] for entry in self.ledger.values()))
        queue = self._queue[1]
        if queue is None:
            return True, "UNKNOWN"
        state = queue.get(job_id, "NO LONGER IN SQUEUE")
        return state.startswith(_ALIVE), state

    def state(self, key: str) -> tuple[str, dict]:
        """("done" | "failed" | "queued" | "stuck" (pending for ever) | "running" | "lost" | "new", the job's
        status) of a job key."""
        status = self.run.read_slurm_status(key)
        if status.get("state") in ("done", "failed"):
            return status["state"], status
        if key not in self.ledger:
            return "new", status
        alive, name = self._scheduler_alive(key)
        if alive and name.endswith(tuple(f"({reason})" for reason in _NEVER_STARTS)):
            return "stuck", {**status, "scheduler": name}
        if alive:
            return ("running" if status or name.startswith("RUNNING") else "queued"), status
        status = self.run.read_slurm_status(key)  # it may have finished between the two reads
        if status.get("state") in ("done", "failed"):
            return status["state"], status
        return "lost", {**status, "scheduler": name}

    def _log(self, key: str) -> Path:
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder, job_id=self.ledger[key]["id"], task_id=0).stderr

    # -- the executor seam (attnrobust.study._schedule)

    def submit(self, jobs: list) -> None:
        new = []
        for job in jobs:
            key = job_key(job)
            self.running[key] = job
            state, status = self.state(key)
            if state == "done" and job.kind == "train":  # handed over unfinished: its checkpoint went since
                state, status = "failed", {"error": "its checkpoint is not finished"}
            if state in ("done", "queued", "stuck", "running"):
                continue  # submitted by an earlier run: collected like the others (a stuck one stops the study)
            if state in ("failed", "lost"):
                why = status.get("error") or f"ended without finishing: {status.get('scheduler')}"
                # (no ledger entry: jobs.json was removed, its status files were not)
                attempt = self.ledger.get(key, {}).get("attempt", "?")
                self.say(f"  resubmit {job}  (attempt {attempt} {why})")
                self.run.slurm_status(key).unlink(missing_ok=True)
            new.append((key, job))
        if not new:
            return
        try:
            with self.executor.batch():  # one job array
                handles = [self.executor.submit(SubmittedJob(job, key, str(self.run_dir), self.device,
                                                             self.data_dir)) for key, job in new]
        except Exception as err:  # sbatch missing or refusing (partition, account, limits): its own words
            raise UserError(f"submitting {len(new)} jobs to {self.cluster} failed: "
                            f"{' '.join(str(err).split())[:500]}; check the [slurm] table") from None
        self._queue = None  # squeue's answer before these jobs existed would call them gone
        for (key, job), handle in zip(new, handles):
            self.handles[key] = handle
            self.ledger[key] = {"id": str(handle.job_id), "attempt": self.ledger.get(key, {}).get("attempt", 0) + 1,
                                "job": " ".join(str(job).split())}
        self._write_ledger()
        first = str(handles[0].job_id).split("_")[0]  # an array's id; submitit sends an "array" of one as a job
        where = f"s to {self.cluster} as job array {first}" if len(new) > 1 else f" to {self.cluster}: {first}"
        self.say(f"  submitted {len(new)} {new[0][1].kind} job{where}")

    def _write_ledger(self) -> None:
        atomic_write(self.run.slurm_ledger, json.dumps(self.ledger, indent=1, sort_keys=True) + "\n")

    def busy(self) -> bool:
        return bool(self.running)

    def unfinished(self) -> list:
        return list(self.running.values())

    def collect(self, block: bool, held: list) -> list[tuple]:
        while True:
            done = []
            for key, job in list(self.running.items()):
                state, status = self.state(key)
                if state == "done":
                    del self.running[key]
                    done.append((job, status.get("records"), status.get("seconds", 0.0), status.get("threads")))
                elif state == "stuck":
                    reason = status["scheduler"].split("(")[-1].rstrip(")")
                    raise UserError(f"job {' '.join(str(job).split())} cannot start on {self.cluster}: Slurm keeps "
                                    f"job {self.ledger[key]['id']} pending for {reason} ({_NEVER_STARTS[reason]}; see "
                                    f"`sinfo`); scancel the ids in {self.run.slurm_ledger}, fix the [slurm] table "
                                    f"and rerun the same command: it resubmits them")
                elif state in ("failed", "lost"):
                    why = status.get("error") or (f"ended without finishing ({status.get('scheduler')}: node lost, "
                                                  f"out of memory or cancelled)")
                    raise UserError(f"job {' '.join(str(job).split())} failed on {self.cluster}: {why}; its log: "
                                    f"{self._log(key)}; the other submitted jobs go on: rerun the same command to "
                                    f"resubmit it (training resumes from its last checkpoint) and collect them")
            if done or not block:
                return done
            time.sleep(self.poll_s)

    def cancel(self) -> None:
        # Nothing: submitted jobs hold GPU hours already queued for or spent, and their results stay useful; the
        # next run collects them (a user who wants them gone runs scancel on the ids in RUN/slurm/jobs.json).
        pass
