"""VGG-16 (Simonyan & Zisserman, 2015), configuration D, plain and with batch norm.

The 13 convs (3x3, padding 1, with biases -- kept with batch norm too, as torchvision does and as the published
138,365,992 count assumes) and 5 max-pools are the same for both variants; `width` scales every conv (64 is the
published network: 64, 128, 256, 512, 512).

Variants (they differ in the head only):
- "imagenet": adaptive average pool to 7x7, then 512*7*7 -> 4096 -> 4096 -> classes with ReLU and dropout 0.5:
  the published network, 138,357,544 parameters (138,365,992 with BN) for 3 channels and 1000 classes.
- "cifar" (the default for 32x32 inputs): the five pools leave a 1x1x512 map, and the classifier is a single
  Linear 512 -> classes. The ImageNet head would feed 49 copies of the same 512 numbers into a 102.8M-parameter
  layer (its adaptive pool just replicates the 1x1 map): ~119M parameters that add no information, dominate
  training time on a CPU and overfit 50k images. The single linear layer is the common CIFAR adaptation of VGG
  and keeps VGG's capacity in the conv stack, where it is comparable to the ResNets'.
"""

from __future__ import annotations

import torch
from torch import nn

from attnrobust.models.common import PixelClassifier, init_weights

# Configuration D: channel counts at width 64, "M" = 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(PixelClassifier):
    """VGG-16. Arguments are validated by the registry (`build_model`), which is the public way in."""

    def __init__(self, num_classes: int, in_channels: int = 3, variant: str = "cifar", width: int = 64,
                 batch_norm: bool = False, *, mean: list[float], std: list[float]):
        super().__init__(in_channels, mean, std)
        layers: list[nn.Module] = []
        ch = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            out = v * width // 64
            layers.append(nn.Conv2d(ch, out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            ch = out
        self.features = nn.Sequential(*layers)
        if variant == "imagenet":
            hidden = 4096 * width // 64
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(
                nn.Linear(ch * 7 * 7, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(hidden, num_classes))
        else:
            # 32x32 -> 1x1 after five pools (28x28 too: ceil_mode pools 7 -> 4 -> 2 -> 1 instead of dropping the
            # last row, and is identical to floor mode on even sizes); the flatten is the 512*width/64 features.
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(self.pool(x), 1))
