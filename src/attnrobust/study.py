"""A study: datasets x models x seeds, each model trained, attacked white-box and transferred to its siblings.

The plan for every (dataset, seed) is: train each model (attnrobust.train.train resumes or skips a finished
run), then one attack job per source model that crafts FGSM/PGD on it and scores every model of the same
dataset and seed (its own row of the transfer matrix; the diagonal is the white-box result). An attack job's
records are written to results.jsonl in one atomic rewrite, so a job is either wholly in the file or not at all:
rerunning the same command after a kill does only what is missing. Then the report is rebuilt from
results.jsonl.

Run folder: config.toml (the resolved config), env.json, checkpoints/, logs/, results.jsonl, report/.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from attnrobust.config import StudyConfig, load_config, to_toml, train_config
from attnrobust.errors import UserError


@dataclass(frozen=True)
class Job:
    kind: str  # "train" or "attack" (the attack job of source `model`)
    dataset: str
    model: str
    seed: int

    def __str__(self) -> str:
        return f"{self.kind:<6} {self.dataset} {self.model} seed {self.seed}"


def plan(cfg: StudyConfig) -> list[Job]:
    """Every job of the study in the order it runs: per dataset and seed, all training, then all attacks."""
    jobs = []
    for dataset in cfg.study.datasets:
        for seed in cfg.study.seeds:
            jobs += [Job("train", dataset, m, seed) for m in cfg.study.models]
            jobs += [Job("attack", dataset, m, seed) for m in cfg.study.models]
    return jobs


def attack_jobs_done(records: list[dict]) -> set[tuple[str, str, int]]:
    """(dataset, source, seed) of every attack job whose records are in the results (jobs are written whole)."""
    return {(r["dataset"], r["source"], r["seed"]) for r in records}


def _read_results(path: Path) -> list[dict]:
    from attnrobust.results import read_records

    return read_records(path) if path.exists() else []


_RUN_FOLDER_ENTRIES = {"config.toml", "env.json", "checkpoints", "logs", "results.jsonl", "report"}


def _claim_run_dir(run_dir: Path, cfg: StudyConfig, is_main: bool) -> None:
    """Write the resolved config into a new run folder, or check that an existing one holds the same config."""
    import tomllib

    from attnrobust.runtime import atomic_write

    stored = run_dir / "config.toml"
    wanted = cfg.to_dict()
    if stored.exists():
        try:
            existing = tomllib.loads(stored.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise UserError(f"{stored} is unreadable ({err}); use a new --out folder") from None
        if existing != wanted:
            changed = sorted(f"{section}.{key}" for section in set(existing) | set(wanted)
                             for key in set(existing.get(section, {})) | set(wanted.get(section, {}))
                             if existing.get(section, {}).get(key) != wanted.get(section, {}).get(key))
            raise UserError(f"{run_dir} holds a study with a different config (differs in {', '.join(changed)}); "
                            f"use a new --out folder, or the config stored in {stored} to resume it")
    else:
        # A folder of `attnrobust train --out` runs (checkpoints/, logs/, env.json) may become a study folder: its
        # finished checkpoints are reused when their training config matches. Anything else is not ours to touch.
        foreign = [p.name for p in run_dir.iterdir() if p.name not in _RUN_FOLDER_ENTRIES] if run_dir.is_dir() else []
        if foreign:
            raise UserError(f"{run_dir} exists and is not a run folder (it holds {', '.join(sorted(foreign)[:3])}); "
                            f"choose a new --out folder")
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(stored, to_toml(wanted))


def _say(message: str) -> None:
    """Progress for the person at the terminal: once, from rank 0, however many torchrun processes there are."""
    from attnrobust.runtime import is_main

    if is_main():
        print(message, flush=True)


def _agree_on_pending(pending: list[bool]) -> list[bool]:
    """Under torchrun every rank must run the same attack jobs (they all-reduce counts): rank 0's view wins."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return pending
    flags = torch.tensor(pending, dtype=torch.uint8)  # a CPU tensor: runtime's process group has gloo for those
    dist.broadcast(flags, src=0)
    return [bool(f) for f in flags.tolist()]


def run_study(config: str | Path = "quick", *, out: str | Path | None = None, overrides=(),
              device: str | None = None, data_dir: str | Path | None = None, quiet: bool = False) -> Path:
    """Run (or resume) a study and build its report; returns the run folder."""
    from attnrobust.checkpoint import load_model
    from attnrobust.data import DeviceLoader, load_dataset
    from attnrobust.evaluate import sanity_flags, transfer
    from attnrobust.report import build_report, verdict_table
    from attnrobust.results import write_records
    from attnrobust.runtime import dist_info, resolve_device, write_env_json
    from attnrobust.train import train

    cfg = load_config(config, overrides)
    run_dir = Path(out) if out is not None else Path("runs") / cfg.study.name
    rank, world_size, _ = dist_info()
    is_main = rank == 0
    _claim_run_dir(run_dir, cfg, is_main)
    device = resolve_device(device)
    if is_main:
        write_env_json(run_dir / "env.json", sys.argv)
    results_path = run_dir / "results.jsonl"
    results = _read_results(results_path)  # kept in memory from here on; the file is rewritten after each job
    jobs = plan(cfg)
    started = time.perf_counter()
    _say(f"study {cfg.study.name!r}: {len(jobs)} jobs in {run_dir} on {device}")

    for dataset in cfg.study.datasets:
        test_images, test_labels = load_dataset(dataset, "test", data_dir=data_dir)
        if cfg.eval.n is not None:
            test_images, test_labels = test_images[:cfg.eval.n], test_labels[:cfg.eval.n]
        for seed in cfg.study.seeds:
            checkpoints = {}
            for model in cfg.study.models:
                t0 = time.perf_counter()
                checkpoints[model] = train(train_config(cfg, dataset, model, seed), run_dir, device=device,
                                           data_dir=data_dir, quiet=quiet)
                _say(f"  done  {Job('train', dataset, model, seed)}  ({time.perf_counter() - t0:.0f} s)")
            done = attack_jobs_done(results)
            pending = _agree_on_pending([(dataset, m, seed) not in done for m in cfg.study.models])
            if not any(pending):
                continue
            models = {m: load_model(path, device=device) for m, path in checkpoints.items()}
            loader = DeviceLoader(test_images, test_labels, batch_size=cfg.eval.batch_size, device=device,
                                  rank=rank, world_size=world_size, equal_shards=False)  # no test image dropped
            for source, todo in zip(cfg.study.models, pending):
                if not todo:
                    continue
                t0 = time.perf_counter()
                records = transfer({source: models[source]}, models, loader, cfg.attack, dataset=dataset,
                                   seed=seed, device=device, quiet=quiet, images=f"test[:{len(test_labels)}]")
                # transfer flags compare with the targets' white-box records, which other jobs write
                results = sanity_flags(results + records)
                if is_main:  # one atomic rewrite: the job's records are all in the file or none are
                    write_records(results_path, results)
                _say(f"  done  {Job('attack', dataset, source, seed)}  ({time.perf_counter() - t0:.0f} s)")

    if not is_main:
        return run_dir
    report_dir = build_report(run_dir)
    _say("")
    _say(verdict_table(results))
    _say(f"\nreport: {report_dir / 'README.md'}  ({time.perf_counter() - started:.0f} s)")
    return run_dir


def list_runs(runs_dir: str | Path = "runs") -> str:
    """One line per run folder under runs_dir: its config, how many jobs are done, and where its report is."""
    import tomllib

    from attnrobust.config import parse_config

    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder; run `attnrobust run` first or name the folder of runs")
    rows = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if (p / "config.toml").is_file()):
        try:
            cfg = parse_config(tomllib.loads((run_dir / "config.toml").read_text()), str(run_dir / "config.toml"))
        except (UserError, tomllib.TOMLDecodeError) as err:
            rows.append(f"{run_dir.name}: unreadable config ({err})")
            continue
        jobs = plan(cfg)
        attacked = attack_jobs_done(_read_results(run_dir / "results.jsonl"))
        done = sum(1 for j in jobs if (j.kind == "attack" and (j.dataset, j.model, j.seed) in attacked)
                   or (j.kind == "train" and _trained(run_dir, cfg, j)))
        report = run_dir / "report" / "README.md"
        rows.append(f"{run_dir.name}: {','.join(cfg.study.datasets)} x {','.join(cfg.study.models)} x seeds "
                    f"{','.join(map(str, cfg.study.seeds))}; {done}/{len(jobs)} jobs done; report: "
                    f"{report if report.exists() else '(none yet)'}")
    return "\n".join(rows) if rows else f"no runs in {runs_dir}"


def _trained(run_dir: Path, cfg: StudyConfig, job: Job) -> bool:
    from attnrobust.train import is_finished

    return is_finished(train_config(cfg, job.dataset, job.model, job.seed), run_dir)
