"""What a study's worker runs: the jobs `plan()` lists, and the two entry points of a worker process.

`plan(cfg)` lists every job of a study (attnrobust.study runs exactly that list):
- train: one job per (dataset, regime, point of study.axes, model, seed), `run_train_job`;
- attack: one job per (dataset, regime, point, source model, seed), `run_attack_job`: the source's row of the
  transfer matrix (the diagonal is the white-box result), its white-box measures and common corruptions. Under
  eval.transfer_sources = "other-seeds" (the default) the attacks it crafts are also scored on the other seeds'
  (all, or the next eval.transfer_seeds) models of other architectures (Job.others: independent targets, a
  forward pass each), so it waits for them.
Each job carries the checked TrainConfigs of its cell, so a worker validates nothing again.

A module of its own because worker processes (the local pool's, submitit's) import it and nothing above it: the
study process also imports the report (matplotlib, scipy.stats), which cost each spawned worker 1.0 s of start-up
for code a worker never runs (benchmarks/startup.py: 1.66 s against 2.65 s, 2-core Xeon, 2026-12-04).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from attnrobust.checkpoint import load_attack_model
from attnrobust.config import StudyConfig, TrainConfig
from attnrobust.data import DeviceLoader, load_dataset
from attnrobust.distributed import dist_info
from attnrobust.evaluate import corruption_scores, craft_and_score, white_box_measures
from attnrobust.models import is_user_model
from attnrobust.results import STANDARD, point_label, with_cell
from attnrobust.runfolder import RunFolder
from attnrobust.runlock import die_with_parent
from attnrobust.runtime import resolve_device, set_threads
from attnrobust.train import run_training


@dataclass(frozen=True)
class Job:
    kind: str  # "train" or "attack" (the attack job of source `model`)
    dataset: str
    model: str
    seed: int
    regime: str = STANDARD  # the training regime's label (config.regime_label)
    # the job's values of study.axes ((key, value) pairs, StudyConfig.points); (): the study has no axes
    point: tuple = ()
    # (model, TrainConfig) of every model of the job's cell, in study.models order, built and checked once by
    # plan(): a training job trains its own model's, an attack job loads every one's checkpoint. Not part of the
    # job's identity (the fields above are).
    configs: tuple[tuple[str, TrainConfig], ...] = field(default=(), compare=False, repr=False)
    # An attack job under eval.transfer_sources = "other-seeds": (model, seed, TrainConfig) of every model of the
    # other seeds of its (dataset, regime, width), in seed then study.models order; the job scores the attacks it
    # crafts on those of another architecture too (independent targets), so it waits for them to be trained.
    others: tuple[tuple[str, int, TrainConfig], ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        regime = "" if self.regime == STANDARD else f" [{self.regime}]"
        point = f" {point_label(self.point)}" if self.point else ""
        return f"{self.kind:<6} {self.dataset}{regime}{point} {self.model} seed {self.seed}"

    @property
    def key(self) -> tuple:
        """(dataset, regime, point, model, seed): what identifies the job, as `results.attack_job_of` reads it off a
        record of an attack job."""
        return (self.dataset, self.regime, self.point, self.model, self.seed)

    @property
    def cell(self) -> tuple:
        """(dataset, regime, point, seed): the models trained the same way that this job's model is compared with
        and transferred to."""
        return (self.dataset, self.regime, self.point, self.seed)

    @property
    def waits_for(self) -> tuple:
        """The cells (Job.cell) whose models must be trained before this job runs: its own, and for an attack
        job scoring other seeds' targets (Job.others) theirs too."""
        return (self.cell, *sorted({(self.dataset, self.regime, self.point, s) for _, s, _ in self.others}))

    @property
    def train(self) -> TrainConfig:
        """The TrainConfig of this job's model."""
        return dict(self.configs)[self.model]


def plan(cfg: StudyConfig) -> list[Job]:
    """Every job of the study in the order it runs: all training, then all attacks (dataset, regime, point, seed,
    model), each carrying the TrainConfigs of its cell (Job.configs)."""
    cells = {}
    for d in cfg.study.datasets:
        for r, regime in cfg.regimes_of(d).items():
            for p in cfg.points():
                for s in cfg.study.seeds:
                    cells[(d, r, p, s)] = tuple((m, cfg.train_config(d, m, s, regime, p)) for m in cfg.study.models)
    seeds = cfg.study.seeds
    def others(d, r, p, s) -> tuple:  # every model of the other seeds of the panel that are scored
        if cfg.eval.transfer_sources == "same-seed":
            return ()
        # the next eval.transfer_seeds seeds after s in study.seeds, cyclically (None: all of them)
        k = min(cfg.eval.transfer_seeds or len(seeds), len(seeds) - 1)
        chosen = {seeds[(seeds.index(s) + j) % len(seeds)] for j in range(1, k + 1)}
        return tuple((m, s2, c) for (d2, r2, p2, s2), configs in cells.items() if (d2, r2, p2) == (d, r, p)
                     and s2 in chosen for m, c in configs)

    return [Job(kind, d, m, s, r, p, configs, others(d, r, p, s) if kind == "attack" else ())
            for kind in ("train", "attack") for (d, r, p, s), configs in cells.items() for m, _ in configs]


def _test_images(cfg: StudyConfig, dataset: str, data_dir):
    """(images, labels, name) of all attacked test images, and (images, labels, name) of the strong subset."""
    images, labels = load_dataset(dataset, "test", data_dir=data_dir)
    if cfg.eval.n is not None:
        images, labels = images[:cfg.eval.n], labels[:cfg.eval.n]
    n = len(labels)
    everything = (images, labels, f"test[:{n}]")
    k = cfg.eval.strong_n
    if k is None or k >= n:
        return everything, everything
    # a fixed seeded subset, the same for every model and seed (comparisons stay paired), kept in test order
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.eval.subset_seed))[:k].sort().values
    return everything, (images[chosen], labels[chosen], f"test[:{n}], {k} drawn with seed {cfg.eval.subset_seed}")


def _split_attacks(cfg: StudyConfig):
    """The attack config for all images (FGSM) and the one for the strong subset (the rest)."""
    cheap = [a for a in cfg.attack.attacks if a == "fgsm"]
    strong = [a for a in cfg.attack.attacks if a != "fgsm"]
    # the unbounded-eps sanity check runs once per source, with the first group that runs
    return (replace(cfg.attack, attacks=cheap) if cheap else None,
            replace(cfg.attack, attacks=strong, sanity_checks=cfg.attack.sanity_checks and not cheap)
            if strong else None)


def run_train_job(cfg: StudyConfig, job: Job, run_dir: Path, *, device=None, data_dir=None,
                  quiet: bool = False) -> Path:
    return run_training(job.train, run_dir, device=device, data_dir=data_dir, quiet=quiet)


# The models of the cell (Job.cell, and the other seeds' models it scores) whose attack jobs this process ran last,
# by checkpoint and file identity: a cell's jobs run one after another (plan order) and each needs them all, so one
# process loads each checkpoint once instead of once per job (a ResNet-50 load, checksum included, costs about a
# third of a second of CPU). Only one cell is held; a rewritten checkpoint has another identity.
_CELL: dict[tuple, object] = {}


def _cell_models(paths: list[Path], device, allow_code) -> list:
    try:
        stats = [p.stat() for p in paths]
    except OSError:  # a missing checkpoint: load_model says so in one line
        return [load_attack_model(p, device=device, allow_code=allow_code) for p in paths]
    keys = [(str(p), st.st_mtime_ns, st.st_size, str(device)) for p, st in zip(paths, stats)]
    if list(_CELL) != keys:
        _CELL.clear()
        _CELL.update({k: load_attack_model(p, device=device, allow_code=allow_code) for k, p in zip(keys, paths)})
    return [_CELL[k] for k in keys]


def forget_cell_models() -> None:
    """Drop the held cell's models (_CELL)."""
    _CELL.clear()


def run_attack_job(cfg: StudyConfig, job: Job, run_dir: Path, *, device=None, data_dir=None,
                   quiet: bool = False, transfer_only: bool = False) -> list[dict]:
    """The records of one source: its row of the transfer matrix (with Job.others, its attacks scored on the other
    seeds' models too) and its white-box measures and corruptions (transfer_only: not these; what re-scoring a
    finished study's transfer rows needs, scripts/rescore_transfer.py)."""
    device = resolve_device(device)
    rank, world_size, _ = dist_info()
    # The study's own config names its user models: their checkpoints may run that code (nothing else).
    own_code = [m for m in cfg.study.models if is_user_model(m)]
    # the job's cell and the other seeds' models, in seed order: the same list for every job of the panel, so
    # one process loads each checkpoint once (_cell_models)
    group = sorted([(m, job.seed, c) for m, c in job.configs] + list(job.others), key=lambda e: e[1])
    loaded = dict(zip([(m, s) for m, s, _ in group],
                      _cell_models([RunFolder(run_dir).checkpoint(c) for _, _, c in group], device, own_code)))
    models = {m: loaded[(m, job.seed)] for m in cfg.study.models}
    # independent targets: the other seeds' models of another architecture than the source's
    others = {(m, s): model for (m, s), model in loaded.items() if s != job.seed and m != job.model}
    source = {job.model: models[job.model]}
    everything, subset = _test_images(cfg, job.dataset, data_dir)
    groups = [(cfg.attack, *everything)] if subset is everything else \
        [(attack_cfg, *images) for attack_cfg, images in zip(_split_attacks(cfg), (everything, subset))
         if attack_cfg is not None]

    def loader_of(x, y) -> DeviceLoader:  # this rank's share of the images; no test image dropped
        return DeviceLoader(x, y, batch_size=cfg.eval.batch_size, device=device, rank=rank, world_size=world_size,
                            equal_shards=False)

    records = []
    for attack_cfg, x, y, name in groups:
        loader = loader_of(x, y)
        records += craft_and_score(source, models, loader, attack_cfg, dataset=job.dataset, seed=job.seed,
                                   device=device, quiet=quiet, images=name, others=others)
        if not transfer_only:
            records += white_box_measures(models[job.model], loader, attack_cfg, dataset=job.dataset,
                                          name=job.model, seed=job.seed, device=device, quiet=quiet, images=name)
    # Common corruptions, on all attacked images or the strong subset (eval.corruption_images), scored on the source
    # only: a corrupted image depends on no model, so scoring every model of the cell here would do the cell's other
    # jobs' work, and their records (source = that model) would mark those jobs done before they ran.
    if cfg.attack.corruptions and not transfer_only:
        x, y, name = everything if cfg.eval.corruption_images == "all" else subset
        records += corruption_scores(source, loader_of(x, y), cfg.attack, dataset=job.dataset, seed=job.seed,
                                     device=device, quiet=quiet, images=name)
    return with_cell(records, job.regime, job.point)


# ---- a worker process of the local pool ----------------------------------------------------------------------------


def run_job(cfg: StudyConfig, job: Job, run_dir: str | Path, *, device=None, data_dir=None, quiet: bool = False):
    """Run one job of plan(cfg), wherever it runs (this process, a pool worker, a Slurm node): a training job's
    checkpoint path, or an attack job's records."""
    run = run_train_job if job.kind == "train" else run_attack_job
    return run(cfg, job, Path(run_dir), device=device, data_dir=data_dir, quiet=quiet)


def run_in_worker(cfg: StudyConfig, job: Job, run_dir: str, device, data_dir, threads: int):
    """Entry point of a worker process: one thread budget, one job, its result and its wall time. `cfg` arrives
    validated (pickled by the pool, as every argument is): a worker checks nothing again."""
    # through the environment too: train() calls set_threads() itself, which reads it (without it a worker went
    # back to every core, and two workers on two cores ran at 60% of their one-thread speed)
    os.environ["ATTNROBUST_THREADS"] = str(threads)
    set_threads(threads)
    started = time.perf_counter()
    result = run_job(cfg, job, run_dir, device=device, data_dir=data_dir, quiet=True)
    return result, time.perf_counter() - started


def own_device(slots) -> None:
    """Pool initializer on a GPU machine: this worker takes the next device of the `slots` queue and sees only it
    (CUDA_VISIBLE_DEVICES, set before torch touches CUDA), so its jobs' "cuda:0" is its own device."""
    os.environ["CUDA_VISIBLE_DEVICES"] = slots.get()


def start_worker(parent_pid: int, slots) -> None:
    # die_with_parent: a worker must not outlive a killed run and write into a folder the next run has locked
    die_with_parent(parent_pid)
    if slots is not None:
        own_device(slots)
