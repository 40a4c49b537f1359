"""A study: datasets x training regimes x widths x models x seeds, each model trained, attacked white-box and
transferred to its siblings.

`plan(cfg)` (attnrobust.jobs, with the jobs themselves) lists the jobs and `run_study` executes exactly that list, of
two kinds:
- train: one job per (dataset, regime, width, model, seed); attnrobust.train resumes or skips a finished run;
- attack: one job per (dataset, regime, width, source model, seed), after every model of its cell (dataset,
  regime, width, seed) is trained: it crafts the attacks on the source and scores every model of the cell (its
  row of the transfer matrix; the diagonal is the white-box result), then the source's white-box measures
  (minimal eps, AutoAttack) and common corruptions. Regimes (study.regimes: standard training, PGD-AT, FGSM-RS,
  ...) and widths (study.widths) never mix: a model is compared with, and transferred to, models trained the same
  way at the same width; records carry the regime's label and the width.
  Clean accuracy and FGSM run on all attacked images; the costly attacks on the seeded subset eval.strong_n.
An attack job's records are written to results.jsonl in one atomic rewrite, so a job is either wholly in the file
or not at all: rerunning the same command after a kill does only what is missing. Then the report is rebuilt.

Training jobs are independent, and so are attack jobs once their cell is trained, so with eval.workers = W > 1
(CPU) they run side by side in W processes with the cores split between them (small models leave cores idle in
one process, and two one-thread processes measured 1.8x the throughput of one two-thread process here); a cell's
attack jobs start as soon as its models are trained, while other cells still train. A job's numbers depend on
its thread count (the order of float sums), which env.json and logs/jobs.jsonl record, not on the order jobs run
in.

Who runs the jobs is an executor (eval.executor; the seam is _schedule): "local", this process or the pool of
eval.workers processes (on a machine with several CUDA devices, by default one process per device, each owning
its device), or "slurm", each job a Slurm job through submitit (attnrobust.cluster; `detach` leaves them running
and a rerun collects them). Either way the jobs and their outputs are the same, and so is results.jsonl.

The run folder's layout (config.toml, env.json, .lock, checkpoints/, logs/, results.jsonl, report/, slurm/) is
attnrobust.runfolder's.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from attnrobust.cluster import SubmititExecutor
from attnrobust.config import StudyConfig, load_config, to_toml
from attnrobust.distributed import broadcast_flags, dist_info, init_distributed, is_main
from attnrobust.errors import UserError
from attnrobust.evaluate import clear_corruption_cache, sanity_flags
from attnrobust.jobs import Job, forget_cell_models, plan, run_in_worker, run_job, start_worker
from attnrobust.report import build_report
from attnrobust.report.power import pilot_records, power_plan, power_plan_lines
from attnrobust.results import STANDARD, attack_job_of, attack_jobs_done, write_records
from attnrobust.runfolder import RunFolder
from attnrobust.runlock import hold_run_lock
from attnrobust.runtime import atomic_write, resolve_device, set_threads, write_env_json
from attnrobust.train import is_finished


def _what_runs(data: dict) -> dict:
    """A config's data without what only says where jobs run (eval.executor, [slurm]):
    a study may move between the local pool and Slurm, its jobs' outputs do not depend on it."""
    what = {section: dict(table) for section, table in data.items() if section != "slurm"}
    what.get("eval", {}).pop("executor", None)
    return what


def _claim_run_dir(folder: RunFolder, cfg: StudyConfig, leader: bool) -> None:
    """Write the resolved config into a new run folder, or check that an existing one holds the same config."""
    run_dir, stored = folder.root, folder.config
    wanted = cfg.to_dict()
    if stored.exists():
        existing = folder.read_config_data()
        if _what_runs(existing) != _what_runs(wanted):
            existing, wanted = _what_runs(existing), _what_runs(wanted)
            changed = sorted(f"{section}.{key}" for section in set(existing) | set(wanted)
                             for key in set(existing.get(section, {})) | set(wanted.get(section, {}))
                             if existing.get(section, {}).get(key) != wanted.get(section, {}).get(key))
            raise UserError(f"{run_dir} holds a study with a different config (differs in {', '.join(changed)}); "
                            f"use a new --out folder, or the config stored in {stored} to resume it")
        if existing != wanted and leader:  # another executor: config.toml says how the study runs now
            atomic_write(stored, to_toml(wanted))
    else:
        # A folder of `attnrobust train --out` runs (checkpoints/, logs/, env.json) may become a study folder: its
        # finished checkpoints are reused when their training config matches. Anything else is not ours to touch.
        foreign = [p.name for p in run_dir.iterdir() if p.name not in RunFolder.ENTRIES] if run_dir.is_dir() else []
        if foreign:
            raise UserError(f"{run_dir} exists and is not a run folder (it holds {', '.join(sorted(foreign)[:3])}); "
                            f"choose a new --out folder")
        if leader:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(stored, to_toml(wanted))


def _refuse_if_slurm_jobs_unfinished(folder: RunFolder) -> None:
    """The local executor must not train or attack what a Slurm job of the same folder may be writing."""
    if not folder.slurm_ledger.exists():
        return
    run_dir = folder.root
    states = folder.slurm_job_states()
    busy = states.get("queued", 0) + states.get("running", 0)
    if busy:
        raise UserError(f"{run_dir}: {busy} of its jobs were submitted to Slurm and have not finished; rerun with "
                        f"eval.executor = \"slurm\" to collect them (a lost one is resubmitted), or scancel the ids "
                        f"in {folder.slurm_ledger} and remove that file to run them here")


def _say(message: str) -> None:
    """Progress for the person at the terminal: once, from rank 0, however many torchrun processes there are."""
    if is_main():
        print(message, flush=True)


def _agree_on_pending(pending: list[bool]) -> list[bool]:
    """Under torchrun every rank must run the same attack jobs (they all-reduce counts): rank 0's view wins."""
    return broadcast_flags(pending)


def _workers(cfg: StudyConfig, device, spread: bool = True) -> int:
    """Worker processes for the local executor: eval.workers, or by default one per CUDA device on a GPU machine
    (spread: the device was not pinned to one index) and 1 on the CPU."""
    if dist_info()[1] > 1:
        return 1  # torchrun already splits the work
    if cfg.eval.workers is not None:
        return cfg.eval.workers
    return torch_device_count() if device.type == "cuda" and spread else 1


def torch_device_count() -> int:
    return torch.cuda.device_count()


def gpu_slots(workers: int, device_count: int, visible: str | None) -> list[str]:
    """The CUDA device each of `workers` processes owns, as CUDA_VISIBLE_DEVICES values: the visible devices in
    order (`visible`: this process's CUDA_VISIBLE_DEVICES, None = all of them), round robin when more workers than
    devices were asked for (then, and only then, two jobs share a device)."""
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else \
        [str(i) for i in range(device_count)]
    return [devices[i % len(devices)] for i in range(workers)]


def _pool(workers: int, slots: list[str] | None = None):
    """A pool of `workers` spawned processes; `slots`: the CUDA device each one owns (None: the CPU, or a device
    they share as asked)."""
    # Idle OpenMP threads spin by default: two processes on two cores then take each other's time (measured here:
    # 51 s instead of 28 s for the same two jobs). Passive waiting, set before the workers start their runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    context = multiprocessing.get_context("spawn")
    queue = None
    if slots is not None:
        queue = context.Queue()  # each process takes one device as it starts (the pool starts them on demand)
        for slot in slots:
            queue.put(slot)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=start_worker,
                               initargs=(os.getpid(), queue))


# ---- the executor seam ------------------------------------------------------------------------------------------
# An executor runs jobs it is handed and reports them as they finish; _schedule decides when each job is handed
# over. Executors: _PoolExecutor (local worker processes, below) and attnrobust.cluster.SubmititExecutor (Slurm):
#   submit(jobs)            start these jobs (an empty list: nothing)
#   busy() -> bool          whether any submitted job is still unreported
#   collect(block, held)    the (job, result, seconds, threads) of jobs finished since the last call; block: wait
#                           for at least one; held: the jobs not yet handed over (for messages). A failed job
#                           raises UserError naming it.
#   unfinished() -> list    submitted jobs not yet reported
#   cancel()                give up on queued jobs (the study is stopping)


class _PoolExecutor:
    """The local executor: each job a future of `pool.submit(run_in_worker, ...)` in worker processes."""

    def __init__(self, pool, cfg: StudyConfig, run_dir: Path, device, data_dir, threads: int):
        self.pool, self.threads = pool, threads
        self.args = (cfg, str(run_dir), str(device), data_dir, threads)
        self.running: dict = {}

    def submit(self, jobs: list[Job]) -> None:
        cfg, run_dir, device, data_dir, threads = self.args
        self.running.update({self.pool.submit(run_in_worker, cfg, job, run_dir, device, data_dir, threads): job
                             for job in jobs})

    def busy(self) -> bool:
        return bool(self.running)

    def unfinished(self) -> list[Job]:
        return list(self.running.values())

    def collect(self, block: bool, held: list[Job]) -> list[tuple]:
        finished, _ = wait(self.running, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        done = []
        for future in finished:
            job = self.running.pop(future)
            try:
                result, seconds = future.result()  # a job's UserError surfaces here, as in one process
            except BrokenProcessPool:
                # every unfinished job fails with the pool, whichever process died: name the phase, not a job
                unfinished = 1 + sum(j.kind == job.kind for j in [*self.running.values(), *held])
                raise UserError(f"a worker process died in the {job.kind} phase ({unfinished} of its jobs "
                                f"unfinished; killed, out of memory, or started by a script without the "
                                f"`if __name__ == \"__main__\":` guard that spawned processes need); finished "
                                f"jobs are kept: rerun, or set eval.workers = 1 to see a failing job's own "
                                f"error") from None
            done.append((job, result, seconds, self.threads))
        return done

    def cancel(self) -> None:
        # jobs still queued would only delay the message, and the pool's shutdown waits for whatever it has not
        # cancelled (the running ones finish; their files stay consistent)
        for future in self.running:
            future.cancel()


def _schedule(jobs: list[Job], executor, on_done, block: bool = True) -> list[Job]:
    """Hand `jobs` (training jobs, then attack jobs, each in plan order) to `executor`; on_done[kind](job, result,
    seconds, threads) is called in this process as each finishes (in completion order). Returns the jobs left
    unfinished: none when `block`; else (a detached study) those still queued, running or not yet handed over.

    An attack job is handed over as soon as the training jobs of its cells (Job.waits_for: its own, and under
    eval.transfer_sources = "other-seeds" every seed's of its panel, whose models it scores) among `jobs` have
    finished, behind the training jobs still queued: while the last models train, the other workers attack the
    cells that are ready instead of waiting for the whole training phase (the quick study's time beyond its jobs
    fell from 13 s to 7 s, same-seed). A failed job (or Ctrl-C) stops the study: the executor cancels what it queued."""
    untrained = Counter(j.cell for j in jobs if j.kind == "train")
    held = [j for j in jobs if j.kind == "attack"]

    def release_trained_cells() -> None:
        """Submit the held attack jobs whose cells have no training job left, keep holding the rest."""
        nonlocal held
        ready = [j for j in held if not any(untrained[c] for c in j.waits_for)]
        executor.submit(ready)
        held = [j for j in held if j not in ready]

    try:
        executor.submit([j for j in jobs if j.kind == "train"])
        release_trained_cells()
        while executor.busy():
            finished = executor.collect(block, held)
            if not finished and not block:
                break  # detached: the rest finishes without us; a rerun collects it
            for job, result, seconds, threads in finished:
                on_done[job.kind](job, result, seconds, threads)
                if job.kind == "train":
                    untrained[job.cell] -= 1
                    release_trained_cells()
    except BaseException:
        executor.cancel()
        raise
    return executor.unfinished() + held


def _execute(jobs: list[Job], cfg: StudyConfig, run_dir: Path, device, data_dir, quiet: bool, on_done,
             pool, workers: int | None = None) -> None:
    """Run `jobs` (training jobs, then attack jobs, each in plan order), in this process or side by side in
    `pool`'s worker processes (None: no workers; `workers`: how many it has, default from the config); on_done as
    in _schedule.

    In one process: every training job, then every attack job. With workers, _schedule hands each job over."""
    workers = min(workers or _workers(cfg, device), len(jobs)) if pool is not None else 1
    if workers <= 1:
        for job in jobs:
            started = time.perf_counter()
            result = run_job(cfg, job, run_dir, device=device, data_dir=data_dir, quiet=quiet)
            on_done[job.kind](job, result, time.perf_counter() - started,
                              set_threads() if device.type == "cpu" else None)
        return
    threads = max(1, set_threads() // workers)
    _schedule(jobs, _PoolExecutor(pool, cfg, run_dir, device, data_dir, threads), on_done)


def _power_plan(cfg: StudyConfig) -> list[str]:
    """The power plan's lines from cfg.verdict.pilot ([] without a pilot): what the study's seeds can detect."""
    if cfg.verdict.pilot is None:
        return []
    seeds = len(cfg.study.seeds)
    plan = power_plan(pilot_records(cfg.verdict.pilot), seeds, cfg.verdict, pairs=cfg.study.pairs or (),
                      min_clean_accuracy=cfg.eval.min_clean_accuracy)
    return power_plan_lines(plan, seeds, cfg.verdict.pilot)


class _Progress:
    """What a running study has finished, kept in memory and written after each job: results.jsonl (every attack
    job's records, in plan order whatever order side-by-side workers finish them in, so the same study writes the
    same bytes; one atomic rewrite per job, so a job is wholly in the file or not at all) and logs/jobs.jsonl (the
    wall time of every job). `on_done` is what _schedule and _execute call as each job finishes."""

    def __init__(self, folder: RunFolder, attack_jobs: list[Job], leader: bool, workers: int):
        self.folder, self.leader, self.workers = folder, leader, workers
        self.results = folder.read_results()
        self.timings = folder.read_timings()
        self.plan_order = {j.key: i for i, j in enumerate(attack_jobs)}
        self.on_done = {"train": lambda job, _, seconds, threads: self.log_time(job, seconds, threads),
                        "attack": self.add_records}

    def pending(self, attack_jobs: list[Job]) -> list[Job]:
        """The attack jobs whose records are not in the results yet (rank 0's view, under torchrun)."""
        done = attack_jobs_done(self.results)
        return [j for j, todo in zip(attack_jobs, _agree_on_pending([j.key not in done for j in attack_jobs]))
                if todo]

    def add_records(self, job: Job, records: list[dict], seconds: float, threads: int | None) -> None:
        def in_plan(record: dict) -> int:  # a stable sort: a job's records keep their order
            return self.plan_order.get(attack_job_of(record), len(self.plan_order))

        # transfer flags compare with the targets' white-box records, which other jobs write
        self.results = sanity_flags(sorted(self.results + records, key=in_plan))
        if self.leader:
            write_records(self.folder.results, self.results)
        self.log_time(job, seconds, threads)

    def log_time(self, job: Job, seconds: float, threads: int | None) -> None:
        self.timings.append({"job": job.kind, "dataset": job.dataset,
                             **({} if job.regime == STANDARD else {"regime": job.regime}),
                             **({"axes": dict(job.point)} if job.point else {}), "model": job.model,
                             "seed": job.seed, "seconds": round(seconds, 2), "threads": threads,
                             "workers": self.workers})
        if self.leader:
            atomic_write(self.folder.jobs_log, "".join(json.dumps(t) + "\n" for t in self.timings))
        _say(f"  done  {job}  ({seconds:.0f} s)")


def _run_jobs(cfg: StudyConfig, folder: RunFolder, device: str | None, data_dir, quiet: bool, detach: bool,
              leader: bool) -> bool:
    """Run every job of plan(cfg) not done yet, through the config's executor; False when detached with jobs
    still out (a rerun collects them)."""
    on_cluster = cfg.eval.executor != "local"
    # "cuda" or no device named: the local pool may spread its workers over every CUDA device
    spread = device is None or str(device).strip() == "cuda"
    named_device = device
    if not on_cluster:
        # (Slurm jobs resolve the device named where they run: the machine that submits them may have no GPU)
        device = resolve_device(device)
        _refuse_if_slurm_jobs_unfinished(folder)
    jobs = plan(cfg)
    workers = 1 if on_cluster else _workers(cfg, device, spread)
    _say(f"study {cfg.study.name!r}: {len(jobs)} jobs in {folder.root} "
         + (f"through {cfg.eval.executor}" if on_cluster else f"on {device}")
         + (f", {workers} side by side" if workers > 1 else ""))
    attack_jobs = [j for j in jobs if j.kind == "attack"]
    progress = _Progress(folder, attack_jobs, leader, workers)
    todo = [j for j in jobs if j.kind == "train" and not is_finished(j.train, folder.root)] \
        + progress.pending(attack_jobs)
    if on_cluster:
        executor = SubmititExecutor(cfg, folder.root, device=None if named_device is None else str(named_device),
                                    data_dir=data_dir, say=_say)
        left = _schedule(todo, executor, progress.on_done, block=not detach)
        if left:
            _say(f"detached: {len(left)} jobs queued, running or waiting for their models (`attnrobust ls "
                 f"{folder.root.parent}` shows them); rerun the same command to collect them and build the report")
        return not left
    # One pool of workers for the whole study: each worker imports torch once (seconds per process), and a cell's
    # attack jobs start while other cells still train. The pool starts its processes at the first job it is
    # given: a run with nothing to do starts none. On CUDA each worker owns a device.
    slots = gpu_slots(workers, torch_device_count(), os.environ.get("CUDA_VISIBLE_DEVICES")) \
        if workers > 1 and device.type == "cuda" and spread else None
    pool = _pool(workers, slots) if workers > 1 else None
    with pool if pool is not None else contextlib.nullcontext():
        try:
            _execute(todo, cfg, folder.root, device, data_dir, quiet, progress.on_done, pool, workers)
        finally:
            forget_cell_models()  # the last cell's models: not needed by the report, nor after an interruption
            clear_corruption_cache()  # corrupted test images kept between attack jobs (evaluate._CORRUPTED)
    return True


def run_study(config: str | Path | dict | StudyConfig = "quick", *, out: str | Path | None = None, overrides=(),
              device: str | None = None, data_dir: str | Path | None = None, quiet: bool = False,
              detach: bool = False, power_only: bool = False) -> Path:
    """Run (or resume) a study and build its report; returns the run folder.

    config: a shipped config's name, a .toml path, the config as a dict (as tomllib would read it), or a
    StudyConfig that load_config returned (its overrides already applied: `overrides` must then be empty).
    detach (eval.executor = "slurm"): return once the jobs that can start are submitted, without waiting for
    them; rerunning collects what finished, resubmits what failed, submits what became ready, and builds the
    report when every job is done.
    With [verdict] pilot set, the power plan (attnrobust.report.power) is printed first and kept as
    RUN/power_plan.md, which the report shows; power_only: print it and return before anything else runs.
    """
    if isinstance(config, StudyConfig):
        if overrides:
            raise ValueError("run_study: apply overrides when loading the StudyConfig, not here")
        cfg = config
    else:
        cfg = load_config(config, overrides, data_dir)
    if detach and cfg.eval.executor == "local":
        raise UserError("--detach: the local executor's jobs end with this process; set eval.executor = \"slurm\" "
                        "(and a [slurm] table) to submit them and leave")
    init_distributed()
    folder = RunFolder(out if out is not None else Path("runs") / cfg.study.name)
    leader = dist_info()[0] == 0
    plan_lines = _power_plan(cfg)
    if plan_lines:
        _say("\n".join(plan_lines) + "\n")
    if power_only:
        if not plan_lines:
            raise UserError("--power-plan: set verdict.pilot to a previous run's folder (e.g. --set "
                            "verdict.pilot=\"results/fashion-mnist-cpu-3seeds\") to predict what this study can detect")
        return folder.root
    with hold_run_lock(folder.root, is_main=leader):
        started = time.perf_counter()
        # inside the lock: two runs started together on a new folder must not both write its config.toml
        _claim_run_dir(folder, cfg, leader)
        if leader:
            if plan_lines:
                atomic_write(folder.power_plan, "\n".join(plan_lines) + "\n")
            write_env_json(folder.env, sys.argv)
        if not _run_jobs(cfg, folder, device, data_dir, quiet, detach, leader) or not leader:
            return folder.root
        report_dir = build_report(folder.root)
        _say("")
        _say((report_dir / "verdicts.txt").read_text().rstrip("\n"))  # computed once, by the report
        _say(f"\nreport: {report_dir / 'README.md'}  ({time.perf_counter() - started:.0f} s)")
    return folder.root
