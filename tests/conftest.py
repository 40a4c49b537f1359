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


def use_placeholder_figures(patch: pytest.MonkeyPatch) -> None:
    """Drawing a report's PNGs (matplotlib) costs about half a second per figure, several seconds per study run:
    most of what an end-to-end test of a tiny study spends in its report. Here each figure becomes an empty file
    in its place (the report still prepares every figure's data, checked here, and links it)."""
    from attnrobust.report import figures

    def placeholder_curves(path, title, panels):
        for panel in panels:
            for s in panel.series:
                lengths = {len(v) for v in (s.x, s.y, s.err, s.low, s.high) if v is not None}
                assert s.x and lengths == {len(s.x)}, f"{title}: {panel.title}: {s.label}: unequal lengths"
        Path(path).write_bytes(b"")

    def placeholder_attention(path, checkpoint, eps, count=6):
        Path(path).write_bytes(b"")
        return f"attention maps of {Path(checkpoint).name} (not drawn in this test)"

    def placeholder_small_multiples(path, title, panels, columns=5):
        placeholder_curves(path, title, panels)

    def placeholder_image_grid(path, title, rows, row_labels, col_labels):
        assert len(rows) == len(row_labels) and all(len(r) == len(col_labels) for r in rows), title
        Path(path).write_bytes(b"")

    patch.setattr(figures, "curves", placeholder_curves)
    patch.setattr(figures, "small_multiples", placeholder_small_multiples)
    patch.setattr(figures, "image_grid", placeholder_image_grid)
    patch.setattr(figures, "attention_figure", placeholder_attention)


@pytest.fixture(autouse=True)
def _figures_drawn_only_where_tested(request, monkeypatch):
    """Placeholder figures, except in tests marked `figures`, which draw them for real (test_report.py: every kind
    of line, band and error bar; a whole report, byte for byte twice; the attention maps)."""
    if not request.node.get_closest_marker("figures"):
        use_placeholder_figures(monkeypatch)


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"real dataset files not found at {SHARED_DATA} (they sit beside the repo in CI)")
    return SHARED_DATA


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A data folder with tiny CIFAR-10/100 archives in the official binary format and a link to the real
    Fashion-MNIST files (when they are at hand): what the full-width smoke tests of the shipped configs read."""
    from test_data import fake_cifar, use

    monkeypatch.setenv("ATTNROBUST_MIRROR", "http://127.0.0.1:9/")  # a missing file fails, never downloads
    root = tmp_path / "data"
    for name in ("cifar10", "cifar100"):
        # 5 training images: CIFAR-10 spreads its training split over five batch files, none may be empty
        spec, _, _ = fake_cifar(root / name, name, n_train=5, n_test=2)
        use(monkeypatch, spec)  # the fake archives' MD5s and sizes, for this test only
    if (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
        (root / "fashion-mnist").symlink_to(SHARED_DATA / "fashion-mnist", target_is_directory=True)  # read only
    return root


os.environ.setdefault("MPLBACKEND", "Agg")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N runs N test processes side by side: one thread each (and in what they start), or their
    # OpenMP threads oversubscribe the cores and every process runs many times slower.
    os.environ.setdefault("ATTNROBUST_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)

# The test files that take longest (pytest --durations, README "Tests"), longest first. pytest -n 2 --dist
# loadfile hands whole files to the two workers in collection order; starting the long ones first (the longest-
# processing-time-first rule) keeps both workers busy to the end instead of leaving one long file to run alone.
LONGEST_FIRST = ["test_cluster.py", "test_fullsize_configs.py", "test_train.py", "test_fullsize_paper.py",
                 "test_study.py", "test_study_axes.py", "test_stats.py", "test_evaluate.py", "test_power.py",
                 "test_report.py", "test_adversarial_training.py", "test_attacks_reference.py", "test_models.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # stable: within a file, and among the other files, the collection order stays
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
