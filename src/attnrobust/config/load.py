"""Reading a config: a TOML file or a shipped config's name, `--set SECTION.KEY=VALUE` overrides (of a study, and
of the `train`, `attack` and `transfer` verbs), each section typed and checked (parse_config, load_config); and
to_toml, which writes the resolved config back."""

from __future__ import annotations

import copy
import tomllib
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from attnrobust.config.attack import AttackConfig
from attnrobust.config.coerce import build_section, check_keys, coerce, field_hints
from attnrobust.config.eval import EvalSection
from attnrobust.config.slurm import slurm_section
from attnrobust.config.study import StudyConfig, StudySection, validate
from attnrobust.config.train import PER_JOB_TRAIN_KEYS, TrainConfig, train_hints
from attnrobust.config.verdict import verdict_section
from attnrobust.errors import UserError

SHIPPED = ("quick", "quick-adversarial", "attention-kinds", "width-trend", "reductions", "fashion-mnist-cpu",
           "fashion-mnist", "cifar10", "cifar100", "paper")


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
    table = _one_section(overrides, "attack", "attack.pgd_steps=[5,10]", field_hints(AttackConfig))
    return build_section(AttackConfig, table, "attack")


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
    hints = train_hints()
    table = _one_section(overrides, "train", "train.epochs=3", hints)
    for key in table:
        if key in PER_JOB_TRAIN_KEYS:
            raise UserError(f"train.{key}: give it as --{key}, not through --set")
    cfg = TrainConfig.for_dataset(dataset, model=model, seed=seed, **{
        k: coerce(v, hints[k], f"train.{k}") if k in hints else v for k, v in table.items()})
    try:
        cfg.validate(data_dir)
    except UserError as err:  # TrainConfig says "key: ..."; here the key was spelled train.KEY
        key = str(err).split(":", 1)[0]
        raise UserError(f"train.{err}" if key in hints else str(err)) from None
    return cfg


def parse_config(data: dict, where: str = "config", data_dir=None) -> StudyConfig:
    """Validate a config given as plain data (as tomllib returns it); data_dir: where user datasets are."""
    check_keys(data, ("study", "train", "attack", "eval", "verdict", "slurm"), where)
    for section in ("study", "train", "attack", "eval", "slurm"):
        if not isinstance(data.get(section, {}), dict):
            raise UserError(f"{where}: [{section}] must be a table")
    study = build_section(StudySection, data.get("study", {}), "study")
    hints = train_hints()
    train_table = data.get("train", {})
    for key in train_table:
        if key in PER_JOB_TRAIN_KEYS:
            raise UserError(f"train.{key}: set by the study for each job; use study.{key}s instead")
    # unknown keys pass through untyped: TrainConfig.for_dataset refuses them when `validate` builds the jobs
    train = {k: coerce(v, hints[k], f"train.{k}") if k in hints else v for k, v in train_table.items()}
    cfg = StudyConfig(study=study, train=train,
                      attack=build_section(AttackConfig, data.get("attack", {}), "attack"),
                      eval=build_section(EvalSection, data.get("eval", {}), "eval"), source=where,
                      verdict=verdict_section(data.get("verdict"), where),
                      slurm=slurm_section(data.get("slurm", {})))
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


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write the resolved config (sections of scalars, lists and tables) as TOML that tomllib reads back equal."""
    return tomli_w.dumps(data)
