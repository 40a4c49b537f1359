"""Attack passes in NCHW vs channels_last, on the quick study's models, in one run.

    python benchmarks/layout.py [--models resnet14,cbam_resnet14,vgg16_bn] [--width 8] [--batch 250]
                                [--repeats 5] [--threads 1]

An attack's cost is forward+backward passes with respect to the input (eval mode, frozen weights). Checkpoints are
loaded in the layout they trained in (attnrobust.checkpoint.load_model: channels_last unless the training config
said otherwise); this measures what that choice buys per pass, the model in each layout on the same Fashion-MNIST
shaped batch (28x28, one channel), and prints ms per image and the ratio NCHW / channels_last. Times are the
minimum over interleaved repeats. One thread by default: the study's side-by-side workers each have one.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from attnrobust.models import build_model


def pass_ms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Milliseconds per image of one forward+backward with respect to the input."""
    started = time.perf_counter()
    xr = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    return (time.perf_counter() - started) * 1000 / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet14,cbam_resnet14,vgg16_bn")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=250, help="attack batch (250: the README table's setting)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    print(f"forward+backward w.r.t. the input, batch {args.batch}, width {args.width}, {args.threads} thread(s), "
          f"min of {args.repeats}")
    print(f"{'model':<16} {'NCHW ms/img':>12} {'NHWC ms/img':>12} {'ratio':>7}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        nchw = build_model(name, num_classes=10, in_channels=1, width=args.width).eval()
        for param in nchw.parameters():
            param.requires_grad_(False)
        nhwc = build_model(name, num_classes=10, in_channels=1, width=args.width).eval()
        nhwc.load_state_dict(nchw.state_dict())
        nhwc = nhwc.to(memory_format=torch.channels_last)
        for param in nhwc.parameters():
            param.requires_grad_(False)
        times = {"nchw": [], "nhwc": []}
        for model in (nchw, nhwc):  # warm-up: oneDNN picks and caches its kernels on the first call
            pass_ms(model, x, y)
        for _ in range(args.repeats):  # interleaved, so a disturbance hits both layouts alike
            times["nchw"].append(pass_ms(nchw, x, y))
            times["nhwc"].append(pass_ms(nhwc, x, y))
        a, b = min(times["nchw"]), min(times["nhwc"])
        print(f"{name:<16} {a:>12.3f} {b:>12.3f} {a / b:>6.2f}x")


if __name__ == "__main__":
    main()
