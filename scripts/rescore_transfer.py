"""Score a finished study's transfer attacks on the other seeds' targets (eval.transfer_sources = "other-seeds")
from its committed checkpoints, and add those records to its results.jsonl.

Each attack job of the study (a source model and seed) is run again with its transfer attacks only
(jobs.run_attack_job(transfer_only=True)): the attacks are crafted once on the source, exactly as the study did,
and scored on its own seed's models and on every other seed's models of another architecture. The records whose
target was trained with another seed (results.is_cross_seed) are appended to results.jsonl, replacing any of that
job's earlier ones; the job's same-seed transfer records are replaced in place by the ones crafted again (so the
two designs are compared on one machine's floats; how many images changed is printed: on another CPU a few
near the decision boundary flip); every other record stays as it was, line for line.

Run it per source so a shared machine gets turns (a job is written whole, atomically; a rerun skips jobs whose
cross-seed records are in the file):

    python scripts/rescore_transfer.py results/fashion-mnist-cpu-stride2 --source vgg16_bn@3
    python scripts/rescore_transfer.py results/fashion-mnist-cpu-stride2            # every job not yet re-scored
then rebuild the report: python scripts/rebuild_published.py results/fashion-mnist-cpu-stride2 --recheck
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from attnrobust.config import load_config
from attnrobust.errors import UserError
from attnrobust.jobs import plan, run_attack_job
from attnrobust.results import attack_job_of, is_cross_seed, read_records, record_key, unpack_bits, write_records


def rescore(folder: Path, sources: list[str], data_dir=None) -> None:
    cfg = load_config(folder / "config.toml", (), data_dir)
    cfg = replace(cfg, eval=replace(cfg.eval, transfer_sources="other-seeds"))
    jobs = [j for j in plan(cfg) if j.kind == "attack"]
    if sources:
        wanted = {(m, int(s)) for m, _, s in (x.rpartition("@") for x in sources)}
        jobs = [j for j in jobs if (j.model, j.seed) in wanted]
        if not jobs:
            raise UserError(f"no attack job of {folder} matches {', '.join(sources)} (give MODEL@SEED)")
    for job in jobs:
        records = read_records(folder / "results.jsonl")
        if any(is_cross_seed(r) and attack_job_of(r) == job.key for r in records):
            print(f"skip  {job} (re-scored already)")
            continue
        started = time.perf_counter()
        fresh = run_attack_job(cfg, job, folder, data_dir=data_dir, quiet=True, transfer_only=True)
        again = {record_key(r): r for r in fresh if r["kind"] == "transfer" and not is_cross_seed(r)}
        cross = [r for r in fresh if is_cross_seed(r)]
        # the job's same-seed transfer records are replaced in place by the ones crafted again (the same machine
        # as the cross-seed ones: the design comparison then sees one CPU's floats), its cross-seed ones appended
        out, changed = [], []
        for r in records:
            if is_cross_seed(r) and attack_job_of(r) == job.key:
                continue
            new = again.get(record_key(r)) if r["kind"] == "transfer" else None
            if new is not None:
                changed.append(int((unpack_bits(r["robust_bits"], r["n"])
                                    != unpack_bits(new["robust_bits"], new["n"])).sum()))
                new = {**new, "flags": r["flags"]}  # recomputed by sanity_flags on the whole set (--recheck)
            out.append(r if new is None else new)
        write_records(folder / "results.jsonl", out + cross)
        print(f"done  {job}: {len(cross)} cross-seed records; {len(changed)} same-seed transfer records crafted "
              f"again, {sum(c > 0 for c in changed)} differing from the stored ones, on at most "
              f"{max(changed, default=0)} images ({time.perf_counter() - started:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path,
                        help="a published study with checkpoints/, e.g. results/fashion-mnist-cpu-stride2")
    parser.add_argument("--source", action="append", default=[], help="MODEL@SEED: only this attack job (repeatable)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    try:
        rescore(args.folder, args.source, args.data_dir)
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
