"""[slurm]: SlurmSection, the resources of each Slurm job when eval.executor is Slurm, and its checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from attnrobust.config.coerce import coerce, field_hints
from attnrobust.errors import UserError


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


def slurm_section(table: dict) -> SlurmSection:
    """[slurm] as a SlurmSection: its own keys typed, the rest kept as submitit parameters."""
    hints = field_hints(SlurmSection)
    own = {k: coerce(v, hints[k], f"slurm.{k}") for k, v in table.items() if k in hints and k != "extra"}
    for key in ("gpus_per_job", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism"):
        value = own.get(key)
        if value is not None and value < (0 if key == "gpus_per_job" else 1):
            raise UserError(f"slurm.{key}: must be {'>= 0' if key == 'gpus_per_job' else 'positive'}, got {value}")
    return SlurmSection(**own, extra={k: v for k, v in table.items() if k not in hints or k == "extra"})
