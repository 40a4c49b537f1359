"""What test_cluster's pool workers run: a module that imports nothing heavy, so that a spawned worker unpickling it
does not import the test module (and through it the study, the report, matplotlib and scipy: 2 s a worker)."""

from __future__ import annotations

import os
import time


def device_of_worker(delay: float) -> tuple[int, str | None]:
    time.sleep(delay)  # long enough that the two jobs run at once, in two processes
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")
