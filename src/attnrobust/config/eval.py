"""[eval]: EvalSection, how many test images to attack, in which batch size, side by side, by which executor; and
its checks."""

from __future__ import annotations

from dataclasses import dataclass

from attnrobust.errors import UserError


@dataclass
class EvalSection:
    n: int | None = None  # attack the first n test images; None = the whole test split
    batch_size: int = 256
    # The costly attacks (PGD, APGD, minimal eps, AutoAttack) on a fixed seeded subset of this many of those
    # images (None, or at least n: all); clean accuracy and FGSM always on all n. Every model and seed sees the
    # same subset, so comparisons stay paired.
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
    # Under "other-seeds": on how many other seeds' models each source's attacks are scored, the next ones in
    # study.seeds, cyclically (seed i scores seeds i+1, ..., i+k). None: every other seed. Scoring costs a forward
    # pass per image, setting and target, so with K seeds it grows as K (K - 1); a target's own training noise
    # dominates a transfer row (target_var), which every target seed still carries, and the source x target term
    # shrinks as K k instead of K (K - 1) (report/crossed.py).
    transfer_seeds: int | None = None


EXECUTORS = ("local", "slurm", "submitit-local")
TRANSFER_SOURCES = ("other-seeds", "same-seed")


def validate_eval(e: EvalSection) -> None:
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
    k = e.transfer_seeds
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise UserError(f"eval.transfer_seeds: must be a positive integer (how many other seeds' models each "
                        f"source is scored on; left out: all), got {k!r}")
    if k is not None and e.transfer_sources == "same-seed":
        raise UserError("eval.transfer_seeds: applies to transfer_sources = \"other-seeds\" only; remove it or "
                        "set transfer_sources = \"other-seeds\"")
