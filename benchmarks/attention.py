"""What attention costs: each model's training step and attack pass, our gates against their plain expressions.

    python benchmarks/attention.py [--models resnet14,cbam_resnet14,se_resnet14,eca_resnet14] [--strides 1,2]
                                   [--width 8] [--batch 128] [--repeats 7] [--threads 1]

Two variants, each in a fresh process (malloc's state is per process): "plain", the gates written as plain tensor
expressions (tests/plain_gates.py) with glibc's default malloc, i.e. the gates before issue 32; and "ours", the
gates of models.gating with runtime.keep_freed_memory, as a study runs. Each measures, for every model and stem
stride, batch 128 of 28x28x1 images, channels_last, one thread (a study's worker), the median of interleaved
repeats after warm-up of: a training step (forward, cross-entropy, backward, SGD with momentum); an attack pass
(eval mode, parameters frozen as attacks.core.attack_hygiene does, forward + backward to the input); and the same
attack pass with the model's BatchNorm folded into its convolutions, as checkpoint.load_attack_model gives the
study's attacks their models. Printed: milliseconds, each attention model over its twin (resnet14) in the same
variant and pass, ours over plain, and the achieved GFLOP/s beside the FLOPs of a step per image
(torch.utils.flop_counter; the attack pass does about the same arithmetic without the weight gradients).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the passes measured: a training step, an attack pass on the model as trained, and on it with its BatchNorm folded
# into the convolutions (models.fold_batchnorm), as checkpoint.load_attack_model gives it to the study's attacks
PASSES = ("train", "attack", "attack, BN folded")


def passes(model, optimizer, folded, x, y) -> dict:
    """The three passes (PASSES) as functions of nothing: a training step of model with optimizer on (x, y), and
    an attack pass on model and on folded, its BN-folded copy."""
    import torch
    import torch.nn.functional as F

    from attnrobust.attacks.core import attack_hygiene

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def attack_pass(m):  # as an attack runs: eval mode, parameters frozen (attacks.core.attack_hygiene)
        with attack_hygiene(m):
            xa = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(m(xa), y), [xa])
    return dict(zip(PASSES, (train, lambda: attack_pass(model), lambda: attack_pass(folded))))


def measure(variant: str, models: list[str], strides: list[int], width: int, batch: int, repeats: int,
            threads: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from attnrobust.models import build_model, fold_batchnorm
    from attnrobust.runtime import keep_freed_memory

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "tests"))
    from plain_gates import plain_gates
    if variant == "ours":
        keep_freed_memory()
    torch.manual_seed(0)
    x = torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    runs = {}
    for name in models:
        for stride in strides:
            model = build_model(name, 10, in_channels=1, width=width, mean=[0.5], std=[0.5],
                                stem_stride=stride).to(memory_format=torch.channels_last)
            for p in model.parameters():
                p.requires_grad_(True)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            folded = fold_batchnorm(copy.deepcopy(model))  # what checkpoint.load_attack_model gives the attacks
            fns = passes(model, optimizer, folded, x, y)
            with FlopCounterMode(display=False) as counter:
                fns["train"]()
            runs[(name, stride)] = (fns, counter.get_total_flops() / batch)
    times: dict = {key: {kind: [] for kind in PASSES} for key in runs}
    context = plain_gates() if variant == "plain" else _nothing()
    with context:
        for fns, _ in runs.values():  # warm-up: allocator, oneDNN kernel choice
            for _ in range(3):
                for kind in PASSES:
                    fns[kind]()
        for _ in range(repeats):
            for key, (fns, _) in runs.items():
                for kind in PASSES:
                    started = time.perf_counter()
                    fns[kind]()
                    times[key][kind].append(time.perf_counter() - started)
    return {f"{name}/{stride}": {**{f"{kind}_ms": 1000 * statistics.median(t[kind]) for kind in PASSES},
                                 "flops_per_image": runs[(name, stride)][1]}
            for (name, stride), t in times.items()}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet14,cbam_resnet14,se_resnet14,eca_resnet14")
    p.add_argument("--strides", default="1,2")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", choices=["plain", "ours"], help=argparse.SUPPRESS)  # the child processes
    args = p.parse_args()
    models, strides = args.models.split(","), [int(s) for s in args.strides.split(",")]
    if args.variant:
        print(json.dumps(measure(args.variant, models, strides, args.width, args.batch, args.repeats,
                                 args.threads)))
        return

    from attnrobust.runtime import cpu_facts
    facts = cpu_facts()
    print(f"CPU: {facts['cpu_model']} (torch kernels: {facts['cpu_capability']}), {args.threads} thread(s), "
          f"batch {args.batch} of 28x28x1, width {args.width}, channels_last")
    results = {}
    for variant in ("plain", "ours"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], check=True,
                             capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print("| model | stride | pass | plain ms | ours ms | ours/plain | plain vs twin | ours vs twin "
          "| MFLOP/img | ours GFLOP/s |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    twin = models[0]
    for name in models:
        for stride in strides:
            key = f"{name}/{stride}"
            for kind in PASSES:
                plain, ours = results["plain"][key][f"{kind}_ms"], results["ours"][key][f"{kind}_ms"]
                base_p = results["plain"][f"{twin}/{stride}"][f"{kind}_ms"]
                base_o = results["ours"][f"{twin}/{stride}"][f"{kind}_ms"]
                flops = results["ours"][key]["flops_per_image"]
                gflops = flops * args.batch / (ours / 1000) / 1e9 if kind == "train" else float("nan")
                print(f"| {name} | {stride} | {kind} | {plain:.1f} | {ours:.1f} | {ours / plain:.2f} | "
                      f"{plain / base_p:.2f} | {ours / base_o:.2f} | {flops / 1e6:.1f} | "
                      + (f"{gflops:.1f} |" if kind == "train" else "- |"))


if __name__ == "__main__":
    main()
