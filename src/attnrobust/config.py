"""Study configs: TOML in, validated dataclasses out; every error names the key.

A config has four sections. [study] says what to compare (datasets x models x seeds); [train] overrides the
per-dataset training defaults of attnrobust.train.TrainConfig; [attack] is attnrobust.evaluate.AttackConfig;
[eval] says how many test images to attack and in which batch size. Shipped configs live in
attnrobust/configs/ and are named without the .toml suffix (`quick`, `cifar10`, ...).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from attnrobust.errors import UserError

SHIPPED = ("quick", "quick-adversarial", "fashion-mnist-cpu", "fashion-mnist", "cifar10", "cifar100", "paper")
# [train] keys the study itself sets per job; a config may not fix them.
_PER_JOB_TRAIN_KEYS = ("dataset", "model", "seed")


@dataclass
class StudySection:
    name: str = "study"
    datasets: list[str] = field(default_factory=lambda: ["fashion-mnist-mini"])
    models: list[str] = field(default_factory=lambda: ["resnet50", "cbam_resnet50", "vgg16_bn"])
    seeds: list[int] = field(default_factory=lambda: [0])
    # Declared comparisons beyond the registry's own twins: [attention model, model compared with (, label of
    # the attention kind)], e.g. [["./nets.py:attn_net", "./nets.py:base_net", "cbam"]]. None: none.
    pairs: list[list[str]] | None = None


@dataclass
class EvalSection:
    n: int | None = None  # attack the first n test images; None = the whole test split
    batch_size: int = 256
    # The costly attacks (PGD, APGD, minimal eps, AutoAttack) on a fixed seeded subset of this many of those
    # images (None, or at least n: all); clean accuracy and FGSM always on all n. Every model and seed sees the same subset,
    # so comparisons stay paired.
    strong_n: int | None = None
    subset_seed: int = 0
    # Withhold a verdict when a compared model's clean accuracy is below this (None: the dataset's default,
    # attnrobust.verdicts.CLEAN_FLOORS): robustness of a model that did not learn means nothing.
    min_clean_accuracy: float | None = None
    # Independent jobs (training runs, attack jobs) run side by side in this many processes, the cores split
    # between them (small models leave cores idle in one process). 1 = in this process; CPU only.
    workers: int = 1


@dataclass
class StudyConfig:
    study: StudySection
    train: dict[str, Any]  # overrides of TrainConfig.for_dataset(...), validated against TrainConfig's fields
    attack: Any  # attnrobust.evaluate.AttackConfig
    eval: EvalSection
    source: str = ""  # where it was read from, for messages

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved config as plain TOML-able data (None values left out: TOML has no null)."""
        def clean(d):
            return {k: v for k, v in d.items() if v is not None}
        return {"study": clean(dataclasses.asdict(self.study)), "train": clean(dict(self.train)),
                "attack": clean(dataclasses.asdict(self.attack)), "eval": clean(dataclasses.asdict(self.eval))}


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
    if path.suffix != ".toml" and not path.exists():
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


def parse_config(data: dict, where: str = "config", data_dir=None) -> StudyConfig:
    """Validate a config given as plain data (as tomllib returns it); data_dir: where user datasets are."""
    from attnrobust.evaluate import AttackConfig
    from attnrobust.train import TrainConfig

    _check_keys(data, ("study", "train", "attack", "eval"), where)
    for section in ("study", "train", "attack", "eval"):
        if not isinstance(data.get(section, {}), dict):
            raise UserError(f"{where}: [{section}] must be a table")
    study = _build(StudySection, data.get("study", {}), "study")
    train_hints = {k: v for k, v in _field_hints(TrainConfig).items() if k not in _PER_JOB_TRAIN_KEYS}
    train_table = data.get("train", {})
    for key in train_table:
        if key in _PER_JOB_TRAIN_KEYS:
            raise UserError(f"train.{key}: set by the study for each job; use study.{key}s instead")
    _check_keys(train_table, train_hints, "train")
    train = {k: _coerce(v, train_hints[k], f"train.{k}") for k, v in train_table.items()}
    cfg = StudyConfig(study=study, train=train, attack=_build(AttackConfig, data.get("attack", {}), "attack"),
                      eval=_build(EvalSection, data.get("eval", {}), "eval"), source=where)
    validate(cfg, data_dir)
    return cfg


def load_config(config: str | Path | dict = "quick", overrides: typing.Iterable[str] = (),
                data_dir=None) -> StudyConfig:
    """Read a config (a path, a shipped name, or the data itself as a dict of sections), apply `--set`
    overrides, validate, return it."""
    if isinstance(config, dict):
        import copy

        data, where = copy.deepcopy(config), "config (given as a dict)"
    else:
        data, where = _read_toml(config)
    for override in overrides:
        _apply_override(data, override)
    return parse_config(data, where, data_dir)


def validate(cfg: StudyConfig, data_dir=None) -> None:
    """Check values across sections (names exist, numbers in range); raise UserError naming the key.
    data_dir (else $ATTNROBUST_DATA): where the user's datasets are; user models' code is imported to check it."""
    from attnrobust.data import get_spec
    from attnrobust.models import is_user_model, list_models, model_options

    s = cfg.study
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
    if cfg.eval.n is not None and cfg.eval.n <= 0:
        raise UserError(f"eval.n: must be positive (or left out for the whole test split), got {cfg.eval.n}")
    if cfg.eval.batch_size <= 0:
        raise UserError(f"eval.batch_size: must be positive, got {cfg.eval.batch_size}")
    if cfg.eval.strong_n is not None and cfg.eval.strong_n <= 0:
        raise UserError(f"eval.strong_n: must be positive (or left out for all images), got {cfg.eval.strong_n}")
    if cfg.eval.subset_seed < 0:
        raise UserError(f"eval.subset_seed: must be >= 0, got {cfg.eval.subset_seed}")
    floor = cfg.eval.min_clean_accuracy
    if floor is not None and not 0 <= floor <= 1:
        raise UserError(f"eval.min_clean_accuracy: must be in [0, 1], got {floor}")
    if cfg.eval.workers < 1:
        raise UserError(f"eval.workers: must be a positive integer, got {cfg.eval.workers}")
    cfg.attack.validate()
    from attnrobust.models import model_options

    unused = [k for k in cfg.train.get("model_args", {}) if not any(k in model_options(m) for m in s.models)]
    if unused:
        raise UserError(f"train.model_args.{unused[0]}: no model of the study takes it; valid: "
                        f"{', '.join(sorted({k for m in s.models for k in model_options(m)})) or 'none'}")
    for dataset in s.datasets:  # the per-job training configs must be valid too; check before any work starts
        for model in s.models:
            train_config(cfg, dataset, model, s.seeds[0]).validate(data_dir)


def train_config(cfg: StudyConfig, dataset: str, model: str, seed: int):
    """The TrainConfig of one study job: the dataset's defaults, then the config's [train] overrides.

    train.model_args is shared by the study's models: each gets the arguments it takes (e.g. cbam_bn_momentum
    reaches only the CBAM models); `validate` refuses an argument that no model of the study takes.
    """
    from attnrobust.models import model_options
    from attnrobust.train import TrainConfig

    overrides = dict(cfg.train)
    if "model_args" in overrides:
        accepted = model_options(model)
        overrides["model_args"] = {k: v for k, v in overrides["model_args"].items() if k in accepted}
    return TrainConfig.for_dataset(dataset, model=model, seed=seed, **overrides)


# ---- writing ---------------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. train.model_args
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write the resolved config (sections of scalars and lists) as TOML that tomllib reads back equal."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)
