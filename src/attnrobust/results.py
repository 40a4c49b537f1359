"""Result records: the schema, the JSONL store, and a compact text table.

One record per (dataset, seed, source, target, attack, eps, steps), and for a common corruption (attack
"corruption", source = target, eps 0; attnrobust.evaluate.corruption_scores) per (corruption, severity) too,
both fields in the record beside `corruption_family`. A record stores n and the integer counts
beside every ratio, and names each ratio's denominator, so a number is never read against the wrong base:

    robust_accuracy = robust_correct / n                    the paper's "Acc" (FGSM)
    error           = 1 - robust_accuracy                   the paper's "Err" (PGD)
    success_rate    = 1 - robust_correct_on_target_clean / target_clean_correct
    accuracy_on_both_correct = robust_correct_on_both / both_clean_correct   (transfer: images both got right)

A ratio whose denominator is 0 is null.

Per-image outcomes make paired statistics possible (two models scored on the same images are compared image by
image): `robust_bits` and `clean_bits` are the target's correctness under attack and on the clean image, one bit
per attacked image in the order of `images`, packed (numpy.packbits, big bit order) and base64-encoded so that
results.jsonl stays one readable JSON line per record (1,250 bytes per 10,000 images). `images` names the
attacked test images ("test[:1000]", or a seeded subset), and `iterate` says which PGD iterate was scored:
"final" (the paper's convention), "best" (white-box: the first iterate that fools the attacked model, AutoAttack's
convention) or "best-on-source" (APGD crafted on another model keeps the iterate that fooled its source).

`Setting` is what the attack plan crafts and what a record measured (`Setting.of(record)`, the one key): the
attack and its budget, iterations, step size, start and iterate rule (eps compared after `eps_key`), and for a
common corruption (attack "corruption") its name and severity; `CLEAN` is the clean image. `Panel` is what the
report compares within (dataset, regime, point of the study's axes). `load_records` reads a run's store for the
report (an error when it is missing or empty).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from attnrobust.errors import UserError
from attnrobust.runtime import atomic_write

__all__ = ["DENOMINATORS", "REQUIRED_KEYS", "make_record", "append_records", "write_records", "read_records",
           "record_key", "format_records", "pack_bits", "unpack_bits", "pack_floats", "unpack_floats",
           "ITERATES", "Setting", "CLEAN", "load_records", "STANDARD", "regime_of", "Panel", "file_name_part",
           "with_cell", "point_of", "point_label", "axis_name", "source_seed_of", "is_cross_seed"]

ITERATES = ("final", "best", "best-on-source")

DENOMINATORS = {"clean_accuracy": "n", "robust_accuracy": "n", "error": "n",
                "success_rate": "target_clean_correct", "accuracy_on_both_correct": "both_clean_correct"}

COUNT_KEYS = ("n", "target_clean_correct", "source_clean_correct", "both_clean_correct", "robust_correct",
              "robust_correct_on_both", "robust_correct_on_target_clean")

REQUIRED_KEYS = ("dataset", "seed", "source", "target", "kind", "attack", "eps", "steps", "alpha", "random_start",
                 "keep_best", "iterate", "images", "robust_bits", "clean_bits", *COUNT_KEYS, "clean_accuracy",
                 "robust_accuracy", "error", "success_rate", "accuracy_on_both_correct", "denominators", "flags")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def pack_bits(mask) -> str:
    """A boolean vector (numpy or torch, any device) as base64 text."""
    values = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool).ravel()
    return base64.b64encode(np.packbits(values).tobytes()).decode("ascii")


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The n booleans `pack_bits` encoded."""
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    if raw.size != (n + 7) // 8:
        raise UserError(f"per-image outcomes hold {raw.size * 8} bits for n = {n} images; the record is corrupt")
    return np.unpackbits(raw)[:n].astype(bool)


def pack_floats(values) -> str:
    """A float vector as base64 of little-endian float32 (inf allowed: JSON cannot hold it, base64 can)."""
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype="<f4").ravel()
    return base64.b64encode(array.tobytes()).decode("ascii")


def unpack_floats(text: str, n: int) -> np.ndarray:
    array = np.frombuffer(base64.b64decode(text), dtype="<f4")
    if array.size != n:
        raise UserError(f"per-image values hold {array.size} numbers for n = {n} images; the record is corrupt")
    return array.astype(np.float64)


STANDARD = "standard"  # the training regime of a record without a "regime" field


def regime_of(record: dict[str, Any]) -> str:
    """How the record's models were trained: its "regime" label (config.regime_label), absent for standard
    training (so a standard study's records, and those written before regimes existed, read the same)."""
    return record.get("regime", STANDARD)


def point_of(record: dict[str, Any]) -> tuple:
    """The record's models' point on the study's axes (study.axes, study.widths): its "axes" as (key, value) pairs
    in config order; a record of a width study written before axes existed has "width" instead; () without axes."""
    if "axes" in record:
        return tuple(record["axes"].items())
    return (("width", record["width"]),) if "width" in record else ()


def axis_name(key: str) -> str:
    """How an axis reads in labels: its last dotted part ("model_args.stem_stride" -> "stem_stride")."""
    return key.rsplit(".", 1)[-1]


def point_label(point, *, without: tuple[str, ...] = ()) -> str:
    """"width 16 · stem_stride 1": a point's values as the report and `ls` show them (keys in `without` left out)."""
    return " · ".join(f"{axis_name(k)} {v}" for k, v in point if k not in without)


def source_seed_of(record: dict[str, Any]) -> int:
    """The training seed of the model the record's attack was crafted on: its "source_seed", written where the
    source and the target were trained with different seeds; else "seed" (a white-box record, a transfer within
    one seed's models, and every record written before sources of other seeds existed)."""
    return int(record.get("source_seed", record["seed"]))


def is_cross_seed(record: dict[str, Any]) -> bool:
    """Whether the record's source and target were trained with different seeds ("seed" is the target's)."""
    return source_seed_of(record) != int(record["seed"])


def attack_job_of(record: dict[str, Any]) -> tuple:
    """The attack job (dataset, regime, point, source, source seed) that wrote a record (attnrobust.jobs.Job.key):
    the job of the model the attack was crafted on, whichever seed's target scored it."""
    return (record["dataset"], regime_of(record), point_of(record), record["source"], source_seed_of(record))


def attack_jobs_done(records: Iterable[dict[str, Any]]) -> set[tuple]:
    """attack_job_of every record: the attack jobs whose records are in the results (a job is written whole)."""
    return {attack_job_of(r) for r in records}


@functools.total_ordering
@dataclass(frozen=True)
class Panel:
    """What the report compares within: a dataset, under one training regime, at one point of the study's axes (in
    a study that has axes: ((key, value), ...), `point_of`). Models are only ever compared with, and transferred
    to, models of their own panel. Shown as the dataset, then " · regime" for a non-standard regime and each axis'
    " · name value" (str(panel): "... · width 16 · stem_stride 1"); ordered by that label without the point, then by
    the point's values (width 8 before 16)."""

    dataset: str
    regime: str = STANDARD
    point: tuple = ()

    @classmethod
    def of(cls, record: dict[str, Any]) -> "Panel":
        """The panel of a record's models (its dataset, `regime_of`, `point_of`)."""
        return cls(record["dataset"], regime_of(record), point_of(record))

    def __str__(self) -> str:
        parts = [self.dataset] + ([self.regime] if self.regime != STANDARD else [])
        return " · ".join(parts + ([point_label(self.point)] if self.point else []))

    def value(self, key: str) -> Any:
        """The panel's value of axis `key` (None: not an axis of its study)."""
        return dict(self.point).get(key)

    def without(self, key: str) -> "Panel":
        """The panel across the values of axis `key` (a trend or an interaction is followed within it)."""
        return replace(self, point=tuple((k, v) for k, v in self.point if k != key))

    def sort_key(self) -> tuple:
        return str(replace(self, point=())), tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
                                                  for _, v in self.point)

    def __lt__(self, other: "Panel") -> bool:
        return self.sort_key() < other.sort_key()


def file_name_part(text: object) -> str:
    """Text as a part of a file name, the one rule for panels (figures) and regimes (checkpoints): every run of
    characters other than letters, digits and "." becomes one "-" ("fashion-mnist-mini · FGSM-RS eps 0.1" ->
    "fashion-mnist-mini-FGSM-RS-eps-0.1")."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-")


def with_cell(records: list[dict[str, Any]], regime: str, point: tuple = ()) -> list[dict[str, Any]]:
    """The records labelled with their models' training regime and point on the study's axes (new dicts, "regime"
    then "axes" right after "seed"); a standard regime and no axes add nothing, so such records read as they always
    did."""
    labels = ([] if regime == STANDARD else [("regime", regime)]) + ([("axes", dict(point))] if point else [])
    if not labels:
        return records
    out = []
    for r in records:
        items = [(k, v) for k, v in r.items() if k not in ("regime", "width", "axes")]
        at = [k for k, _ in items].index("seed") + 1
        out.append(dict(items[:at] + labels + items[at:]))
    return out


def make_record(*, dataset: str, seed: int, source: str, target: str, setting: "Setting",
                counts: dict[str, int], robust_bits: str, clean_bits: str, images: str,
                flags: dict[str, dict] | None = None, source_seed: int | None = None,
                **extra: Any) -> dict[str, Any]:
    """A complete record from its setting, its integer counts (the keys of COUNT_KEYS) and its per-image
    outcomes (`pack_bits` text). `extra`: measure-specific fields (e.g. per-image minimal eps). The setting is
    stored as its fields (`Setting.fields`); `Setting.of(record)` reads it back. `seed` is the target's training
    seed; source_seed, when the source was trained with another one: the record then carries both, as
    "source_seed" and "target_seed" (= seed) right after "seed" (`source_seed_of`)."""
    c = {k: int(counts[k]) for k in COUNT_KEYS}
    n = c["n"]
    robust = _ratio(c["robust_correct"], n)
    fooled = c["target_clean_correct"] - c["robust_correct_on_target_clean"]
    return {
        "dataset": dataset, "seed": int(seed),
        **({} if source_seed is None or source_seed == seed else
           {"source_seed": int(source_seed), "target_seed": int(seed)}),
        "source": source, "target": target,
        "kind": "white-box" if source == target and source_seed in (None, seed) else "transfer",
        **setting.fields(),
        "images": images,
        **c,
        "clean_accuracy": _ratio(c["target_clean_correct"], n),
        "robust_accuracy": robust,
        "error": None if robust is None else 1.0 - robust,
        "success_rate": _ratio(fooled, c["target_clean_correct"]),
        "accuracy_on_both_correct": _ratio(c["robust_correct_on_both"], c["both_clean_correct"]),
        "denominators": dict(DENOMINATORS),
        "flags": dict(flags or {}),
        **setting.corruption_fields(),
        **extra,
        # last: long base64 fields at the end of the line keep the numbers readable at its start
        "robust_bits": robust_bits,
        "clean_bits": clean_bits,
    }


def record_key(r: dict[str, Any]) -> tuple:
    """What identifies a record: (dataset, regime, point, seed, source, target, its Setting, the source's seed)
    ("seed" is the target's: `source_seed_of`)."""
    return (r["dataset"], regime_of(r), point_of(r), r["seed"], r["source"], r["target"], Setting.of(r),
            source_seed_of(r))


def eps_key(eps: float) -> float:
    """eps as a key: rounded to 9 digits, so 0.1 + 0.05 and 0.15 are the same setting (the one place we round)."""
    return round(float(eps), 9)


# Column order: clean first, then the paper's two attacks, then anything else; common corruptions last.
_ATTACK_ORDER = {"clean": 0, "fgsm": 1, "pgd": 2, "apgd": 3, "autoattack": 4, "minimal": 5, "corruption": 10}


@dataclass(frozen=True)
class Setting:
    """One attack setting: what one record measured, and one column of the report's tables.

    The attack plan (AttackConfig.settings) makes them, the crafting runs them (evaluate), each record stores one
    (`fields`) and `Setting.of(record)` reads it back as the key that evaluate, the sanity flags and the report
    use. Two settings are equal when their eps agree after `eps_key` (0.1 + 0.05 and 0.15 are one setting); each
    keeps its eps as given, so a record stores the exact value it ran at."""

    attack: str  # "clean" | "fgsm" | "pgd" | "apgd" | "minimal" | "autoattack" | "corruption"
    eps: float = field(default=0.0, compare=False)  # compared (and hashed) through eps_rounded
    steps: int = 0  # iterations (minimal eps: its search's steps); 0 for FGSM, clean and corruptions
    alpha: float | None = None  # PGD's step size; None where the attack has none (FGSM, APGD's own schedule)
    random_start: bool = False
    keep_best: bool = False
    iterate: str | None = None  # which iterate was scored (ITERATES), None for one-step attacks
    corruption: str = ""  # attack "corruption": its name (attnrobust.corruptions) and severity (1-5)
    severity: int = 0
    eps_rounded: float = field(init=False, repr=False)  # eps_key(eps): what equality and hashing see

    def __post_init__(self) -> None:
        if self.iterate is not None and self.iterate not in ITERATES:
            raise ValueError(f"iterate must be one of {ITERATES}, got {self.iterate!r}")
        object.__setattr__(self, "eps_rounded", eps_key(self.eps))

    @classmethod
    def of(cls, record: dict) -> "Setting":
        """The setting a record measured (FGSM has no step size, start or iterate rule)."""
        steps, alpha, one_step = record.get("steps"), record.get("alpha"), record["attack"] == "fgsm"
        return cls(record["attack"], float(record["eps"]), int(steps) if steps is not None else 0,
                   float(alpha) if alpha is not None and not one_step else None,
                   bool(record.get("random_start", False)) and not one_step,
                   bool(record.get("keep_best", False)) and not one_step, record.get("iterate"),
                   str(record.get("corruption") or ""), int(record.get("severity") or 0))

    def fields(self) -> dict[str, Any]:
        """The setting as a record stores it: attack, eps, steps (None for none), alpha, random_start, keep_best,
        iterate."""
        return {"attack": self.attack, "eps": float(self.eps), "steps": int(self.steps) if self.steps else None,
                "alpha": None if self.alpha is None else float(self.alpha), "random_start": bool(self.random_start),
                "keep_best": bool(self.keep_best), "iterate": self.iterate}

    def corruption_fields(self) -> dict[str, Any]:
        """A common corruption's name and severity as its record stores them ({} for an attack)."""
        return {"corruption": self.corruption, "severity": int(self.severity)} if self.attack == "corruption" \
            else {}

    @property
    def run(self) -> "Setting":
        """The attack run whose iterate this setting scores: the setting without its iterate rule. A transfer
        record's final iterate and its target's white-box best iterate come from the same kind of run."""
        return replace(self, keep_best=False, iterate=None)

    @property
    def column(self) -> "Setting":
        """The report's column: the setting without `iterate`, so that one column holds a white-box cell (APGD's
        best iterate) and a transfer cell (its best-on-source iterate) of one attack; PGD's best and final
        iterates differ in keep_best, so they stay two columns."""
        return replace(self, iterate=None)

    @property
    def is_error(self) -> bool:
        """Iterative attacks are reported as error (1 - robust accuracy), as in the paper's PGD columns."""
        return self.attack not in ("clean", "fgsm", "corruption")

    def sort_key(self) -> tuple:
        return (_ATTACK_ORDER.get(self.attack, 9), self.attack, self.eps, self.steps, self.alpha or 0.0,
                self.random_start, self.keep_best, ITERATES.index(self.iterate) + 1 if self.iterate else 0,
                self.corruption, self.severity)

    def accuracy(self, record: dict) -> float:
        """The accuracy (fraction over n) this setting measures in `record`."""
        return record["clean_accuracy"] if self.attack == "clean" else record["robust_accuracy"]

    def correct(self, record: dict) -> int:
        return record["target_clean_correct"] if self.attack == "clean" else record["robust_correct"]

    def value(self, record: dict) -> float:
        """What the tables show: accuracy, or error for iterative attacks (fraction)."""
        acc = self.accuracy(record)
        return 1.0 - acc if self.is_error else acc


CLEAN = Setting("clean")


def _dumps(records: Iterable[dict[str, Any]]) -> str:
    # allow_nan=False: a NaN would make a file that strict JSON readers (and the report) reject
    return "".join(json.dumps(r, sort_keys=False, allow_nan=False) + "\n" for r in records)


def append_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records to a JSONL file, flushed and fsynced before returning.

    A kill mid-append can leave a partial last line; it is cut off here first (with a warning), so that the new
    records do not get glued onto it and turn a recoverable tail into a corrupt line in the middle.
    """
    path = Path(path)
    text = _dumps(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                keep = f.read().rfind(b"\n") + 1
                warnings.warn(f"{path}: dropping a truncated last line ({size - keep} bytes) before appending",
                              stacklevel=2)
                f.truncate(keep)
        f.seek(0, os.SEEK_END)
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace a JSONL file with these records atomically (readers see the old file or the new one)."""

    atomic_write(path, _dumps(records))


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file. A malformed line is an error naming the file and line; the one exception is
    a last line without its newline that does not parse (a kill mid-append), which is dropped with a warning."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such results file; run the attacks first (attnrobust attack/transfer/run)") \
            from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read results file ({err}); check the file or rerun the attacks") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            missing = [k for k in REQUIRED_KEYS if k not in record]
            if missing:
                raise ValueError(f"missing keys {', '.join(missing)}")
        except ValueError as err:
            truncated = number == len(lines)  # the last piece has no newline after it
            if truncated and isinstance(err, json.JSONDecodeError):
                warnings.warn(f"{path}:{number}: ignoring a truncated last line (an interrupted append)",
                              stacklevel=2)
                continue
            raise UserError(f"{path}:{number}: malformed result record ({str(err).splitlines()[0]}); "
                            f"fix or delete that line, or rerun the attacks") from None
        records.append(record)
    return records


def load_records(path: str | Path) -> list[dict]:
    """The records of a run's results.jsonl, for the report; UserError (one line) when it is missing, empty or
    malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run the study first (`attnrobust run`), or point `attnrobust report` "
                        f"at a run folder that holds results.jsonl")
    records = read_records(path)  # checks every record's keys; UserError naming the file and line
    if not records:
        raise UserError(f"{path} holds no result records; run the attacks (`attnrobust run`) before the report")
    return records


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def format_records(records: Iterable[dict[str, Any]]) -> str:
    """A compact text table: one line per record, accuracies in percent, failing sanity flags named."""
    header = ("source", "target", "kind", "attack", "eps", "steps", "n", "clean%", "robust%", "error%",
              "success%", "both%", "flags")
    rows = []
    for r in records:
        failed = [name for name, flag in r.get("flags", {}).items() if not flag.get("ok", True)]
        attack = f"{r['corruption']} {r['severity']}" if "corruption" in r else r["attack"]  # a common corruption
        rows.append((r["source"], r["target"], r["kind"], attack, f"{r['eps']:g}",
                     "-" if r["steps"] is None else str(r["steps"]), str(r["n"]), _pct(r["clean_accuracy"]),
                     _pct(r["robust_accuracy"]), _pct(r["error"]), _pct(r["success_rate"]),
                     _pct(r["accuracy_on_both_correct"]),
                     ("WARN " + ",".join(failed)) if failed else ("ok" if r.get("flags") else "")))
    if not rows:
        return "(no records)"
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    numeric = set(range(4, 12))

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])
