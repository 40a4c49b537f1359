"""Data-parallel runs under torchrun: joining the process group, asking where this process stands, collectives.

Joining is a call (`init_distributed`), made once by each entry point that computes (the CLI verbs, `train`,
`run_study`, `evaluate_checkpoints`); everything else only asks (`dist_info`, `is_main`) or sums (`all_sum_`,
`sum_floats`, `broadcast_flags`), and each of those is a no-op, returning its input, in a single process.

The backend serves both kinds of tensors (gloo for CPU ones, NCCL for CUDA ones where CUDA exists), so the
study's CPU-side agreement (which jobs to run, who holds the run lock) and the CUDA-side sums of counts work
whatever device a stage runs on.

torch is imported inside the functions: the run lock (attnrobust.runlock) asks `is_main` from `attnrobust ls`'s
and the config's torch-free side, and importing torch costs seconds (`ls` starts in 0.2 s without it, 2.8 s with).
"""

from __future__ import annotations

import os
import sys


def init_distributed() -> None:
    """Join the torchrun process group if this process was started by torchrun (WORLD_SIZE > 1) and has not
    joined yet; a no-op otherwise. Binds the process to its local GPU where CUDA exists."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")


def is_distributed() -> bool:
    """Whether this process is in a joined process group (checked without importing torch when it is absent)."""
    if "torch.distributed" not in sys.modules:  # no process group without it; importing torch costs a second
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process; (0, 1, 0) when not in a process group. Never joins one."""
    if not is_distributed():
        return 0, 1, 0
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on the process that writes files (rank 0, or the only process)."""
    return dist_info()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def all_sum_(t):
    """Sum a tensor over ranks in place (one collective) and return it; unchanged in a single process."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def sum_floats(values: list, device) -> list[float]:
    """Sum scalars (numbers or 0-d tensors) over ranks in one collective; returns Python floats."""
    import torch

    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    return all_sum_(t).tolist()


def broadcast_flags(flags: list[bool]) -> list[bool]:
    """Every rank gets rank 0's flags (the others' values are ignored); unchanged in a single process."""
    if not is_distributed():
        return flags
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.uint8)  # a CPU tensor: the group has gloo
    dist.broadcast(t, src=0)
    return [bool(f) for f in t.tolist()]


def broadcast_buffers(model) -> None:
    """Every rank gets rank 0's buffers of `model` (e.g. BatchNorm statistics); a no-op in a single process."""
    if is_distributed():
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
