"""One bottleneck ResNet (He et al., 2016) whose blocks take an attention module by name.

`resnet50`, `cbam_resnet50` and `se_resnet50` are this class with layers [3, 4, 6, 3] and attn None / "cbam" /
"se"; the quick study's reduced depths only change `layers`. Stride sits on the 3x3 conv of a block (torchvision's
"v1.5", also the official CBAM code); it changes no parameter count.

Stems:
- "cifar": 3x3 conv stride 1, no max-pool, so a 32x32 input reaches the last stage at 4x4 (the usual CIFAR
  adaptation, and the official CBAM code's CIFAR setting).
- "imagenet": 7x7 conv stride 2 + 3x3 max-pool stride 2, as published (224x224 -> 7x7 at the last stage).
`width` is the stem width and the first stage's bottleneck width; stages are w, 2w, 4w, 8w with expansion 4, so
width 64 is the published network (2048 features before the classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from attnrobust.models.attention import make_attention
from attnrobust.models.common import PixelClassifier, init_weights

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand, each with BN; attention after the last BN, before the residual add."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1, attn: str | None = None):
        super().__init__()
        out_ch = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.attn = make_attention(attn, out_ch)
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

    zero_init_residual: start every block's bn3 gamma at 0, so each residual branch (attention included) starts
    as the identity and the network starts out as its shallow skip path (Goyal et al., 2017). On the short,
    fixed-budget schedules of the quick study this gives a steadier first epoch at the same learning rate, and it
    applies equally to the models with and without attention, so the comparison stays fair.
    """

    def __init__(self, layers: list[int], num_classes: int, in_channels: int = 3, stem: str = "cifar",
                 width: int = 64, attn: str | None = None, *, mean: list[float], std: list[float],
                 zero_init_residual: bool = True):
        super().__init__(in_channels, mean, std)
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        stages = []
        in_ch = width
        for i, depth in enumerate(layers):
            planes = width * 2 ** i
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(in_ch, planes, stride, attn))
                in_ch = planes * EXPANSION
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
