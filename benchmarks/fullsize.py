"""CPU time of one full-width training step of the paper's models, to plan a full study on this machine.

One step is what attnrobust.train runs per batch, without the loader: forward, cross-entropy, backward and an SGD
update (momentum 0.9, Nesterov, weight decay, as the recipes), on the published models at full width (64) with
the cifar variant, in channels_last as train() runs them on a CPU. Inputs are random pixels in the two shapes the
study uses: 32x32x3 (CIFAR-10/100) and 28x28x1 (Fashion-MNIST).

Per model and shape: `--warmup` steps first (the first ones pay oneDNN's kernel selection and allocations), then
`--steps` timed steps; the table gives the median and the fastest step, images/s at the median, and the hours one
epoch of the full training split (CIFAR 50,000 images, Fashion-MNIST 60,000) would take at that speed. On a shared
machine the fastest step is the one least disturbed by other processes; run it on an idle machine for numbers to
publish. The header names the CPU and the instruction set torch uses (runtime.cpu_facts), since oneDNN's speed
depends on it (AVX-512 vs AVX2).

    python benchmarks/fullsize.py                        # batch 32, 2 warm-up + 5 timed steps, every model/shape
    python benchmarks/fullsize.py --steps 1 --warmup 0 --batch 2      # a smoke run
    python benchmarks/fullsize.py --models resnet50 --shapes 32x32x3 --threads 1
    python benchmarks/fullsize.py --gpu-tflops 100       # + the paper study's GPU time at 100 TFLOP/s sustained

The GPU estimate is arithmetic, not a measurement (no GPU here): the FLOPs of one training step and of one forward
pass per image are counted (torch.utils.flop_counter: convolutions and matrix products, which are nearly all of
them; CBAM's elementwise gates are not counted, so its estimate is a lower bound), multiplied by what the `paper`
config does (per dataset: epochs x training images per model and seed; per source and seed on the 10,000 test
images, the FGSM sweep (one forward+backward, 7 eps x 3 targets forwards) and PGD-20 (20 forward+backwards,
3 step counts x 3 targets forwards), a forward+backward to the input counted as two forwards), and divided by the
sustained rate given (`--gpu-tflops`; state the one you assume).
"""

from __future__ import annotations

import argparse
import statistics
import time

MODELS = ("resnet50", "cbam_resnet50", "vgg16_bn")
# The paper config's schedule (attnrobust.config.DEFAULTS via configs/paper.toml): dataset -> (shape, epochs,
# training images); 3 seeds; attacks on 10,000 test images per source and seed.
PAPER = {"fashion-mnist": ("28x28x1", 15, 60_000), "cifar10": ("32x32x3", 40, 50_000),
         "cifar100": ("32x32x3", 60, 50_000)}
PAPER_SEEDS, PAPER_TEST, PAPER_TARGETS = 3, 10_000, 3
# forwards per attacked image and source: FGSM 1 fwd+bwd (= 2 fwd) + 7 eps x 3 targets; PGD-20 20 fwd+bwd +
# 3 step counts x 3 targets
ATTACK_FORWARDS = (2 + 7 * PAPER_TARGETS) + (20 * 2 + 3 * PAPER_TARGETS)
# shape name -> (channels, height, width, classes, training images per epoch); classes do not change the cost
# measurably (a 2048x10 vs 2048x100 head), so CIFAR-10 stands for both CIFAR datasets.
SHAPES = {"32x32x3": (3, 32, 32, 10, 50_000), "28x28x1": (1, 28, 28, 10, 60_000)}


def flops_per_image(model_name: str, shape: str) -> tuple[float, float]:
    """(FLOPs of one training step, FLOPs of one eval forward) per image, counted on a batch of 2."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from attnrobust.models import build_model

    channels, height, width, classes, _ = SHAPES[shape]
    model = build_model(model_name, classes, in_channels=channels, width=64)
    x, y = torch.rand(2, channels, height, width), torch.randint(0, classes, (2,))
    with FlopCounterMode(display=False) as train_count:
        F.cross_entropy(model(x), y).backward()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as forward_count:
        model(x)
    return train_count.get_total_flops() / 2, forward_count.get_total_flops() / 2


def step_times(model_name: str, shape: str, batch: int, warmup: int, steps: int, channels_last: bool) -> list[float]:
    """Seconds of each of `steps` timed training steps after `warmup` untimed ones."""
    import torch
    import torch.nn.functional as F

    from attnrobust.models import build_model

    channels, height, width, classes, _ = SHAPES[shape]
    torch.manual_seed(0)
    model = build_model(model_name, classes, in_channels=channels, width=64)
    model.train()
    x = torch.rand(batch, channels, height, width)
    y = torch.randint(0, classes, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="\n".join(__doc__.split("\n")[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: {','.join(MODELS)})")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated (default: {','.join(SHAPES)})")
    p.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: $ATTNROBUST_THREADS, else every core this process may use)")
    p.add_argument("--no-channels-last", action="store_true", help="NCHW instead of train()'s channels_last")
    p.add_argument("--gpu-tflops", type=float, default=None,
                   help="also estimate the paper study's GPU time at this sustained rate (TFLOP/s)")
    args = p.parse_args(argv)
    models, shapes = args.models.split(","), args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape {unknown[0]!r}; valid: {', '.join(SHAPES)}")
    if args.batch < 1 or args.steps < 0 or args.warmup < 0:
        p.error("--batch must be >= 1, --steps and --warmup >= 0 (--steps 0: FLOPs only)")

    import torch

    from attnrobust.models import list_models
    from attnrobust.runtime import cpu_facts, set_threads

    bad = [m for m in models if m not in list_models()]
    if bad:
        p.error(f"unknown model {bad[0]!r}; valid: {', '.join(list_models())}")

    threads = set_threads(args.threads)
    facts = cpu_facts()
    print(f"{facts['cpu_model']}; torch {torch.__version__} kernels: {facts['cpu_capability']}; "
          f"avx512f: {facts['cpu_avx512f']}; {threads} threads; batch {args.batch}; "
          f"{'NCHW' if args.no_channels_last else 'channels_last'}; {args.warmup} warm-up + {args.steps} timed steps")
    print(f"{'model':<14} {'input':<8} {'median ms':>10} {'fastest ms':>11} {'images/s':>9} {'h/epoch':>8} "
          f"{'GFLOP/img':>10}")
    flops = {}
    for model_name in models:
        for shape in shapes:
            flops[model_name, shape] = flops_per_image(model_name, shape)
            if args.steps == 0:
                continue
            times = step_times(model_name, shape, args.batch, args.warmup, args.steps, not args.no_channels_last)
            median = statistics.median(times)
            per_s = args.batch / median
            epoch_h = SHAPES[shape][4] / per_s / 3600
            print(f"{model_name:<14} {shape:<8} {median * 1e3:10.0f} {min(times) * 1e3:11.0f} {per_s:9.1f} "
                  f"{epoch_h:8.2f} {flops[model_name, shape][0] / 1e9:10.2f}", flush=True)
    if args.gpu_tflops:
        print_gpu_estimate(flops, args.gpu_tflops)


def print_gpu_estimate(flops: dict, tflops: float) -> None:
    """The paper study's FLOPs (training and attacks) per dataset and model, and the time at `tflops`."""
    print(f"\npaper study ({PAPER_SEEDS} seeds; attacks on {PAPER_TEST} test images per source) at {tflops:g} "
          f"TFLOP/s sustained:")
    total = 0.0
    for dataset, (shape, epochs, n_train) in PAPER.items():
        for model_name in MODELS:
            if (model_name, shape) not in flops:
                continue
            train_step, forward = flops[model_name, shape]
            train = PAPER_SEEDS * epochs * n_train * train_step
            attack = PAPER_SEEDS * PAPER_TEST * ATTACK_FORWARDS * forward
            total += train + attack
            print(f"  {dataset:<14} {model_name:<14} train {epochs} x {n_train} x {train_step / 1e9:.2f} GFLOP "
                  f"x {PAPER_SEEDS} = {train / 1e15:.1f} PFLOP; attacks {attack / 1e15:.2f} PFLOP")
    print(f"  total {total / 1e15:.1f} PFLOP = {total / (tflops * 1e12) / 3600:.1f} GPU-hours at {tflops:g} TFLOP/s")


if __name__ == "__main__":
    main()
