"""Attention modules that a residual block takes by name: CBAM (Woo et al., ECCV 2018) and SE (Hu et al., CVPR 2018).

Each module maps a feature map [B, C, H, W] to a re-weighted feature map of the same shape. A block asks for one
with `make_attention(name, channels)`; adding a module (ECA, a self-attention block, ...) means writing the class
and adding one line to `ATTENTION` -- no ResNet code changes.

CBAM follows the official code (github.com/Jongchan/attention-module) wherever it decides something the paper
leaves open, because the published parameter counts depend on it:
- the channel MLP is two Linear layers *with* biases (C -> C/16 -> C), shared between the average- and max-pooled
  descriptors, whose outputs are summed before the sigmoid; SE is the same MLP on the average-pooled descriptor
  only, so CBAM's channel gate and SE have exactly the same parameters;
- the spatial gate compresses channels as [max, mean] (in that order), then a 7x7 conv (padding 3, no bias), BN,
  sigmoid; its BN gamma starts at 0, so at initialization the spatial gate is 0.5 everywhere and the network
  starts out close to its channel-attention-only self.
One deliberate difference: the official spatial BN uses momentum 0.01; ours uses PyTorch's default 0.1. It has
no parameters to count, and with 0.01 the running statistics need several hundred steps to forget their
initial values (and then lag the weights by as many), so after the quick study's short CPU runs the eval-mode
gate would differ from the one the network trained with -- and attacks run in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnrobust.errors import UserError

REDUCTION = 16  # both papers' default; the published parameter counts assume it


def _hidden(channels: int, reduction: int) -> int:
    # At tiny widths C/16 can be 0; one hidden unit keeps the gate defined (paper-size models never hit this).
    return max(1, channels // reduction)


def _tracks_grad(x: torch.Tensor) -> bool:
    """Whether autograd will record an op on x. The max-pooling below picks its op by this, for speed only (the
    values are the same): under autograd the index-returning max (as the official code's torch.max/max_pool2d)
    has a cheap backward, a scatter through the saved index, where amax's backward compares every element with
    the max again (3x slower on a CPU); without autograd amax is ~10x faster, as it computes no indices."""
    return torch.is_grad_enabled() and x.requires_grad


class ChannelGate(nn.Module):
    """Channel attention weights in (0, 1), shape [B, C]: sigmoid of a shared MLP summed over pooled descriptors."""

    def __init__(self, channels: int, reduction: int = REDUCTION, pools: tuple[str, ...] = ("avg", "max")):
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.pools = tuple(pools)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = 0
        for pool in self.pools:
            if pool == "avg":
                desc = x.mean(dim=(2, 3))
            elif _tracks_grad(x):
                desc = F.adaptive_max_pool2d(x, 1).flatten(1)
            else:
                desc = x.amax(dim=(2, 3))
            logits = logits + self.mlp(desc)
        return torch.sigmoid(logits)


class SpatialGate(nn.Module):
    """Spatial attention weights in (0, 1), shape [B, 1, H, W]: 7x7 conv + BN over channel-wise [max, mean]."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def reset_gate_parameters(self) -> None:
        # Called by the model after its generic initialization: gamma 0 -> gate 0.5 at the start (official code).
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cmax = x.max(dim=1, keepdim=True).values if _tracks_grad(x) else x.amax(dim=1, keepdim=True)
        pooled = torch.cat([cmax, x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel gate, then spatial gate on the channel-refined features (sequential, channel first, as published).

    `sink`: when a list is assigned (see `models.recording_attention`), each forward appends its gates to it, so
    the attention maps of a batch can be read without hooks or global state. It is None in normal use, which
    costs one attribute test per forward.
    """

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        self.channel = ChannelGate(channels, reduction, ("avg", "max"))
        self.spatial = SpatialGate(7)
        self.sink: list[dict[str, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cgate = self.channel(x)
        x = x * cgate[:, :, None, None]
        sgate = self.spatial(x)
        if self.sink is not None:
            self.sink.append({"channel": cgate.detach(), "spatial": sgate.detach()})
        return x * sgate


class SE(nn.Module):
    """Squeeze-and-excitation: the channel gate on the average-pooled descriptor only."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        self.channel = ChannelGate(channels, reduction, ("avg",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel(x)[:, :, None, None]


# name -> class taking (channels); a block's `attn` argument is one of these names or None.
ATTENTION: dict[str, type[nn.Module]] = {"cbam": CBAM, "se": SE}


def make_attention(name: str | None, channels: int) -> nn.Module | None:
    """The attention module `name` for a `channels`-wide feature map, or None when `name` is None."""
    if name is None:
        return None
    if name not in ATTENTION:
        raise UserError(f"unknown attention module {name!r}; valid choices: none, {', '.join(ATTENTION)}")
    return ATTENTION[name](channels)
