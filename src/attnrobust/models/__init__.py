"""The model registry: every classifier the study can train, built by name.

    model = build_model("cbam_resnet50", num_classes=10, in_channels=3, mean=spec.mean, std=spec.std)
    rebuilt = build_model(**model.build_args)      # what a checkpoint stores to rebuild its own model

Every model takes pixels in [0, 1], shape [B, in_channels, H, W], and normalizes them inside with its `mean` and
`std` buffers (per channel). When `mean`/`std` are None the normalization is the identity (mean 0, std 1), so a
model built without a dataset still sees exactly the pixels it is given; the training piece passes the dataset's
values, and they are part of `build_args`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnrobust.errors import UserError
from attnrobust.models.attention import ATTENTION, CBAM, SE
from attnrobust.models.common import STEMS
from attnrobust.models.resnet import ResNet
from attnrobust.models.vgg import VGG

__all__ = ["build_model", "list_models", "attention_maps", "recording_attention", "ATTENTION", "CBAM", "SE"]

IN_CHANNELS = (1, 3)


@dataclass(frozen=True)
class _Entry:
    family: type[nn.Module]
    fixed: dict[str, Any]           # architecture arguments the name decides
    extras: dict[str, Any] = field(default_factory=dict)  # optional keyword arguments with their defaults


def _resnets() -> dict[str, _Entry]:
    depths = {"resnet14": [1, 1, 1, 1], "resnet26": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}
    out = {}
    for base, layers in depths.items():
        for attn in (None, *ATTENTION):
            name = base if attn is None else f"{attn}_{base}"
            out[name] = _Entry(ResNet, {"layers": layers, "attn": attn}, {"zero_init_residual": True})
    return out


_REGISTRY: dict[str, _Entry] = {
    **_resnets(),
    "vgg16": _Entry(VGG, {"batch_norm": False}),
    "vgg16_bn": _Entry(VGG, {"batch_norm": True}),
}


def list_models() -> list[str]:
    """Registered model names, ResNets by depth (plain, CBAM, SE), then VGG-16."""
    return list(_REGISTRY)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _per_channel(kind: str, values: Sequence[float] | None, default: float, in_channels: int) -> list[float]:
    if values is None:
        return [default] * in_channels
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{kind} must be a list of {in_channels} numbers (one per channel), got {values!r}") from None
    if len(out) != in_channels or not all(math.isfinite(v) for v in out):
        raise UserError(f"{kind} must be {in_channels} finite numbers (one per input channel), got {values!r}")
    if kind == "std" and any(v <= 0 for v in out):
        raise UserError(f"std must be positive for every channel, got {values!r}")
    return out


def build_model(name: str, num_classes: int, in_channels: int = 3, stem: str = "cifar", width: int = 64,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **kw: Any) -> nn.Module:
    """Build a registered model, freshly initialized, in train mode, on the CPU (or the current default device).

    name: one of `list_models()`. stem: "cifar" (for 32x32 inputs) or "imagenet" (the published networks; for
    VGG the ImageNet classifier head). width: 64 is the published size; every stage scales with it.
    kw: model-specific options -- ResNets accept `zero_init_residual` (default True; see resnet.ResNet).
    The model's `build_args` holds every argument, defaults filled in, as plain JSON values.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    if not _is_int(num_classes) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not _is_int(in_channels) or in_channels not in IN_CHANNELS:
        raise UserError(f"in_channels must be one of {', '.join(map(str, IN_CHANNELS))}, got {in_channels!r}")
    if stem not in STEMS:
        raise UserError(f"unknown stem {stem!r}; valid stems: {', '.join(STEMS)}")
    if not _is_int(width) or width < 1:
        raise UserError(f"width must be a positive integer (64 = the published size), got {width!r}")
    unknown = sorted(set(kw) - set(entry.extras))
    if unknown:
        valid = ", ".join(entry.extras) or "none"
        raise UserError(f"unknown argument {unknown[0]!r} for model {name!r}; valid extra arguments: {valid}")
    extras = {**entry.extras, **kw}
    for key, value in extras.items():
        if type(value) is not type(entry.extras[key]):
            raise UserError(f"{key} must be a {type(entry.extras[key]).__name__}, got {value!r}")
    mean_l = _per_channel("mean", mean, 0.0, in_channels)
    std_l = _per_channel("std", std, 1.0, in_channels)

    model = entry.family(num_classes=num_classes, in_channels=in_channels, stem=stem, width=width,
                         mean=mean_l, std=std_l, **entry.fixed, **extras)
    model.build_args = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "stem": stem,
                        "width": width, "mean": mean_l, "std": std_l, **extras}
    return model


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[dict[str, torch.Tensor]]]:
    """While active, every CBAM module of `model` appends its gates to the yielded list, in forward order."""
    sink: list[dict[str, torch.Tensor]] = []
    modules = [m for m in model.modules() if isinstance(m, CBAM)]
    for m in modules:
        m.sink = sink
    try:
        yield sink
    finally:
        for m in modules:
            m.sink = None


def attention_maps(model: nn.Module, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """CBAM's gates for the batch `x` (pixels in [0, 1]): one dict per CBAM module in forward order, with
    "channel" [B, C] and "spatial" [B, 1, H, W], values in (0, 1). Computed in eval mode without gradients; the
    model's train/eval state is restored, module by module. An empty list for a model without CBAM."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), recording_attention(model) as maps:
            model(x)
    finally:
        for m, mode in modes:
            m.training = mode
    return maps
