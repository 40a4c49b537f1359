"""Checkpoints: safetensors weights plus JSON metadata; a checkpoint rebuilds its own model.

Layout of a checkpoint `NAME.safetensors` (one file):
  tensors  the bare model's state_dict (parameters and buffers): DDP and torch.compile wrappers are unwrapped
  header   {"attnrobust": JSON of the metadata dict, "sha256": digest of the tensors}
The metadata holds `build_args` (so `attnrobust.models.build_model(**build_args)` rebuilds the architecture),
the dataset, num_classes, in_channels, mean, std, epoch, epochs, seed, metrics and the training config.

Resume state `NAME.state.safetensors` (beside it, while a run is unfinished): the model's tensors under
"model/<key>", the optimizer's tensors under "optim/<param index>/<name>", and one JSON header
{"attnrobust_state": {"info": ..., "param_groups": ..., "optim_extra": ...}} for everything that is not a tensor.
It carries the weights too, so it alone resumes a run: whichever of the two files a kill -9 left newer, the
state file is never behind the checkpoint (the trainer writes it first).

No pickle anywhere: safetensors stores raw tensors and the rest is JSON.

A checkpoint of a user model (build_args name "module:callable" or "/abs/file.py:callable") rebuilds it by
running that code, so `load_model` does it only when the caller allows that code (`allow_code`): a checkpoint
from elsewhere cannot make us import and run whatever its header names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from attnrobust import models
from attnrobust.errors import UserError
from attnrobust.runtime import atomic_path

META_KEY = "attnrobust"
STATE_KEY = "attnrobust_state"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # what torch.compile returns
            model = model._orig_mod
        else:
            return model


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The bare model's state_dict (so no wrapper prefixes) as contiguous CPU tensors (what safetensors stores).

    Copied because safetensors refuses tensors that share memory, and so that training can go on mutating
    the live parameters while the copy is written; one copy also turns channels_last weights contiguous.
    """
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in unwrap(model).state_dict().items()}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    # safetensors checks the header and the file length but not the bytes; a digest catches flipped bits too.
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_header(path: Path, what: str) -> dict[str, str]:
    if not path.is_file():
        raise UserError(f"{what} {path} not found; check the path, or train it first with `attnrobust train`")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{what} {path} is corrupt or not a safetensors file ({_first_line(err)}); "
                        f"delete it and train again") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _load_tensors(path: Path, header: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{what} {path} is corrupt ({_first_line(err)}); delete it and train again") from None
    if header.get("sha256") != _digest(tensors):
        raise UserError(f"{what} {path} is corrupt (its tensors do not match their checksum); "
                        f"delete it and train again")
    return tensors


# ---- checkpoints ------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write the model's weights and `meta` (JSON-serializable; build_args added from the model) atomically."""
    path = Path(path)
    bare = unwrap(model)
    meta = dict(meta)
    if "build_args" not in meta:
        if not hasattr(bare, "build_args"):
            raise TypeError("save_checkpoint needs a model built by attnrobust.models.build_model "
                            "(it has no build_args) or meta['build_args']")
        meta["build_args"] = bare.build_args
    tensors = model_tensors(bare)
    header = {META_KEY: json.dumps(meta, sort_keys=True), "sha256": _digest(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata dict of a checkpoint, without loading its weights."""
    path = Path(path)
    return _parse_meta(path, _read_header(path, "checkpoint"))


def _parse_meta(path: Path, header: dict[str, str]) -> dict[str, Any]:
    if META_KEY not in header:
        raise UserError(f"{path} was not written by attnrobust (no '{META_KEY}' metadata); "
                        f"give a checkpoint written by `attnrobust train`")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError:
        raise UserError(f"checkpoint {path} has corrupt metadata; delete it and train again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("build_args"), dict):
        raise UserError(f"checkpoint {path} has no model description (build_args); delete it and train again")
    return meta


def load_model(path: str | Path, device="cpu", *, allow_code=()) -> torch.nn.Module:
    """Rebuild the checkpoint's model, load its weights (strictly), and return it in eval mode on `device`.

    `model.meta` is the metadata dict. Any failure raises UserError before a model is returned, so a caller
    never holds a half-loaded model. allow_code: the user code a checkpoint may run to rebuild its model --
    module names (covering their submodules), .py paths or entry points, or True for any (see
    attnrobust.models.code_allowed); a checkpoint of a registered model needs none.
    """
    path = Path(path)
    header = _read_header(path, "checkpoint")
    meta = _parse_meta(path, header)
    name = meta["build_args"].get("name")
    if models.is_user_model(name):
        try:
            allowed = models.code_allowed(name, allow_code)
            origin = models.code_origin(name)
        except UserError as err:
            raise UserError(f"checkpoint {path}: cannot rebuild its model: {err}") from None
        if not allowed:
            raise UserError(f"checkpoint {path} rebuilds its model by running user code ({name}); refused: if "
                            f"you trust it, allow it with allow_code=[{origin!r}] (CLI: --allow-code {origin})")
    tensors = _load_tensors(path, header, "checkpoint")
    build_args = dict(meta["build_args"])
    if "stem" in build_args:  # checkpoints written before the argument was renamed `variant`
        build_args["variant"] = build_args.pop("stem")
    try:
        if models.is_user_model(name):
            model = models.build_model(**build_args)
        else:
            # Built without memory or initialisation (a ResNet-50's random init costs more than reading its
            # weights), then every tensor is overwritten: load_state_dict(strict) below sets all parameters and
            # buffers, and registered models keep no state outside them. User code gets a normal build.
            with torch.device("meta"):
                model = models.build_model(**build_args)
            model = model.to_empty(device="cpu")
    except UserError as err:
        raise UserError(f"checkpoint {path}: cannot rebuild its model: {err}") from None
    except TypeError as err:
        raise UserError(f"checkpoint {path}: cannot rebuild its model ({err}); it may come from another "
                        f"attnrobust version") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise UserError(f"checkpoint {path}: weights do not fit the model {meta['build_args'].get('name')!r} "
                        f"({_first_line(err)}); delete it and train again") from None
    model.meta = meta
    model = model.to(device).eval()
    train = meta.get("train")
    if not isinstance(train, dict) or train.get("channels_last") is not False:
        # the layout it trained in (TrainConfig.channels_last, None = on): attacks are forward+backward passes
        # too, and NHWC makes them faster on oneDNN and cuDNN alike (benchmarks/layout.py)
        model = model.to(memory_format=torch.channels_last)
    return model


def load_attack_model(path: str | Path, device="cpu", *, allow_code=()) -> torch.nn.Module:
    """load_model for attacks and scoring: its BatchNorm layers folded into the convolutions before them
    (models.fold_batchnorm: the same eval-mode function up to float rounding, with a pass less over every feature
    map; a width-8 resnet14's attack pass 25% faster, benchmarks/attention.py). The model refuses to train."""
    return models.fold_batchnorm(load_model(path, device, allow_code=allow_code))


# ---- resume state -----------------------------------------------------------------------------------------------


def save_train_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     info: dict[str, Any]) -> Path:
    """Atomically write everything needed to resume: weights, optimizer buffers and `info` (JSON-serializable)."""
    path = Path(path)
    tensors = {f"model/{k}": v for k, v in model_tensors(model).items()}
    opt = optimizer.state_dict()
    extra: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value.detach().to("cpu", memory_format=torch.contiguous_format,
                                                                     copy=True)
            else:
                extra.setdefault(str(index), {})[name] = value
    header = {"info": info, "param_groups": opt["param_groups"], "optim_extra": extra}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(header, sort_keys=True),
                                               "sha256": _digest(tensors)})
    return path


def load_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a resume state: (model state_dict, optimizer state_dict, info)."""
    path = Path(path)
    header = _read_header(path, "resume state")
    try:
        parsed = json.loads(header[STATE_KEY])
        info, groups, extra = parsed["info"], parsed["param_groups"], parsed["optim_extra"]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"resume state {path} is corrupt or not written by attnrobust; delete it and rerun "
                        f"to train this model from the start") from None
    tensors = _load_tensors(path, header, "resume state")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optim_state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in extra.items()}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optim_state.setdefault(int(index), {})[name] = value
    return model_state, {"state": optim_state, "param_groups": groups}, info
