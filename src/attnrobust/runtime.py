"""Where and how things run: device, seeds, threads, env.json, atomic writes (torchrun: attnrobust.distributed).

torch is imported inside the functions that use it: the torch-free modules (results, runfolder, runlock: what
`attnrobust ls` and the config read) use the atomic writes here, and importing torch costs seconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from attnrobust import __version__
from attnrobust.distributed import dist_info
from attnrobust.errors import UserError

# ---- files ------------------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a power cut can undo it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# mkstemp creates its file 0600; a rename keeps that, so without a chmod every checkpoint, cache entry and download
# would be unreadable to the rest of a group sharing a run folder or data directory. os.umask can only be read by
# setting it (for the whole process, threads included), so it is read once, at import, not on every write.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`, on failure removed.

    Readers therefore see either the old file or the complete new one, never a half-written file, even if the
    process is killed with SIGKILL mid-write (a stray `.tmp` file is all that can be left behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # what open(path, "w") would have given
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text is UTF-8 encoded) to `path` atomically."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ---- device, seeds, threads -------------------------------------------------------------------------------------


def resolve_device(name=None):
    """A torch.device from a name ("cpu", "cuda", "cuda:1", ...) or None (CUDA if available, else the CPU).

    Under torchrun a bare "cuda" means this process's own GPU, cuda:LOCAL_RANK.
    """
    import torch

    if isinstance(name, torch.device):
        device = name
    elif name is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(name).strip())
        except RuntimeError:
            raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here; "
                            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":  # MPS and others: untested here (float64 metric sums, AMP), so not offered
        raise UserError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    """Seed every generator training can touch (Python, torch CPU and CUDA). numpy is not used in training."""

    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_threads(n: int | None = None) -> int:
    """Use `n` intra-op threads (default: $ATTNROBUST_THREADS, else the cores this process may run on).

    torch's default can exceed the cores we are allowed (containers, taskset), which oversubscribes and slows
    convolutions down; under torchrun on a CPU the cores are split between the local processes.
    """
    import torch

    if n is None:
        env = os.environ.get("ATTNROBUST_THREADS")
        if env:
            try:
                n = int(env)
            except ValueError:
                n = 0  # reported below
            if n < 1:
                raise UserError(f"ATTNROBUST_THREADS={env!r}: must be a positive integer; unset it to use every "
                                f"core this process may run on")
        else:
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                cores = os.cpu_count() or 1
            local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            n = max(1, cores // max(1, local))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    keep_freed_memory()
    return n


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit (32 MiB)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2 ** 20


@functools.cache  # once per process: the setting is the process's
def keep_freed_memory() -> None:
    """Let glibc's malloc keep the memory torch frees, for the next tensor of the process, instead of giving it
    back to the kernel. Called by `set_threads`, which every process doing CPU work calls; once per process.

    Why: a CPU tensor is a malloc'd block. glibc serves blocks above a (dynamic) threshold with a fresh mmap and
    trims freed heap memory back to the kernel, so a training step's feature maps (12.8 MB each for a width-8
    ResNet on a batch of 128 28x28 images) kept landing on new pages, and touching a new page is a page fault: on
    this project's 2-core VMs, writing fresh memory runs at 4.8 GB/s against 40-80 GB/s for reused memory
    (docs/benchmarks.md, issue 32). Keeping freed memory (blocks up to 32 MiB from the heap, no trimming) removed
    ~97% of the page faults of a cbam_resnet14 step and made it markedly faster; memory then stays at the
    process's peak, which a study's worker reaches anyway. This is what PyTorch's CPU tuning guides get by
    preloading jemalloc or tcmalloc, without a new dependency. A no-op off glibc (macOS, musl) and where
    MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is set (the user's choice wins).
    """
    if platform.libc_ver()[0] != "glibc" or any(
            name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)  # an int: the largest value mallopt takes
    except (OSError, AttributeError):  # no mallopt to call: keep the defaults
        pass


# ---- environment record -----------------------------------------------------------------------------------------


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hangs
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


_CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(text: str, key: str) -> str | None:
    """The value of the first `key : value` line of /proc/cpuinfo (one block per core; the first will do)."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None


def cpu_facts() -> dict:
    """The CPU model, the instruction set torch's kernels use on it, and whether it has AVX-512F.

    Recorded because CPU results are not portable between CPUs: oneDNN picks different kernels (and so different
    float summation orders) on AVX2 and AVX-512 machines, and the same seed on two CPUs moved a transfer gap by
    10 pp. A reader of a result must be able to tell which machine made it.
    `cpu_avx512f` is None where the flags cannot be read (not Linux).
    """
    import torch

    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:  # not Linux
        text = ""
    model = _cpuinfo_field(text, "model name") or platform.processor() or platform.machine()
    flags = _cpuinfo_field(text, "flags")  # x86; ARM lists "Features" and never has avx512f
    if flags is None and _cpuinfo_field(text, "Features") is not None:
        avx512f = False
    else:
        avx512f = None if flags is None else "avx512f" in flags.split()
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_avx512f": avx512f}


def environment(device=None) -> dict:
    """Versions, device, threads, git commit, CPU facts: what someone needs to know to reproduce a number."""
    import torch


    device = resolve_device(device)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()

    rank, world, _ = dist_info()
    return {
        "attnrobust": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "world_size": world,
        "git_commit": _git_commit(),
        **cpu_facts(),  # also for GPU runs: the host CPU runs data loading and the report's statistics
    }


def portable_command(argv: list[str], run_dir: str | Path | None = None, cwd: str | Path | None = None) -> list[str]:
    """The command line as a user would retype it, without this machine's paths (env.json's "command": a reader of
    a published run learns nothing from /home/someone/.venv/bin/attnrobust).

    The program by its name (`python -m attnrobust` runs .../attnrobust/__main__.py: `attnrobust`). An absolute
    path, or a relative one leaving the working directory (../data), becomes: relative to the working directory
    `cwd` where it is inside it; RUN/... where it is inside the run folder `run_dir` (the folder by its name, as
    from its parent); else its name alone. Relative paths inside the working directory and arguments that are not
    paths stay as typed; in KEY=VALUE (--out=PATH, --set study.x="PATH") the value is rewritten, quotes kept.
    Applied to its own result it changes nothing, so a published env.json can be passed through it again.
    """
    if not argv:
        return []
    here = Path(os.path.abspath(cwd)) if cwd is not None else None
    run = Path(os.path.abspath(run_dir)) if run_dir is not None else None

    def portable(arg: str) -> str:
        if not (os.path.isabs(arg) or arg == ".." or arg.startswith("../")):
            return arg
        full = Path(os.path.normpath(os.path.join(here, arg) if here else arg))
        if here is not None and full.is_relative_to(here):
            return str(full.relative_to(here))
        if run is not None and full.is_relative_to(run):
            return str(Path(run.name) / full.relative_to(run))
        return full.name or arg

    def rewrite(arg: str) -> str:
        key, sep, value = arg.partition("=")
        if not sep or os.path.isabs(arg):
            return portable(arg)
        quote = value[:1] if len(value) > 1 and value[0] == value[-1] and value[0] in "\"'" else ""
        inner = value[len(quote):len(value) - len(quote)]
        return f"{key}={quote}{portable(inner)}{quote}"

    program = Path(argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name
    return [name or argv[0], *(rewrite(arg) for arg in argv[1:])]


def write_env_json(path: str | Path, argv: list[str] | None = None, device=None) -> dict:
    """Write `environment()` plus the command line (portable_command: as a user would retype it, relative to this
    working directory and the run folder `path` is in) and the time to `path` (atomically); return the dict."""
    env = environment(device)
    try:
        cwd = Path.cwd()
    except OSError:  # the working directory was removed: every path outside the run folder keeps its name only
        cwd = None
    env["command"] = portable_command(list(sys.argv if argv is None else argv), Path(path).parent, cwd)
    env["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write(path, json.dumps(env, indent=2) + "\n")
    return env
