"""What every classifier in the registry shares: normalization inside the model and the weight initialization."""

from __future__ import annotations

import torch
from torch import nn

# A network's variant: "cifar", adapted to 32x32 (and 28x28) inputs; "imagenet", the published 224x224 network.
# Each family says what that changes: the ResNet stem (3x3 conv vs 7x7 conv + max-pool), the VGG head (one linear
# layer vs the 4096-4096 classifier).
VARIANTS = ("cifar", "imagenet")


class PixelClassifier(nn.Module):
    """Base of every registered model: takes pixels in [0, 1] and normalizes them itself.

    Attacks perturb pixels and clip to [0, 1], so the model, not the data loader, owns the normalization; eps is
    then in pixel units whatever the dataset. `mean`/`std` are buffers of shape [1, C, 1, 1] (saved with the
    weights). The registry passes per-channel values; mean 0 / std 1 (identity) when none are given.
    """

    def __init__(self, in_channels: int, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, in_channels, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, in_channels, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, as torchvision and the official CBAM code), BN gamma 1 / beta 0, conv biases
    0, Linear layers left at PyTorch's default; then each attention module's own exceptions (CBAM's spatial BN,
    the self-attention's projections and position tables), which run last so the generic rules cannot undo them."""
    if any(p.is_meta for p in model.parameters()):
        # Built on the meta device (to count parameters): no values to set, and normal_ on meta tensors runs
        # torch's Python reference kernels, whose first call imports seconds of machinery.
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if hasattr(m, "reset_attention_parameters"):
            m.reset_attention_parameters()
