"""The datasets by name: the built-in ones (DATASETS, each a spec plus its reader) and get_spec, which also resolves
the user's own datasets (DIR/NAME.npz or DIR/NAME/ in the data directory) into a spec, decoding them once into the
cache to learn their classes, size and mean/std."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from attnrobust.data.cache import chosen_data_dir, read_decoded, user_cache_path, write_decoded
from attnrobust.data.readers import SPLITS, read_cifar, read_fashion_mnist, read_image_folder, read_user_npz
from attnrobust.data.specs import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_CLASSES, CIFAR100_MEAN,
                                   CIFAR100_STD, FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                   Arrays, DatasetSpec, SourceFile)
from attnrobust.errors import UserError

# ---- the datasets --------------------------------------------------------------------------------------------

_FASHION_CITATION = ("Fashion-MNIST (Zalando SE, MIT licence): H. Xiao, K. Rasul, R. Vollgraf, arXiv:1708.07747, "
                     "2017")
_CIFAR_CITATION = ("A. Krizhevsky, Learning Multiple Layers of Features from Tiny Images, Tech. Report, "
                   "University of Toronto, 2009")

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", num_classes=10, channels=1, height=28, width=28,
        class_names=FASHION_MNIST_CLASSES, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, augment="crop",
        train_size=60000, test_size=10000,
        files=(SourceFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
               SourceFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
               SourceFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
               SourceFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
        urls=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
              "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        reader=read_fashion_mnist, citation=_FASHION_CITATION),
    "fashion-mnist-mini": DatasetSpec(
        name="fashion-mnist-mini", num_classes=10, channels=1, height=28, width=28,
        class_names=FASHION_MNIST_CLASSES, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, augment="crop",
        train_size=6000, test_size=1000, embedded="fashion-mnist-mini.npz",
        citation="600 train + 100 test images per class of " + _FASHION_CITATION),
    "cifar10": DatasetSpec(
        name="cifar10", num_classes=10, channels=3, height=32, width=32,
        class_names=CIFAR10_CLASSES, mean=CIFAR10_MEAN, std=CIFAR10_STD, augment="crop_flip",
        train_size=50000, test_size=10000,
        files=(SourceFile("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),),
        urls=("https://www.cs.toronto.edu/~kriz/",),
        reader=functools.partial(read_cifar, folder="cifar-10-batches-bin",
                                 train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                                 test=("test_batch.bin",), label_bytes=1, names_file="batches.meta.txt"),
        citation="CIFAR-10: " + _CIFAR_CITATION),
    "cifar100": DatasetSpec(
        name="cifar100", num_classes=100, channels=3, height=32, width=32,
        class_names=CIFAR100_CLASSES, mean=CIFAR100_MEAN, std=CIFAR100_STD, augment="crop_flip",
        train_size=50000, test_size=10000,
        files=(SourceFile("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),),
        urls=("https://www.cs.toronto.edu/~kriz/",),
        reader=functools.partial(read_cifar, folder="cifar-100-binary", train=("train.bin",),
                                 test=("test.bin",), label_bytes=2, names_file="fine_label_names.txt"),
        citation="CIFAR-100 (fine labels): " + _CIFAR_CITATION),
}


def get_spec(name: str, data_dir: Path | str | None = None) -> DatasetSpec:
    """The spec of a dataset by name: a built-in one, else the user's DIR/NAME.npz or DIR/NAME/ in the data
    directory (data_dir, else $ATTNROBUST_DATA), decoded (or read from the cache) to learn its classes, size and
    mean/std. An unknown name is a UserError listing the valid ones and where a user dataset was looked for."""
    if name in DATASETS:
        return DATASETS[name]
    source = _user_source(name, data_dir)
    if source is None:
        root = chosen_data_dir(data_dir)
        where = (f"no {root / (str(name) + '.npz')} or {root / str(name)}/ either" if root is not None and
                 isinstance(name, str) else "for your own data, give --data-dir or set $ATTNROBUST_DATA")
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}, or your own as "
                        f"DIR/NAME.npz or DIR/NAME/{{train,test}}/CLASS/*.png in the data directory ({where})")
    return user_dataset(name, source)[0]


# ---- the user's own datasets -------------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def _user_source(name: str, data_dir: Path | str | None) -> Path | None:
    """DIR/NAME.npz or the folder DIR/NAME/ (holding train/ and test/), else None."""
    root = chosen_data_dir(data_dir)
    if root is None or not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        return None  # a name with a path in it could read files outside the data directory
    if (root / f"{name}.npz").is_file():
        return (root / f"{name}.npz").resolve()
    if (root / name / "train").is_dir() or (root / name / "test").is_dir():
        return (root / name).resolve()
    return None


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of pixels in [0, 1] over a uint8 N x C x H x W array, in chunks (no float copy of
    the whole split)."""
    c = x.shape[1]
    total, squares, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(x), 4096):
        chunk = x[start:start + 4096].astype(np.float64).transpose(1, 0, 2, 3).reshape(c, -1) / 255
        total += chunk.sum(1)
        squares += (chunk * chunk).sum(1)
        count += chunk.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0))
    # A constant channel has std 0; normalizing by it would divide by zero, so it is left unscaled (std 1).
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    return sorted(p for split in SPLITS if (source / split).is_dir() for p in (source / split).rglob("*")
                  if p.is_file())


def _source_stamp(source: Path) -> str:
    """Sizes and mtimes of every source file: cheap (no reading), changes when any file does."""
    h = hashlib.md5()
    for p in _source_files(source):
        st = p.stat()
        h.update(f"{p.relative_to(source.parent)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _source_md5(source: Path) -> str:
    h = hashlib.md5()
    for p in _source_files(source):
        h.update(f"{p.relative_to(source.parent)}\n".encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def decode_user(name: str, source: Path) -> tuple[DatasetSpec, Arrays]:
    arrays, names = read_user_npz(source) if source.is_file() else read_image_folder(source)
    spec = _user_spec(name, source, arrays, names, _channel_stats(arrays["train_images"]))
    return spec, arrays


def _user_spec(name: str, source: Path, arrays: Arrays, names: tuple[str, ...], stats) -> DatasetSpec:
    _, c, h, w = arrays["train_images"].shape
    return DatasetSpec(name=name, num_classes=len(names), channels=c, height=h, width=w, class_names=names,
                       mean=stats[0], std=stats[1], augment="crop", train_size=len(arrays["train_labels"]),
                       test_size=len(arrays["test_labels"]), citation=f"your own dataset, from {source}",
                       source=str(source))


# In-process memo: (source, stamp) -> spec. get_spec runs several times per job; each is then a stat per file.
_USER_SPECS: dict[tuple[str, str], DatasetSpec] = {}


def user_dataset(name: str, source: Path) -> tuple[DatasetSpec, Callable[[], Arrays]]:
    """(spec, a function returning the arrays) of a user dataset, decoding it only when the cache is stale."""
    stamp = _source_stamp(source)
    cache = user_cache_path(name, source)
    keys = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]

    def cached_arrays() -> Arrays:
        arrays = read_decoded(cache, keys)
        if arrays is None:  # removed since: decode again
            arrays = decode_user(name, source)[1]
        return arrays

    if (str(source), stamp) in _USER_SPECS:
        return _USER_SPECS[(str(source), stamp)], cached_arrays
    found = read_decoded(cache, ["meta"])
    meta = json.loads(str(found["meta"])) if found is not None else None
    if meta is not None and meta.get("stamp") != stamp and meta.get("md5") == _source_md5(source):
        meta["stamp"] = stamp  # touched or copied, same bytes: the cached arrays stand
    if meta is not None and meta.get("stamp") == stamp:
        spec = DatasetSpec(**{**meta["spec"], "class_names": tuple(meta["spec"]["class_names"]),
                              "mean": tuple(meta["spec"]["mean"]), "std": tuple(meta["spec"]["std"])})
        _USER_SPECS[(str(source), stamp)] = spec
        return spec, cached_arrays
    spec, arrays = decode_user(name, source)
    fields = {k: getattr(spec, k) for k in ("name", "num_classes", "channels", "height", "width", "class_names",
                                            "mean", "std", "augment", "train_size", "test_size", "citation",
                                            "source")}
    meta = {"stamp": stamp, "md5": _source_md5(source), "spec": fields}
    write_decoded(cache, {**arrays, "meta": np.array(json.dumps(meta))})
    _USER_SPECS[(str(source), stamp)] = spec
    return spec, lambda: arrays
