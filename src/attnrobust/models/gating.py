"""The full-size arithmetic of the attention gates (CBAM, SE, ECA), as three autograd functions with hand-written
backward passes: the same function as the plain tensor expressions, at close to the cost of the memory it touches.

Why: a gate adds about 2% to a block's FLOPs, yet written as plain tensor expressions it doubled a width-8
cbam_resnet14's training step on a CPU (benchmarks/attention.py). Autograd's generic backward formulas make several
full-size temporaries per gate (an expanded gradient divided by H*W, zeros scattered at the argmax, a product
per factor) in whatever layout their inputs happen to give, so a channels_last feature map keeps meeting
gradients in the other layout, and adding them runs a strided kernel. Here each backward touches the feature map
in a handful of passes, every full-size tensor in the input's own layout; everything small (the MLP, the 7x7 conv,
BN, the sigmoids) stays ordinary autograd, so parameters, hooks and running statistics behave as before.

The three pieces, for a feature map x [B, C, H, W]:
- `pool_spatial(x, with_max)`: x's mean (and max) over the H*W positions, per channel -> [B, C] each;
- `scale_and_pool_channels(x, c)`: x1 = x * c (c [B, C] broadcast over positions), and x1's max and mean over
  the channels at every position -> ([B, C, H, W], [B, 2, H, W], max first, as CBAM's official code);
- `scale_positions(x, s)` / `scale_channels(x, c)`: x * s for a spatial gate s [B, 1, H, W] (CBAM's second) or a
  channel gate c [B, C] (SE and ECA).

The other half of what the gates cost was memory that glibc had handed back to the kernel, so that every new
feature map page-faulted: `runtime.keep_freed_memory` (benchmarks/attention.py measures both together).

Ties at a maximum: the max over positions sends its gradient to the one position `adaptive_max_pool2d` picks
(as the official code's max-pooling, and this code's before, in training); the max over channels shares it evenly
between tied channels (as `amax`'s own backward does, where `max(dim)` gives it all to one). Both are valid
subgradients; ties occur where a block's zero-initialized BN makes a whole map equal, before the first step.

Only first derivatives are provided (training and the attacks need no more): the backward passes are marked
`once_differentiable`, so a second derivative through them raises an error instead of a wrong number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function
from torch.autograd.function import once_differentiable


def _spatial(t: torch.Tensor) -> torch.Tensor:
    """A [B, C] per-channel value as [B, C, 1, 1], to broadcast over positions."""
    return t[:, :, None, None]


def _layout(x: torch.Tensor) -> torch.memory_format:
    """x's memory format, for a gradient made from scratch to match it (a full-size tensor meeting another in the
    other layout makes every elementwise op between them a strided, several times slower one)."""
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _PoolSpatial(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, with_max: bool):
        ctx.set_materialize_grads(False)
        ctx.shape, ctx.layout = x.shape, _layout(x)
        avg = x.mean(dim=(2, 3))
        if not with_max:
            return avg, None
        if not ctx.needs_input_grad[0]:
            return avg, x.amax(dim=(2, 3))  # no position to keep: amax is ~4x faster
        # The max's position, for the backward to send its gradient there, as the max-pooling of the official
        # code does (one position per channel); x itself need not be kept.
        xmax, where = F.adaptive_max_pool2d(x, 1, return_indices=True)
        ctx.save_for_backward(where.flatten(1))
        return avg, xmax.flatten(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_avg, grad_max):
        b, c, h, w = ctx.shape
        like = grad_avg if grad_avg is not None else grad_max
        grad = torch.empty(ctx.shape, dtype=like.dtype, device=like.device, memory_format=ctx.layout)
        if grad_avg is not None:
            grad.copy_(_spatial(grad_avg / (h * w)).expand(ctx.shape))
        else:
            grad.zero_()
        if grad_max is not None:
            (where,) = ctx.saved_tensors
            rows = torch.arange(b, device=where.device)[:, None]
            cols = torch.arange(c, device=where.device)[None, :]
            grad.index_put_((rows, cols, where // w, where % w), grad_max, accumulate=True)
        return grad, None


class _ScaleAndPoolChannels(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, c: torch.Tensor):
        ctx.set_materialize_grads(False)
        x1 = x * _spatial(c)
        cmax = x1.amax(dim=1, keepdim=True)
        pooled = torch.cat([cmax, x1.mean(dim=1, keepdim=True)], dim=1)
        ctx.save_for_backward(x, c, x1, cmax)
        return x1, pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x1, grad_pooled):
        x, c, x1, cmax = ctx.saved_tensors
        grad = torch.zeros_like(x) if grad_x1 is None else grad_x1
        if grad_pooled is not None:
            # x1's share of the spatial gate's gradient: through the max over channels (split evenly between
            # tied channels, as amax's own backward does: the max over channels has no cheap position to keep,
            # torch.max's index costs 10x amax here) and through the mean (1/C to each channel).
            # (in-place steps on one temporary: addcmul and fresh tensors measured slower here)
            hit = torch.eq(x1, cmax, out=torch.empty_like(x1))  # 1.0 at the max: a float mask, 5x faster than bool
            share = grad_pooled[:, :1] / hit.sum(dim=1, keepdim=True)
            grad = hit.mul_(share).add_(grad_pooled[:, 1:] / x.shape[1]).add_(grad)
        grad_c = (grad * x).sum(dim=(2, 3)) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # reuse our own temporary for grad_x where we made one (grad_x1 is autograd's, not ours to change)
            grad_x = grad.mul_(_spatial(c)) if grad is not grad_x1 else grad * _spatial(c)
        return grad_x, grad_c


class _Scale(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor):
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        grad_x = grad * s if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            # s broadcasts over the dims where it has size 1: its gradient sums the product over them
            dims = tuple(d for d in range(4) if s.shape[d] == 1)
            grad_s = (grad * x).sum(dim=dims, keepdim=True)
        return grad_x, grad_s


def pool_spatial(x: torch.Tensor, with_max: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean, max) of x [B, C, H, W] over its positions, each [B, C]; max is None unless `with_max`."""
    return _PoolSpatial.apply(x, with_max)


def scale_and_pool_channels(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x1 = x * c (c [B, C]) and [max, mean] of x1 over channels at every position, [B, 2, H, W]."""
    return _ScaleAndPoolChannels.apply(x, c)


def scale_positions(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x * s, for s [B, 1, H, W] (a spatial gate)."""
    return _Scale.apply(x, s)


def scale_channels(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x * c, for c [B, C] (a channel gate) broadcast over positions."""
    return _Scale.apply(x, _spatial(c))

