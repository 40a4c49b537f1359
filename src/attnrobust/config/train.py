"""[train]: TrainConfig (one training run, with its checks), the per-dataset recipes (DEFAULTS) a study's [train]
table overrides, and regime_label, the name of how a model was trained."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from attnrobust.config.coerce import check_keys, field_hints
from attnrobust.errors import UserError
from attnrobust.results import axis_name, point_label

# [train] keys the study itself sets per job; a config may not fix them.
PER_JOB_TRAIN_KEYS = ("dataset", "model", "seed", "cell")
# What a study regime (study.regimes) may set: how a model is trained against attacks, nothing else, so that the
# regimes of a study differ in that alone.
REGIME_KEYS = ("adversarial", "adv_eps", "adv_alpha", "adv_steps", "adv_check_n")

SCHEDULES = ("onecycle", "cosine")
ADVERSARIAL = ("none", "pgd", "fgsm-rs")
# Test images of the end-of-epoch PGD check when adv_check_n is unset (adversarial regimes only): ~2 pp
# standard error at 50% accuracy, far below the drop a collapse makes (Wong et al.: ~40% -> ~0% in an epoch).
_ADV_CHECK_N = 500


@dataclass
class TrainConfig:
    dataset: str
    model: str
    width: int = 64               # channels of the first stage; 64 = the published networks
    epochs: int = 30
    batch_size: int = 128         # global batch (summed over data-parallel ranks)
    lr: float = 0.1               # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4    # on conv/linear weights only; BatchNorm and biases are not decayed
    warmup_epochs: float = 1.0    # linear ramp to the peak lr, then the schedule's decay to 0
    schedule: str = "onecycle"    # "onecycle" (linear decay) or "cosine"
    # 0 by default: label smoothing changes the loss surface attacks climb, a confound in a robustness study.
    label_smoothing: float = 0.0
    augment: bool = True          # the dataset's augmentation (random crop, + flip on CIFAR)
    seed: int = 0
    # The study cell's axis values beyond width (study.axes), as a label such as "stem_stride 1": part of the
    # checkpoint's name only, so that one run folder keeps a study's axis values apart (the settings themselves are
    # in the fields above). Set by the study (StudyConfig.train_config); "" for a single run.
    cell: str = ""
    n_train: int | None = None    # train on the first n training images only (tests, quick looks)
    n_test: int | None = None     # score test accuracy on the first n test images only
    eval_every: int = 1           # test accuracy every k epochs (and always after the last)
    amp: bool | None = None       # mixed precision; None = on for CUDA (bf16 where supported, else fp16)
    # None = on: NHWC convolutions are faster with cuDNN tensor cores and, measured on a 2-core AVX-512 CPU,
    # 1.3-1.6x faster with oneDNN too (benchmarks/train.py); set false where a CPU disagrees.
    channels_last: bool | None = None
    compile: bool = False         # torch.compile the model
    # Extra keyword arguments of models.build_model (e.g. {cbam_bn_momentum = 0.1}); unknown ones are refused.
    # A plain `dict` annotation: the config parser checks values with isinstance, which a dict[...] cannot do.
    model_args: dict = field(default_factory=dict)
    # Adversarial training (module docstring): "none", "pgd" (PGD-AT) or "fgsm-rs" (FGSM with random start).
    adversarial: str = "none"
    adv_eps: float = 8 / 255      # L-inf budget in [0, 1] pixel units (8/255: the CIFAR standard)
    # Step size; None = 2.5 * adv_eps / adv_steps for PGD (Madry et al.'s rule: the ball's diameter is crossed with
    # room to spare, whatever the start), 1.25 * adv_eps for FGSM-RS (Wong et al. 2020's choice; 2 * eps overfits)
    adv_alpha: float | None = None
    adv_steps: int = 10           # PGD-AT steps (FGSM-RS takes one)
    # Test images of the end-of-epoch PGD-10 check (adv_test_acc, catastrophic_overfitting); None = 500 when
    # training adversarially, 0 (off) otherwise: on a standard model it reads ~0% and costs ~10 forward+backward
    # passes over those images per epoch.
    adv_check_n: int | None = None

    @classmethod
    def for_dataset(cls, dataset: str, *, model: str, seed: int = 0, cell: str = "",
                    **overrides: Any) -> TrainConfig:
        """The recipe for `dataset` (see DEFAULTS) with `overrides` applied; unknown keys raise UserError.
        The one check of [train] keys: a study's overrides reach it through StudyConfig.train_config."""
        check_keys(overrides, sorted({f.name for f in dataclasses.fields(cls)} - set(PER_JOB_TRAIN_KEYS)),
                    "train")
        return cls(dataset=dataset, model=model, seed=seed, cell=cell, **{**DEFAULTS.get(dataset, {}), **overrides})

    def validate(self, data_dir=None) -> None:
        """Raise UserError naming the first bad field (data_dir: where a user dataset is)."""
        from attnrobust.data import get_spec
        from attnrobust.models import is_user_model, list_models

        try:
            get_spec(self.dataset, data_dir)
        except UserError as err:
            raise UserError(f"dataset: {err}") from None
        if self.model not in list_models() and not is_user_model(self.model):
            raise UserError(f"model: unknown model {self.model!r}; valid: {', '.join(list_models())}")

        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise UserError(f"{name}: must be {rule}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check("width", is_int(self.width) and self.width > 0, "a positive integer")
        check("epochs", is_int(self.epochs) and self.epochs > 0, "a positive integer")
        check("batch_size", is_int(self.batch_size) and self.batch_size > 0, "a positive integer")
        check("lr", is_num(self.lr) and self.lr > 0, "a positive number")
        check("momentum", is_num(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)")
        check("weight_decay", is_num(self.weight_decay) and self.weight_decay >= 0, "a number >= 0")
        check("warmup_epochs", is_num(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
              f"between 0 and epochs ({self.epochs})")
        check("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        check("label_smoothing", is_num(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)")
        check("seed", is_int(self.seed) and self.seed >= 0, "an integer >= 0")
        check("eval_every", is_int(self.eval_every) and self.eval_every > 0, "a positive integer")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            check(name, value is None or (is_int(value) and value > 0), "a positive integer (or unset for all)")
        for name in ("nesterov", "augment", "compile"):
            check(name, isinstance(getattr(self, name), bool), "true or false")
        for name in ("amp", "channels_last"):
            check(name, getattr(self, name) in (None, True, False), "true, false or unset (auto)")
        if self.n_train is not None and self.batch_size > self.n_train:
            raise UserError(f"batch_size: {self.batch_size} is larger than the {self.n_train} training images "
                            f"(n_train); use a smaller batch size")
        check("adversarial", self.adversarial in ADVERSARIAL, f"one of {', '.join(ADVERSARIAL)}")
        check("adv_eps", is_num(self.adv_eps) and 0 <= self.adv_eps <= 1,
              "a number in [0, 1] (pixel units, 0.1 = 25.5/255)")
        if self.adversarial != "none" and self.adv_eps == 0:
            raise UserError(f"adv_eps: must be > 0 for adversarial = {self.adversarial!r} (or set adversarial = "
                            f"\"none\")")
        check("adv_alpha", self.adv_alpha is None or (is_num(self.adv_alpha) and self.adv_alpha > 0),
              "a positive number (or unset for the default)")
        check("adv_steps", is_int(self.adv_steps) and self.adv_steps > 0, "a positive integer")
        check("adv_check_n", self.adv_check_n is None or (is_int(self.adv_check_n) and self.adv_check_n >= 0),
              "an integer >= 0 (0 = off; unset = 500 when training adversarially)")
        check("model_args", isinstance(self.model_args, dict) and all(isinstance(k, str) for k in self.model_args),
              "a table of keyword arguments for the model")
        if self.model_args:  # build_model is the authority on which arguments a model takes: ask it now, cheaply
            from attnrobust.models import build_model
            try:
                build_model(self.model, 10, width=1, **self.model_args)
            except UserError as err:
                raise UserError(f"model_args: {err}") from None

    def alpha(self) -> float:
        """The adversarial step size: adv_alpha, or the regime's default (see the field's comment)."""
        if self.adv_alpha is not None:
            return float(self.adv_alpha)
        return 1.25 * self.adv_eps if self.adversarial == "fgsm-rs" else 2.5 * self.adv_eps / self.adv_steps

    def check_images(self) -> int:
        """Test images of the end-of-epoch PGD check (0 = no check)."""
        if self.adv_check_n is not None:
            return self.adv_check_n
        return 0 if self.adversarial == "none" else _ADV_CHECK_N


# Per-dataset recipes. Full sizes aim at the reference accuracies on a GPU (ResNet-50: CIFAR-10 ~94%,
# CIFAR-100 ~76%, Fashion-MNIST ~94%). fashion-mnist-mini is the quick study's laptop-CPU recipe, measured on
# its 6000/1000 images: at width 8 a high peak lr with a short warm-up and no augmentation (which only slows a
# 6-epoch run down) gives resnet14 86.6%, cbam_resnet14 85.2%, vgg16_bn 85.8% test accuracy (seed 0); lr 0.05
# or 0.1 stays below 80% in that budget. adv_eps 0.1 on Fashion-MNIST: the budget robust-training papers use for
# it (0.3 is MNIST's, where strokes survive it; Fashion-MNIST textures do not).
DEFAULTS: dict[str, dict[str, Any]] = {
    "fashion-mnist": dict(width=64, epochs=15, batch_size=128, lr=0.1, warmup_epochs=1.0, adv_eps=0.1),
    "fashion-mnist-mini": dict(width=8, epochs=6, batch_size=64, lr=0.3, warmup_epochs=0.5, augment=False,
                               adv_eps=0.1),
    "cifar10": dict(width=64, epochs=40, batch_size=256, lr=0.2, warmup_epochs=4.0),
    "cifar100": dict(width=64, epochs=60, batch_size=256, lr=0.2, warmup_epochs=5.0),
}


def regime_label(cfg: TrainConfig | dict[str, Any]) -> str:
    """Short human label of how a model was trained: "standard", "PGD-AT eps 0.1 (10 steps)", "FGSM-RS eps 8/255".

    Takes a TrainConfig or its dict (a checkpoint's meta["train"]; one written before adversarial training existed
    is "standard"). A step size other than the default is named too.
    """
    d = dataclasses.asdict(cfg) if isinstance(cfg, TrainConfig) else dict(cfg)
    kind = d.get("adversarial", "none")
    if kind == "none":
        return "standard"
    eps = float(d["adv_eps"])
    short = f"{eps:g}"
    if len(short) > 6 and abs(eps * 255 - round(eps * 255)) < 1e-6:  # 0.0313725 reads better as 8/255
        short = f"{round(eps * 255)}/255"
    label = f"PGD-AT eps {short} ({d['adv_steps']} steps" if kind == "pgd" else f"FGSM-RS eps {short}"
    if d.get("adv_alpha") is not None:
        label += f", alpha {d['adv_alpha']:g}" if kind == "pgd" else f" (alpha {d['adv_alpha']:g}"
    return label + ")" if kind == "pgd" or d.get("adv_alpha") is not None else label


# ---- study axes: points of a study's grid of [train] settings -------------------------------------------------------
# A point is a tuple of (key, value) pairs, one per axis of study.axes in config order: a [train] key ("width",
# "epochs", ...) or "model_args.NAME" for a model build argument.


def study_axes(widths: list | None, axes: dict | None) -> list[tuple[str, list]]:
    """A study's axes, (key, values) in config order: study.widths as the width axis, then study.axes."""
    return ([("width", list(widths))] if widths else []) + list((axes or {}).items())


def grid_points(axes: list[tuple[str, list]]) -> list[tuple[tuple[str, Any], ...]]:
    """Every point of the axes' grid, the first axis outermost: [()] without axes."""
    return [tuple(zip([k for k, _ in axes], values)) for values in itertools.product(*(v for _, v in axes))]


def point_of_train(train: dict[str, Any], axes: list[tuple[str, list]]) -> tuple[tuple[str, Any], ...]:
    """The point on `axes` of a model trained with `train` (a TrainConfig's dict, e.g. a checkpoint's
    meta["train"]): its value of each axis key (a model_args.NAME axis read from model_args)."""
    return tuple((key, (train.get("model_args") or {}).get(axis_name(key)) if key.startswith("model_args.")
                  else train.get(key)) for key, _ in axes)


def apply_point(overrides: dict[str, Any], point) -> dict[str, Any]:
    """[train] overrides with a point's values set (a model_args.NAME axis into model_args), and `cell` naming the
    point's values beyond width (TrainConfig.cell: width has its own part of a checkpoint's name)."""
    out = dict(overrides)
    for key, value in point:
        if key.startswith("model_args."):
            out["model_args"] = {**out.get("model_args", {}), axis_name(key): value}
        else:
            out[key] = value
    label = point_label(point, without=("width",))
    if label:
        out["cell"] = label
    return out


def train_hints() -> dict[str, Any]:
    """[train]'s keys and their types: TrainConfig's fields but those each job sets (dataset, model, seed, cell)."""
    return {k: v for k, v in field_hints(TrainConfig).items() if k not in PER_JOB_TRAIN_KEYS}
