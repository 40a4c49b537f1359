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

User models: a name with a colon is an entry point into the user's own code, "package.module:callable",
"./path/to/file.py:callable" (a path relative to the current directory) or "__main__:callable" (a function of the
running program, e.g. a notebook). `build_model` calls it as callable(num_classes=..., in_channels=..., **kw), plus
mean=/std= (the dataset's per-channel values) when the callable names those parameters; it must return an
nn.Module that takes pixels in [0, 1] (normalizing them is the callable's business). `build_args` records the
entry point (a file path made absolute) and the arguments, so a checkpoint rebuilds it; loading such a checkpoint
runs that code, which `attnrobust.checkpoint.load_model` does only for code the caller allows (`code_allowed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnrobust.errors import UserError
from attnrobust.models.attention import ATTENTION, CBAM, ECA, MHSA, SE, SELF_ATTENTION
from attnrobust.models.common import VARIANTS, fold_batchnorm
from attnrobust.models.resnet import ResNet
from attnrobust.models.vgg import VGG

__all__ = ["build_model", "list_models", "model_info", "model_options", "attention_pairs", "ModelInfo",
           "attention_maps", "recording_attention", "ATTENTION", "CBAM", "SE", "ECA", "MHSA", "is_user_model",
           "code_origin", "code_allowed", "fold_batchnorm"]

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
        common = {"zero_init_residual": True, "stem_stride": 1}
        out[base] = _Entry(ResNet, base, None, {"layers": layers, "attn": None}, dict(common))
        for attn in ATTENTION:
            # CBAM's spatial BN momentum: the official 0.01 by default; the quick study's short runs pass 0.1.
            extras = {**common, **({"cbam_bn_momentum": 0.01} if attn == "cbam" else {})}
            out[f"{attn}_{base}"] = _Entry(ResNet, base, attn, {"layers": layers, "attn": attn}, extras)
        # input_size sizes the self-attention's position tables; 32 covers both 32x32 and 28x28 inputs.
        out[f"bot_{base}"] = _Entry(ResNet, base, SELF_ATTENTION, {"layers": layers, "attn": SELF_ATTENTION},
                                    {**common, "input_size": 32})
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
    "stem_stride": (lambda v: v in (1, 2), "1 (the CIFAR stem) or 2 (that stem halving the input side)"),
}


def list_models() -> list[str]:
    """Registered model names: ResNets by depth (plain, CBAM, SE, ECA, BoT), then VGG-16 (plain, BN)."""
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The base network, attention kind and no-attention twin of the registered model `name`.

    A user model (entry point) is its own base, with attention None (unknown: a config's study.pairs declares
    which user models are compared) and no twin; its code is not imported for this."""
    if is_user_model(name):
        _split_entry(name)
        return ModelInfo(name, name, None, None)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    return ModelInfo(name, entry.base, entry.attention, None if entry.attention is None else entry.base)


def model_options(name: str) -> dict[str, Any]:
    """The extra keyword arguments `build_model` accepts for `name`, with their defaults (a fresh dict), so a
    caller holding options for several models (e.g. cbam_bn_momentum) can pass each model only its own.
    For a user model: the callable's own keyword parameters (None where it has no default); imports its code."""
    if is_user_model(name):
        return _user_options(name)
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


def build_model(name: str, num_classes: int, in_channels: int = 3, variant: str = "cifar", width: int = 64,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **kw: Any) -> nn.Module:
    """Build a registered model, freshly initialized, in train mode, on the CPU (or the current default device).

    name: one of `list_models()`. variant: "cifar" (adapted to 32x32 and 28x28 inputs) or "imagenet" (the published
    networks; see models.common.VARIANTS). width: 64 is the published size; every stage scales with it.
    kw: model-specific options (see resnet.ResNet): every ResNet takes `zero_init_residual` (default True) and
    `stem_stride` (1, or 2 to halve the input side in the stem), the
    cbam_* models `cbam_bn_momentum` (default 0.01, the official CBAM value), the bot_* models `input_size`
    (default 32: serves 32x32 and 28x28 inputs). An argument a model does not take is refused.
    The model's `build_args` holds every argument, defaults filled in, as plain JSON values.
    A user model (an entry point, see the module docstring) gets num_classes, in_channels, kw, and mean/std if it
    names them; variant and width are registry options it does not get.
    """
    if is_user_model(name):
        if not _is_int(num_classes) or num_classes < 1:
            raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not _is_int(in_channels) or in_channels not in IN_CHANNELS:
            raise UserError(f"in_channels must be one of {', '.join(map(str, IN_CHANNELS))}, got {in_channels!r}")
        return _build_user_model(name, num_classes, in_channels, mean, std, kw)
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    if not _is_int(num_classes) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not _is_int(in_channels) or in_channels not in IN_CHANNELS:
        raise UserError(f"in_channels must be one of {', '.join(map(str, IN_CHANNELS))}, got {in_channels!r}")
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
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

    model = entry.family(num_classes=num_classes, in_channels=in_channels, variant=variant, width=width,
                         mean=mean_l, std=std_l, **entry.fixed, **extras)
    model.build_args = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "variant": variant,
                        "width": width, "mean": mean_l, "std": std_l, **extras}
    return model


# ---- user models: entry points into the user's own code -----------------------------------------------------------

# Arguments build_model gives a user callable itself; they are not options a config may set for it.
_GIVEN = ("num_classes", "in_channels", "mean", "std")


def is_user_model(name: Any) -> bool:
    """True for an entry point ("module:callable", "./file.py:callable"), which no registered name is."""
    return isinstance(name, str) and ":" in name


def _split_entry(name: str) -> tuple[str | None, Path | None, str]:
    """(module, None, attribute) or (None, absolute file path, attribute); a malformed name is a UserError."""
    target, _, attr = name.rpartition(":")
    if not target or not all(part.isidentifier() for part in attr.split(".")):
        raise UserError(f"model {name!r}: expected an entry point MODULE:CALLABLE (e.g. mypkg.nets:build) or "
                        f"FILE.py:CALLABLE (e.g. ./my_models.py:build)")
    if target.endswith(".py") or "/" in target or "\\" in target:
        return None, Path(target).expanduser().resolve(), attr  # relative paths: to the current directory
    if not all(part.isidentifier() for part in target.split(".")):
        raise UserError(f"model {name!r}: {target!r} is neither a module name nor a .py file path")
    return target, None, attr


def code_origin(name: str) -> str:
    """Where a user model's code comes from: its module name, or its .py file's absolute path."""
    module, path, _ = _split_entry(name)
    return module if module is not None else str(path)


def code_allowed(name: str, allow: Iterable[str] | bool = ()) -> bool:
    """Whether `allow` covers the code of entry point `name`: True allows any code; else each item is a module
    (covering its submodules: "mypkg" allows "mypkg.nets:build"), a .py path, or an entry point itself."""
    if allow is True:
        return True
    module, path, _ = _split_entry(name)
    for item in [allow] if isinstance(allow, str) else allow or ():
        if not isinstance(item, str) or not item:
            continue
        if ":" in item:
            try:
                m, p, _ = _split_entry(item)
            except UserError:
                continue
        elif item.endswith(".py") or "/" in item:
            m, p = None, Path(item).expanduser().resolve()
        else:
            m, p = item, None
        if module is not None and m is not None and (module == m or module.startswith(m + ".")):
            return True
        if path is not None and p is not None and path == p:
            return True
    return False


def _load_file_module(path: Path):
    if not path.is_file():
        raise UserError(f"model file {path} not found; give a path to a .py file (relative to the current "
                        f"directory: {Path.cwd()})")
    # One module per file path, kept in sys.modules: building the same model twice reuses the same classes.
    key = "attnrobust_user_" + re.sub(r"\W", "_", path.stem) + "_" + hashlib.md5(str(path).encode()).hexdigest()[:8]
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise UserError(f"model file {path} cannot be loaded as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[key]
        raise UserError(f"model file {path} failed to run: {type(err).__name__}: {_first_line(err)}") from None
    return module


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _resolve(name: str) -> Callable[..., nn.Module]:
    """The user's callable for entry point `name`, importing its module (or running its file) if needed."""
    module_name, path, attr = _split_entry(name)
    if path is not None:
        module = _load_file_module(path)
    elif module_name == "__main__":
        module = sys.modules["__main__"]
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise UserError(f"model {name!r}: cannot import {module_name!r} ({_first_line(err)}); install it or "
                            f"put its folder on PYTHONPATH") from None
        except Exception as err:
            raise UserError(f"model {name!r}: importing {module_name!r} failed: {type(err).__name__}: "
                            f"{_first_line(err)}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            where = path if path is not None else module_name
            raise UserError(f"model {name!r}: {where} has no {attr!r}"
                            + (" (a function defined in a notebook or script: did that cell run? worker "
                               "processes do not see it: use eval.workers = 1)" if module_name == "__main__" else ""))
    if not callable(obj):
        raise UserError(f"model {name!r}: {attr!r} is not callable; name a function or class that returns an "
                        f"nn.Module")
    return obj


def _parameters(fn: Callable) -> dict[str, inspect.Parameter] | None:
    """The callable's named parameters, or None when it takes **kwargs or has no readable signature."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                          inspect.Parameter.KEYWORD_ONLY)}


def _user_options(name: str) -> dict[str, Any]:
    """The keyword arguments a user callable takes beyond the ones build_model gives, with their defaults
    (None where it has none); {} when it takes **kwargs (then any argument may be given, and the callable
    decides)."""
    params = _parameters(_resolve(name)) or {}
    return {k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in params.items() if k not in _GIVEN}


def _build_user_model(name: str, num_classes: int, in_channels: int, mean, std, kw: dict[str, Any]) -> nn.Module:
    fn = _resolve(name)
    params = _parameters(fn)
    if params is not None:
        unknown = sorted(set(kw) - set(params))
        if unknown:
            valid = ", ".join(k for k in params if k not in _GIVEN) or "none"
            raise UserError(f"unknown argument {unknown[0]!r} for model {name!r}; it takes: {valid}")
    try:
        json.dumps(kw)
    except (TypeError, ValueError):
        raise UserError(f"arguments of model {name!r} must be plain values (numbers, strings, lists, tables): "
                        f"a checkpoint records them as JSON; got {kw!r}") from None
    given: dict[str, Any] = {}
    if params is not None:  # the dataset's normalization, to a callable that asks for it by name
        if "mean" in params and mean is not None:
            given["mean"] = _per_channel("mean", mean, 0.0, in_channels)
        if "std" in params and std is not None:
            given["std"] = _per_channel("std", std, 1.0, in_channels)
    try:
        model = fn(num_classes=num_classes, in_channels=in_channels, **given, **kw)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"model {name!r} failed to build: {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    module, path, attr = _split_entry(name)
    # A file path is recorded absolute, so the checkpoint rebuilds the model from any working directory.
    entry = name if path is None else f"{path}:{attr}"
    model.build_args = {"name": entry, "num_classes": num_classes, "in_channels": in_channels, **given, **kw}
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
