"""One process at a time in a run folder: an exclusive lock on RUN/.lock for as long as a run works there.

Two `attnrobust run` processes in one folder would train the same checkpoints and rewrite the same
results.jsonl under each other. `hold_run_lock` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on RUN/.lock, so a second
taker is refused at once with one line naming the holder, instead of waiting or corrupting anything.

Why flock and not "create the file if absent": the kernel drops a flock when the last descriptor of the open file
goes away, which includes the holder being killed with SIGKILL or by the OOM killer. A lock left by a dead
process therefore never blocks the next run, and nothing needs a "stale lock" heuristic. The
file's content (pid, host, start time, command line of the holder) is only for the refusal message; the kernel's
lock is the truth. The holder removes the file when it leaves (a taker checks that the file it locked is still the
one in the folder, so the removal cannot let two processes in); a killed holder leaves it, and the next taker
reuses it.

Under torchrun all processes of one run share the folder: rank 0 takes the lock, the other ranks do not, and when
a process group is up every rank learns whether rank 0 got it, so a refused run stops on every rank instead of
leaving ranks waiting in a collective.

Platforms: Linux (what attnrobust runs on) and other POSIX systems have fcntl.flock. Where fcntl does not exist
(Windows) the lock is a no-op: runs are not protected from each other there. On NFS, Linux emulates flock with
POSIX byte-range locks, which the NFS lock manager honours across clients; the host name in the message says
which machine a holder is on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from attnrobust.distributed import broadcast_flags
from attnrobust.distributed import is_main as is_rank_0
from attnrobust.errors import UserError
from attnrobust.runfolder import RunFolder

try:
    import fcntl
except ImportError:  # not POSIX (Windows): see the module docstring
    fcntl = None

def _holder_line(argv: list[str] | None) -> str:
    """What the lock file says about its holder: pid, host, start time, command, one `key=value` per line."""
    command = " ".join(sys.argv if argv is None else argv)
    fields = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join(command.split())}  # newlines in an argument would break the one-line message
    return "".join(f"{k}={v}\n" for k, v in fields.items())


def read_holder(run_dir: str | Path) -> dict[str, str]:
    """The holder facts written in RUN/.lock ({} if none are there); informative only, the kernel lock decides."""
    try:
        text = RunFolder(run_dir).lock.read_text(errors="replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _refusal(run_dir: Path) -> UserError:
    holder = read_holder(run_dir)
    if holder.get("pid"):
        who = f"pid {holder['pid']} on {holder.get('host', '?')} since {holder.get('since', '?')}"
        if holder.get("command"):
            who += f" ({holder['command']})"
    else:  # the holder has locked but not yet written its line, or could not write it
        who = "another process"
    return UserError(f"run folder {run_dir} is in use by {who}; wait for that run to finish or stop it, "
                     f"or use another --out folder")


def _rank0_agrees(ok: bool) -> bool:
    """Under torchrun: every rank learns rank 0's outcome (rank 0 passes its own, the others' `ok` is ignored)."""
    return broadcast_flags([ok])[0]


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """(descriptor, writable) of RUN/.lock, created if absent."""
    try:  # os.open descriptors are not inherited by subprocesses (PEP 446), so a child cannot keep the lock alive
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:  # a shared folder, a .lock another user made: flock needs no write access
        return os.open(path, os.O_RDONLY), False


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _lock(run_dir: Path, argv: list[str] | None) -> int:
    """Open and flock RUN/.lock; return the descriptor, or raise UserError naming the holder."""
    path = RunFolder(run_dir).lock
    # A holder removes the file when it leaves. A taker that opened it just before then locks a file no longer in
    # the folder, while a third process could create and lock a new one: so after locking, check that the file
    # locked is the one at the path, and start again if not. Each retry means a holder left in between.
    for _ in range(20):
        run_dir.mkdir(parents=True, exist_ok=True)  # again: a leaving holder removes a folder it left empty
        try:
            fd, writable = _open_lock_file(path)
        except FileNotFoundError:  # the folder went between the two lines
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(run_dir) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)
    else:
        raise UserError(f"could not lock {path}: other processes keep taking and releasing it; wait for them to "
                        f"finish, or use another --out folder")
    if writable:
        # One write of a few hundred bytes: a concurrent refused reader sees the old or the new text, or none.
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_line(argv).encode(), 0)
    return fd


def _unlock(fd: int, run_dir: Path, made_folder: bool) -> None:
    """Remove RUN/.lock (and the folder, if the lock made it and nothing else is in it), then drop the lock."""
    try:
        # Removed while still held, so no taker can lock it in between and then lose it (see _lock).
        RunFolder(run_dir).lock.unlink()
        if made_folder:  # a refused or failed run leaves no empty folder (or none at all in a wrong --out)
            run_dir.rmdir()  # fails, as it should, if the run wrote anything or a taker created a new .lock
    except OSError:
        pass
    os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def hold_run_lock(run_dir: str | Path, *, is_main: bool | None = None,
                  argv: list[str] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock on RUN/.lock (creating the folder) for the `with` block; yield the run folder.

    A second taker, in this process or another, gets a UserError naming the folder and the holder (pid, host,
    since when, command). The lock is released when the block ends, normally or by an exception (the .lock file
    is removed, and the folder too if the lock created it and it is still empty), and by the kernel when the
    process dies (the file stays; the next taker reuses it). `is_main`: whether this process takes the lock
    (None = rank 0 of a torchrun job, or the only process); the other ranks of the same job share the folder
    without it and learn whether rank 0 got it. `argv` is the command recorded for the message (default sys.argv).
    """
    run_dir = Path(run_dir)
    if is_main is None:
        is_main = is_rank_0()
    fd, failed, made_folder = None, None, not run_dir.exists()
    if is_main and fcntl is not None:
        try:
            fd = _lock(run_dir, argv)
        except Exception as err:  # refused, or an unwritable folder: the other ranks must hear of it either way
            failed = err
    if not _rank0_agrees(failed is None):
        if failed is not None:
            raise failed
        raise UserError(f"run folder {run_dir} could not be locked by rank 0 (see its message); wait for the run "
                        f"using it to finish, or use another --out folder")
    try:
        yield run_dir
    finally:
        if fd is not None:
            _unlock(fd, run_dir, made_folder)


def die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this process when the process that started it dies.

    For worker processes (a ProcessPoolExecutor `initializer`, with initargs=(os.getpid(),) in the parent): the
    lock dies with the process holding it, and a worker that outlived a killed run would go on writing into a
    folder the next run has just locked. Elsewhere a no-op (workers may then outlive a killed run).
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the prctl: nobody would send the signal
        os._exit(1)
