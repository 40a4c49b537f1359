"""Re-score a published study's corruption records from its committed checkpoints, after the images of some
corruptions changed (attnrobust.corruptions), replacing those records in results.jsonl line for line.

For each checkpoint given (default: every one in PUBLISHED/checkpoints), its model is scored on the corruptions
named, at the config's severities, on the images the study scored them on (eval.corruption_images: the strong
subset or all attacked images, as jobs.run_attack_job), and each such record's line is replaced in place: same
position, same keys in the same order, only the measured values (counts, ratios, robust_bits) new. Every other
line keeps its bytes, so a branch that appends records to the same file merges cleanly. The clean outcomes must
equal the stored ones bit for bit (same model, same images, same order), or the script stops before writing.
The file is rewritten atomically after each checkpoint; rebuild the report afterwards:

    python scripts/rescore_corruptions.py results/fashion-mnist-cpu-stride2 --corruptions glass_blur shear scale \\
        rotate canny_edges \\
        [--checkpoints results/fashion-mnist-cpu-stride2/checkpoints/fashion-mnist-resnet14-s0-w8.safetensors]
    python scripts/rebuild_published.py results/fashion-mnist-cpu-stride2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from attnrobust.checkpoint import load_model, read_meta
from attnrobust.config import load_config, point_of_train
from attnrobust.data import DeviceLoader
from attnrobust.errors import UserError
from attnrobust.evaluate import corruption_scores
from attnrobust.jobs import _test_images
from attnrobust.results import record_key, with_cell
from attnrobust.runtime import atomic_write

# What a re-scoring must leave as it was: the same images, the same model, the same clean outcomes.
UNCHANGED = ("dataset", "seed", "source", "target", "images", "n", "target_clean_correct", "source_clean_correct",
             "both_clean_correct", "clean_accuracy", "clean_bits", "corruption_family")


def rescore(published: Path, checkpoint: Path, names: list[str], data_dir) -> int:
    """Replace the records of `checkpoint`'s model for the corruptions `names`; the number of lines replaced."""
    cfg = load_config(published / "config.toml")
    meta = read_meta(checkpoint)
    dataset, seed, name = meta["dataset"], meta["seed"], meta["train"]["model"]
    everything, subset = _test_images(cfg, dataset, data_dir)
    x, y, images = everything if cfg.eval.corruption_images == "all" else subset
    loader = DeviceLoader(x, y, batch_size=cfg.eval.batch_size)
    fresh = corruption_scores({name: load_model(checkpoint)}, loader, replace(cfg.attack, corruptions=names),
                              dataset=dataset, seed=seed, quiet=True, images=images)
    fresh = {record_key(r): r for r in with_cell(fresh, meta["regime"], point_of_train(meta["train"], cfg.axes_of()))}
    path = published / "results.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    replaced = 0
    for i, line in enumerate(lines):
        old = json.loads(line)
        new = fresh.pop(record_key(old), None) if old.get("attack") == "corruption" else None
        if new is None:
            continue
        if set(new) - set(old) or any(old[k] != new[k] for k in UNCHANGED):
            raise SystemExit(f"{path}:{i + 1}: the re-scored record does not match the stored one outside its "
                             f"measured values ({checkpoint.name}); nothing written")
        lines[i] = json.dumps({k: new.get(k, old[k]) for k in old}, allow_nan=False) + "\n"
        replaced += 1
    if fresh:
        raise SystemExit(f"{path}: no stored record for {len(fresh)} re-scored ones of {checkpoint.name} (e.g. "
                         f"{next(iter(fresh))}); nothing written")
    atomic_write(path, "".join(lines))
    return replaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("published", type=Path, help="a published folder, e.g. results/fashion-mnist-cpu-stride2")
    parser.add_argument("--corruptions", nargs="+", required=True, help="the corruptions whose images changed")
    parser.add_argument("--checkpoints", nargs="+", type=Path, help="default: all of PUBLISHED/checkpoints")
    parser.add_argument("--data-dir", help="where the dataset files are (default: ATTNROBUST_DATA, as the study)")
    args = parser.parse_args()
    try:
        for checkpoint in args.checkpoints or sorted((args.published / "checkpoints").glob("*.safetensors")):
            print(f"{checkpoint.name}: {rescore(args.published, checkpoint, args.corruptions, args.data_dir)} "
                  f"records replaced", flush=True)
    except UserError as err:  # a missing file, an unknown corruption name: one line, as the CLI
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
