"""Training: one model on one dataset, reproducible, resumable, and data-parallel under torchrun.

Files, in the run folder OUT (attnrobust.runfolder; several models share one folder, so files are named per
run, NAME = runfolder.checkpoint_name(cfg)): checkpoints/NAME.safetensors (weights + metadata after the latest
finished epoch, see checkpoint.py), checkpoints/NAME.state.safetensors (resume state: weights, optimizer,
progress; removed when the run ends), logs/NAME.jsonl (one line per finished epoch), env.json.

Reproducibility: the batch order and augmentation are functions of (seed, epoch) (DeviceLoader), the learning
rate is a function of the step, and the global RNG (dropout) is reseeded from (seed, epoch) at every epoch start.
So a run resumed after a kill -9 replays exactly the steps an uninterrupted run takes: on the CPU the final
weights are identical bit for bit (with the same thread count: it decides the order of float sums). On CUDA,
cuDNN autotuning and atomics make runs close, not identical.

Data parallel: `batch_size` is the global batch; each of the W ranks trains on a strided 1/W slice of every
step's global batch (the same batches a single process sees), gradients are averaged by
DistributedDataParallel, metrics are summed over ranks, and rank 0 writes every file. BatchNorm statistics stay
per rank (plain DDP practice: SyncBatchNorm costs a collective per layer and has no CPU implementation), so with
BatchNorm the curve matches a single process closely rather than exactly.

Adversarial training (`adversarial`): every step trains on a batch crafted against the model being trained,
  "pgd":     PGD-AT (Madry et al. 2018): uniform random start in the L-inf eps-ball, `adv_steps` steps of
             alpha * sign(grad), each projected onto the ball and [0, 1]; alpha defaults to 2.5 * eps / steps.
  "fgsm-rs": FGSM with random start (Wong et al. 2020, "Fast is better than free"): the same with one step of
             alpha = 1.25 * eps by default.
The random starts come from a CPU generator seeded by (seed, epoch, step, rank), so resume stays exact. After
every epoch, PGD-10 accuracy on a fixed set of test images (`adv_check_n`) is logged as `adv_test_acc`; a
collapse of it (`catastrophic_overfitting`, see `is_collapse`) is flagged in the log and the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnrobust import models
from attnrobust.attacks import check_eps, loss_grad, pgd, predict, project_, uniform_start
from attnrobust.checkpoint import load_train_state, read_meta, save_checkpoint, save_train_state
from attnrobust.config import TrainConfig, regime_label
from attnrobust.data import DeviceLoader, get_spec, load_dataset
from attnrobust.distributed import barrier, broadcast_buffers, dist_info, init_distributed, sum_floats
from attnrobust.errors import UserError
from attnrobust.runfolder import RunFolder, checkpoint_name
from attnrobust.runtime import (atomic_write, resolve_device, seed_everything, set_threads,
                                write_env_json)

# Fields that change how fast a run goes or how often it is scored, not the weights it computes; a run may
# resume with them changed. (adv_check_n only decides what is logged and flagged: the check never stops a run.)
_MAY_CHANGE_ON_RESUME = ("compile", "eval_every", "n_test", "adv_check_n")
# Fields added after runs were already written, with the value an older run implicitly had: a finished run of
# before stays finished (and resumable) rather than "a different config".
_ADDED_LATER = {"adversarial": "none", "model_args": {}, "cell": ""}
# Collapse test (is_collapse): the held-out PGD accuracy falls below this share of its best so far ...
_COLLAPSE_SHARE = 0.3
# ... and that best showed real robustness: a model never robust (standard training, ~0% under PGD) cannot
# collapse, and on a few hundred images a drop from below 10% is within noise.
_COLLAPSE_MIN_BEST = 0.1
_ADV_CHECK_STEPS = 10
# Test-time batch: larger than the training batch is fine (no gradients kept).
_EVAL_BATCH = 500
# Steps between loss checks / progress-bar updates: each check waits for the device, so not every step.
_CHECK_EVERY = 50


def checkpoint_path(cfg: TrainConfig, out_dir: str | Path) -> Path:
    """Where `train(cfg, out_dir)` writes the model: RunFolder(out_dir).checkpoint(cfg)."""
    return RunFolder(out_dir).checkpoint(cfg)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to `peak`, then decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Distinct, reproducible seeds per (seed, epoch) for the global RNG (dropout).
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**63 - 1)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    # Random starts of adversarial training: a function of where the step is, not of what ran before it, so a
    # resumed run draws what an uninterrupted one draws; per rank, so that ranks do not share noise.
    return (seed * 1_000_003 + epoch * 7_919 + step * 104_729 + rank * 15_485_863 + 2) % (2**63 - 1)


def _comparable(train_cfg: dict[str, Any]) -> dict[str, Any]:
    d = {**_ADDED_LATER, **train_cfg}
    drop = set(_MAY_CHANGE_ON_RESUME)
    if d["adversarial"] == "none":  # the attack settings of a standard run change nothing it computes
        drop |= {"adv_eps", "adv_alpha", "adv_steps"}
    return {k: v for k, v in d.items() if k not in drop}


def _config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    now = _comparable(dataclasses.asdict(cfg))
    saved = _comparable(saved)
    return [f"{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(now) | set(saved))
            if saved.get(k) != now.get(k)]


def _refuse_if_different(path: Path, saved_cfg: dict[str, Any], cfg: TrainConfig, out_dir: Path) -> None:
    diffs = _config_differences(saved_cfg, cfg)
    if diffs:
        raise UserError(f"{path} belongs to a run with a different config ({'; '.join(diffs[:3])}); rerun with "
                        f"that run's settings to resume it, or pick a new output folder instead of {out_dir}")


def is_finished(cfg: TrainConfig, out_dir: str | Path) -> bool:
    """True when out_dir holds this config's checkpoint after its last epoch (False if missing or unreadable)."""
    try:
        meta = read_meta(checkpoint_path(cfg, out_dir))
    except UserError:
        return False
    return meta.get("epoch") == cfg.epochs and not _config_differences(meta.get("train", {}), cfg)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def _test_accuracy(model: torch.nn.Module, loader, amp_dtype, channels_last: bool, device) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp_dtype):
            correct += (model(x).argmax(1) == y).sum()
        count += len(y)
    correct_total, count_total = sum_floats([correct, count], device)
    return correct_total / max(1.0, count_total)


# ---- one step, adversarial batches, the collapse check -----------------------------------------------------------


def adversarial_batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                      steps: int, generator: torch.Generator | None = None,
                      amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """A training batch crafted against `model`: uniform random start in the L-inf eps-ball around x (from
    `generator`, a CPU torch.Generator), then `steps` steps x <- P(x + alpha * sign(grad of summed CE)), P the
    projection onto the ball and [0, 1]. steps=1 with alpha = 1.25 eps is FGSM-RS; more steps are PGD-AT.

    Crafted in the model's current mode, which train() leaves in train mode, as the reference recipes do (Madry
    et al.'s and Wong et al.'s code): BatchNorm normalizes with the statistics of the batch being attacked, the
    same ones the training step will use, so the attack climbs the loss the step then descends; eval mode would
    attack a different function (running statistics lag the weights, badly so early in training). Those forwards
    update the running statistics too, as in the references. Only input gradients are computed (autograd skips
    the weight gradients it is not asked for). The result is detached.
    """
    eps = check_eps(eps, "adv_eps")
    # bf16 autocast is safe for a gradient sign (fp32's range); fp16 gradients may underflow to 0, so fp32 then.
    device_type = x.device.type
    cast = (torch.autocast(device_type, dtype=amp_dtype) if amp_dtype == torch.bfloat16
            else torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda")
            else contextlib.nullcontext())
    x = x.detach()
    with torch.enable_grad(), cast:
        x_adv = uniform_start(x, eps, generator)
        for _ in range(steps):
            _, _, grad = loss_grad(model, x_adv, y)
            project_(x_adv.add_(grad.sign_(), alpha=alpha), x, eps)
    return x_adv.detach()


def make_adversary(cfg: TrainConfig, model: torch.nn.Module, generator: torch.Generator,
                   amp_dtype: torch.dtype | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The function (x, y) -> training batch of cfg's regime against `model` (None for standard training).
    Its random starts come from `generator`; train() reseeds it before every step."""
    if cfg.adversarial == "none":
        return None
    steps = 1 if cfg.adversarial == "fgsm-rs" else cfg.adv_steps
    eps, alpha = cfg.adv_eps, cfg.alpha()

    def adversary(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return adversarial_batch(model, x, y, eps=eps, alpha=alpha, steps=steps, generator=generator,
                                 amp_dtype=amp_dtype)
    return adversary


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, *, lr: float, label_smoothing: float = 0.0,
               amp_dtype: torch.dtype | None = None,
               adversary: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at learning rate `lr` on (x, y), or on adversary(x, y) when given (see make_adversary).

    Returns (mean loss, logits) of the batch trained on, detached and left on the device: reading them here would
    stall a GPU at every step.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    if adversary is not None:
        x = adversary(x, y)
    with _autocast(x.device, amp_dtype):
        out = net(x)
        loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), out.detach()


def is_collapse(accuracies: list[float], share: float = _COLLAPSE_SHARE, min_best: float = _COLLAPSE_MIN_BEST) -> bool:
    """Catastrophic overfitting at the last of `accuracies` (held-out PGD accuracy per epoch, oldest first): it is
    below `share` of the best earlier one, and that best was at least `min_best`.

    Relative to the run's own best rather than a fixed floor, because what a robust model reaches depends on the
    dataset and eps; 30% because a collapse (Wong et al. 2020, Fig. 3) takes PGD accuracy from tens of percent to
    ~0 within an epoch, while the epoch-to-epoch noise of a 500-image estimate is a few points.
    """
    if len(accuracies) < 2:
        return False
    best = max(accuracies[:-1])
    return best >= min_best and accuracies[-1] < share * best


def _pgd_check_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                        generator: torch.Generator) -> float:
    """PGD-10 accuracy (random start, step 2.5 eps / 10, eval mode via attacks.pgd, which restores the model's
    state) on the check images, in batches of _EVAL_BATCH. Draws only from `generator`: training is unaffected."""
    alpha = 2.5 * eps / _ADV_CHECK_STEPS
    correct = 0
    for start in range(0, len(y), _EVAL_BATCH):
        xb, yb = x[start:start + _EVAL_BATCH], y[start:start + _EVAL_BATCH]
        x_adv = pgd(model, xb, yb, eps, alpha, _ADV_CHECK_STEPS, random_start=True, generator=generator)
        correct += int((predict(model, x_adv[_ADV_CHECK_STEPS]) == yb).sum())
    return correct / max(1, len(y))


@dataclasses.dataclass
class _RunFiles:
    """The files of one training run inside a run folder (attnrobust.runfolder)."""

    checkpoint: Path
    state: Path
    log: Path

    @classmethod
    def of(cls, cfg: TrainConfig, out_dir: Path) -> _RunFiles:
        folder = RunFolder(out_dir)
        return cls(folder.checkpoint(cfg), folder.train_state(cfg), folder.train_log(cfg))


@dataclasses.dataclass
class _Data:
    """What a run trains and scores on, on the device."""

    spec: Any  # attnrobust.data.DatasetSpec
    loader: Any  # DeviceLoader of the training split
    test_loader: Any  # this rank's shard of the test split
    check: tuple[torch.Tensor, torch.Tensor] | None  # held-out images of the adversarial collapse check


@dataclasses.dataclass
class _Setup:
    """The model and its optimization state, fresh or resumed."""

    model: torch.nn.Module  # the bare model: checkpoints and adversarial batches use it
    net: torch.nn.Module  # what the steps call: the model, maybe wrapped in DDP and torch.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    channels_last: bool
    start_epoch: int
    history: list[dict[str, Any]]


def train(cfg: TrainConfig, out_dir: str | Path, *, device=None, data_dir: str | Path | None = None,
          quiet: bool = False) -> Path:
    """Train (or resume, or skip if finished) `cfg` into out_dir; return the final checkpoint's path. The API's way
    in: `cfg` is checked first (a TrainConfig built in Python has not met the config parser)."""
    cfg.validate(data_dir)
    return run_training(cfg, out_dir, device=device, data_dir=data_dir, quiet=quiet)


def run_training(cfg: TrainConfig, out_dir: str | Path, *, device=None, data_dir: str | Path | None = None,
                 quiet: bool = False) -> Path:
    """`train` of a config already checked: a study's jobs, whose configs config.validate checked at the door."""
    init_distributed()
    rank, world, _ = dist_info()
    main = rank == 0
    device = resolve_device(device)
    if device.type == "cpu":
        set_threads()
    out_dir = Path(out_dir)
    files = _RunFiles.of(cfg, out_dir)
    meta, resume = _existing_run(cfg, files, out_dir, main)
    if meta is not None and meta.get("epoch") == cfg.epochs:  # finished: never retrain
        return files.checkpoint

    data = _load_data(cfg, device, data_dir, rank, world, main)
    setup = _build(cfg, data.spec, device, resume, world)
    del resume
    meta_base = {"format": 1, "name": checkpoint_name(cfg), "dataset": cfg.dataset,
                 "num_classes": data.spec.num_classes, "in_channels": data.spec.channels,
                 "mean": list(data.spec.mean), "std": list(data.spec.std), "epochs": cfg.epochs, "seed": cfg.seed,
                 "train": dataclasses.asdict(cfg), "regime": regime_label(cfg)}
    # Crafted on the bare model, not through DDP (a forward there expects its own backward) or torch.compile.
    step_gen = torch.Generator()
    adversary = make_adversary(cfg, setup.model, step_gen, setup.amp_dtype)
    if main:
        write_env_json(RunFolder(out_dir).env, device=device)

    history = setup.history
    test_acc = history[-1]["test_acc"] if history else None
    for epoch in range(setup.start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        progress = _train_epoch(cfg, setup, data, epoch, adversary, step_gen, device, files, meta,
                                show=main and not quiet and sys.stderr.isatty())
        broadcast_buffers(setup.model)  # the checkpoint holds rank 0's BatchNorm statistics; score that model
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            test_acc = _test_accuracy(setup.model, data.test_loader, setup.amp_dtype, setup.channels_last, device)
        collapse = _collapse_check(cfg, setup.model, data.check, history, epoch, quiet)
        history.append({"epoch": epoch + 1, "loss": progress["loss"], "train_acc": progress["train_acc"],
                        "test_acc": test_acc, **collapse, "lr": progress["lr"],
                        "images_per_s": progress["images_per_s"], "seconds": time.perf_counter() - t_epoch})
        if main:
            meta = _save_epoch(cfg, setup, files, meta_base, history, quiet=quiet or sys.stderr.isatty())
        barrier()

    if main:
        if setup.start_epoch == cfg.epochs:  # the state file was ahead of the checkpoint: publish its weights
            save_checkpoint(files.checkpoint, setup.model, {**meta_base, "epoch": cfg.epochs,
                                                            "metrics": history[-1], **_collapse_meta(history)})
            _write_log(files.log, history)
        files.state.unlink(missing_ok=True)
    barrier()
    return files.checkpoint


def _existing_run(cfg: TrainConfig, files: _RunFiles, out_dir: Path, main: bool):
    """(checkpoint metadata or None, resume state or None) of what out_dir already holds of this run. Refuses
    another config's files; tidies a finished run's leftover state and the temporary files of killed writes."""
    meta = read_meta(files.checkpoint) if files.checkpoint.exists() else None
    if meta is not None:
        _refuse_if_different(files.checkpoint, meta.get("train", {}), cfg, out_dir)
    if meta is not None and meta.get("epoch") == cfg.epochs:
        barrier()  # every rank has read the checkpoint before rank 0 tidies up
        if main:  # a kill between the final checkpoint and removing the state leaves the state behind
            files.state.unlink(missing_ok=True)
        return meta, None
    resume = None
    if files.state.exists():
        resume = load_train_state(files.state)
        _refuse_if_different(files.state, resume[2].get("train", {}), cfg, out_dir)
    if main:  # temporary files of writes a kill interrupted (atomic_path names them .NAME.*.tmp)
        for stale in files.checkpoint.parent.glob(f".{checkpoint_name(cfg)}.*.tmp"):
            stale.unlink(missing_ok=True)
    if meta is not None and resume is None and main:
        print(f"attnrobust: {files.checkpoint} has no resume state beside it; training {checkpoint_name(cfg)} "
              f"from the start", file=sys.stderr)
    return meta, resume


def _load_data(cfg: TrainConfig, device: torch.device, data_dir, rank: int, world: int, main: bool) -> _Data:
    spec = get_spec(cfg.dataset, data_dir)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    x_train, y_train = load_dataset(cfg.dataset, "train", data_dir=data_dir)
    if cfg.n_train is not None:
        x_train, y_train = x_train[:cfg.n_train], y_train[:cfg.n_train]
    x_test, y_test = load_dataset(cfg.dataset, "test", data_dir=data_dir)
    if cfg.batch_size > len(x_train):
        raise UserError(f"batch_size: {cfg.batch_size} is larger than the {len(x_train)} training images of "
                        f"{cfg.dataset}; use a smaller batch size")
    if cfg.batch_size % world:
        raise UserError(f"batch_size: {cfg.batch_size} does not split evenly over {world} processes; use a "
                        f"multiple of {world}")
    # Every rank draws the same global batch (order and augmentation from (seed, epoch)) and trains on its
    # strided slice of it: the ranks together then compute exactly what one process computes, batch for batch.
    # (Sharding the epoch in the loader would give each rank other batches and its own augmentation stream.)
    loader = DeviceLoader(x_train, y_train, batch_size=cfg.batch_size, device=device, shuffle=True,
                          augment=spec.augment if cfg.augment else None, seed=cfg.seed, drop_last=True)
    # The check images: the first n of the whole test split (not of n_test, which may change on resume).
    n_check = min(cfg.check_images(), len(x_test)) if main else 0
    check = None
    if n_check:
        check = next(iter(DeviceLoader(x_test[:n_check], y_test[:n_check], batch_size=n_check, device=device)))
    if cfg.n_test is not None:
        x_test, y_test = x_test[:cfg.n_test], y_test[:cfg.n_test]
    # Each rank scores its own shard of the test split; together they cover every image exactly once.
    test_loader = DeviceLoader(x_test, y_test, batch_size=_EVAL_BATCH, device=device, rank=rank, world_size=world,
                               equal_shards=False)
    return _Data(spec, loader, test_loader, check)


def _build(cfg: TrainConfig, spec, device: torch.device, resume, world: int) -> _Setup:
    """The model, optimizer and loss scaler, from the seed or from the resume state."""
    seed_everything(cfg.seed)
    model = models.build_model(cfg.model, spec.num_classes, in_channels=spec.channels, width=cfg.width,
                               mean=spec.mean, std=spec.std, **cfg.model_args).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    use_cuda = device.type == "cuda"
    amp_dtype = None
    if (cfg.amp if cfg.amp is not None else use_cuda) and use_cuda:
        # bf16 is fast from Ampere (compute capability 8) on. Not is_bf16_supported(): it also says yes to the slow
        # emulation of older GPUs (where fp16 with a loss scaler is the fast choice), and it asks the current
        # device, not necessarily this one.
        amp_dtype = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    channels_last = cfg.channels_last is not False

    start_epoch, history = 0, []
    if resume is not None:
        model_state, optim_state, info = resume
        model.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(optim_state)
        if info.get("scaler"):
            scaler.load_state_dict(info["scaler"])
        start_epoch, history = info["epoch"], info["history"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if use_cuda else None)
    if cfg.compile:  # compiled around DDP so that gradient buckets still overlap with the backward pass
        net = torch.compile(net)
    return _Setup(model, net, optimizer, scaler, amp_dtype, channels_last, start_epoch, history)


def _train_epoch(cfg: TrainConfig, setup: _Setup, data: _Data, epoch: int, adversary, step_gen: torch.Generator,
                 device: torch.device, files: _RunFiles, meta: dict | None, *, show: bool) -> dict[str, float]:
    """One pass over the training split; returns the epoch's loss, train_acc, lr and images_per_s (all ranks)."""
    rank, world, _ = dist_info()
    steps_per_epoch = len(data.loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    t_epoch = time.perf_counter()
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))
    setup.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(total=steps_per_epoch, desc=f"{checkpoint_name(cfg)} {epoch + 1}/{cfg.epochs}",
               disable=not show, leave=False, dynamic_ncols=True)
    lr = cfg.lr
    for i, (x, y) in enumerate(data.loader.epoch(epoch)):
        if world > 1:
            x, y = x[rank::world], y[rank::world]
        lr = lr_at(epoch * steps_per_epoch + i, total_steps, warmup_steps, cfg.lr, cfg.schedule)
        if setup.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if adversary is not None:
            step_gen.manual_seed(_step_seed(cfg.seed, epoch, i, rank))
        loss, out = train_step(setup.net, setup.optimizer, setup.scaler, x, y, lr=lr,
                               label_smoothing=cfg.label_smoothing, amp_dtype=setup.amp_dtype, adversary=adversary)
        # Accumulated on the device: reading them every step would stall the GPU on each one. With an
        # adversary, loss and train_acc are those of the adversarial batches.
        loss_sum += loss * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if (i + 1) % _CHECK_EVERY == 0:
            (running,) = sum_floats([loss_sum], device)
            _stop_if_diverged(running, epoch, files.checkpoint, meta)
            bar.set_postfix(loss=f"{running / (seen * world):.3f}", lr=f"{lr:.3g}")
    bar.close()
    loss_total, correct_total, seen_total = sum_floats([loss_sum, correct, seen], device)
    # Timed after the reduction, which waits for the device: on CUDA the last steps may still be queued before.
    train_seconds = time.perf_counter() - t_epoch
    _stop_if_diverged(loss_total, epoch, files.checkpoint, meta)
    return {"loss": loss_total / seen_total, "train_acc": correct_total / seen_total, "lr": lr,
            "images_per_s": seen_total / train_seconds}


def _collapse_check(cfg: TrainConfig, model: torch.nn.Module, check, history: list[dict[str, Any]], epoch: int,
                    quiet: bool) -> dict[str, Any]:
    """adv_test_acc and catastrophic_overfitting of this epoch (None and False without check images: standard
    training, or a rank other than 0). Its own generator, so the check changes nothing the training computes."""
    if check is None:
        return {"adv_test_acc": None, "catastrophic_overfitting": False}
    x_check, y_check = check
    adv_acc = _pgd_check_accuracy(model, x_check, y_check, cfg.adv_eps,
                                  torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch)))
    earlier = [r["adv_test_acc"] for r in history if r.get("adv_test_acc") is not None]
    collapsed = is_collapse([*earlier, adv_acc])
    if collapsed and not quiet:
        print(f"attnrobust: warning: {checkpoint_name(cfg)} epoch {epoch + 1}: catastrophic overfitting, PGD "
              f"accuracy on {len(y_check)} test images fell to {adv_acc:.3f} (best {max(earlier):.3f}); the run "
              f"goes on and its checkpoint is flagged", file=sys.stderr)
    return {"adv_test_acc": adv_acc, "catastrophic_overfitting": collapsed}


def _save_epoch(cfg: TrainConfig, setup: _Setup, files: _RunFiles, meta_base: dict[str, Any],
                history: list[dict[str, Any]], *, quiet: bool) -> dict[str, Any]:
    """Rank 0 after each epoch: resume state, checkpoint, log, a progress line; returns the checkpoint's meta."""
    epoch, record = history[-1]["epoch"], history[-1]
    # State first: whatever instant a kill lands, the state file is never behind the checkpoint. Not after the
    # last epoch: the final checkpoint marks the run finished, and until it is written the previous epoch's state
    # and checkpoint agree (a kill then redoes the last epoch). For a ResNet-50 that is a 200 MB write (weights
    # and momentum) saved per training run.
    if epoch < cfg.epochs:
        info = {"epoch": epoch, "history": history, "train": dataclasses.asdict(cfg),
                "scaler": setup.scaler.state_dict() if setup.scaler.is_enabled() else None}
        save_train_state(files.state, setup.model, setup.optimizer, info)
    meta = {**meta_base, "epoch": epoch, "metrics": record, **_collapse_meta(history)}
    save_checkpoint(files.checkpoint, setup.model, meta)
    _write_log(files.log, history)
    if not quiet:
        scored = "-" if record["test_acc"] is None else f"{record['test_acc']:.3f}"
        print(f"{checkpoint_name(cfg)} epoch {epoch}/{cfg.epochs}: loss {record['loss']:.4f} "
              f"train {record['train_acc']:.3f} test {scored} ({record['images_per_s']:.0f} img/s)",
              file=sys.stderr)
    return meta


def _collapse_meta(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Checkpoint flags: whether any epoch so far collapsed (it stays flagged: the weights went through it), and
    the first such epoch (None if none)."""
    epochs = [r["epoch"] for r in history if r.get("catastrophic_overfitting")]
    return {"catastrophic_overfitting": bool(epochs), "collapse_epoch": epochs[0] if epochs else None}


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the history kept in the resume state, so a resumed run's log has each epoch once.
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in history))


def _stop_if_diverged(loss_sum: float, epoch: int, ckpt: Path, meta: dict | None) -> None:
    if math.isfinite(loss_sum):
        return
    kept = (f"the last good checkpoint ({ckpt}, epoch {meta['epoch']}) is kept" if meta is not None
            else "no checkpoint was written")
    raise UserError(f"training loss became {loss_sum} in epoch {epoch + 1}; {kept}; lower the learning rate "
                    f"(--lr) and train into a new output folder")
