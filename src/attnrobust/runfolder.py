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

NAME is `checkpoint_name(train config)`. `list_runs` (`attnrobust ls`) reads run folders with this module alone.
This module imports no torch (config, results and numpy only), so `ls` starts without it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from attnrobust.config import DEFAULTS, REGIME_KEYS, TrainConfig, apply_point, grid_points, regime_label, study_axes
from attnrobust.errors import UserError
from attnrobust.results import STANDARD, attack_jobs_done, axis_name, file_name_part, read_records

__all__ = ["RunFolder", "checkpoint_name", "file_stem", "list_runs"]


def file_stem(name: str) -> str:
    """`name` made safe as part of a file name: registered names unchanged; an entry point's path separators,
    colons and other odd characters replaced, plus a short hash of the original (so two entry points can never
    share a checkpoint file)."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "model"
    return name if safe == name else f"{safe}-{hashlib.md5(name.encode()).hexdigest()[:6]}"


def checkpoint_name(cfg: TrainConfig) -> str:
    """File stem of a run's checkpoint: unique per (dataset, model, seed, regime, axis values) within a run folder.
    A standard run at its dataset recipe's width has none of the parts ("fashion-mnist-mini-resnet14-s0"); an
    adversarial one names its regime ("...-s0-fgsm-rs-eps-0.1"), one of another width names it ("...-s0-w16"), and
    a study axis' other values name theirs (TrainConfig.cell: "...-s0-w16-stem-stride-1"), so a study crossing
    axes (study.axes) keeps every point's checkpoints apart."""
    regime = regime_label(cfg)
    suffix = "" if regime == STANDARD else "-" + file_name_part(regime).lower()
    recipe_width = DEFAULTS.get(cfg.dataset, {}).get("width", TrainConfig.width)
    if cfg.width != recipe_width:
        suffix += f"-w{cfg.width}"
    if cfg.cell:  # a study axis' values beyond width ("stem_stride 1" -> "-stem-stride-1")
        suffix += "-" + file_name_part(cfg.cell).lower()
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

    @property
    def slurm_ledger(self) -> Path:
        """{job key: {"id", "attempt", "job"}} of every job handed to Slurm (attnrobust.cluster)."""
        return self.slurm / "jobs.json"

    def slurm_status(self, key: str) -> Path:
        """What a Slurm job last wrote of itself: {"state": "running" | "done" | "failed", ...}."""
        return self.slurm / "status" / f"{key}.json"

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

    def read_ledger(self) -> dict[str, dict]:
        """The Slurm ledger ({} when no job went to Slurm)."""
        path = self.slurm_ledger
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is unreadable ({err}); cancel the study's Slurm jobs and remove it to start "
                            f"their bookkeeping afresh") from None

    def read_slurm_status(self, key: str) -> dict:
        """A Slurm job's status ({} if nothing yet: the writes are atomic, so a file is whole or absent)."""
        try:
            return json.loads(self.slurm_status(key).read_text())
        except (OSError, ValueError):
            return {}

    def slurm_job_states(self) -> dict[str, int]:
        """{state: count} of the jobs handed to Slurm, from the files alone (no scheduler asked): queued
        (submitted, not started), running (started; or lost, which the next run finds out), done, failed."""
        try:
            ledger = self.read_ledger()
        except UserError:
            return {"unreadable": 1}
        counts = Counter({"running": "running", "done": "done", "failed": "failed"}.get(
            self.read_slurm_status(key).get("state"), "queued") for key in ledger)
        return {s: counts[s] for s in ("queued", "running", "failed", "done") if counts[s]}


# ---- `attnrobust ls` ---------------------------------------------------------------------------------------------


def _cluster_line(folder: RunFolder) -> str:
    """The states of the jobs a run handed to Slurm ("" if none): e.g. "slurm: 3 queued, 1 running, 2 done; "."""
    if not folder.slurm_ledger.exists():
        return ""
    states = folder.slurm_job_states()
    return f"slurm: {', '.join(f'{n} {state}' for state, n in states.items())}; "


def list_runs(runs_dir: str | Path = "runs") -> str:
    """One line per run folder under runs_dir: its config, how many jobs are done, and where its report is.

    Reads config.toml as plain data and never validates it: validating imports the user models it names, and
    listing a folder of runs someone else made must not run their code. A training job counts as done when its
    checkpoint is there without a resume state beside it (a run still in progress keeps one). A run whose jobs
    went to Slurm also shows how many of those are queued, running, failed and done (their status files).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder; run `attnrobust run` first or name the folder of runs")
    rows = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if RunFolder(p).config.is_file()):
        folder = RunFolder(run_dir)
        try:
            data = tomllib.loads(folder.config.read_text())
            study, train = data.get("study", {}), data.get("train", {})
            datasets, models, seeds = (list(study.get(k, [])) for k in ("datasets", "models", "seeds"))
            # only the regime keys: they name the regime and its checkpoints (nothing here builds a model)
            regimes = [{k: v for k, v in {**train, **r}.items() if k in REGIME_KEYS}
                       for r in study.get("regimes") or [{}]]
            axes = study_axes(study.get("widths"), study.get("axes"))
            base = {"width": train["width"]} if "width" in train else {}
            # (the job's TrainConfig, its seed, its point on the axes, which its records carry)
            cells = [(TrainConfig.for_dataset(d, model=str(m), seed=s, **apply_point({**base, **r}, p)), s, p)
                     for d in datasets for r in regimes for p in grid_points(axes) for m in models for s in seeds]
            attacked = attack_jobs_done(folder.read_results())
        except (UserError, OSError, tomllib.TOMLDecodeError, TypeError, ValueError, KeyError) as err:
            rows.append(f"{run_dir.name}: unreadable ({err})")
            continue
        trained = sum(folder.checkpoint(c).is_file() and not folder.train_state(c).exists() for c, _, _ in cells)
        done = trained + sum((c.dataset, regime_label(c), w, c.model, s) in attacked for c, s, w in cells)
        labels = list(dict.fromkeys(regime_label(c) for c, _, _ in cells))
        labels += [f"widths {','.join(map(str, v))}" if k == "width" else f"{axis_name(k)} {','.join(map(str, v))}"
                   for k, v in axes]
        report = folder.report / "README.md"
        rows.append(f"{run_dir.name}: {','.join(datasets)} x {','.join(map(str, models))} x seeds "
                    f"{','.join(map(str, seeds))}; trained {'; '.join(labels)}; {done}/{2 * len(cells)} jobs done; "
                    f"{_cluster_line(folder)}report: {report if report.exists() else '(none yet)'}")
    return "\n".join(rows) if rows else f"no runs in {runs_dir}"
