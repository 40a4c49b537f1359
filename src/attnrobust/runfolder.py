"""A run folder's layout, in one place: every reader and writer of a run (study, train, cluster, report, `ls`)
asks RunFolder for a path instead of joining names itself.

    RUN/
      config.toml      the resolved study config (written once, checked on resume)
      env.json         machine, versions, command (runtime.write_env_json)
      .lock            held while a study runs (runlock)
      power_plan.md    what the study's seeds can detect, when [verdict] pilot is set
      checkpoints/     NAME.safetensors per training run, NAME.state.safetensors while it can resume
      logs/            NAME.jsonl per training run (one line per epoch); jobs.jsonl: the wall time of every job
      results.jsonl    the attack jobs' records, in plan order
      report/          the report, swapped in whole
      slurm/           the Slurm ledger, job states and submitit's files, when jobs went to Slurm (cluster)

NAME is `checkpoint_name(train config)`. This module imports no torch (config, results and numpy only).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from attnrobust.config import DEFAULTS, TrainConfig, regime_label
from attnrobust.errors import UserError
from attnrobust.results import STANDARD, file_name_part, read_records

__all__ = ["RunFolder", "checkpoint_name", "file_stem"]


def file_stem(name: str) -> str:
    """`name` made safe as part of a file name: registered names unchanged; an entry point's path separators,
    colons and other odd characters replaced, plus a short hash of the original (so two entry points can never
    share a checkpoint file)."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "model"
    return name if safe == name else f"{safe}-{hashlib.md5(name.encode()).hexdigest()[:6]}"


def checkpoint_name(cfg: TrainConfig) -> str:
    """File stem of a run's checkpoint: unique per (dataset, model, seed, regime, width) within a run folder. A
    standard run at its dataset recipe's width has neither part ("fashion-mnist-mini-resnet14-s0"); an
    adversarial one names its regime ("...-s0-fgsm-rs-eps-0.1"), one of another width names it ("...-s0-w16"),
    so a study crossing widths (study.widths) keeps every width's checkpoints apart."""
    regime = regime_label(cfg)
    suffix = "" if regime == STANDARD else "-" + file_name_part(regime).lower()
    recipe_width = DEFAULTS.get(cfg.dataset, {}).get("width", TrainConfig.width)
    if cfg.width != recipe_width:
        suffix += f"-w{cfg.width}"
    return f"{cfg.dataset}-{file_stem(cfg.model)}-s{cfg.seed}{suffix}"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (see the module docstring); nothing is created by asking."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # names a study may find in its folder; anything else means the folder is not a run folder
    ENTRIES = frozenset({"config.toml", "env.json", ".lock", "power_plan.md", "checkpoints", "logs",
                         "results.jsonl", "report", "slurm"})

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def power_plan(self) -> Path:
        return self.root / "power_plan.md"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def jobs_log(self) -> Path:
        return self.logs / "jobs.jsonl"

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    # -- one training run's files
    def checkpoint(self, cfg: TrainConfig) -> Path:
        return self.checkpoints / f"{checkpoint_name(cfg)}.safetensors"

    def train_state(self, cfg: TrainConfig) -> Path:
        return self.checkpoints / f"{checkpoint_name(cfg)}.state.safetensors"

    def train_log(self, cfg: TrainConfig) -> Path:
        return self.logs / f"{checkpoint_name(cfg)}.jsonl"

    # -- readers
    def model_files(self) -> list[Path]:
        """The finished and in-progress checkpoints (not their resume states), sorted; [] without the folder."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.glob("*.safetensors") if not p.name.endswith(".state.safetensors"))

    def read_results(self) -> list[dict]:
        """The records of results.jsonl ([] before the first attack job finished)."""
        return read_records(self.results) if self.results.exists() else []

    def read_timings(self) -> list[dict]:
        """logs/jobs.jsonl: one dict per finished job ([] before the first)."""
        return [json.loads(line) for line in self.jobs_log.read_text().splitlines()] if self.jobs_log.exists() \
            else []

    def read_config_data(self) -> dict:
        """config.toml as plain data, not validated (validating imports the user models it names)."""
        try:
            return tomllib.loads(self.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise UserError(f"{self.config} is unreadable ({err}); use a new --out folder") from None
