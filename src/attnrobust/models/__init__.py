"""The model registry: every classifier the study can train, built by name, and what each one is.

    model = build_model("cbam_resnet50", num_classes=10, in_channels=3, mean=spec.mean, std=spec.std)
    rebuilt = build_model(**model.build_args)      # what a checkpoint stores to rebuild its own model
    model_info("cbam_resnet50")                    # ModelInfo(name='cbam_resnet50', base='resnet50',
                                                   #           attention='cbam', twin='resnet50')
    attention_pairs(["resnet14", "cbam_resnet14", "eca_resnet26"])   # [("cbam_resnet14", "resnet14")]

Every model takes pixels in [0, 1], shape [B, in_channels, H, W], and normalizes them inside with its `mean` and
`std` buffers (per channel). When `mean`/`std` are None the normalization is the identity (mean 0, std 1), so a
model built without a dataset still sees exactly the pixels it is given; the training piece passes the dataset's
values, and they are part of `build_args`.

Which network a name is, which attention it carries and which model it is compared with are registry facts
(`model_info`), not something to read off the name: code that pairs or groups models asks here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnrobust.errors import UserError
from attnrobust.models.attention import ATTENTION, CBAM, ECA, MHSA, SE, SELF_ATTENTION
from attnrobust.models.common import STEMS
from attnrobust.models.resnet import ResNet
from attnrobust.models.vgg import VGG

__all__ = ["build_model", "list_models", "model_info", "model_options", "attention_pairs", "ModelInfo",
           "attention_maps", "recording_attention", "ATTENTION", "CBAM", "SE", "ECA", "MHSA"]

IN_CHANNELS = (1, 3)


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is.

    base: the network without attention, family and depth ("resnet14", "vgg16_bn"); attention: None or the kind
    ("cbam", "se", "eca", "mhsa"); twin: the registered name of the same network (same depth, same width) without
    the attention -- the model an attention model is compared with -- or None for a model without attention.
    """

    name: str
    base: str
    attention: str | None
    twin: str | None


@dataclass(frozen=True)
class _Entry:
    family: type[nn.Module]
    base: str
    attention: str | None
    fixed: dict[str, Any]           # architecture arguments the name decides
    extras: dict[str, Any] = field(default_factory=dict)  # optional keyword arguments with their defaults


def _resnets() -> dict[str, _Entry]:
    depths = {"resnet14": [1, 1, 1, 1], "resnet26": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}
    out = {}
    for base, layers in depths.items():
        out[base] = _Entry(ResNet, base, None, {"layers": layers, "attn": None}, {"zero_init_residual": True})
        for attn in ATTENTION:
            # CBAM's spatial BN momentum: the official 0.01 by default; the quick study's short runs pass 0.1.
            extras = {"zero_init_residual": True, **({"cbam_bn_momentum": 0.01} if attn == "cbam" else {})}
            out[f"{attn}_{base}"] = _Entry(ResNet, base, attn, {"layers": layers, "attn": attn}, extras)
        # input_size sizes the self-attention's position tables; 32 covers both 32x32 and 28x28 inputs.
        out[f"bot_{base}"] = _Entry(ResNet, base, SELF_ATTENTION, {"layers": layers, "attn": SELF_ATTENTION},
                                    {"zero_init_residual": True, "input_size": 32})
    return out


_REGISTRY: dict[str, _Entry] = {
    **_resnets(),
    "vgg16": _Entry(VGG, "vgg16", None, {"batch_norm": False}),
    "vgg16_bn": _Entry(VGG, "vgg16_bn", None, {"batch_norm": True}),
}

# Value rules of the extra arguments beyond their type: (test, what a valid value is).
_EXTRA_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "cbam_bn_momentum": (lambda v: math.isfinite(v) and 0 < v <= 1,
                         "a number in (0, 1] (0.01: the official CBAM value; 0.1 for short runs)"),
    "input_size": (lambda v: v >= 1, "a positive integer, the largest input side (32 covers 28x28 and 32x32)"),
}


def list_models() -> list[str]:
    """Registered model names: ResNets by depth (plain, CBAM, SE, ECA, BoT), then VGG-16 (plain, BN)."""
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The base network, attention kind and no-attention twin of the registered model `name`."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    return ModelInfo(name, entry.base, entry.attention, None if entry.attention is None else entry.base)


def model_options(name: str) -> dict[str, Any]:
    """The extra keyword arguments `build_model` accepts for `name`, with their defaults (a fresh dict), so a
    caller holding options for several models (e.g. cbam_bn_momentum) can pass each model only its own."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    return dict(_REGISTRY[name].extras)


def attention_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """(attention model, its twin) for every attention model in `names` whose twin is also in `names`, in the
    order of `names` (a repeated name counts once). Unknown names raise UserError."""
    if isinstance(names, str):
        raise UserError(f"attention_pairs takes a list of model names, got the single string {names!r}")
    infos = [model_info(n) for n in dict.fromkeys(names)]
    present = {i.name for i in infos}
    return [(i.name, i.twin) for i in infos if i.twin is not None and i.twin in present]


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

    name: one of `list_models()`. stem: "cifar" (for 32x32 and 28x28 inputs) or "imagenet" (the published networks; for
    VGG the ImageNet classifier head). width: 64 is the published size; every stage scales with it.
    kw: model-specific options (see resnet.ResNet): every ResNet takes `zero_init_residual` (default True), the
    cbam_* models `cbam_bn_momentum` (default 0.01, the official CBAM value), the bot_* models `input_size`
    (default 32: serves 32x32 and 28x28 inputs). An argument a model does not take is refused.
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
        if key in _EXTRA_RULES and not _EXTRA_RULES[key][0](value):
            raise UserError(f"{key} must be {_EXTRA_RULES[key][1]}, got {value!r}")
    mean_l = _per_channel("mean", mean, 0.0, in_channels)
    std_l = _per_channel("std", std, 1.0, in_channels)

    model = entry.family(num_classes=num_classes, in_channels=in_channels, stem=stem, width=width,
                         mean=mean_l, std=std_l, **entry.fixed, **extras)
    model.build_args = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "stem": stem,
                        "width": width, "mean": mean_l, "std": std_l, **extras}
    return model


# The gates that record what they compute (each has a `sink`): every ATTENTION module.
_RECORDING = tuple(ATTENTION.values())


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[dict[str, torch.Tensor]]]:
    """While active, every attention gate of `model` (CBAM, SE, ECA) appends its gates to the yielded list, in
    forward order."""
    sink: list[dict[str, torch.Tensor]] = []
    modules = [m for m in model.modules() if isinstance(m, _RECORDING)]
    for m in modules:
        m.sink = sink
    try:
        yield sink
    finally:
        for m in modules:
            m.sink = None


def attention_maps(model: nn.Module, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The attention gates for the batch `x` (pixels in [0, 1]): one dict per gate module in forward order, values
    in (0, 1): "channel" [B, C] for every gate (CBAM, SE, ECA), and "spatial" [B, 1, H, W] for CBAM only.
    Computed in eval mode without gradients; the model's train/eval state is restored, module by module. An
    empty list for a model without gates (plain, VGG, and the self-attention models, whose attention is not a
    gate)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), recording_attention(model) as maps:
            model(x)
    finally:
        for m, mode in modes:
            m.training = mode
    return maps
