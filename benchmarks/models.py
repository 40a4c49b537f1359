"""Training throughput of every study model on this machine, quick and full sizes, in one run.

    python benchmarks/models.py [--device cpu] [--steps 5] [--full-steps 3] [--sizes quick,full]

Train: images/s of forward + backward + SGD step on random 3x32x32 images (the CIFAR shape; Fashion-MNIST's
1x32x32 costs about the same, only the first conv differs). Eval: images/s of an eval-mode forward under
inference_mode (what scoring an attack costs; crafting one costs about a training step). Each model gets a few
warm-up steps first (allocator, thread pool, oneDNN kernel selection); then the models of a size take
turns, one timed step each per round, and each rate comes from the model's median step. "vs plain" is the
ratio to the model's twin (the same ResNet without attention, `models.model_info`) measured in the same run, so
it holds across machines better than the absolute numbers do.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from attnrobust.models import build_model, model_info

# (name, width, batch): the quick study's sizes, then the paper's (width 64) with smaller batches so a CPU run
# stays within minutes.
QUICK = [(n, 16, 64) for n in ("resnet14", "cbam_resnet14", "se_resnet14", "eca_resnet14", "bot_resnet14",
                               "resnet26", "cbam_resnet26", "se_resnet26", "eca_resnet26", "bot_resnet26",
                               "vgg16_bn")]
FULL = [(n, 64, 16) for n in ("resnet50", "cbam_resnet50", "eca_resnet50", "bot_resnet50", "vgg16_bn")]
SIZES = {"quick": (QUICK, True), "full": (FULL, False)}  # (models, whether eval-mode rates are measured too)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model, batch: int, device: torch.device):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _eval_step(model, batch: int, device: torch.device):
    x = torch.rand(batch, 3, 32, 32, device=device)

    def step():
        model.eval()
        with torch.inference_mode():
            model(x)

    return step


def rates(steps_fns, batches, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Images/s of each step function. The models take turns, one step each per round, so a change in load from
    other processes hits all of them alike; the median step time ignores the odd step slowed by one."""
    for fn in steps_fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in steps_fns]
    for _ in range(steps):
        for fn, ts in zip(steps_fns, times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - start)
    return [b / statistics.median(ts) for b, ts in zip(batches, times)]


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:8.2f}" if value and base else f"{'':>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per model at the quick sizes")
    parser.add_argument("--full-steps", type=int, default=3, help="timed steps per model at the full sizes")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--sizes", default="quick,full", help="comma-separated: quick, full (default both)")
    args = parser.parse_args()
    sizes_run = args.sizes.split(",")
    if not sizes_run or any(s not in SIZES for s in sizes_run):
        parser.error(f"--sizes takes a comma-separated list of {', '.join(SIZES)}, got {args.sizes!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    # The load average says whether other processes shared the CPU (then the absolute numbers are low).
    print(f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    print(f"{'model':<15} {'width':>5} {'batch':>5} {'params':>11} {'train img/s':>11} {'vs plain':>8} "
          f"{'eval img/s':>10} {'vs plain':>8}")
    for size in sizes_run:
        table, with_eval = SIZES[size]
        steps = args.steps if size == "quick" else args.full_steps
        models = [build_model(name, 10, in_channels=3, width=width).to(device) for name, width, _ in table]
        batches = [batch for _, _, batch in table]
        train = rates([_train_step(m, b, device) for m, b in zip(models, batches)], batches, args.warmup, steps,
                      device)
        evals = (rates([_eval_step(m, b, device) for m, b in zip(models, batches)], batches, args.warmup,
                       2 * steps, device) if with_eval else [None] * len(models))
        index = {name: i for i, (name, _, _) in enumerate(table)}
        for (name, width, batch), model, tr, ev in zip(table, models, train, evals):
            base = index.get(model_info(name).twin)
            params = sum(p.numel() for p in model.parameters())
            ev_s = f"{ev:10.1f}" if ev else f"{'-':>10}"
            print(f"{name:<15} {width:>5} {batch:>5} {params:>11,} {tr:>11.1f} "
                  f"{_ratio(tr, None if base is None else train[base])} {ev_s} "
                  f"{_ratio(ev, None if base is None else evals[base])}", flush=True)
        del models


if __name__ == "__main__":
    main()
