"""How cheap can CBAM get in eager PyTorch? Two lower bounds on its cost over its twin, measured beside the real gate.

    python benchmarks/attention_bounds.py [--stride 1] [--width 8] [--batch 128] [--repeats 11] [--threads 1]
                                          [--no-compile]

benchmarks/attention.py measures what the gates cost; this asks what any implementation of them could cost, to
tell "not optimized enough" from "not reachable this way". In one process, interleaved, on the same batch
(28x28x1, channels_last, one thread, median of the repeats after warm-up), for each pass of benchmarks/attention.py
(training step, attack pass, attack pass with BN folded), it times:

- "twin": resnet14, the model without attention;
- "ours": cbam_resnet14 with `models.gating.cbam`, as the study runs it;
- "full-size passes only": the gate's full-size passes as `models.gating` runs them, with CBAM's small
  sub-networks replaced by a sigmoid of a sum each, differentiated in place (`_FullSizeOnly`). Not CBAM: what is left
  when the MLP, the 7x7 conv and the BN cost nothing, i.e. a lower bound for any way of computing them (by hand,
  fused, batched) beside the gate's full-size passes as they are;
- "fused passes": the real sub-networks, with every full-size pass of the gate compiled by `torch.compile`
  (inductor's C++ kernels on the CPU) into six kernels that fuse each product with its reduction, and x * c never
  stored (recomputed inside the kernels): what fusing the elementwise work buys, short of hand-written kernels.
  Needs a C++ compiler; the first run compiles for 15-40 s (cached after), skipped with --no-compile.

Each is printed in milliseconds and as a ratio to the twin in the same pass.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import types

import torch
import torch.nn.functional as F
from torch.autograd import Function

from attention import PASSES, passes  # benchmarks/ is on the path of a script run from it
from attnrobust.models import build_model, fold_batchnorm, gating
from attnrobust.models.attention import CBAM
from attnrobust.runtime import cpu_facts, keep_freed_memory


class _FullSizeOnly(Function):
    """gating._CBAM's full-size passes, line for line, around sub-networks that cost two small elementwise ops each
    and are differentiated in place: channel gate c = sigmoid(avg + max), spatial gate s = sigmoid(max + mean) over
    channels. Not CBAM: its cost over the twin bounds from below any implementation of CBAM's sub-networks (by
    hand, fused, batched) that keeps these passes."""

    @staticmethod
    def forward(ctx, x):
        xmax, where = F.adaptive_max_pool2d(x, 1, return_indices=True)
        c = torch.sigmoid(x.mean(dim=(2, 3)) + xmax.flatten(1))
        x1 = x * c[:, :, None, None]
        cmax, pooled = gating._max_and_mean_over_channels(x1)
        s = torch.sigmoid(pooled[:, :1] + pooled[:, 1:])
        ctx.save_for_backward(x, x1, c, s, cmax, where.flatten(1))
        return x1 * s

    @staticmethod
    def backward(ctx, grad_y):
        x, x1, c, s, cmax, where = ctx.saved_tensors
        b, channels, h, w = x.shape
        grad_z = (grad_y * x1).sum(dim=1, keepdim=True) * s * (1 - s)  # both pooled maps get it
        hit = torch.eq(x1, cmax, out=torch.empty_like(x1))
        share = grad_z / hit.sum(dim=1, keepdim=True)
        grad_x1 = hit.mul_(share).add_(grad_z / channels).addcmul_(grad_y, s)
        grad_logit = (grad_x1 * x).sum(dim=(2, 3)) * c * (1 - c)  # the mean's and the max's gradient
        grad_x = torch.addcmul(grad_logit[:, :, None, None] / (h * w), grad_x1, c[:, :, None, None], out=grad_x1)
        grad_x.view(b, channels, h * w).scatter_add_(2, where[:, :, None], grad_logit[:, :, None])
        return grad_x


def _full_size_only(self: CBAM, x: torch.Tensor) -> torch.Tensor:
    return _FullSizeOnly.apply(x)


def _kernels():
    """The gate's full-size passes as compiled functions (compiled lazily, on first call, per shape)."""
    compile_ = torch.compile(dynamic=False, fullgraph=True)

    def cg(c):
        return c[:, :, None, None]

    def grad_x1(gy, x, c, s, cmax, count, gp):  # as gating._CBAM.backward, with x * c recomputed
        hit = (x * cg(c) == cmax).to(x.dtype)
        return hit * (gp[:, :1] / count) + gp[:, 1:] / x.shape[1] + gy * s

    @compile_
    def pool_positions(x):
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))

    @compile_
    def pool_channels(x, c):
        x1 = x * cg(c)
        cmax = x1.amax(dim=1, keepdim=True)
        ties = (x1 == cmax).sum(dim=1, keepdim=True, dtype=x.dtype)
        return cmax, torch.cat([cmax, x1.mean(dim=1, keepdim=True)], dim=1), ties

    @compile_
    def apply(x, c, s):
        return x * cg(c) * s

    @compile_
    def grad_s(gy, x, c):
        return (gy * x * cg(c)).sum(dim=1, keepdim=True)

    @compile_
    def grad_c(gy, x, c, s, cmax, count, gp):
        return (grad_x1(gy, x, c, s, cmax, count, gp) * x).sum(dim=(2, 3))

    @compile_
    def grad_x(gy, x, c, s, cmax, count, gp, gavg):
        return grad_x1(gy, x, c, s, cmax, count, gp) * cg(c) + cg(gavg) / (x.shape[2] * x.shape[3])
    return types.SimpleNamespace(**{f.__name__: f for f in (pool_positions, pool_channels, apply, grad_s, grad_c,
                                                             grad_x)})


class _FusedCBAM(Function):
    """gating._CBAM with its full-size passes compiled (`_kernels`); sub-networks differentiated as there."""

    @staticmethod
    def forward(ctx, x, kernels, channel, spatial, *params):
        avg, xmax = kernels.pool_positions(x)
        where = F.adaptive_max_pool2d(x, 1, return_indices=True)[1].flatten(1)
        with torch.enable_grad():
            (avg_in, avg_seen), (max_in, max_seen) = gating._subnetwork_input(avg), gating._subnetwork_input(xmax)
            c = channel(avg_seen, max_seen)
        gate_c = c.detach()
        cmax, pooled, ties = kernels.pool_channels(x, gate_c)
        with torch.enable_grad():
            pooled_in, pooled_seen = gating._subnetwork_input(pooled)
            s = spatial(pooled_seen)
        gate_s = s.detach()
        ctx.save_for_backward(x, gate_c, gate_s, cmax, ties, where)
        ctx.graphs, ctx.params, ctx.kernels = (avg_in, max_in, c, pooled_in, s), params, kernels
        return kernels.apply(x, gate_c, gate_s)

    @staticmethod
    def backward(ctx, gy):
        x, c, s, cmax, ties, where = ctx.saved_tensors
        avg_in, max_in, c_graph, pooled_in, s_graph = ctx.graphs
        k, wanted = ctx.kernels, gating._wanted(ctx)
        b, channels, h, w = x.shape
        gp, *grad_spatial = torch.autograd.grad(s_graph, [pooled_in, *wanted], k.grad_s(gy, x, c),
                                                allow_unused=True)
        gavg, gmax, *grad_channel = torch.autograd.grad(c_graph, [avg_in, max_in, *wanted],
                                                        k.grad_c(gy, x, c, s, cmax, ties, gp), allow_unused=True)
        gx = k.grad_x(gy, x, c, s, cmax, ties, gp, gavg)
        gx.view(b, channels, h * w).scatter_add_(2, where[:, :, None], gmax[:, :, None])
        return (gx, None, None, None, *gating._param_grads(ctx, grad_spatial, grad_channel))


def _fused_passes(kernels):
    def forward(self: CBAM, x: torch.Tensor) -> torch.Tensor:
        params = list(self.parameters())
        if gating._needs_graph(x, params):
            return _FusedCBAM.apply(x, kernels, self.channel, self.spatial, *params)
        return CBAM.forward(self, x)
    return forward


def _with_gate(model: torch.nn.Module, forward) -> torch.nn.Module:
    """model with every CBAM module's forward replaced (None: as it is)."""
    if forward is not None:
        for m in model.modules():
            if isinstance(m, CBAM):
                m.forward = types.MethodType(forward, m)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-compile", action="store_true", help="skip the variant that needs torch.compile")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    variants = {"twin": ("resnet14", None), "ours": ("cbam_resnet14", None),
                "full-size passes only": ("cbam_resnet14", _full_size_only)}
    if not args.no_compile:
        variants["fused passes"] = ("cbam_resnet14", _fused_passes(_kernels()))

    def model_passes(name, forward):
        torch.manual_seed(0)
        model = build_model(name, 10, in_channels=1, width=args.width, mean=[0.5], std=[0.5],
                            stem_stride=args.stride).to(memory_format=torch.channels_last)
        folded = _with_gate(fold_batchnorm(copy.deepcopy(model)), forward)
        model = _with_gate(model, forward)
        return passes(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), folded, x, y)

    runs = {label: model_passes(*spec) for label, spec in variants.items()}
    started = time.perf_counter()
    for fns in runs.values():  # warm-up (and the compilation)
        for _ in range(3):
            for fn in fns.values():
                fn()
    warm_up = time.perf_counter() - started
    times = {label: {kind: [] for kind in PASSES} for label in runs}
    for _ in range(args.repeats):
        for label, fns in runs.items():
            for kind, fn in fns.items():
                started = time.perf_counter()
                fn()
                times[label][kind].append(time.perf_counter() - started)
    facts = cpu_facts()
    print(f"CPU: {facts['cpu_model']} (torch kernels: {facts['cpu_capability']}), {args.threads} thread(s), batch "
          f"{args.batch} of 28x28x1, width {args.width}, stem stride {args.stride}, channels_last; warm-up "
          f"(compilation included) {warm_up:.0f} s")
    print("| pass | " + " | ".join(runs) + " |")
    print("| --- |" + " ---: |" * len(runs))
    for kind in PASSES:
        twin = statistics.median(times["twin"][kind])
        cells = [f"{1000 * statistics.median(t[kind]):.1f} ({statistics.median(t[kind]) / twin:.2f}x)"
                 for t in times.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
