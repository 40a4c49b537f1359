"""The full-size arithmetic of the attention gates (CBAM, SE, ECA) as autograd functions with hand-written backward
passes: the same function as the plain tensor expressions, at close to the cost of the memory it touches.

Why: a gate adds about 2% to a block's FLOPs, yet written as plain tensor expressions it doubled a width-8
cbam_resnet14's training step on a CPU (benchmarks/attention.py). Autograd's generic backward formulas make several
full-size temporaries per gate (an expanded gradient divided by H*W, zeros scattered at the argmax, a product
per factor) in whatever layout their inputs happen to give, and the gradients reaching x by two paths (through
the pooling and through the scaling) are summed in one more pass. Here each gate is one node whose backward
touches the feature map in a handful of passes and assembles x's gradient once, in x's own layout.

Everything small stays ordinary modules: the MLP, ECA's 1-D conv, CBAM's 7x7 conv and BN, the sigmoids. A node
builds their graphs on detached inputs in its forward and differentiates them in its backward with
torch.autograd.grad; their parameters are inputs of the node, so their gradients reach the optimizer (and any
hook) as any other parameter's do, and BN's running statistics move once, in the forward.

- `channel_gated(x, gate, params)`: y = x * c, c = gate(avg) [B, C] from x's mean over positions (SE, ECA);
- `cbam(x, channel, spatial, params)`: y = x * c * s, c = channel(avg, max) from x's mean and max over positions,
  s = spatial(pooled) [B, 1, H, W] from x * c's [max, mean] over channels (max first, as the official code);
- `spatial_conv(pooled, weight)`: CBAM's 7x7 conv from those two maps to one, computed as a depthwise conv.

The other half of what the gates cost was memory that glibc had handed back to the kernel, so that every new
feature map page-faulted: `runtime.keep_freed_memory` (benchmarks/attention.py measures both together).

Ties at a maximum: the max over positions sends its gradient to the one position `adaptive_max_pool2d` picks
(as the official code's max-pooling, and this code's before, in training); the max over channels shares it evenly
between tied channels (as `amax`'s own backward does, where `max(dim)` gives it all to one). Both are valid
subgradients; ties occur where a block's zero-initialized BN makes a whole map equal, before the first step.

Under torch.compile (`train.compile`) the gates run eagerly, each a break in the compiled graph
(`torch.compiler.disable`): traced, their sub-networks' graphs would be compiled, and a compiled backward refuses
the retain_graph that the node's backward passes them (and inductor's fused kernels run the gates' full-size passes
no faster than these: benchmarks/attention_bounds.py).

Only first derivatives are provided (training and the attacks need no more): a backward asked to build a graph of
its own (create_graph=True) raises an error instead of returning a gradient without one, whose second derivative
would silently be zero (`_first_order`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd import Function


def _spatial(t: torch.Tensor) -> torch.Tensor:
    """A [B, C] per-channel value as [B, C, 1, 1], to broadcast over positions."""
    return t[:, :, None, None]


def _first_order(backward):
    """A backward for first derivatives only. torch's once_differentiable raises at a second derivative only when
    the incoming gradient itself requires grad; a gate's node, one step from the loss, often gets one that does not,
    and would hand back a gradient with no graph: a second derivative silently zero. This raises instead."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():  # the engine enables grad mode in a backward exactly when create_graph=True
            raise RuntimeError("the attention gates (models.gating) give first derivatives only: "
                               "create_graph=True through them is not supported")
        return backward(ctx, *grads)
    return wrapper


def _needs_graph(x: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """Whether a gradient can be asked for: otherwise the gates are plain expressions, with nothing kept."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


def _subnetwork_input(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t as a leaf to differentiate a sub-network's graph by, and the view of it that the sub-network takes. Why the
    view: hooks that watch a module's inputs during a backward (torch's ModuleTracker, as FlopCounterMode uses) fail
    on a leaf while torch.autograd.grad runs; a view has a node of its own."""
    leaf = t.requires_grad_()
    return leaf, leaf.view_as(leaf)


def _param_needs(ctx) -> tuple[bool, ...]:
    """Which of the node's parameters (its last inputs) need a gradient."""
    return ctx.needs_input_grad[len(ctx.needs_input_grad) - len(ctx.params):]


def _wanted(ctx) -> list[torch.Tensor]:
    """The parameters whose gradients are needed: differentiated along with each sub-network's input."""
    return [p for p, need in zip(ctx.params, _param_needs(ctx)) if need]


def _param_grads(ctx, *per_graph: list) -> tuple:
    """The gradients of the node's parameters (None where not needed), each taken from the one sub-network's graph
    that holds it (torch.autograd.grad with allow_unused gives None for the others)."""
    merged = iter([next((g for g in grads if g is not None), None) for grads in zip(*per_graph)])
    return tuple(next(merged) if need else None for need in _param_needs(ctx))


def _flattenable_like(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor shaped like t [B, C, H, W], in t's layout where that is channels_last or contiguous (the two
    a model uses, so that the gradient comes back in it), else contiguous: either way its positions flatten to
    [B, C, H*W] by a view."""
    channels_last = t.is_contiguous(memory_format=torch.channels_last)
    return torch.empty_like(t, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _max_and_mean_over_channels(x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, [max, mean]) of x1 over its channels at every position: [B, 1, H, W] and [B, 2, H, W], max first
    (the official code's order), the spatial gate's input."""
    cmax = x1.amax(dim=1, keepdim=True)
    return cmax, torch.cat([cmax, x1.mean(dim=1, keepdim=True)], dim=1)


class _ChannelGated(Function):
    """y = x * gate(mean of x over positions), gate -> [B, C]: SE's and ECA's gate as one node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gate, *params: torch.Tensor):
        with torch.enable_grad():
            avg_in, avg_seen = _subnetwork_input(x.mean(dim=(2, 3)))
            c = gate(avg_seen)
        ctx.save_for_backward(x, c.detach())
        ctx.graphs, ctx.params = (avg_in, c), params
        gates = c.detach()
        ctx.mark_non_differentiable(gates)
        return x * _spatial(gates), gates

    @staticmethod
    @_first_order
    def backward(ctx, grad_y, _grad_c):
        x, c = ctx.saved_tensors
        avg_in, c_graph = ctx.graphs
        h, w = x.shape[2:]
        # retain_graph: an outer backward with retain_graph=True may come again
        grad_avg, *grads = torch.autograd.grad(c_graph, [avg_in, *_wanted(ctx)], (grad_y * x).sum(dim=(2, 3)),
                                               retain_graph=True, allow_unused=True)
        grad_x = None
        if ctx.needs_input_grad[0]:  # grad_y * c plus the mean's share, 1/(H*W) everywhere, in one pass
            grad_x = torch.addcmul(_spatial(grad_avg / (h * w)), grad_y, _spatial(c))
        return (grad_x, None, *_param_grads(ctx, grads))


class _CBAM(Function):
    """CBAM's whole gate as one node: y = x * c * s, c = channel(avg, max) [B, C], s = spatial(pooled) [B, 1, H, W]
    (why one node, and how the sub-networks are differentiated: the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, channel, spatial, *params: torch.Tensor):
        avg = x.mean(dim=(2, 3))
        # the max's position, for the backward to send its gradient there (one position per channel, as the
        # official code's max-pooling); x itself is kept for the gradient of c anyway
        xmax, where = F.adaptive_max_pool2d(x, 1, return_indices=True)
        with torch.enable_grad():
            (avg_in, avg_seen), (max_in, max_seen) = _subnetwork_input(avg), _subnetwork_input(xmax.flatten(1))
            c = channel(avg_seen, max_seen)
        gate_c = c.detach()
        x1 = x * _spatial(gate_c)
        cmax, pooled = _max_and_mean_over_channels(x1)
        with torch.enable_grad():
            pooled_in, pooled_seen = _subnetwork_input(pooled)
            s = spatial(pooled_seen)
        gate_s = s.detach()
        ctx.save_for_backward(x, x1, gate_c, gate_s, cmax, where.flatten(1))
        ctx.graphs = (avg_in, max_in, c, pooled_in, s)
        ctx.params = params
        ctx.mark_non_differentiable(gate_c, gate_s)
        return x1 * gate_s, gate_c, gate_s

    @staticmethod
    @_first_order
    def backward(ctx, grad_y, _grad_c, _grad_s):
        x, x1, c, s, cmax, where = ctx.saved_tensors
        avg_in, max_in, c_graph, pooled_in, s_graph = ctx.graphs
        b, channels, h, w = x.shape
        wanted = _wanted(ctx)
        # spatial gate: its gradient is the sum over channels of grad_y * x1; through the conv and BN to the pooled
        # maps (retain_graph: an outer backward with retain_graph=True may come again)
        grad_s = (grad_y * x1).sum(dim=1, keepdim=True)
        grad_pooled, *grad_spatial = torch.autograd.grad(s_graph, [pooled_in, *wanted], grad_s, retain_graph=True,
                                                         allow_unused=True)
        # x1's gradient: grad_y * s, plus the pooled maps' share -- through the max over channels (split evenly
        # between tied channels, as amax's own backward does: the max over channels has no cheap position to
        # keep, torch.max's index costs 8x amax here) and through the mean (1/C to each channel). In-place
        # steps on one temporary; the mask as floats (bool masks ran several times slower here).
        hit = torch.eq(x1, cmax, out=_flattenable_like(x1))
        share = grad_pooled[:, :1] / hit.sum(dim=1, keepdim=True)
        grad_x1 = hit.mul_(share).add_(grad_pooled[:, 1:] / channels).addcmul_(grad_y, s)
        # channel gate: its gradient is the sum over positions of grad_x1 * x; through the MLP to the pooled values
        grad_c = (grad_x1 * x).sum(dim=(2, 3))
        grad_avg, grad_max, *grad_channel = torch.autograd.grad(c_graph, [avg_in, max_in, *wanted], grad_c,
                                                                retain_graph=True, allow_unused=True)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # grad_x1 * c, plus the mean's share (1/(H*W) everywhere) in the same pass, then the max's at its place
            grad_x = torch.addcmul(_spatial(grad_avg / (h * w)), grad_x1, _spatial(c), out=grad_x1)
            # (view, not flatten: an in-place op on a silent copy would lose the update; _flattenable_like)
            grad_x.view(b, channels, h * w).scatter_add_(2, where[:, :, None], grad_max[:, :, None])
        return (grad_x, None, None, *_param_grads(ctx, grad_spatial, grad_channel))


class _SpatialConv(Function):
    """CBAM's spatial conv (2 maps -> 1, k x k for odd k, stride 1, 'same' padding, no bias), the same function as
    F.conv2d, computed as a depthwise conv over the batch folded into channels ([1, 2B, H, W], one 2-map kernel
    repeated per image) and summed over the two maps.

    Why: oneDNN's direct conv with 2 input channels and 1 output ran at a tenth of the depthwise kernels' speed
    here (28x28 maps, batch 128: 1.9 ms forward and 3.3 ms with the input gradient, against 0.5 and 0.8 ms). The
    weight's gradient, a correlation of each image's maps with its output gradient summed over the batch, is a
    depthwise conv too, each folded channel's kernel being its image's output gradient (0.5 ms against oneDNN's
    1.7 ms for the ordinary weight gradient).
    """

    @staticmethod
    def forward(ctx, pooled: torch.Tensor, weight: torch.Tensor):
        b, maps, h, w = pooled.shape
        if weight.shape[-1] % 2 == 0 or weight.shape[-1] != weight.shape[-2]:
            raise ValueError(f"spatial_conv: an odd square kernel, got {tuple(weight.shape[-2:])}")
        folded = pooled.contiguous().view(1, b * maps, h, w)
        ctx.save_for_backward(folded, weight)
        ctx.shape, ctx.pooled_dtype = pooled.shape, pooled.dtype
        out = F.conv2d(folded, _kernels(weight, b), padding=weight.shape[-1] // 2, groups=b * maps)
        return out.view(b, maps, h, w).sum(dim=1, keepdim=True)

    @staticmethod
    @_first_order
    def backward(ctx, grad):
        folded, weight = ctx.saved_tensors
        b, maps, h, w = ctx.shape
        k = weight.shape[-1]
        # In the dtype the forward's conv ran in, the output's: under autocast that conv cast the maps and the
        # weight to half precision (fp32 maps and weight otherwise); convolution_backward takes one dtype.
        folded, weight_used = folded.to(grad.dtype), weight.to(grad.dtype)
        # the sum over maps hands each map the same output gradient: [1, B*maps, H, W]
        grad_folded = grad.contiguous().view(b, 1, h, w).expand(b, maps, h, w).reshape(1, b * maps, h, w)
        grad_pooled = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_pooled = torch.ops.aten.convolution_backward(
                grad_folded, folded, _kernels(weight_used, b), None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0],
                b * maps, [True, False, False])[0].view(b, maps, h, w).to(ctx.pooled_dtype)
        if ctx.needs_input_grad[1]:
            # weight[0, m, i, j] gets sum over images and positions of grad * pooled[m] shifted by (i, j): each
            # folded channel correlated with its own gradient map ([B*maps, 1, H, W] kernels) gives [k, k]
            per_image = F.conv2d(folded, grad_folded.view(b * maps, 1, h, w), padding=k // 2, groups=b * maps)
            grad_weight = per_image.view(b, maps, k, k).sum(dim=0, keepdim=True, dtype=weight.dtype)
        return grad_pooled, grad_weight


def _kernels(weight: torch.Tensor, images: int) -> torch.Tensor:
    """The kernel of each folded channel, [images*maps, 1, k, k]: the weight's maps repeated per image."""
    return weight.reshape(weight.shape[1], 1, *weight.shape[2:]).repeat(images, 1, 1, 1)


@torch.compiler.disable
def channel_gated(x: torch.Tensor, gate, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, c): y = x * c, c = gate(avg) [B, C] from x's mean over positions (SE, ECA); `gate` is the small
    sub-network (a module or function), `params` its parameters."""
    if _needs_graph(x, params):
        return _ChannelGated.apply(x, gate, *params)
    c = gate(x.mean(dim=(2, 3)))
    return x * _spatial(c), c


@torch.compiler.disable
def cbam(x: torch.Tensor, channel, spatial, params: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """CBAM's gate on x [B, C, H, W]: (y, c, s), y = x * c * s, c = channel(avg, max) [B, C] from x's mean and max
    over positions, s = spatial(pooled) [B, 1, H, W] from the channel-refined x * c's [max, mean] over channels.

    `channel` and `spatial` are the small sub-networks (modules or functions), `params` their parameters. Where no
    gradient can be asked for (no_grad, inference mode, nothing requiring grad) the same values come from plain
    tensor expressions, with no graph and no position of the max to keep.
    """
    if _needs_graph(x, params):
        return _CBAM.apply(x, channel, spatial, *params)
    c = channel(x.mean(dim=(2, 3)), x.amax(dim=(2, 3)))
    x1 = x * _spatial(c)
    s = spatial(_max_and_mean_over_channels(x1)[1])
    return x1.mul_(s), c, s


def spatial_conv(pooled: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv2d(pooled, weight, padding=k // 2) for CBAM's spatial conv (weight [1, maps, k, k], no bias)."""
    return _SpatialConv.apply(pooled, weight)
