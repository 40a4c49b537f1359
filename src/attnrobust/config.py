"""Configs: the only place TOML / CLI values become typed, checked dataclasses; every error names the key.

TrainConfig (one training run), AttackConfig (which attacks, their budgets) and a study's StudyConfig
(StudySection: what to compare, datasets x models x seeds; the [train] overrides of the per-dataset recipes;
AttackConfig; EvalSection: how many test images to attack, in which batch size, side by side, by which executor;
SlurmSection: the [slurm] resources of each job when that executor is Slurm) live here. The
pipeline stages (train, evaluate, study) receive these values already checked. Shipped study configs live in
attnrobust/configs/ and are named without the .toml suffix (`quick`, `cifar10`, ...).

This module imports no torch: `attnrobust --help`, `ls` and reading a config stay fast (torch takes seconds). The
checks that need the dataset and model registries (data, models, corruptions: torch, numpy, scipy) import them
where they run, inside `validate`'s helpers and TrainConfig.validate.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from attnrobust.errors import UserError
from attnrobust.results import Setting, eps_key

SHIPPED = ("quick", "quick-adversarial", "attention-kinds", "width-trend", "fashion-mnist-cpu", "fashion-mnist",
           "cifar10", "cifar100", "paper")
# [train] keys the study itself sets per job; a config may not fix them.
_PER_JOB_TRAIN_KEYS = ("dataset", "model", "seed")
# What a study regime (study.regimes) may set: how a model is trained against attacks, nothing else, so that the
# regimes of a study differ in that alone.
REGIME_KEYS = ("adversarial", "adv_eps", "adv_alpha", "adv_steps", "adv_check_n")


SCHEDULES = ("onecycle", "cosine")
ADVERSARIAL = ("none", "pgd", "fgsm-rs")
ATTACKS = ("fgsm", "pgd", "apgd", "minimal", "autoattack")
# AutoAttack's budgets by version: (APGD steps, Square queries, APGD-T target classes). "standard" is Croce &
# Hein 2020's (their `version='standard'` L-inf run; targets are capped at classes - 1); "fast" the reduced
# ensemble of the CPU studies.
AUTOATTACK_VERSIONS = {"standard": (100, 5000, 9), "fast": (20, 1000, 3)}
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
    def for_dataset(cls, dataset: str, *, model: str, seed: int = 0, **overrides: Any) -> TrainConfig:
        """The recipe for `dataset` (see DEFAULTS) with `overrides` applied; unknown keys raise UserError.
        The one check of [train] keys: a study's overrides reach it through StudyConfig.train_config."""
        _check_keys(overrides, sorted({f.name for f in dataclasses.fields(cls)} - set(_PER_JOB_TRAIN_KEYS)),
                    "train")
        return cls(dataset=dataset, model=model, seed=seed, **{**DEFAULTS.get(dataset, {}), **overrides})

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



def _default_fgsm_eps() -> list[float]:
    # round(): 0.05 * 3 is 0.15000000000000002; the records should say 0.15
    return [round(0.05 * i, 10) for i in range(7)]


@dataclass
class AttackConfig:
    """Which attacks to run and their budgets (the paper's defaults). eps are L-inf in [0, 1] pixel units."""

    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    fgsm_eps: list[float] = field(default_factory=_default_fgsm_eps)
    pgd_eps: float = 0.2  # also APGD's budget
    pgd_alpha: float = 0.01
    pgd_steps: list[int] = field(default_factory=lambda: [5, 10, 20])
    random_start: bool = False  # PGD/APGD start uniformly in the eps-ball (seeded)
    keep_best: bool = False  # PGD: a sample counts as broken once any iterate fools the model
    apgd_steps: int = 20
    # minimal eps per image (attacks.minimal_eps): bisection on the grid j * minimal_tol up to minimal_max_eps,
    # PGD with minimal_steps steps per radius on the targeted margin towards the nearest of minimal_candidates
    # classes (0: none), then cross-entropy PGD where minimal_cross_entropy (0 + true: the weaker pre-issue-23
    # attack). Not saturated where the paper's budgets are.
    minimal_max_eps: float = 0.1
    minimal_tol: float = 1 / 255
    minimal_steps: int = 10
    minimal_candidates: int = 9
    minimal_cross_entropy: bool = False
    # AutoAttack-grade worst case at one eps (below the paper's 0.2, where every standard model is at 0%):
    # APGD-CE, APGD-T and the gradient-free Square attack, each on the images the others left.
    # autoattack_version names the budgets (AUTOATTACK_VERSIONS): "standard" (Croce & Hein's: 100 steps,
    # 9 targets, 5000 queries) or "fast" (20, 3, 1000). The three budget keys, left unset, take the version's
    # values; set, they must agree with an explicit version (a record labelled "standard" must have run
    # standard AutoAttack), and without a version, values other than "fast"'s make the version "custom".
    autoattack_eps: float = 8 / 255
    autoattack_version: str | None = None
    autoattack_steps: int | None = None
    autoattack_queries: int | None = None
    autoattack_targets: int | None = None
    sanity_checks: bool = True  # gradient-masking flags (costs one small eps = 1 PGD run per source)
    sanity_n: int = 100  # images of the first batch used by the unbounded-eps check
    # Common corruptions (attnrobust.corruptions): nothing is crafted on a model, a forward pass per corrupted image.
    # Names of the dataset's family (MNIST-C-style for grey 28x28, CIFAR-10-C-style for RGB 32x32) or "all".
    # None (left out) or []: none (left out also keeps the resolved config.toml of older runs unchanged; [] is how
    # --set turns off a shipped config's corruptions, e.g. for a dataset of another shape).
    corruptions: list[str] | None = None
    severities: list[int] | None = None  # of each corruption, from 1-5; None = all five

    def corruption_severities(self) -> list[int]:
        return sorted(self.severities) if self.severities is not None else [1, 2, 3, 4, 5]

    def __post_init__(self) -> None:
        self._resolve_autoattack()
        self.validate()  # an AttackConfig is valid from birth: the stages that receive one never re-check it

    def _resolve_autoattack(self) -> None:
        """Fill autoattack_version and its three budgets from each other (see the field comments)."""
        keys = ("autoattack_steps", "autoattack_queries", "autoattack_targets")
        version = self.autoattack_version
        if version is not None and version not in AUTOATTACK_VERSIONS and version != "custom":
            raise UserError(f"attack.autoattack_version: expected one of {', '.join(AUTOATTACK_VERSIONS)} (or "
                            f"custom), got {version!r}")
        for key in keys:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"attack.{key}: expected a positive integer, got {value!r}")
        base = AUTOATTACK_VERSIONS["fast" if version in (None, "custom") else version]
        if version in AUTOATTACK_VERSIONS:
            for key, want in zip(keys, base):
                if getattr(self, key) not in (None, want):
                    raise UserError(f"attack.{key} = {getattr(self, key)!r} contradicts attack.autoattack_version = "
                                    f"{version!r} ({key} {want}); leave it unset, or set autoattack_version = "
                                    f"\"custom\" to run other budgets")
        for key, want in zip(keys, base):
            if getattr(self, key) is None:
                setattr(self, key, want)
        if version is None:
            values = tuple(getattr(self, k) for k in keys)
            self.autoattack_version = "fast" if values == AUTOATTACK_VERSIONS["fast"] else "custom"

    def validate(self) -> AttackConfig:
        """Raise UserError naming the first bad field; return self."""
        def bad(name: str, what: str, value: Any) -> UserError:
            return UserError(f"attack.{name}: {what}, got {value!r}")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def positive_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        if not isinstance(self.attacks, (list, tuple)) or not self.attacks \
                or any(a not in ATTACKS for a in self.attacks) or len(set(self.attacks)) != len(self.attacks):
            raise bad("attacks", f"expected a non-empty list of distinct names from {', '.join(ATTACKS)}",
                      self.attacks)
        if not isinstance(self.fgsm_eps, (list, tuple)) or not self.fgsm_eps \
                or any(not number(e) or not 0 <= e <= 1 for e in self.fgsm_eps) \
                or len({eps_key(e) for e in self.fgsm_eps}) != len(self.fgsm_eps):
            raise bad("fgsm_eps", "expected a non-empty list of distinct numbers in [0, 1]", self.fgsm_eps)
        for name in ("pgd_eps", "minimal_max_eps", "autoattack_eps"):
            if not number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise bad(name, "expected a number in [0, 1]", getattr(self, name))
        if not number(self.minimal_tol) or not 0 < self.minimal_tol <= self.minimal_max_eps:
            raise bad("minimal_tol", f"expected a number in (0, minimal_max_eps = {self.minimal_max_eps}]",
                      self.minimal_tol)
        if not number(self.pgd_alpha) or not self.pgd_alpha > 0:
            raise bad("pgd_alpha", "expected a positive number", self.pgd_alpha)
        if not isinstance(self.pgd_steps, (list, tuple)) or not self.pgd_steps \
                or not all(positive_int(s) for s in self.pgd_steps):
            raise bad("pgd_steps", "expected a non-empty list of positive integers", self.pgd_steps)
        for name in ("random_start", "keep_best", "sanity_checks"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "expected true or false", getattr(self, name))
        for name in ("apgd_steps", "sanity_n", "minimal_steps", "autoattack_steps", "autoattack_queries",
                     "autoattack_targets"):
            if not positive_int(getattr(self, name)):
                raise bad(name, "expected a positive integer", getattr(self, name))
        if self.corruptions is not None:
            from attnrobust.corruptions import ALL_NAMES

            if not isinstance(self.corruptions, (list, tuple)) \
                    or any(c not in ("all", *ALL_NAMES) for c in self.corruptions) \
                    or len(set(self.corruptions)) != len(self.corruptions):
                raise bad("corruptions", f"expected a list of distinct names ([] for none) from all, "
                                         f"{', '.join(ALL_NAMES)}", self.corruptions)
        if self.severities is not None and (
                not isinstance(self.severities, (list, tuple)) or not self.severities
                or any(not positive_int(s) or s > 5 for s in self.severities)
                or len(set(self.severities)) != len(self.severities)):
            raise bad("severities", "expected a non-empty list of distinct integers from 1 to 5", self.severities)
        if not isinstance(self.minimal_candidates, int) or isinstance(self.minimal_candidates, bool) \
                or self.minimal_candidates < 0:
            raise bad("minimal_candidates", "expected an integer >= 0", self.minimal_candidates)
        if not isinstance(self.minimal_cross_entropy, bool):
            raise bad("minimal_cross_entropy", "expected true or false", self.minimal_cross_entropy)
        if self.minimal_candidates == 0 and not self.minimal_cross_entropy:
            raise bad("minimal_candidates", "0 needs minimal_cross_entropy = true (some attack must run)",
                      self.minimal_candidates)
        return self

    def settings(self) -> list[Setting]:
        """The records one source/target pair gets: one Setting per (attack, eps, steps, iterate), in a fixed order.
        Each is what the crafting runs (evaluate) and what its records store; `scope` says where it is scored.

        PGD with keep_best scores the best iterate white-box (the first that fools the attacked model) and the
        final iterate on other targets: "fooled" is judged on the source, so a best iterate would pass the targets
        images the source already got wrong, unperturbed, and transfer error would no longer mean what the paper's
        (final-iterate) numbers mean. APGD always keeps its best iterate, which on other targets is named
        "best-on-source".
        """
        out = []
        if "fgsm" in self.attacks:
            out += [Setting("fgsm", float(e)) for e in self.fgsm_eps]
        if "pgd" in self.attacks:
            pgd = Setting("pgd", float(self.pgd_eps), alpha=float(self.pgd_alpha), random_start=self.random_start)
            steps = sorted(set(self.pgd_steps))
            if self.keep_best:
                out += [replace(pgd, steps=k, keep_best=True, iterate="best") for k in steps]
            out += [replace(pgd, steps=k, iterate="final") for k in steps]
        if "minimal" in self.attacks:
            out.append(Setting("minimal", float(self.minimal_max_eps), self.minimal_steps, keep_best=True,
                               iterate="best"))
        if "autoattack" in self.attacks:
            out.append(Setting("autoattack", float(self.autoattack_eps), self.autoattack_steps, keep_best=True,
                               iterate="best"))
        if "apgd" in self.attacks:
            # APGD adapts its own step size (alpha None) and always keeps the best iterate
            apgd = Setting("apgd", float(self.pgd_eps), self.apgd_steps, random_start=self.random_start,
                           keep_best=True)
            out += [replace(apgd, iterate="best"), replace(apgd, iterate="best-on-source")]
        return out

    def scope(self, setting: Setting) -> str:
        """Which targets `setting` is scored on: "all", "white-box" (the source itself) or "transfer" (the other
        targets). One-step attacks, and PGD without keep_best, on all; a best iterate and the per-image measures
        white-box; PGD's final iterate beside a best one, and APGD's best-on-source, on the other targets."""
        if setting.iterate == "best":
            return "white-box"
        if setting.iterate == "best-on-source" or (setting.attack == "pgd" and self.keep_best):
            return "transfer"
        return "all"


@dataclass
class StudySection:
    name: str = "study"
    datasets: list[str] = field(default_factory=lambda: ["fashion-mnist-mini"])
    models: list[str] = field(default_factory=lambda: ["resnet50", "cbam_resnet50", "vgg16_bn"])
    seeds: list[int] = field(default_factory=lambda: [0])
    # Declared comparisons beyond the registry's own twins: [attention model, model compared with (, label of
    # the attention kind)], e.g. [["./nets.py:attn_net", "./nets.py:base_net", "cbam"]]. None: none.
    pairs: list[list[str]] | None = None
    # Training regimes to cross with everything else, each a table of REGIME_KEYS overriding [train], e.g.
    # [{adversarial = "none"}, {adversarial = "fgsm-rs", adv_eps = 0.1}]: every model is trained, attacked and
    # compared once per regime. None: the one regime [train] describes.
    regimes: list[dict] | None = None
    # Network widths to cross with everything else (channels of the first stage, e.g. [8, 16, 32]): every model is
    # trained, attacked and compared once per width, never across widths, so that a conclusion can be followed
    # as the networks grow. Each width replaces [train] width. None: the one width [train] (or the recipe) sets.
    widths: list[int] | None = None


@dataclass
class EvalSection:
    n: int | None = None  # attack the first n test images; None = the whole test split
    batch_size: int = 256
    # The costly attacks (PGD, APGD, minimal eps, AutoAttack) on a fixed seeded subset of this many of those
    # images (None, or at least n: all); clean accuracy and FGSM always on all n. Every model and seed sees the
    # same subset,
    # so comparisons stay paired.
    strong_n: int | None = None
    subset_seed: int = 0
    # The images the common corruptions ([attack] corruptions) are scored on: "all" attacked images or the "strong"
    # subset above. A corruption costs a forward pass per image and severity (75 per image for all of MNIST-C), so
    # on a CPU the subset keeps the whole MNIST-C set affordable; the seeds, not the images, carry the noise.
    corruption_images: str = "all"
    # Withhold a verdict when a compared model's clean accuracy is below this (None: the dataset's default,
    # attnrobust.report.verdicts.CLEAN_FLOORS): robustness of a model that did not learn means nothing.
    min_clean_accuracy: float | None = None
    # Independent jobs (training runs, attack jobs) run side by side in this many processes: on the CPU the cores
    # are split between them (small models leave cores idle in one process); on CUDA each process owns one device.
    # None: 1 on the CPU, the number of CUDA devices on a GPU machine. 1 = in this process.
    workers: int | None = None
    # Who runs the jobs: "local" (this machine: this process or eval.workers processes) or "slurm" (each job a
    # Slurm job through submitit, with the [slurm] table's resources; attnrobust.cluster). "submitit-local" runs
    # the Slurm path with submitit's local executor (no Slurm): what the tests use.
    executor: str = "local"
    # Which source's attacks a model is scored on as a transfer target: "other-seeds" (every source trained with
    # another seed: independent of its targets; each attack job then also scores the other seeds' models and waits
    # for them to be trained) or "same-seed" (only its own seed's source, the design before: same seed, same data
    # order, and on fashion-mnist-cpu the same-seed VGG's PGD hit its own CBAM harder than its twin, a -2 pp excess;
    # the report flags it). With one seed there is no other: the same seed's source is used, and flagged.
    transfer_sources: str = "other-seeds"


EXECUTORS = ("local", "slurm", "submitit-local")
TRANSFER_SOURCES = ("other-seeds", "same-seed")


@dataclass
class SlurmSection:
    """[slurm]: the resources of each Slurm job (one study job each), passed to submitit's executor.

    Other keys are submitit's Slurm parameters (those of submitit.SlurmExecutor, e.g. qos, constraint, exclude,
    mem_per_gpu, setup, additional_parameters), passed on as slurm_<key>; attnrobust.cluster checks their names.
    """

    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 1         # 0 for a CPU partition
    cpus_per_task: int = 8        # the job's threads on the CPU, its data and attack bookkeeping on a GPU
    mem_gb: int | None = None     # None: the partition's default
    timeout_min: int = 240        # a job killed by the limit is requeued and resumes from its last checkpoint
    array_parallelism: int = 64   # jobs of one array running at once
    extra: dict = field(default_factory=dict)  # the other submitit parameters (see the docstring)


def _build_slurm(table: dict) -> SlurmSection:
    """[slurm] as a SlurmSection: its own keys typed, the rest kept as submitit parameters."""
    hints = _field_hints(SlurmSection)
    own = {k: _coerce(v, hints[k], f"slurm.{k}") for k, v in table.items() if k in hints and k != "extra"}
    for key in ("gpus_per_job", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism"):
        value = own.get(key)
        if value is not None and value < (0 if key == "gpus_per_job" else 1):
            raise UserError(f"slurm.{key}: must be {'>= 0' if key == 'gpus_per_job' else 'positive'}, got {value}")
    return SlurmSection(**own, extra={k: v for k, v in table.items() if k not in hints or k == "extra"})


@dataclass
class VerdictSection:
    """[verdict]: the equivalence margins a row is judged against, declared before the run.

    margin_pp = 2.0 (robust accuracy, percentage points): about the seed-to-seed standard deviation of one model's
    robust accuracy in our runs (results/fashion-mnist-cpu-3seeds: median 0.9 pp white-box, 2.0 pp in transfer); a
    difference a retraining moves by is not a property of the architecture. margin_eps = 0.5 (minimal eps, in
    1/255): half a step of the 1/255 grid the minimal eps is measured on, ~14% of a standard Fashion-MNIST model's
    mean minimal eps (3.7/255 there).
    alpha = 0.05: the family-wise error of each kind of decision (Holm over a dataset panel's rows).
    The power plan a study prints before it trains (attnrobust.report.power): pilot = a previous run's folder (or
    its results.jsonl) whose variance components predict this study's; detect_pp / detect_eps = the effects it
    should be able to find (unset: the margins), for which the plan states the seeds needed.
    """

    margin_pp: float = 2.0
    margin_eps: float = 0.5
    alpha: float = 0.05
    pilot: str | None = None
    detect_pp: float | None = None
    detect_eps: float | None = None

    def validate(self) -> VerdictSection:
        for name in ("margin_pp", "margin_eps", "detect_pp", "detect_eps"):
            value = getattr(self, name)
            if value is None and name.startswith("detect"):
                continue
            if not value > 0 or not math.isfinite(value):
                raise UserError(f"verdict.{name}: must be a positive number, got {value!r}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"verdict.alpha: must be in (0, 0.5), got {self.alpha!r}")
        return self


def verdict_section(table: dict | None, where: str = "verdict") -> VerdictSection:
    """A [verdict] table (as TOML gives it, None: the defaults) as a checked VerdictSection; the report reads it
    from a run's config.toml, the study from its config."""
    if table is not None and not isinstance(table, dict):
        raise UserError(f"{where}: [verdict] must be a table")
    return _build(VerdictSection, table or {}, "verdict").validate()


@dataclass
class StudyConfig:
    study: StudySection
    # [train]: overrides of the per-dataset recipe (TrainConfig.for_dataset), typed against TrainConfig's fields;
    # a partial table by nature (each dataset fills the rest), so a job's TrainConfig is `train_config(...)`.
    train: dict[str, Any]
    attack: AttackConfig
    eval: EvalSection
    source: str = ""  # where it was read from, for messages
    verdict: VerdictSection = field(default_factory=VerdictSection)
    slurm: SlurmSection = field(default_factory=SlurmSection)  # used when eval.executor is not "local"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved config as plain TOML-able data (None values left out: TOML has no null)."""
        def clean(d):
            return {k: v for k, v in d.items() if v is not None}
        return {"study": clean(dataclasses.asdict(self.study)), "train": clean(dict(self.train)),
                "attack": clean(dataclasses.asdict(self.attack)), "eval": self._eval_table(),
                # only when set: a run folder written before [verdict] existed still matches its config on resume
                **({"verdict": clean(dataclasses.asdict(self.verdict))} if self.verdict != VerdictSection() else {}),
                **({} if self.eval.executor == "local" else {"slurm": self._slurm_table()})}

    def _eval_table(self) -> dict[str, Any]:
        """[eval] as written: transfer_sources only when not the default, so a run folder written before the key
        existed still matches its config on resume (its records say which design they hold)."""
        table = {k: v for k, v in dataclasses.asdict(self.eval).items() if v is not None}
        if table["transfer_sources"] == EvalSection.transfer_sources:
            del table["transfer_sources"]
        return table

    def _slurm_table(self) -> dict[str, Any]:
        """[slurm] as written in the config: its own keys, and the submitit parameters beside them."""
        own = {k: v for k, v in dataclasses.asdict(self.slurm).items() if k != "extra" and v is not None}
        return {**own, **self.slurm.extra}

    def regimes_of(self, dataset: str) -> dict[str, dict[str, Any]]:
        """{label: the regime's overrides} in config order; labels (regime_label) depend on the dataset, whose
        recipe may fill in adv_eps. One entry, the [train] regime, when study.regimes is not set."""
        tables = self.study.regimes or [{}]
        return {regime_label(self.train_config(dataset, self.study.models[0], self.study.seeds[0], t)): t
                for t in tables}

    def widths_of(self) -> list[int | None]:
        """The study's widths (study.widths), or [None]: the one width of [train] or the dataset's recipe."""
        return list(self.study.widths) if self.study.widths else [None]

    def train_config(self, dataset: str, model: str, seed: int, regime: dict[str, Any] | None = None,
                     width: int | None = None) -> TrainConfig:
        """The TrainConfig of one study job: the dataset's defaults, then the config's [train] overrides, then the
        job's regime (a table of study.regimes) and width (one of study.widths; None: the [train] width).

        train.model_args is shared by the study's models: each gets the arguments it takes (e.g. cbam_bn_momentum
        reaches only the CBAM models); `validate` refuses an argument that no model of the study takes.
        """
        from attnrobust.models import model_options

        overrides = {**self.train, **(regime or {}), **({} if width is None else {"width": width})}
        if "model_args" in overrides:
            accepted = model_options(model)
            overrides["model_args"] = {k: v for k, v in overrides["model_args"].items() if k in accepted}
        return TrainConfig.for_dataset(dataset, model=model, seed=seed, **overrides)


# ---- type checking of TOML values against dataclass annotations -------------------------------------------------


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Return value if it fits the annotation `hint` (int accepted for float), else raise UserError naming `where`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        for option in options:
            try:
                return _coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise UserError(f"{where}: expected nothing, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is Any:
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UserError(f"{where}: expected a table (key = value pairs), got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise UserError(f"{where}: expected one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise UserError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value


def _field_hints(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_keys(table: dict, valid: typing.Iterable[str], section: str) -> None:
    valid = list(valid)
    for key in table:
        if key not in valid:
            raise UserError(f"{section}.{key}: unknown key; valid keys: {', '.join(valid)}")


def _build(cls, table: dict, section: str):
    hints = _field_hints(cls)
    _check_keys(table, hints, section)
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in table.items()})


# ---- loading ---------------------------------------------------------------------------------------------------


def _read_toml(config: str | Path) -> tuple[dict, str]:
    path = Path(config)
    if path.suffix != ".toml" and not path.is_file():  # a folder named like a config (a run folder) is not one
        if str(config) not in SHIPPED:
            raise UserError(f"unknown config {str(config)!r}: give a .toml file or one of {', '.join(SHIPPED)}")
        text = resources.files("attnrobust").joinpath("configs", f"{config}.toml").read_text()
        where = f"shipped config {config!r}"
    else:
        if not path.is_file():
            raise UserError(f"config file {path} not found; give a .toml file or one of {', '.join(SHIPPED)}")
        text, where = path.read_text(), str(path)
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{where}: not valid TOML ({err})") from None


def _apply_override(data: dict, override: str) -> None:
    """Apply one `section.key=value` (value in TOML syntax; a bare word is taken as a string)."""
    key, sep, raw = override.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise UserError(f"--set {override!r}: expected SECTION.KEY=VALUE, e.g. --set train.epochs=3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    data.setdefault(section, {})[name] = value


def attack_config(overrides: typing.Iterable[str] = ()) -> AttackConfig:
    """The AttackConfig of `--set attack.KEY=VALUE` overrides, each checked as a study config's [attack] key is (the
    `attack` and `transfer` verbs' one spelling of a setting: the same key, value and error as in a config file)."""
    table = _one_section(overrides, "attack", "attack.pgd_steps=[5,10]", _field_hints(AttackConfig))
    return _build(AttackConfig, table, "attack")


def _one_section(overrides: typing.Iterable[str], section: str, example: str, keys: typing.Iterable[str]) -> dict:
    """The table that `--set SECTION.KEY=VALUE` overrides make, refusing any other section's key in one line."""
    data: dict = {}
    for override in overrides:
        _apply_override(data, override)
        if set(data) != {section}:
            raise UserError(f"--set {override!r}: only [{section}] keys apply here ({section}.KEY=VALUE, e.g. "
                            f"--set {example}); valid keys: {', '.join(keys)}")
    return data.get(section, {})


def single_train_config(dataset: str, model: str, seed: int = 0, overrides: typing.Iterable[str] = (),
                        data_dir=None) -> TrainConfig:
    """The checked TrainConfig of the `train` verb: the dataset's recipe, then `--set train.KEY=VALUE` overrides,
    typed, checked and named as a study config's [train] keys are (one spelling of a setting, in a config file and
    on the command line; errors say "train.KEY"). data_dir: where a user dataset is."""
    hints = _train_hints()
    table = _one_section(overrides, "train", "train.epochs=3", hints)
    for key in table:
        if key in _PER_JOB_TRAIN_KEYS:
            raise UserError(f"train.{key}: give it as --{key}, not through --set")
    cfg = TrainConfig.for_dataset(dataset, model=model, seed=seed, **{
        k: _coerce(v, hints[k], f"train.{k}") if k in hints else v for k, v in table.items()})
    try:
        cfg.validate(data_dir)
    except UserError as err:  # TrainConfig says "key: ..."; here the key was spelled train.KEY
        key = str(err).split(":", 1)[0]
        raise UserError(f"train.{err}" if key in hints else str(err)) from None
    return cfg


def _train_hints() -> dict[str, Any]:
    """[train]'s keys and their types: TrainConfig's fields but those each job sets (dataset, model, seed)."""
    return {k: v for k, v in _field_hints(TrainConfig).items() if k not in _PER_JOB_TRAIN_KEYS}


def parse_config(data: dict, where: str = "config", data_dir=None) -> StudyConfig:
    """Validate a config given as plain data (as tomllib returns it); data_dir: where user datasets are."""
    _check_keys(data, ("study", "train", "attack", "eval", "verdict", "slurm"), where)
    for section in ("study", "train", "attack", "eval", "slurm"):
        if not isinstance(data.get(section, {}), dict):
            raise UserError(f"{where}: [{section}] must be a table")
    study = _build(StudySection, data.get("study", {}), "study")
    train_hints = _train_hints()
    train_table = data.get("train", {})
    for key in train_table:
        if key in _PER_JOB_TRAIN_KEYS:
            raise UserError(f"train.{key}: set by the study for each job; use study.{key}s instead")
    # unknown keys pass through untyped: TrainConfig.for_dataset refuses them when `validate` builds the jobs
    train = {k: _coerce(v, train_hints[k], f"train.{k}") if k in train_hints else v for k, v in train_table.items()}
    cfg = StudyConfig(study=study, train=train, attack=_build(AttackConfig, data.get("attack", {}), "attack"),
                      eval=_build(EvalSection, data.get("eval", {}), "eval"), source=where,
                      verdict=verdict_section(data.get("verdict"), where),
                      slurm=_build_slurm(data.get("slurm", {})))
    validate(cfg, data_dir)
    return cfg


def load_config(config: str | Path | dict = "quick", overrides: typing.Iterable[str] = (),
                data_dir=None) -> StudyConfig:
    """Read a config (a path, a shipped name, or the data itself as a dict of sections), apply `--set`
    overrides, validate, return it."""
    if isinstance(config, dict):
        data, where = copy.deepcopy(config), "config (given as a dict)"
    else:
        data, where = _read_toml(config)
    for override in overrides:
        _apply_override(data, override)
    return parse_config(data, where, data_dir)


def validate(cfg: StudyConfig, data_dir=None) -> None:
    """Check values across sections (names exist, numbers in range); raise UserError naming the key.
    data_dir (else $ATTNROBUST_DATA): where the user's datasets are; user models' code is imported to check it."""
    _validate_study(cfg.study, data_dir)
    _validate_eval(cfg.eval)
    _validate_across(cfg, data_dir)
    _validate_jobs(cfg, data_dir)


def _validate_study(s: StudySection, data_dir) -> None:
    """[study]: names that exist (user models' code imported), no duplicates, pairs, regimes, widths."""
    from attnrobust.data import get_spec
    from attnrobust.models import is_user_model, list_models, model_options

    if not s.name or "/" in s.name or s.name.startswith("."):
        raise UserError(f"study.name: {s.name!r} is not a usable folder name")
    for key, values in (("datasets", s.datasets), ("models", s.models), ("seeds", s.seeds)):
        if not values:
            raise UserError(f"study.{key}: must list at least one")
        if len(set(values)) != len(values):
            raise UserError(f"study.{key}: {values} has duplicates")
    for i, name in enumerate(s.datasets):
        try:
            get_spec(name, data_dir)
        except UserError as err:
            raise UserError(f"study.datasets[{i}]: {err}") from None
    valid_models = list_models()
    for i, name in enumerate(s.models):
        if is_user_model(name):
            try:
                model_options(name)  # imports the user's code: a typo fails here, before any work
            except UserError as err:
                raise UserError(f"study.models[{i}]: {err}") from None
        elif name not in valid_models:
            raise UserError(f"study.models[{i}]: unknown model {name!r}; valid: {', '.join(valid_models)}, or "
                            f"your own as MODULE:CALLABLE or FILE.py:CALLABLE")
    for i, pair in enumerate(s.pairs or []):
        if len(pair) not in (2, 3) or pair[0] == pair[1] or any(m not in s.models for m in pair[:2]):
            raise UserError(f"study.pairs[{i}]: {pair!r} must be [attention model, model compared with] (and "
                            f"optionally a label), two different models of study.models")
    for i, regime in enumerate(s.regimes or []):
        try:
            _check_keys(regime, REGIME_KEYS, f"study.regimes[{i}]")
        except UserError as err:
            raise UserError(f"{err} (a regime says how models are trained against attacks; set the rest in "
                            f"[train])") from None
    if s.widths is not None and (not s.widths or len(set(s.widths)) != len(s.widths)
                                 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                            for w in s.widths)):
        raise UserError(f"study.widths: must be a non-empty list of distinct positive integers (channels of the "
                        f"first stage, e.g. [8, 16, 32]), got {s.widths!r}")
    if s.regimes is not None and not s.regimes:
        raise UserError("study.regimes: must list at least one regime (or be left out for the [train] one)")


def _validate_eval(e: EvalSection) -> None:
    """[eval]: numbers in range, known names."""
    if e.n is not None and e.n <= 0:
        raise UserError(f"eval.n: must be positive (or left out for the whole test split), got {e.n}")
    if e.batch_size <= 0:
        raise UserError(f"eval.batch_size: must be positive, got {e.batch_size}")
    if e.strong_n is not None and e.strong_n <= 0:
        raise UserError(f"eval.strong_n: must be positive (or left out for all images), got {e.strong_n}")
    if e.subset_seed < 0:
        raise UserError(f"eval.subset_seed: must be >= 0, got {e.subset_seed}")
    if e.corruption_images not in ("all", "strong"):
        raise UserError(f"eval.corruption_images: must be \"all\" (every attacked image) or \"strong\" (the "
                        f"eval.strong_n subset), got {e.corruption_images!r}")
    floor = e.min_clean_accuracy
    if floor is not None and not 0 <= floor <= 1:
        raise UserError(f"eval.min_clean_accuracy: must be in [0, 1], got {floor}")
    if e.workers is not None and e.workers < 1:
        raise UserError(f"eval.workers: must be a positive integer (or unset: one per CUDA device, else 1), got "
                        f"{e.workers}")
    if e.executor not in EXECUTORS:
        raise UserError(f"eval.executor: must be one of {', '.join(EXECUTORS[:2])}, got {e.executor!r}")
    if e.transfer_sources not in TRANSFER_SOURCES:
        raise UserError(f"eval.transfer_sources: must be \"other-seeds\" (sources of every other seed, the default) "
                        f"or \"same-seed\" (each target's own seed's source), got {e.transfer_sources!r}")


def _validate_across(cfg: StudyConfig, data_dir) -> None:
    """What needs two sections: each dataset's corruption family holds the names listed; model_args a model takes."""
    from attnrobust.data import get_spec
    from attnrobust.models import model_options

    s = cfg.study
    if cfg.attack.corruptions:  # each dataset's family must hold the names listed
        from attnrobust.corruptions import expand_names, family_of

        for name in s.datasets:
            spec = get_spec(name, data_dir)
            expand_names(cfg.attack.corruptions, family_of((spec.channels, spec.height, spec.width), name), name)
    unused = [k for k in cfg.train.get("model_args", {}) if not any(k in model_options(m) for m in s.models)]
    if unused:
        raise UserError(f"train.model_args.{unused[0]}: no model of the study takes it; valid: "
                        f"{', '.join(sorted({k for m in s.models for k in model_options(m)})) or 'none'}")


def _validate_jobs(cfg: StudyConfig, data_dir) -> None:
    """Every job's TrainConfig (each dataset, regime, width and model; every seed)."""
    s = cfg.study
    if not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in s.seeds):
        raise UserError(f"study.seeds: must be integers >= 0, got {s.seeds!r}")
    # Every job's training config, checked here once (jobs differ from these only in their seed, checked above):
    # plan() builds the same configs and the study trains them without checking them again (train.run_training).
    for dataset in s.datasets:
        for i, regime in enumerate(s.regimes or [{}]):
            for model, width in ((m, w) for m in s.models for w in cfg.widths_of()):
                try:
                    cfg.train_config(dataset, model, s.seeds[0], regime, width).validate(data_dir)
                except UserError as err:
                    # name the key where it was set: a regime's table, or [train] (TrainConfig says "key: ...")
                    key = str(err).split(":", 1)[0]
                    where = f"study.regimes[{i}]." if key in regime else "train."
                    raise UserError(f"{where}{err}" if key.isidentifier() else str(err)) from None
        labels = [regime_label(cfg.train_config(dataset, s.models[0], s.seeds[0], r)) for r in s.regimes or [{}]]
        if len(set(labels)) != len(labels):
            raise UserError(f"study.regimes: two regimes are the same on {dataset} ({', '.join(labels)})")


# ---- writing ---------------------------------------------------------------------------------------------------


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write the resolved config (sections of scalars, lists and tables) as TOML that tomllib reads back equal."""
    return tomli_w.dumps(data)
