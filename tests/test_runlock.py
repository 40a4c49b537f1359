"""Run-folder bookkeeping: the lock that keeps two runs out of one folder, and the CPU facts env.json records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from attnrobust.errors import UserError
from attnrobust.runlock import hold_run_lock, read_holder

posix = pytest.mark.skipif(sys.platform == "win32", reason="the run lock is POSIX flock; a no-op on Windows")

# A process that takes the lock, says so on stdout, and holds it until killed. Only attnrobust.runlock is
# imported (no torch), so it starts in a fraction of a second.
HOLDER = textwrap.dedent("""
    import sys, time
    from attnrobust.runlock import hold_run_lock
    with hold_run_lock(sys.argv[1], is_main=True):
        print("locked", flush=True)
        time.sleep(60)
""")

# A second taker that reports a refusal the way the CLI does: one line on stderr, exit status 2.
TAKER = textwrap.dedent("""
    import sys
    from attnrobust.errors import UserError
    from attnrobust.runlock import hold_run_lock
    try:
        with hold_run_lock(sys.argv[1], is_main=True):
            print("locked", flush=True)
    except UserError as err:
        print(f"attnrobust: error: {err}", file=sys.stderr)
        sys.exit(2)
""")


@pytest.fixture
def holder(tmp_path):
    """A live holder process of tmp_path/run, started and waited for until it holds the lock."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@posix
def test_second_taker_in_the_same_process_is_refused_and_lock_is_released_after(tmp_path):
    run = tmp_path / "run"
    with hold_run_lock(run, is_main=True, argv=["attnrobust", "run", "quick"]) as held:
        assert held == run and (run / ".lock").is_file()
        assert read_holder(run)["pid"] == str(os.getpid())
        with pytest.raises(UserError) as err:
            with hold_run_lock(run, is_main=True):
                pass
        message = str(err.value)
        assert str(run) in message and f"pid {os.getpid()}" in message and "attnrobust run quick" in message
        assert "another --out folder" in message and "\n" not in message
    assert not (run / ".lock").exists()  # no file claims a holder that is gone
    assert not run.exists()  # the lock made the folder and nothing was written in it: a wrong --out leaves no trace
    with hold_run_lock(run, is_main=True):  # released on normal exit
        (run / "config.toml").write_text("")
    assert sorted(p.name for p in run.iterdir()) == ["config.toml"]  # a folder with a run's files stays


@posix
def test_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with hold_run_lock(tmp_path, is_main=True):
            raise KeyboardInterrupt
    with hold_run_lock(tmp_path, is_main=True):
        pass


@posix
def test_a_taker_that_locked_a_removed_lock_file_does_not_count(tmp_path):
    # A taker opens .lock, the holder leaves (removing it), the taker's flock then succeeds on a file no longer in
    # the folder: _lock must notice and start again, or a third process could hold a new .lock at the same time.
    import fcntl

    from attnrobust.runlock import _same_file

    with hold_run_lock(tmp_path, is_main=True):
        fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert not _same_file(fd, tmp_path / ".lock")
        with hold_run_lock(tmp_path, is_main=True):  # not blocked by the orphan
            assert read_holder(tmp_path)["pid"] == str(os.getpid())
    finally:
        os.close(fd)


@posix
def test_non_main_rank_takes_no_lock(tmp_path):
    with hold_run_lock(tmp_path, is_main=True):
        with hold_run_lock(tmp_path, is_main=False):  # another rank of the same torchrun job
            pass


@posix
def test_second_process_is_refused_naming_the_first(holder):
    run, first = holder
    second = subprocess.run([sys.executable, "-c", TAKER, str(run)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 2 and second.stdout == ""
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert f"pid {first.pid}" in lines[0] and str(run) in lines[0] and "since" in lines[0]
    assert first.poll() is None  # the holder is untouched


@posix
def test_holder_killed_with_sigkill_does_not_block_the_next_run(holder):
    run, first = holder
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert read_holder(run)["pid"] == str(first.pid)  # its line is still there, but the kernel dropped the lock
    with hold_run_lock(run, is_main=True):
        assert read_holder(run)["pid"] == str(os.getpid())


# ---- env.json: the CPU facts ------------------------------------------------------------------------------------


def test_cpu_facts_name_the_cpu_and_the_isa_torch_uses(tmp_path):
    import json

    import torch

    from attnrobust.runtime import cpu_facts, write_env_json

    facts = cpu_facts()
    assert set(facts) == {"cpu_model", "cpu_capability", "cpu_avx512f"}
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["cpu_avx512f"] in (True, False, None)
    if sys.platform.startswith("linux"):
        flags = [line for line in open("/proc/cpuinfo") if line.startswith(("flags", "Features"))]
        if flags:
            assert facts["cpu_avx512f"] == ("avx512f" in flags[0].split())
    env = write_env_json(tmp_path / "env.json", ["attnrobust", "run"], device="cpu")
    saved = json.loads((tmp_path / "env.json").read_text())
    assert {k: saved[k] for k in facts} == facts
    assert {"torch", "device_name", "threads", "command", "time"} <= set(saved) and saved == env


def test_cpu_facts_without_proc_cpuinfo(monkeypatch):
    from attnrobust import runtime

    monkeypatch.setattr(runtime, "_CPUINFO", "/nonexistent/cpuinfo")
    monkeypatch.setattr(runtime.platform, "processor", lambda: "arm")
    facts = runtime.cpu_facts()
    assert facts["cpu_model"] == "arm" and facts["cpu_avx512f"] is None


# Rank RANK of a 2-process gloo job (as torchrun would start it) that takes the run lock.
RANK = textwrap.dedent("""
    import sys
    import torch.distributed as dist
    from attnrobust.errors import UserError
    from attnrobust.runlock import hold_run_lock
    run, store, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        with hold_run_lock(run, is_main=rank == 0):
            print("locked", flush=True)
    except UserError as err:
        print(f"attnrobust: error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:  # leave together: gloo aborts a process whose peer has gone
        dist.barrier()
        dist.destroy_process_group()
""")


@posix
@pytest.mark.slow
def test_refusal_on_rank_0_stops_every_rank_of_a_torchrun_job(holder, tmp_path):
    # Without agreement, rank 1 would go on alone and wait forever in the job's first collective.
    run, first = holder
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(run), str(tmp_path / "store"), str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=60) for p in ranks]
    assert [p.returncode for p in ranks] == [2, 2], outs
    assert f"pid {first.pid}" in outs[0][1] and "rank 0" in outs[1][1]
    assert all(out == "" for out, _ in outs)


PARENT = textwrap.dedent("""
    import multiprocessing, os, time
    from concurrent.futures import ProcessPoolExecutor
    from attnrobust.runlock import die_with_parent
    if __name__ == "__main__":
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent, initargs=(os.getpid(),))
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 60)
        time.sleep(60)
""")


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whoever adopted it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_worker_dies_with_its_killed_parent(tmp_path):
    import time

    script = tmp_path / "parent.py"  # a file, not -c: spawn's children re-import the main module
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _alive(worker):
            time.sleep(0.05)
        if not _alive(worker):
            return
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
