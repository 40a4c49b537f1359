"""Shared test fixtures: tmp caches so tests never touch the user's cache, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real dataset files: in a developer's checkout and in CI they sit beside the repo; a user's fresh clone
# has none, and tests that need them skip.
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty attnrobust cache (decoded datasets, downloads)."""
    monkeypatch.setenv("ATTNROBUST_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("ATTNROBUST_DATA", raising=False)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"real dataset files not found at {SHARED_DATA} (they sit beside the repo in CI)")
    return SHARED_DATA


os.environ.setdefault("MPLBACKEND", "Agg")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N runs N test processes side by side: one thread each (and in what they start), or their
    # OpenMP threads oversubscribe the cores and every process runs many times slower.
    os.environ.setdefault("ATTNROBUST_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)
