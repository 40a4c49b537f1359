"""One bottleneck ResNet (He et al., 2016) whose blocks take an attention module by name.

`resnet50`, `cbam_resnet50`, `se_resnet50`, `eca_resnet50` and `bot_resnet50` are this class with layers
[3, 4, 6, 3] and attn None / "cbam" / "se" / "eca" / "mhsa"; the quick study's reduced depths only change
`layers`. Stride sits on the 3x3 conv of a block (torchvision's "v1.5", also the official CBAM code); it changes
no parameter count.

Where attention goes depends on its kind:
- a gate (attention.ATTENTION: cbam, se, eca) re-weights the output of every block, after its last BN and before
  the residual add (as CBAM, SE and ECA place theirs);
- "mhsa" replaces the 3x3 conv of every block of the last stage with multi-head self-attention (BoTNet, Srinivas
  et al. 2021); the first of those blocks keeps its stride by average-pooling after the attention. Everything else
  is the plain ResNet of the same depth and width.

Stems:
- "cifar": 3x3 conv stride 1, no max-pool, so a 32x32 input reaches the last stage at 4x4 (the usual CIFAR
  adaptation, and the official CBAM code's CIFAR setting); a 28x28 input reaches it at 4x4 too (28 -> 14 -> 7 ->
  4: every stride-2 layer here maps a side n to ceil(n/2)). `stem_stride=2` makes that 3x3 conv stride 2 (28 ->
  14 -> 7 -> 4 -> 2): every stage then works on a quarter of the pixels, which on one CPU thread makes a width-8
  resnet14 2.7x faster to train and 4.1x faster to attack (cbam_resnet14: 2.8x and 3.2x; benchmarks/stem.py),
  at the price of the finest spatial detail; the quick config uses it, the paper-size ones do not.
- "imagenet": 7x7 conv stride 2 + 3x3 max-pool stride 2, as published (224x224 -> 7x7 at the last stage).
`width` is the stem width and the first stage's bottleneck width; stages are w, 2w, 4w, 8w with expansion 4, so
width 64 is the published network (2048 features before the classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from attnrobust.errors import UserError
from attnrobust.models.attention import MHSA, SELF_ATTENTION, make_attention
from attnrobust.models.common import PixelClassifier, init_weights

EXPANSION = 4


def _half(n: int) -> int:
    # The output side of every stride-2 layer here (3x3 pad 1, 7x7 pad 3, max-pool 3 pad 1, 1x1, ceil-mode pool).
    return (n + 1) // 2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (or self-attention), 1x1 expand, each with BN; a gate after the last BN, before the add.

    attn: a gate's name (attention.ATTENTION) or None; attn_options: its keyword arguments.
    mhsa_size: None for the 3x3 conv; else the largest input side the block's self-attention must cover.
    """

    CONV_BN = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # for common.fold_batchnorm

    def __init__(self, in_ch: int, planes: int, stride: int = 1, attn: str | None = None,
                 attn_options: dict | None = None, mhsa_size: int | None = None):
        super().__init__()
        out_ch = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if mhsa_size is None:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        else:
            self.conv2 = MHSA(planes, mhsa_size, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.attn = make_attention(attn, out_ch, **(attn_options or {}))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(PixelClassifier):
    """Bottleneck ResNet. Arguments are validated by the registry (`build_model`), which is the public way in.

    attn: None, a gate's name ("cbam", "se", "eca") or "mhsa" (see the module docstring).
    zero_init_residual: start every block's bn3 gamma at 0, so each residual branch (attention included) starts
    as the identity and the network starts out as its shallow skip path (Goyal et al., 2017). On the short,
    fixed-budget schedules of the quick study this gives a steadier first epoch at the same learning rate, and it
    applies equally to the models with and without attention, so the comparison stays fair.
    cbam_bn_momentum: the momentum of CBAM's spatial-gate BN (used with attn "cbam" only; attention.py says why
    0.01 is the default and short runs pass 0.1).
    stem_stride: 1 (the CIFAR stem) or 2 (the same stem halving the input side; variant "cifar" only).
    input_size: the largest input side the model will see (used with attn "mhsa" only): it sizes the relative
    position tables of the self-attention, which then serve every input up to that size (28x28 and 32x32 for
    the default 32). Inputs of another size need no other change.
    """

    def __init__(self, layers: list[int], num_classes: int, in_channels: int = 3, variant: str = "cifar",
                 width: int = 64, attn: str | None = None, *, mean: list[float], std: list[float],
                 zero_init_residual: bool = True, cbam_bn_momentum: float = 0.01, input_size: int = 32,
                 stem_stride: int = 1):
        super().__init__(in_channels, mean, std)
        if variant == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            side = input_size if stem_stride == 1 else _half(input_size)
        else:
            if stem_stride != 1:
                raise UserError("stem_stride applies to the \"cifar\" stem only (the \"imagenet\" stem has its own "
                                "stride 2 and max-pool); leave it at 1")
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
            side = _half(_half(input_size))
        gate = None if attn == SELF_ATTENTION else attn
        gate_options = {"bn_momentum": cbam_bn_momentum} if attn == "cbam" else {}
        stages = []
        in_ch = width
        for i, depth in enumerate(layers):
            planes = width * 2 ** i
            self_attention = attn == SELF_ATTENTION and i == len(layers) - 1
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(in_ch, planes, stride, gate, gate_options,
                                         mhsa_size=side if self_attention else None))
                in_ch = planes * EXPANSION
                side = _half(side) if stride == 2 else side
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        # Global average pool over positions, taken on the channels-last view: its gradient then reaches the last
        # block's ReLU with the channels innermost, as that block's output is stored in the channels_last models
        # every study uses. nn.AdaptiveAvgPool2d's gradient came back in the other layout, and that one [B, C, 4, 4]
        # ReLU backward took 2.4 ms of a width-8 resnet14's 80 ms training step (docs/benchmarks.md, issue 32).
        return self.fc(x.permute(0, 2, 3, 1).mean(dim=(1, 2)))
