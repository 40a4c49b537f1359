"""Start-up: what a fresh Python process pays before it does any work, ours against its baseline, in one run.

    python benchmarks/startup.py [--repeats 5]

Each line starts a new interpreter (as a study's worker, a Slurm job or a user's shell does) and times it to exit:
  - a study worker imports attnrobust.jobs (what the pool and submitit unpickle), against attnrobust.study (what a
    worker imported before the jobs left it: the study also loads the report, matplotlib and scipy.stats);
  - `attnrobust ls` and a config with a mistake in it, against the same baseline (both loaded the study's modules
    first: torch, the report); importing torch alone is shown beside them;
  - the baseline of them all: `python -c pass`.
Times are the median over interleaved repeats, in seconds; the ratio is baseline / ours.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seconds(code: str, cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode not in (0, 2):  # 2: the bad config, answered as a user error
        raise SystemExit(f"{code!r} failed: {done.stderr.strip()}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        cases = {
            "python -c pass": "pass",
            "worker: import attnrobust.jobs": "import attnrobust.jobs",
            "before: import attnrobust.study": "import attnrobust.study",
            "attnrobust ls": f"from attnrobust.cli import main; main(['ls', {tmp!r}])",
            "attnrobust run missing.toml": "from attnrobust.cli import main; main(['run', 'missing.toml'])",
            "before: import torch": "import torch",
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved: a busy moment slows every case alike
            for name, code in cases.items():
                times[name].append(seconds(code, cwd))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in median.items():
        print(f"{name:<34} {t:6.2f} s")
    before = median["before: import attnrobust.study"]
    for name in ("worker: import attnrobust.jobs", "attnrobust ls", "attnrobust run missing.toml"):
        print(f"{name}: {before / median[name]:.1f}x faster than importing the study first "
              f"({before - median[name]:.2f} s saved per process)")


if __name__ == "__main__":
    main()
