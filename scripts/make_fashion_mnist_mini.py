"""Make the embedded fashion-mnist-mini dataset from the real Fashion-MNIST files.

A class-balanced random subset (default 600 train + 100 test images per class, seed 0), kept in the original
file order, written with np.savez_compressed to src/attnrobust/embedded/fashion-mnist-mini.npz:
train_images/test_images uint8 [N,1,28,28], train_labels/test_labels uint8 [N], and for provenance
train_indices/test_indices (positions in the official files), source_files and source_md5 (the official MD5s of
the four files it was made from, each checked before use) and seed. Rerunning with the same arguments writes the
same arrays.

    python scripts/make_fashion_mnist_mini.py [--source ../shared/data/fashion-mnist]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from attnrobust import data
from attnrobust.errors import UserError
from attnrobust.runtime import atomic_path

REPO = Path(__file__).resolve().parents[1]


def subset(labels: np.ndarray, per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `per_class` samples of each class, drawn without replacement."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(picks))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "fashion-mnist",
                   help="folder with the four official Fashion-MNIST .gz files")
    p.add_argument("--out", type=Path, default=REPO / "src" / "attnrobust" / "embedded" / "fashion-mnist-mini.npz")
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    spec = data.get_spec("fashion-mnist")
    try:
        paths = {}
        for src in spec.files:
            paths[src.name] = args.source / src.name
            if not paths[src.name].is_file():
                raise UserError(f"{paths[src.name]} not found; pass --source FOLDER holding the official files")
            data.check_md5(paths[src.name], src.md5, spec.name)
        arrays = spec.reader(spec, paths)
    except UserError as err:
        print(f"make_fashion_mnist_mini: error: {err}", file=sys.stderr)
        return 2

    rng = np.random.default_rng(args.seed)
    out = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        idx = subset(arrays[f"{split}_labels"], per_class, spec.num_classes, rng)
        out[f"{split}_images"] = arrays[f"{split}_images"][idx]
        out[f"{split}_labels"] = arrays[f"{split}_labels"][idx]
        out[f"{split}_indices"] = idx.astype(np.int32)
    out["source_files"] = np.array([src.name for src in spec.files])
    out["source_md5"] = np.array([src.md5 for src in spec.files])
    out["seed"] = np.array(args.seed, dtype=np.int64)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): "
          f"{len(out['train_labels'])} train, {len(out['test_labels'])} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
