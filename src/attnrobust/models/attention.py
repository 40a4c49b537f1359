"""Attention modules that a residual block takes by name: CBAM (Woo et al., ECCV 2018), SE (Hu et al., CVPR 2018),
ECA (Wang et al., CVPR 2020) and BoTNet's multi-head self-attention (Srinivas et al., CVPR 2021).

Two kinds, placed differently by the ResNet:
- gates (`ATTENTION`: CBAM, SE, ECA) map a feature map [B, C, H, W] to a re-weighted one of the same shape and sit
  after a block's last BN, before the residual add, in every block. A block asks for one with
  `make_attention(name, channels)`; adding a gate means writing the class and adding one line to `ATTENTION`.
- self-attention (`MHSA`) replaces the 3x3 convolution of the last stage's blocks (BoTNet), so it is a spatial
  operator, not a gate; `resnet.ResNet` places it.

CBAM follows the official code (github.com/Jongchan/attention-module) wherever it decides something the paper
leaves open, because the published parameter counts depend on it:
- the channel MLP is two Linear layers *with* biases (C -> C/16 -> C), shared between the average- and max-pooled
  descriptors, whose outputs are summed before the sigmoid; SE is the same MLP on the average-pooled descriptor
  only, so CBAM's channel gate and SE have exactly the same parameters;
- the spatial gate compresses channels as [max, mean] (in that order), then a 7x7 conv (padding 3, no bias), BN,
  sigmoid; its BN gamma starts at 0, so at initialization the spatial gate is 0.5 everywhere and the network
  starts out close to its channel-attention-only self;
- the spatial BN's momentum is the official 0.01 by default (`cbam_bn_momentum`, a build argument of the cbam_*
  models). It has no parameters to count, but with 0.01 the running statistics need several hundred steps to
  forget their initial values (and then lag the weights by as many), so after a short CPU run the eval-mode gate
  would differ from the one the network trained with -- and attacks run in eval mode. The short quick-study
  runs therefore pass 0.1 (PyTorch's default); full-length runs keep the official 0.01.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnrobust.errors import UserError
from attnrobust.models.gating import cbam, channel_gated, spatial_conv

REDUCTION = 16  # both papers' default; the published parameter counts assume it
CBAM_BN_MOMENTUM = 0.01  # the official CBAM code's spatial-BN momentum (see the module docstring)
MHSA_HEADS = 4  # BoTNet's choice for every MHSA layer
# The attention kind of BoTNet's self-attention (MHSA below): not a gate, so not in ATTENTION; the ResNet places it.
SELF_ATTENTION = "mhsa"


def _hidden(channels: int, reduction: int) -> int:
    # At tiny widths C/16 can be 0; one hidden unit keeps the gate defined (paper-size models never hit this).
    return max(1, channels // reduction)


class ChannelGate(nn.Module):
    """Channel attention weights in (0, 1), shape [B, C]: sigmoid of a shared MLP summed over pooled descriptors
    ([B, C] each: the feature map's mean over positions, and for CBAM its max), which the caller passes in
    (`gating.cbam` and `gating.channel_gated` pool the feature map)."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, *descriptors: torch.Tensor) -> torch.Tensor:
        # the shared MLP once over the stacked descriptors, then their logits summed
        logits = self.mlp(torch.cat(descriptors)) if len(descriptors) > 1 else self.mlp(descriptors[0])
        return torch.sigmoid(logits.view(len(descriptors), *descriptors[0].shape).sum(dim=0))


class SpatialGate(nn.Module):
    """Spatial attention weights in (0, 1), shape [B, 1, H, W]: 7x7 conv + BN over a feature map's channel-wise
    [max, mean], which the caller passes in ([B, 2, H, W]: `gating.cbam` makes it while it applies the channel
    gate). The conv is computed by `gating.spatial_conv` (the same function, faster); it stays an nn.Conv2d for
    its weight, its initialization and its name in checkpoints."""

    def __init__(self, kernel_size: int = 7, bn_momentum: float = CBAM_BN_MOMENTUM):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, momentum=bn_momentum)

    def reset_attention_parameters(self) -> None:
        # Called by the model after its generic initialization: gamma 0 -> gate 0.5 at the start (official code).
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.bn(spatial_conv(pooled, self.conv.weight)))


class CBAM(nn.Module):
    """Channel gate, then spatial gate on the channel-refined features (sequential, channel first, as published).

    `sink`: when a list is assigned (see `models.recording_attention`), each forward appends its gates to it, so
    the attention maps of a batch can be read without hooks or global state. It is None in normal use, which
    costs one attribute test per forward. SE and ECA record their channel gate the same way.
    """

    def __init__(self, channels: int, reduction: int = REDUCTION, bn_momentum: float = CBAM_BN_MOMENTUM):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(7, bn_momentum)
        self.sink: list[dict[str, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The gates' full-size arithmetic is `gating.cbam` (one autograd node, module docstring there):
        # x1 = x * cgate, then x1 * sgate with sgate from x1's [max, mean] over channels.
        out, cgate, sgate = cbam(x, self.channel, self.spatial, list(self.parameters()))
        if self.sink is not None:
            self.sink.append({"channel": cgate, "spatial": sgate})
        return out


class SE(nn.Module):
    """Squeeze-and-excitation: the channel gate on the average-pooled descriptor only."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.sink: list[dict[str, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, gate = channel_gated(x, self.channel, list(self.parameters()))
        if self.sink is not None:
            self.sink.append({"channel": gate})
        return out


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive kernel size: |log2(C)/gamma + b/gamma| taken to the nearest odd integer.

    Every t in [2m, 2m+2) is nearest to 2m+1, so the nearest odd is 2*floor(t/2)+1; at the tie t = 2m (C = 2048:
    t = 6) this picks the larger one, 2m+1, as the official code (int(t), plus one when even) does.
    Gives 1 for C < 8, 3 for C < 128, 5 for C < 2048, 7 for C < 32768: in ResNet-50 (block outputs 256, 512,
    1024, 2048) kernels 5, 5, 5 and 7, 86 parameters over the 16 blocks.
    """
    t = abs(math.log2(channels) / gamma + b / gamma)
    return 2 * int(t // 2) + 1


class ECA(nn.Module):
    """Efficient channel attention: sigmoid of a 1-D convolution (no bias) across the channels of the global-
    average-pooled descriptor. Each channel's weight depends on its k neighbours only, with k from the channel
    count (`eca_kernel_size`), so the gate costs k parameters per block instead of SE's 2C^2/16 + 17C/16.

    The kernel size follows the paper's formula on the gated channel count C (the block's output width). The
    conv keeps PyTorch's default initialization, as the official code (whose init loop covers Conv2d only) does.
    """

    def __init__(self, channels: int):
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.sink: list[dict[str, torch.Tensor]] | None = None

    def gate(self, desc: torch.Tensor) -> torch.Tensor:
        """[B, C] weights from the average-pooled descriptor [B, C]: the channels as one 1-D sequence."""
        return torch.sigmoid(self.conv(desc[:, None, :])[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, gate = channel_gated(x, self.gate, list(self.parameters()))
        if self.sink is not None:
            self.sink.append({"channel": gate})
        return out


# name -> class taking (channels, **options); a block's `attn` argument is one of these names or None.
ATTENTION: dict[str, type[nn.Module]] = {"cbam": CBAM, "se": SE, "eca": ECA}


def make_attention(name: str | None, channels: int, **options) -> nn.Module | None:
    """The gate `name` for a `channels`-wide feature map (with its own `options`), or None when `name` is None."""
    if name is None:
        return None
    if name not in ATTENTION:
        raise UserError(f"unknown attention module {name!r}; valid choices: none, {', '.join(ATTENTION)}")
    return ATTENTION[name](channels, **options)


class MHSA(nn.Module):
    """BoTNet's multi-head self-attention over the H x W positions of a feature map, with relative position logits.

    q, k, v are 1x1 projections without bias (C -> C each, split into `heads` heads of C/heads); there is no output
    projection (BoTNet: the block's 1x1 expand conv follows). The logit of query position p = (y, x) for key
    position p' = (y', x') is q_p . k_p' + q_p . (r_h[y' - y] + r_w[x' - x]), scaled by 1/sqrt(C/heads) on q,
    softmax over p'; r_h and r_w are learned tables of (2 * max_size - 1) offsets x C/heads, shared by the heads.

    Why relative logits (BoTNet's choice) rather than 2-D absolute embeddings: an offset means the same thing on
    every map size, so one set of weights serves any map up to max_size per side -- a Fashion-MNIST 28x28 input
    (first last-stage block 7x7) and a CIFAR 32x32 input (8x8) use the same model, built for 32 -- where absolute
    embeddings are tied to one size and would need interpolating. The price: the tables, and so the parameter
    count, depend on max_size, which the model derives from its `input_size` build argument (see resnet.ResNet).
    A larger map than max_size raises UserError.

    stride 2: attention at the input resolution, then 2x2 average pooling with stride 2 (BoTNet's first block of
    the last stage). ceil_mode makes an odd side (7) give the same size (4) as the block's strided 1x1 shortcut;
    on even sides it is identical to plain pooling, and an edge window averages only the positions it covers.
    """

    def __init__(self, channels: int, max_size: int, stride: int = 1, heads: int = MHSA_HEADS):
        super().__init__()
        if channels % heads:
            raise UserError(f"self-attention needs channels divisible by {heads} heads, got {channels}")
        self.heads, self.max_size = heads, max_size
        self.dim = channels // heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.rel_h = nn.Parameter(torch.empty(2 * max_size - 1, self.dim))
        self.rel_w = nn.Parameter(torch.empty(2 * max_size - 1, self.dim))
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else None
        if not self.rel_h.is_meta:  # on meta there is nothing to set (see common.init_weights)
            self.reset_attention_parameters()

    def reset_attention_parameters(self) -> None:
        # Called again by the model after its generic init (which gives every Conv2d Kaiming weights): small q, k, v
        # make the first attention maps near-uniform, so the block starts as a smooth global average that the BN
        # after it rescales, instead of a few random positions taking all the weight; position tables N(0, 1/d).
        nn.init.normal_(self.qkv.weight, std=0.01)
        nn.init.normal_(self.rel_h, std=self.dim ** -0.5)
        nn.init.normal_(self.rel_w, std=self.dim ** -0.5)

    def _offsets(self, n: int, device: torch.device) -> torch.Tensor:
        # [n, n] table index of (key - query) along one axis: offsets -(n-1)..n-1 sit at max_size-n..max_size+n-2.
        pos = torch.arange(n, device=device)
        return pos[None, :] - pos[:, None] + self.max_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h > self.max_size or w > self.max_size:
            raise UserError(f"self-attention on a {h}x{w} feature map, larger than the {self.max_size}x"
                            f"{self.max_size} its position tables cover; build the model with a larger input_size")
        n = h * w
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, self.dim, n).unbind(1)   # each [B, heads, d, N]
        q = q.transpose(2, 3) * self.dim ** -0.5                                 # [B, heads, N, d]
        logits = q @ k                                                            # content: [B, heads, N, N]
        # Position: q . r for every table offset, then each (query, key) pair picks its offset's column. Queries
        # and keys are flattened row-major, so position i is (i // w, i % w).
        qh = (q @ self.rel_h.T).view(b, self.heads, h, w, -1)       # [B, heads, h, w, 2*max_size-1]
        qw = (q @ self.rel_w.T).view(b, self.heads, h, w, -1)
        oh, ow = self._offsets(h, x.device), self._offsets(w, x.device)
        # qh[..., y, x, oh[y, y']] -> [.., h, w, h'] (broadcast over key column x'); likewise for widths.
        pos_h = qh.gather(-1, oh[:, None, :].expand(h, w, h).expand(b, self.heads, h, w, h))
        pos_w = qw.gather(-1, ow[None, :, :].expand(h, w, w).expand(b, self.heads, h, w, w))
        logits = logits + (pos_h[..., :, None] + pos_w[..., None, :]).reshape(b, self.heads, n, n)
        out = v @ logits.softmax(dim=-1).transpose(2, 3)            # [B, heads, d, N]
        out = out.reshape(b, c, h, w)
        return out if self.pool is None else self.pool(out)
