"""[study] and the whole config: StudySection (what to compare: datasets x models x seeds, pairs, regimes, axes)
with its checks, StudyConfig (every section, checked; the TrainConfig of each job), and `validate`, the checks
across sections and of every job's training config.

The checks that need the dataset and model registries (data, models, corruptions: torch, numpy, scipy) import them
where they run: reading a config stays torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from attnrobust.config.attack import AttackConfig
from attnrobust.config.coerce import check_keys
from attnrobust.config.eval import EvalSection, validate_eval
from attnrobust.config.slurm import SlurmSection
from attnrobust.config.train import PER_JOB_TRAIN_KEYS, REGIME_KEYS, TrainConfig, apply_point, grid_points, \
    regime_label, study_axes, train_hints
from attnrobust.config.verdict import VerdictSection
from attnrobust.errors import UserError
from attnrobust.results import point_label


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
    # Axes over any [train] setting, crossed with everything else and with each other: {key = [values]}, a key of
    # [train] ("width", "epochs", "lr", ...) or "model_args.NAME" for a model build argument, e.g.
    # {"model_args.stem_stride" = [1, 2], width = [8, 16]}. Every model is trained, attacked and compared at each
    # point of the grid, never across points; the report adds, per axis, how the attention effect changes between
    # its values (the interaction verdicts). `widths = [...]` is the width axis, spelled as before. None: none.
    axes: dict | None = None


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
            check_keys(regime, REGIME_KEYS, f"study.regimes[{i}]")
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
    _validate_axes(s, {k for m in s.models for k in model_options(m)})


def _validate_axes(s: StudySection, model_args: set[str]) -> None:
    """study.axes: known [train] keys or model_args.NAME of a study model, not the per-job or regime keys, each a
    non-empty list of distinct values (the values themselves are checked with every job's TrainConfig)."""
    if s.axes is None:
        return
    if not s.axes:
        raise UserError("study.axes: must name at least one [train] key (or be left out)")
    keys = [k for k in train_hints() if k != "model_args"]
    for key, values in s.axes.items():
        where = f"study.axes.{key}" if "." not in key else f'study.axes."{key}"'
        if key.startswith("model_args."):
            if key.split(".", 1)[1] not in model_args:
                raise UserError(f"{where}: no model of the study takes {key.split('.', 1)[1]!r}; valid: "
                                f"{', '.join('model_args.' + k for k in sorted(model_args)) or 'none'}")
        elif key in PER_JOB_TRAIN_KEYS or key in REGIME_KEYS:
            why = "set by the study per job" if key in PER_JOB_TRAIN_KEYS else \
                "how models are trained against attacks: use study.regimes"
            raise UserError(f"{where}: cannot be an axis ({why})")
        elif key == "model_args":
            raise UserError(f"{where}: name the argument, e.g. \"model_args.stem_stride\" = [1, 2]")
        elif key not in keys:
            raise UserError(f"{where}: unknown [train] key; valid: {', '.join(keys)}, or model_args.NAME")
        if not isinstance(values, list) or not values or any(
                values.count(v) > 1 or isinstance(v, (list, dict)) for v in values):
            raise UserError(f"{where}: must be a non-empty list of distinct values, got {values!r}")
    if s.widths is not None and "width" in s.axes:
        raise UserError("study.widths: the width axis is given twice (study.widths and study.axes.width); keep one")


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

    def axes_of(self) -> list[tuple[str, list]]:
        """The study's axes, (key, values) in config order: study.widths as the width axis, then study.axes."""
        return study_axes(self.study.widths, self.study.axes)

    def points(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every point of the axes' grid, the first axis outermost: [()] without axes."""
        return grid_points(self.axes_of())

    def train_config(self, dataset: str, model: str, seed: int, regime: dict[str, Any] | None = None,
                     point: tuple = ()) -> TrainConfig:
        """The TrainConfig of one study job: the dataset's defaults, then the config's [train] overrides, then the
        job's regime (a table of study.regimes) and point (its values of study.axes, `points`).

        train.model_args is shared by the study's models: each gets the arguments it takes (e.g. cbam_bn_momentum
        reaches only the CBAM models); `validate` refuses an argument that no model of the study takes.
        """
        from attnrobust.models import model_options

        overrides = apply_point({**self.train, **(regime or {})}, point)
        if "model_args" in overrides:
            accepted = model_options(model)
            overrides["model_args"] = {k: v for k, v in overrides["model_args"].items() if k in accepted}
        return TrainConfig.for_dataset(dataset, model=model, seed=seed, **overrides)


def validate(cfg: StudyConfig, data_dir=None) -> None:
    """Check values across sections (names exist, numbers in range); raise UserError naming the key.
    data_dir (else $ATTNROBUST_DATA): where the user's datasets are; user models' code is imported to check it."""
    _validate_study(cfg.study, data_dir)
    validate_eval(cfg.eval)
    _validate_across(cfg, data_dir)
    _validate_jobs(cfg, data_dir)


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
            for model, point in ((m, p) for m in s.models for p in cfg.points()):
                try:
                    cfg.train_config(dataset, model, s.seeds[0], regime, point).validate(data_dir)
                except UserError as err:
                    # name the key where it was set: a regime's table, an axis, or [train] (TrainConfig says
                    # "key: ...")
                    key = str(err).split(":", 1)[0]
                    axis = [k for k, _ in point if k == key or (key == "model_args" and k.startswith("model_args."))]
                    where = f"study.regimes[{i}]." if key in regime else f"study.axes ({point_label(point)}): " \
                        if axis else "train."
                    raise UserError(f"{where}{err}" if key.isidentifier() else str(err)) from None
        labels = [regime_label(cfg.train_config(dataset, s.models[0], s.seeds[0], r)) for r in s.regimes or [{}]]
        if len(set(labels)) != len(labels):
            raise UserError(f"study.regimes: two regimes are the same on {dataset} ({', '.join(labels)})")
