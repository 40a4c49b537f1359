"""The tiny study's results.jsonl, for a refactor's "same bytes before and after" check.

    python scripts/tiny_bytes.py OUT [--workers 2]     # runs the tests' TINY quick study into OUT, prints sha256

Run it from two checkouts (before and after a change) with the same torch and thread count and compare the
printed digests (or the files): a change that claims to leave behaviour alone must leave them equal.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_study import TINY  # noqa: E402  (the tests' tiny overrides: one list, not a copy)

from attnrobust.study import run_study  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    os.environ.setdefault("ATTNROBUST_CACHE", str(args.out.parent / "cache"))
    overrides = [o for o in TINY if not o.startswith("eval.workers")] + [f"eval.workers={args.workers}"]
    run_study("quick", out=args.out, overrides=overrides, quiet=True)
    print(hashlib.sha256((args.out / "results.jsonl").read_bytes()).hexdigest(), args.out / "results.jsonl")


if __name__ == "__main__":
    main()
