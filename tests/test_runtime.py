"""Runtime helpers: device names, atomic writes, env.json, distributed defaults."""

import json
import os
import stat

import pytest
import torch
from conftest import REPO

from attnrobust.distributed import dist_info, is_main
from attnrobust.errors import UserError
from attnrobust.runtime import (atomic_path, atomic_write, portable_command, resolve_device, seed_everything,
                                set_threads, write_env_json)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, "one")
    atomic_write(path, b"two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_atomic_write_gives_the_mode_a_plain_write_gives(tmp_path):
    # mkstemp's 0600 must not survive the rename: a run folder or data directory may be shared by a group.
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_seed_everything_repeats():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_env_json(tmp_path):
    set_threads()
    env = write_env_json(tmp_path / "env.json", ["attnrobust", "train"], device="cpu")
    saved = json.loads((tmp_path / "env.json").read_text())
    assert saved == env
    assert saved["command"] == ["attnrobust", "train"]
    assert saved["threads"] == torch.get_num_threads()
    for key in ("torch", "python", "attnrobust", "device", "git_commit", "time"):
        assert key in saved


def test_env_json_command_has_no_machine_paths(tmp_path, monkeypatch):
    """env.json's command as a user would retype it: the program by name, paths relative to the working directory
    or the run folder where inside them, else their names; everything else as typed."""
    work, run = tmp_path / "work", tmp_path / "runs" / "r1"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [str(tmp_path / "venv/bin/attnrobust"), "run", "quick", "--out", str(run), "--data-dir", "../data/fmnist",
            "--config", str(run / "config.toml"), "--set", f'verdict.pilot="{work / "results/pilot"}"',
            f"--out={work / 'runs/r2'}", "--set", "train.epochs=3", "results/x", "/"]
    saved = write_env_json(run / "env.json", argv, device="cpu")["command"]
    assert saved == ["attnrobust", "run", "quick", "--out", "r1", "--data-dir", "fmnist", "--config",
                     "r1/config.toml", "--set", 'verdict.pilot="results/pilot"', "--out=runs/r2", "--set",
                     "train.epochs=3", "results/x", "/"]
    assert not any(str(tmp_path) in arg for arg in saved)
    assert portable_command(saved) == saved  # idempotent: a published env.json may pass through it again
    # python -m attnrobust: argv[0] is the package's __main__.py
    assert portable_command([str(tmp_path / "src/attnrobust/__main__.py"), "ls"]) == ["attnrobust", "ls"]
    assert portable_command([]) == []


def test_published_env_json_has_no_machine_paths():
    # scripts/rebuild_published.py rewrites them so; a run published by copying its folder must be too
    for env in sorted(REPO.glob("results/*/env.json")):
        command = json.loads(env.read_text())["command"]
        assert portable_command(command) == command and not any(os.path.isabs(a) for a in command), env


def test_not_distributed_by_default(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist_info() == (0, 1, 0)
    assert is_main()


@pytest.mark.parametrize("value", ["0", "-2", "four"])
def test_bad_thread_count_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv("ATTNROBUST_THREADS", value)
    before = torch.get_num_threads()
    with pytest.raises(UserError, match=f"ATTNROBUST_THREADS='{value}': must be a positive integer"):
        set_threads()
    assert torch.get_num_threads() == before


def test_thread_count_from_the_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("ATTNROBUST_THREADS", "1")
    try:
        assert set_threads() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
