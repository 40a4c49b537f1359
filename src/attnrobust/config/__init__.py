"""Configs: the only place TOML / CLI values become typed, checked dataclasses; every error names the key.

One module per section, each dataclass with its own checks beside it:

- train.py: TrainConfig (one training run), the per-dataset recipes (DEFAULTS), regime_label;
- attack.py: AttackConfig (which attacks, their budgets; valid from construction) and the Settings it makes;
- eval.py: EvalSection (how many test images to attack, in which batch size, side by side, by which executor);
- verdict.py: VerdictSection (the margins and error rate rows are judged against);
- slurm.py: SlurmSection (the [slurm] resources of each job when that executor is Slurm);
- study.py: StudySection (what to compare: datasets x models x seeds), StudyConfig (all sections, and each job's
  TrainConfig) and `validate`, the checks across sections;
- load.py: reading a config (a file or a shipped name, `--set` overrides; parse_config, load_config) and to_toml;
- coerce.py: what every section shares: TOML values typed against a dataclass's annotations.

The pipeline stages (train, evaluate, study) receive these values already checked. Shipped study configs live in
attnrobust/configs/ and are named without the .toml suffix (`quick`, `cifar10`, ...). Import the names from here
(`from attnrobust.config import TrainConfig`): which module holds a section is this package's business.

This package imports no torch: `attnrobust --help`, `ls` and reading a config stay fast (torch takes seconds). The
checks that need the dataset and model registries (data, models, corruptions: torch, numpy, scipy) import them
where they run, inside `validate`'s helpers and TrainConfig.validate.
"""

from attnrobust.config.attack import ATTACKS, AUTOATTACK_VERSIONS, AttackConfig
from attnrobust.config.eval import EXECUTORS, EvalSection
from attnrobust.config.load import SHIPPED, attack_config, load_config, parse_config, single_train_config, to_toml
from attnrobust.config.slurm import SlurmSection
from attnrobust.config.study import StudyConfig, StudySection, validate
from attnrobust.config.train import ADVERSARIAL, DEFAULTS, REGIME_KEYS, SCHEDULES, TrainConfig, apply_point, \
    grid_points, point_of_train, regime_label, study_axes
from attnrobust.config.verdict import VerdictSection, verdict_section

__all__ = ["ADVERSARIAL", "ATTACKS", "AUTOATTACK_VERSIONS", "AttackConfig", "DEFAULTS", "EXECUTORS", "EvalSection",
           "REGIME_KEYS", "SCHEDULES", "SHIPPED", "SlurmSection", "StudyConfig", "StudySection", "TrainConfig",
           "VerdictSection", "apply_point", "attack_config", "grid_points", "load_config", "parse_config",
           "point_of_train", "regime_label", "single_train_config", "study_axes", "to_toml", "validate",
           "verdict_section"]
