"""The `paper` config end to end at full width: every dataset x model of the paper (see test_fullsize_configs.py).

A file of its own so that the test runner can run it beside the other slow files (pytest -n, --dist loadfile).
"""

from __future__ import annotations

import pytest

from test_fullsize_configs import _run_end_to_end


@pytest.mark.slow
def test_paper_config_runs_end_to_end_at_full_width(data_dir, tmp_path):
    _run_end_to_end("paper", data_dir, tmp_path / "run")
