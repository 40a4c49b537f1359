"""Rebuild a published study's report in place (results/NAME/) from its committed records, with the current code.

A published folder is a run folder's report flattened beside the run's results.jsonl, config.toml, env.json,
power_plan.md, logs/ and, where they are committed, checkpoints/. This rebuilds the report in a temporary run folder
of the same name (the report's title) and puts its files back: every file the report writes (README.md, the tables,
verdicts, margin sensitivity, paired, paper-comparison and like-for-like files, interactions, width trend and
slopes) and figures/ (the attention maps are drawn again where checkpoints/ is there and the
dataset files are found, e.g. with ATTNROBUST_DATA; otherwise the ones the original run drew are kept). env.json's
command is rewritten as a user would retype it (runtime.portable_command: no machine paths in a published file).

--recheck rewrites results.jsonl through evaluate.sanity_flags first, as a study does whenever it writes records:
the cross-record flags are recomputed and each stored minimal eps is lowered to any recorded attack's radius that
broke the image (evaluate.tighten_minimal), so the records meet the current contract without rerunning anything.

    python scripts/rebuild_published.py results/fashion-mnist-cpu [--recheck]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from attnrobust.evaluate import sanity_flags
from attnrobust.report import build_report
from attnrobust.results import read_records, write_records
from attnrobust.runtime import atomic_write, portable_command

RUN_FILES = ("results.jsonl", "config.toml", "env.json", "power_plan.md")


def rebuild(published: Path, recheck: bool) -> None:
    if recheck:
        write_records(published / "results.jsonl", sanity_flags(read_records(published / "results.jsonl")))
    if (published / "env.json").is_file():  # written before commands were portable: made so now (idempotent)
        env = json.loads((published / "env.json").read_text())
        env["command"] = portable_command(env.get("command", []))
        atomic_write(published / "env.json", json.dumps(env, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / published.resolve().name
        run.mkdir()
        for name in RUN_FILES:
            if (published / name).exists():
                shutil.copy2(published / name, run / name)
        if (published / "checkpoints").is_dir():
            (run / "checkpoints").symlink_to((published / "checkpoints").resolve())
        report = build_report(run)
        for path in report.iterdir():
            target = published / path.name
            if path.is_dir():  # figures/: the ones drawn from checkpoints (attention maps) stay as first built
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                shutil.copy2(path, target)
    print(f"rebuilt {published}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="published folders, e.g. results/fashion-mnist-cpu")
    parser.add_argument("--recheck", action="store_true", help="recompute flags and tighten minimal eps first")
    args = parser.parse_args()
    for folder in args.folders:
        rebuild(folder, args.recheck)


if __name__ == "__main__":
    main()
