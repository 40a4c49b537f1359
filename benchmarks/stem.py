"""The ResNet stem with stride 1 (the CIFAR stem) vs stride 2 (the quick configs' `stem_stride = 2`), in one run.

    python benchmarks/stem.py [--models resnet14,cbam_resnet14] [--width 8] [--train-batch 64] [--batch 250]
                              [--repeats 5] [--threads 1]

A quick study's work is training steps (forward, cross-entropy, backward, SGD) and attack passes (forward+backward
with respect to the input, eval mode, frozen weights). Both are measured on Fashion-MNIST shaped batches (28x28,
one channel), channels_last as the study runs them, for each model built with stem_stride 1 and 2 from the same
seed; the ratio stride-1 time / stride-2 time is what the stride buys. Times are the minimum over interleaved
repeats. One thread by default: the study's side-by-side workers each have one.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from attnrobust.models import build_model
from layout import pass_ms as attack_ms  # benchmarks/ is on the path of a script run from it


def train_ms(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Milliseconds per image of one training step."""
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return (time.perf_counter() - started) * 1000 / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet14,cbam_resnet14")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=64, help="the quick study's train.batch_size")
    p.add_argument("--batch", type=int, default=250, help="attack batch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 1, 28, 28, generator=generator).contiguous(memory_format=torch.channels_last)
        return x, torch.randint(0, 10, (n,), generator=generator)

    x_train, y_train = batch(args.train_batch)
    x_attack, y_attack = batch(args.batch)
    print(f"width {args.width}, train batch {args.train_batch}, attack batch {args.batch}, {args.threads} thread(s), "
          f"channels_last, min of {args.repeats}")
    print(f"{'model':<16} {'pass':<7} {'stride 1 ms/img':>16} {'stride 2 ms/img':>16} {'ratio':>7}")
    for name in args.models.split(","):
        nets, optimizers, frozen = {}, {}, {}
        for stride in (1, 2):
            torch.manual_seed(0)
            nets[stride] = build_model(name, num_classes=10, in_channels=1, width=args.width,
                                       stem_stride=stride).to(memory_format=torch.channels_last).train()
            optimizers[stride] = torch.optim.SGD(nets[stride].parameters(), lr=0.01, momentum=0.9)
            torch.manual_seed(0)
            frozen[stride] = build_model(name, num_classes=10, in_channels=1, width=args.width,
                                         stem_stride=stride).to(memory_format=torch.channels_last).eval()
            for param in frozen[stride].parameters():
                param.requires_grad_(False)
        times: dict[tuple[str, int], list[float]] = {}
        for rep in range(args.repeats + 1):  # the first round warms up (oneDNN picks its kernels) and is dropped
            for stride in (1, 2):  # interleaved, so a disturbance hits both alike
                for kind, ms in (("train", train_ms(nets[stride], optimizers[stride], x_train, y_train)),
                                 ("attack", attack_ms(frozen[stride], x_attack, y_attack))):
                    if rep:
                        times.setdefault((kind, stride), []).append(ms)
        for kind in ("train", "attack"):
            a, b = min(times[(kind, 1)]), min(times[(kind, 2)])
            print(f"{name:<16} {kind:<7} {a:>16.3f} {b:>16.3f} {a / b:>6.2f}x")


if __name__ == "__main__":
    main()
