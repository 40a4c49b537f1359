"""What every classifier in the registry shares: normalization inside the model and the weight initialization."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from attnrobust.errors import UserError

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


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """The model for attacks and scoring only: every BatchNorm2d that directly follows a Conv2d folded into that
    conv's weight and bias (torch's fuse_conv_bn_eval), in place, in eval mode.

    Why: in eval mode a BN is a per-channel affine map, so the folded model is the same function (up to float
    rounding), with one pass less over every feature map in each forward and each backward to the input; an attack
    job is made of those passes. Pairs are found where the order is known: adjacent in an nn.Sequential that runs
    nn.Sequential's own forward (stems, shortcuts, VGG's features), and the (conv, bn) attribute names a module
    lists in CONV_BN (the ResNet block). Anything else, a user model's layers included, is left as it was.

    A folded model has lost its BN layers: training it would train another network, so a forward in training
    mode raises instead.
    """
    model.eval()
    for module in list(model.modules()):
        pairs = list(getattr(module, "CONV_BN", ()))
        # an nn.Sequential's order is its data flow only while it runs Sequential's own forward (a subclass may
        # reuse a conv's output, e.g. in a residual)
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            names = list(module._modules)
            pairs += list(zip(names, names[1:]))
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    model.register_forward_pre_hook(_refuse_training)
    return model


def _refuse_training(model: nn.Module, _inputs) -> None:
    if model.training:
        raise UserError("this model's BatchNorm layers were folded into its convolutions for attacks "
                        "(models.fold_batchnorm); load the checkpoint again to train it")
