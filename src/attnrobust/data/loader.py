"""Datasets: specs, readers of the official files, download and MD5 verification, a decoded cache, and the
device-resident loader.

Where a dataset's files are looked for, first hit wins:

1. the data directory: the `data_dir` argument (`--data-dir`), else $ATTNROBUST_DATA; as DIR/<name>/<file> or
   DIR/<file> (so both `--data-dir ../shared/data` and `--data-dir ../shared/data/fashion-mnist` work);
2. the user cache: $ATTNROBUST_CACHE, else $XDG_CACHE_HOME/attnrobust, else ~/.cache/attnrobust; as
   CACHE/<name>/<file>;
3. a download from the official URL ($ATTNROBUST_MIRROR replaces it: MIRROR/<file>) into CACHE/<name>/, written
   under a temporary name, MD5-checked, then renamed; a failed download leaves nothing behind.

Only official distribution files are read: Fashion-MNIST's four IDX .gz files, and for CIFAR-10/100 the *binary*
archives (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz), read straight from the .tar.gz. Reading the archive
rather than extracted copies is deliberate: the archive is what has a published MD5, so every byte we decode has
been checked. (The pickled "python version" of CIFAR is never read: no pickle anywhere.)

Decoded once, the arrays are cached as CACHE/decoded/<name>-<key>.npz (uint8, no pickle), where <key> is derived
from the sources' MD5s, so different source bytes can never be served from a stale cache. The cache also records
each source's path, size and mtime when it was hashed: a later load whose sources are unchanged by those
measures skips re-hashing (hashing the 170 MB CIFAR archive alone takes about half a second) and takes well
under a second. `attnrobust data verify` always hashes in full.

`fashion-mnist-mini` is embedded in the package (attnrobust/embedded/fashion-mnist-mini.npz, made from the real
files by scripts/make_fashion_mnist_mini.py): no download, no data directory.

The user's own datasets: a name that is not built in is looked up in the data directory (`data_dir` or
$ATTNROBUST_DATA) as either
- DIR/NAME.npz holding uint8 x_train, x_test (N x H x W x C or N x C x H x W, C = 1 or 3, detected; or N x H x W
  for grey) and integer y_train, y_test (labels 0..C-1, every class present in the training split), optionally
  class_names (strings; no pickle: np.savez of a str array is fine); or
- a folder DIR/NAME/train/CLASS/*.png and DIR/NAME/test/CLASS/*.png (8-bit grey or RGB, not interlaced; classes
  are the sorted folder names, the same in both splits; label = index in that order).
Its spec (classes, channels, size, per-channel mean/std over the training split) is computed when it is first
decoded; images keep their size (no resizing, no padding); training augments with random crops (no flips: whether
a mirror image keeps its label is the user's knowledge, not ours). The decoded arrays are cached as
CACHE/decoded/user-NAME-<key of the source path>.npz (never next to the input files) with the sources' sizes and
mtimes and an MD5 of their bytes: unchanged sources are served from the cache, changed bytes are decoded again.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import json
import math
import os
import re
import struct
import tarfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnrobust.errors import UserError
from attnrobust.runtime import atomic_path

SPLITS = ("train", "test")
AUGMENTATIONS = (None, "crop", "crop_flip")
# Random-crop padding in pixels: the standard CIFAR recipe (pad 4, crop back to 32).
CROP_PAD = 4

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The 100 fine labels in the order of the archive's fine_label_names.txt (alphabetical = label index).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# Per-channel mean/std of pixel values in [0,1] over all pixels of the training split (what the models use to
# normalize inside themselves).
# Fashion-MNIST: computed here from the official train-images-idx3-ubyte.gz (60000 images): 0.2860 / 0.3530.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
# CIFAR-10/100: the standard values over the 50000 training images (the dataset-wide pixel std; the other
# triple often quoted for CIFAR-10, (0.2023, 0.1994, 0.2010), is an average of per-image stds, not this).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

# Arrays = {"train_images": uint8 [N,C,H,W], "train_labels": uint8 [N], "test_images": ..., "test_labels": ...}
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class SourceFile:
    """One official distribution file and its official MD5."""

    name: str
    md5: str


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is (shape, classes, normalization, augmentation) and where its bytes come from.

    A dataset is a spec plus a reader: `reader(spec, paths)` turns the verified source files (file name -> Path)
    into uint8 arrays; `embedded` names a file in attnrobust/embedded/ instead of source files.
    """

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # "crop" | "crop_flip": what training applies (DeviceLoader's augment)
    train_size: int
    test_size: int
    files: tuple[SourceFile, ...] = ()
    urls: tuple[str, ...] = ()  # official base URLs, tried in order; a file's URL is base + file name
    reader: Callable[[DatasetSpec, dict[str, Path]], Arrays] | None = field(default=None, compare=False,
                                                                            repr=False)
    embedded: str | None = None
    citation: str = ""
    source: str | None = None  # a user dataset's .npz file or image folder (see the module docstring)

    def size(self, split: str) -> int:
        return self.train_size if split == "train" else self.test_size


# ---- errors: one line each, saying what, where and what to do ------------------------------------------------


def _malformed(path: Path | str, problem: str) -> UserError:
    return UserError(f"{path}: {problem}; the file is damaged or not the official one: delete it and download "
                     f"it again")


def _download_hint(spec: DatasetSpec, name: str) -> str:
    urls = " or ".join(base + name for base in _base_urls(spec))
    return f"download it from {urls} or run `attnrobust data download {spec.name}`"


# ---- readers: official formats -> uint8 arrays ---------------------------------------------------------------


def _gunzip(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return gzip.decompress(f.read())
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise _malformed(path, f"not a complete gzip file ({err})") from None


def read_idx(path: Path | str, ndim: int | None = None) -> np.ndarray:
    """Read a gzipped IDX file of uint8 (Fashion-MNIST's format) into an array of the shape its header gives.

    Checks the magic (0x000008NN: uint8 data, NN dimensions), that ndim matches when given, and that the data is
    exactly as long as the dimensions say: a truncated or padded file is an error, never a short dataset.
    """
    path = Path(path)
    raw = _gunzip(path)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or (ndim is not None and raw[3] != ndim):
        want = f"0x000008{ndim:02x}" if ndim is not None else "0x000008NN"
        found = f"0x{raw[:4].hex()}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise _malformed(path, f"bad IDX magic {found} (expected {want}: uint8 data)")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise _malformed(path, f"IDX header truncated ({len(raw)} bytes)")
    dims = struct.unpack(f">{raw[3]}I", raw[4:header])
    expected = math.prod(dims)
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise _malformed(path, f"IDX data {state}: {len(raw) - header} bytes, header dims {dims} need {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _check_split(spec: DatasetSpec, split: str, images: np.ndarray, labels: np.ndarray, where: str) -> None:
    shape = (spec.size(split), spec.channels, spec.height, spec.width)
    if images.shape != shape or labels.shape != (shape[0],):
        raise _malformed(where, f"{split} split has images {tuple(images.shape)} and labels "
                                f"{tuple(labels.shape)}, expected {shape} and ({shape[0]},)")
    if labels.size and int(labels.max()) >= spec.num_classes:
        raise _malformed(where, f"{split} labels go up to {int(labels.max())}, "
                                f"expected < {spec.num_classes}")


def read_fashion_mnist(spec: DatasetSpec, paths: dict[str, Path]) -> Arrays:
    """Decode Fashion-MNIST's four IDX files (paths: official file name -> Path)."""
    out: Arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path, lbl_path = paths[f"{prefix}-images-idx3-ubyte.gz"], paths[f"{prefix}-labels-idx1-ubyte.gz"]
        images = read_idx(img_path, ndim=3)[:, None]  # N,28,28 -> N,1,28,28 (channel-first like CIFAR)
        labels = read_idx(lbl_path, ndim=1)
        _check_split(spec, split, images, labels, f"{img_path} / {lbl_path.name}")
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


def parse_cifar_records(raw: bytes, label_bytes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Split CIFAR binary records (label byte(s) + 3072 pixel bytes: 1024 R, 1024 G, 1024 B, row-major).

    label_bytes is 1 for CIFAR-10 and 2 for CIFAR-100 (coarse, fine); the last label byte is returned.
    """
    record = label_bytes + 3 * 32 * 32
    if not raw or len(raw) % record:
        raise _malformed(where, f"{len(raw)} bytes is not a positive multiple of the {record}-byte record "
                                f"(truncated?)")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1]


def read_tar_members(path: Path, wanted: list[str], optional: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Read the named regular files out of a .tar.gz in one streaming pass; a missing member is an error."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.isfile() and (member.name in wanted or member.name in optional):
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise _malformed(path, f"not a readable .tar.gz ({err})") from None
    missing = [m for m in wanted if m not in found]
    if missing:
        raise _malformed(path, f"archive lacks {', '.join(missing)}")
    return found


def read_cifar(spec: DatasetSpec, paths: dict[str, Path], *, folder: str, train: tuple[str, ...],
               test: tuple[str, ...], label_bytes: int, names_file: str) -> Arrays:
    """Decode a CIFAR binary archive: the batch files of each split, and the label names file if present."""
    (archive,) = paths.values()
    members = [f"{folder}/{m}" for m in train + test]
    found = read_tar_members(archive, members, optional=(f"{folder}/{names_file}",))
    names_raw = found.get(f"{folder}/{names_file}")
    if names_raw is not None:
        names = tuple(line.strip() for line in names_raw.decode("utf-8", "replace").splitlines() if line.strip())
        if names != spec.class_names:
            raise _malformed(archive, f"{names_file} lists {len(names)} names that differ from the "
                                      f"{spec.num_classes} {spec.name} classes")
    out: Arrays = {}
    for split, files in (("train", train), ("test", test)):
        parts = [parse_cifar_records(found[f"{folder}/{m}"], label_bytes, f"{archive}:{folder}/{m}")
                 for m in files]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        _check_split(spec, split, images, labels, str(archive))
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


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
        root = _data_dir(data_dir)
        where = (f"no {root / (str(name) + '.npz')} or {root / str(name)}/ either" if root is not None and
                 isinstance(name, str) else "for your own data, give --data-dir or set $ATTNROBUST_DATA")
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}, or your own as "
                        f"DIR/NAME.npz or DIR/NAME/{{train,test}}/CLASS/*.png in the data directory ({where})")
    return _user_dataset(name, source)[0]


# ---- the user's own datasets -------------------------------------------------------------------------------------

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_MAX_IMAGES = 2 ** 31  # more would overflow the int32 indexes some kernels use; no study needs it on one machine
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def _user_source(name: str, data_dir: Path | str | None) -> Path | None:
    """DIR/NAME.npz or the folder DIR/NAME/ (holding train/ and test/), else None."""
    root = _data_dir(data_dir)
    if root is None or not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        return None  # a name with a path in it could read files outside the data directory
    if (root / f"{name}.npz").is_file():
        return (root / f"{name}.npz").resolve()
    if (root / name / "train").is_dir() or (root / name / "test").is_dir():
        return (root / name).resolve()
    return None


def _bad(where: Path | str, problem: str) -> UserError:
    return UserError(f"{where}: {problem}")


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 N x C x H x W from N x H x W (grey), N x H x W x C or N x C x H x W (C = 1 or 3)."""
    if x.dtype != np.uint8:
        raise _bad(where, f"images are {x.dtype}, expected uint8 pixels 0..255 (e.g. "
                          f"(x * 255).round().astype(np.uint8) for floats in [0, 1])")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4:
        raise _bad(where, f"images have shape {tuple(x.shape)}: expected 4 dimensions (N x H x W x C or "
                          f"N x C x H x W) or 3 (N x H x W, grey)")
    if len(x) >= _MAX_IMAGES:
        raise _bad(where, f"{len(x)} images: at most {_MAX_IMAGES - 1} are supported")
    if len(x) == 0:
        raise _bad(where, "no images")
    first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
    if last and not first:
        x = x.transpose(0, 3, 1, 2)
    elif first and not last:
        pass
    elif first and last and x.shape[1] != x.shape[3]:
        raise _bad(where, f"images have shape {tuple(x.shape)}: channels first or last is ambiguous; use a "
                          f"size other than 1 or 3 for H and W")
    elif not first:
        raise _bad(where, f"images have shape {tuple(x.shape)}: neither the second nor the last dimension is a "
                          f"channel count of 1 or 3 (grey or RGB)")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise _bad(where, f"labels have shape {tuple(y.shape)}, expected one integer per image")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise _bad(where, f"labels are {y.dtype}, expected integers 0..C-1 (class indexes)")
    if len(y) != n:
        raise _bad(where, f"{n} images but {len(y)} labels")
    return y.astype(np.int64)


def _check_user_arrays(where: str, arrays: Arrays, class_names: tuple[str, ...] | None) -> tuple[str, ...]:
    """Check the two splits together (same image size, labels 0..C-1); return the class names."""
    tr, te = arrays["train_images"], arrays["test_images"]
    if tr.shape[1:] != te.shape[1:]:
        raise _bad(where, f"test images are {'x'.join(map(str, te.shape[1:]))} (CxHxW) but training images "
                          f"{'x'.join(map(str, tr.shape[1:]))}; both splits must have one size")
    ytr, yte = arrays["train_labels"], arrays["test_labels"]
    low = int(min(ytr.min(), yte.min()))
    if low < 0:
        raise _bad(where, f"label {low} is negative; labels must be class indexes 0..C-1")
    if class_names is not None:
        count = len(class_names)
        high = int(max(ytr.max(), yte.max()))
        if high >= count:
            raise _bad(where, f"label {high} is out of range for the {count} class_names (labels 0..{count - 1})")
    else:
        count = int(ytr.max()) + 1
        if int(yte.max()) >= count:
            raise _bad(where, f"test label {int(yte.max())} is out of range: the training labels go up to "
                              f"{count - 1} (labels 0..C-1)")
        class_names = tuple(str(i) for i in range(count))
    missing = sorted(set(range(count)) - set(np.unique(ytr).tolist()))
    if missing:
        raise _bad(where, f"class {missing[0]} ({class_names[missing[0]]}) has no training image; labels must "
                          f"be 0..C-1 with every class in the training split")
    return class_names


def read_user_npz(path: Path) -> tuple[Arrays, tuple[str, ...]]:
    """A user .npz (see the module docstring) as checked arrays (images N x C x H x W) and class names."""
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise _bad(where, f"lacks {', '.join(missing)}; a dataset .npz holds x_train, y_train, x_test, "
                                  f"y_test (and optionally class_names)")
            raw = {k: z[k] for k in _NPZ_KEYS}
            names = z["class_names"] if "class_names" in z.files else None
    except UserError:
        raise
    except (OSError, ValueError, KeyError, zlib.error, EOFError, zipfile.BadZipFile) as err:
        raise _bad(where, f"not a readable .npz file ({str(err).splitlines()[0] if str(err) else err!r}); "
                          f"write it with numpy.savez") from None
    arrays: Arrays = {}
    for split in SPLITS:
        x = _to_nchw(raw[f"x_{split}"], f"{where}: x_{split}")
        arrays[f"{split}_images"] = x
        arrays[f"{split}_labels"] = _labels(raw[f"y_{split}"], len(x), f"{where}: y_{split} (x_{split})")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US" or len(set(names.tolist())) != len(names):
            raise _bad(where, "class_names must be a list of distinct strings")
        names = tuple(str(n) for n in names.tolist())
    return arrays, _check_user_arrays(where, arrays, names)


def read_png(path: Path) -> np.ndarray:
    """An 8-bit grey or RGB, non-interlaced PNG as uint8 C x H x W (C = 1 or 3); anything else a UserError.

    A minimal reader (zlib + the five row filters of the PNG spec), so image folders need no extra package.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise _bad(path, f"unreadable ({err.strerror or err})") from None
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise _bad(path, "not a PNG file (bad signature); image folders hold .png files")
    pos, header, idat = 8, None, []
    while True:
        if pos + 12 > len(raw):
            raise _bad(path, "truncated PNG (no IEND chunk)")
        (length,), kind = struct.unpack(">I", raw[pos:pos + 4]), raw[pos + 4:pos + 8]
        data = raw[pos + 8:pos + 8 + length]
        if len(data) != length or pos + 12 + length > len(raw):
            raise _bad(path, "truncated PNG chunk")
        (crc,) = struct.unpack(">I", raw[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + data) != crc:
            raise _bad(path, f"corrupt PNG ({kind.decode('latin-1')} chunk fails its CRC)")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat.append(data)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise _bad(path, "PNG without IHDR or IDAT")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3}.get(color)
    if depth != 8 or channels is None or interlace:
        raise _bad(path, f"PNG of bit depth {depth}, colour type {color}, interlace {interlace}: only 8-bit grey "
                         f"(type 0) or RGB (type 2) non-interlaced PNGs are read; convert it")
    try:
        flat = zlib.decompress(b"".join(idat))
    except zlib.error as err:
        raise _bad(path, f"corrupt PNG data ({err})") from None
    stride = width * channels
    if len(flat) != height * (stride + 1):
        raise _bad(path, f"PNG data is {len(flat)} bytes, {width}x{height}x{channels} needs {height * (stride + 1)}")
    rows = np.frombuffer(flat, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for r in range(height):
        kind, line = rows[r, 0], rows[r, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per channel (mod 256)
            cur = np.cumsum(line.reshape(width, channels), axis=0).reshape(-1) & 255
        elif kind == 2:  # Up
            cur = (line + prev) & 255
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the one decoded just before it
            cur = line.copy()
            for i in range(stride):
                a = int(cur[i - channels]) if i >= channels else 0
                b = int(prev[i])
                if kind == 3:
                    cur[i] = (cur[i] + (a + b) // 2) & 255
                else:
                    c = int(prev[i - channels]) if i >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        else:
            raise _bad(path, f"corrupt PNG (row filter {kind})")
        out[r], prev = cur, cur
    return out.reshape(height, width, channels).transpose(2, 0, 1)


def read_image_folder(root: Path) -> tuple[Arrays, tuple[str, ...]]:
    """ROOT/train/CLASS/*.png and ROOT/test/CLASS/*.png as checked arrays and the (sorted) class names."""
    classes = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise _bad(root, f"has no {split}/ folder; an image-folder dataset is NAME/train/CLASS/*.png and "
                             f"NAME/test/CLASS/*.png")
        classes[split] = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes[split]:
            raise _bad(folder, "holds no class folders (expected CLASS/*.png)")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise _bad(root, f"train/ and test/ have different class folders (only in train: "
                         f"{', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'})")
    names = tuple(classes["train"])
    arrays: Arrays = {}
    shape, first = None, None
    for split in SPLITS:
        images, labels = [], []
        for label, cls in enumerate(names):
            files = sorted(p for p in (root / split / cls).iterdir() if not p.name.startswith("."))
            if not files:
                raise _bad(root / split / cls, "is an empty class folder; put its .png images in it or remove it")
            for f in files:
                if f.suffix.lower() != ".png" or not f.is_file():
                    raise _bad(f, "is not a .png file; image folders hold only PNG images (8-bit grey or RGB)")
                img = read_png(f)
                if shape is None:
                    shape, first = img.shape, f
                elif img.shape != shape:
                    raise _bad(f, f"is {img.shape[1]}x{img.shape[2]} with {img.shape[0]} channel(s) but {first} is "
                                  f"{shape[1]}x{shape[2]} with {shape[0]}; all images must have one size and "
                                  f"channel count")
                images.append(img)
                labels.append(label)
        if len(images) >= _MAX_IMAGES:
            raise _bad(root / split, f"{len(images)} images: at most {_MAX_IMAGES - 1} are supported")
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.array(labels, np.int64)
    return arrays, names


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


def _decode_user(name: str, source: Path) -> tuple[DatasetSpec, Arrays]:
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


def _user_cache_path(name: str, source: Path) -> Path:
    return cache_dir() / "decoded" / f"user-{name}-{hashlib.md5(str(source).encode()).hexdigest()[:12]}.npz"


def _user_dataset(name: str, source: Path) -> tuple[DatasetSpec, Callable[[], Arrays]]:
    """(spec, a function returning the arrays) of a user dataset, decoding it only when the cache is stale."""
    stamp = _source_stamp(source)
    cache = _user_cache_path(name, source)
    keys = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]

    def cached_arrays() -> Arrays:
        arrays = _read_decoded(cache, keys)
        if arrays is None:  # removed since: decode again
            arrays = _decode_user(name, source)[1]
        return arrays

    if (str(source), stamp) in _USER_SPECS:
        return _USER_SPECS[(str(source), stamp)], cached_arrays
    found = _read_decoded(cache, ["meta"])
    meta = json.loads(str(found["meta"])) if found is not None else None
    if meta is not None and meta.get("stamp") != stamp and meta.get("md5") == _source_md5(source):
        meta["stamp"] = stamp  # touched or copied, same bytes: the cached arrays stand
    if meta is not None and meta.get("stamp") == stamp:
        spec = DatasetSpec(**{**meta["spec"], "class_names": tuple(meta["spec"]["class_names"]),
                              "mean": tuple(meta["spec"]["mean"]), "std": tuple(meta["spec"]["std"])})
        _USER_SPECS[(str(source), stamp)] = spec
        return spec, cached_arrays
    spec, arrays = _decode_user(name, source)
    fields = {k: getattr(spec, k) for k in ("name", "num_classes", "channels", "height", "width", "class_names",
                                            "mean", "std", "augment", "train_size", "test_size", "citation",
                                            "source")}
    meta = {"stamp": stamp, "md5": _source_md5(source), "spec": fields}
    _write_decoded(cache, {**arrays, "meta": np.array(json.dumps(meta))})
    _USER_SPECS[(str(source), stamp)] = spec
    return spec, lambda: arrays


# ---- where files are -----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The per-user cache: $ATTNROBUST_CACHE, else $XDG_CACHE_HOME/attnrobust, else ~/.cache/attnrobust."""
    if os.environ.get("ATTNROBUST_CACHE"):
        return Path(os.environ["ATTNROBUST_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "attnrobust"


def _data_dir(data_dir: Path | str | None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("ATTNROBUST_DATA")
    return Path(env).expanduser() if env else None


def _candidates(spec: DatasetSpec, name: str, data_dir: Path | str | None) -> list[Path]:
    root = _data_dir(data_dir)
    places = [root / spec.name / name, root / name] if root is not None else []
    return places + [cache_dir() / spec.name / name]


def _locate(spec: DatasetSpec, name: str, data_dir: Path | str | None) -> Path | None:
    return next((p for p in _candidates(spec, name, data_dir) if p.is_file()), None)


def _missing(spec: DatasetSpec, name: str, data_dir: Path | str | None, why: str = "") -> UserError:
    looked = ", ".join(str(p.parent) for p in _candidates(spec, name, data_dir))
    return UserError(f"{spec.name}: file {name} not found (looked in {looked}){why}; "
                     f"{_download_hint(spec, name)}")


def _base_urls(spec: DatasetSpec, base_url: str | None = None) -> tuple[str, ...]:
    mirror = base_url or os.environ.get("ATTNROBUST_MIRROR")
    if mirror:
        return (mirror if mirror.endswith("/") else mirror + "/",)
    return spec.urls


# ---- checksums, atomic writes, downloads ---------------------------------------------------------------------


def file_md5(path: Path | str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: Path | str, expected: str, dataset: str) -> None:
    """Raise a UserError (expected vs actual, the path, what to do) unless the file's MD5 is `expected`."""
    actual = file_md5(path)
    if actual != expected:
        raise UserError(f"checksum mismatch for {path}: expected MD5 {expected}, got {actual}; the file is "
                        f"corrupt or not the official one: delete it and run `attnrobust data download "
                        f"{dataset}`")


def _fetch(url: str, dest: Path, md5: str, quiet: bool) -> None:
    """Download url to dest via a temporary name, checking the MD5 before the rename."""
    from tqdm import tqdm

    with atomic_path(dest) as tmp:
        h, size = hashlib.md5(), 0
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            # disable=None: a progress bar on a terminal, none in logs and pipes.
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name,
                      disable=True if quiet else None, leave=False) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        # read(n) returns b"" when the server hangs up early instead of raising: say so rather than "bad MD5".
        if total and size != total:
            raise ValueError(f"connection closed after {size} of {total} bytes")
        if h.hexdigest() != md5:
            raise ValueError(f"checksum mismatch: expected MD5 {md5}, got {h.hexdigest()}")


def _download_file(spec: DatasetSpec, src: SourceFile, dest_dir: Path, base_url: str | None,
                   quiet: bool) -> Path:
    """Fetch one file into dest_dir, trying each base URL; raise UserError naming every failure."""
    failures = []
    for base in _base_urls(spec, base_url):
        try:
            _fetch(base + src.name, dest_dir / src.name, src.md5, quiet)
            return dest_dir / src.name
        except (OSError, ValueError, http.client.HTTPException) as err:
            failures.append(f"{base + src.name}: {err}")
    raise UserError(f"{spec.name}: could not download {src.name} into {dest_dir} ({'; '.join(failures)}); "
                    f"check the network, or put the official file there by hand")


def download(name: str, data_dir: Path | str | None = None, *, base_url: str | None = None,
             quiet: bool = False) -> list[Path]:
    """Make sure every source file of a dataset is present and verified, downloading what is missing.

    Downloads go to DATA_DIR/<name>/ when a data directory is given (argument or $ATTNROBUST_DATA), else to the
    user cache. base_url (or $ATTNROBUST_MIRROR) replaces the official URLs. Returns the files' paths.
    """
    spec = get_spec(name, data_dir)
    if spec.embedded or spec.source:
        if not quiet:
            print(f"{name} is {'embedded in the package' if spec.embedded else 'your own: ' + spec.source}: "
                  f"nothing to download")
        return []
    root = _data_dir(data_dir)
    dest_dir = (root if root is not None else cache_dir()) / spec.name
    paths = []
    for src in spec.files:
        path = _locate(spec, src.name, data_dir)
        if path is not None:
            check_md5(path, src.md5, spec.name)
            state = "already present"
        else:
            path = _download_file(spec, src, dest_dir, base_url, quiet)
            state = "downloaded"
        if not quiet:
            print(f"OK  {path}  ({state}, MD5 {src.md5})")
        paths.append(path)
    return paths


def verify(name: str, data_dir: Path | str | None = None, *, quiet: bool = False) -> list[Path]:
    """Hash every source file of a dataset against its official MD5 (no download); print a line per file.
    A user dataset is decoded afresh (not from the cache) and every check applied."""
    spec = get_spec(name, data_dir)
    if spec.source:
        source = Path(spec.source)
        spec, arrays = _decode_user(name, source)
        if not quiet:
            print(f"OK  {source}  (user dataset: {spec.train_size} train, {spec.test_size} test images "
                  f"{spec.channels}x{spec.height}x{spec.width}, {spec.num_classes} classes, checked)")
        return [source]
    if spec.embedded:
        path = _embedded_path(spec)
        arrays = _load_embedded(spec)
        if not quiet:
            print(f"OK  {path}  (embedded: {len(arrays['train_labels'])} train, {len(arrays['test_labels'])} "
                  f"test images, shapes and labels checked)")
        return [path]
    paths = []
    for src in spec.files:
        path = _locate(spec, src.name, data_dir)
        if path is None:
            raise _missing(spec, src.name, data_dir)
        check_md5(path, src.md5, spec.name)
        if not quiet:
            print(f"OK  {path}  (MD5 {src.md5})")
        paths.append(path)
    return paths


def info(name: str, data_dir: Path | str | None = None) -> dict[str, object]:
    """What a dataset is and where its files are (found or not; nothing is hashed or downloaded; a user dataset
    is decoded once, to learn its spec)."""
    spec = get_spec(name, data_dir)
    out: dict[str, object] = {
        "name": spec.name,
        "classes": f"{spec.num_classes}: {', '.join(spec.class_names)}",
        "images": f"{spec.channels}x{spec.height}x{spec.width} uint8",
        "train": spec.train_size,
        "test": spec.test_size,
        "mean": spec.mean,
        "std": spec.std,
        "augment": spec.augment,
        "source": spec.citation,
    }
    if spec.embedded:
        out["file"] = f"{_embedded_path(spec)} (embedded)"
    if spec.source:
        out["file"] = f"{spec.source} (your own)"
    for src in spec.files:
        path = _locate(spec, src.name, data_dir)
        out[src.name] = (f"{path} (MD5 {src.md5})" if path is not None else
                         f"not found; {_download_hint(spec, src.name)}")
    if spec.files:
        out["cache"] = cache_dir()
    return out


# ---- loading -------------------------------------------------------------------------------------------------


def _embedded_path(spec: DatasetSpec) -> Path:
    return Path(str(resources.files("attnrobust") / "embedded" / spec.embedded))


def _load_embedded(spec: DatasetSpec) -> Arrays:
    path = _embedded_path(spec)
    if not path.is_file():
        raise UserError(f"{spec.name}: the embedded file {path} is missing from the installed package; "
                        f"reinstall attnrobust (or run scripts/make_fashion_mnist_mini.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {f"{s}_{k}": z[f"{s}_{k}"] for s in SPLITS for k in ("images", "labels")}
    except (OSError, ValueError, KeyError, zlib.error, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: unreadable embedded dataset ({err}); reinstall attnrobust") from None
    for split in SPLITS:
        _check_split(spec, split, arrays[f"{split}_images"], arrays[f"{split}_labels"], str(path))
    return arrays


def _stamp(path: Path, md5: str) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{md5}"


def _decoded_path(spec: DatasetSpec) -> Path:
    key = hashlib.md5("".join(f.md5 for f in spec.files).encode()).hexdigest()[:16]
    return cache_dir() / "decoded" / f"{spec.name}-{key}.npz"


def _read_decoded(path: Path, keys: list[str]) -> Arrays | None:
    """The cached arrays, or None when absent or unreadable (an unreadable cache is rebuilt, not an error)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, zlib.error, EOFError, zipfile.BadZipFile):
        return None


def _write_decoded(path: Path, arrays: Arrays) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loading is then a plain read, well under a second
    except OSError as err:
        warnings.warn(f"could not cache decoded arrays at {path} ({err}); the next load decodes again",
                      stacklevel=3)


def _load_files(spec: DatasetSpec, split: str, data_dir: Path | str | None, download: bool) -> Arrays:
    paths = {}
    for src in spec.files:
        path = _locate(spec, src.name, data_dir)
        if path is None:
            if not download:
                raise _missing(spec, src.name, data_dir)
            try:
                path = _download_file(spec, src, cache_dir() / spec.name, None, quiet=False)
            except UserError as err:
                raise _missing(spec, src.name, data_dir, f" and the download failed: {err}") from None
        paths[src.name] = path
    keys = [f"{split}_images", f"{split}_labels"]
    target = _decoded_path(spec)
    stamps = [_stamp(paths[src.name], src.md5) for src in spec.files]
    cached = _read_decoded(target, keys + ["sources"])
    if cached is not None and cached.pop("sources").tolist() == stamps:
        return cached  # the sources are the very files hashed when this cache was written
    for src in spec.files:
        check_md5(paths[src.name], src.md5, spec.name)
    if cached is not None:
        return cached  # same MD5s -> same bytes -> same arrays, only found elsewhere or touched
    arrays = spec.reader(spec, paths)
    _write_decoded(target, {**arrays, "sources": np.array(stamps)})
    return {k: arrays[k] for k in keys}


def load_dataset(name: str, split: str, data_dir: Path | str | None = None, *,
                 download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as (uint8 images [N,C,H,W] at native size, int64 labels [N]) CPU tensors.

    Files are found in data_dir / $ATTNROBUST_DATA, then the user cache, then downloaded (unless
    download=False), MD5-checked, decoded once and cached (see the module docstring).
    """
    spec = get_spec(name, data_dir)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for {name}; valid splits: {', '.join(SPLITS)}")
    if spec.source:
        arrays = _user_dataset(name, Path(spec.source))[1]()
    else:
        arrays = _load_embedded(spec) if spec.embedded else _load_files(spec, split, data_dir, download)
    # A freshly decoded array can be a read-only view of the file's bytes; torch wants a writable one.
    images = torch.from_numpy(np.require(arrays[f"{split}_images"], requirements=["C", "W"]))
    labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    return images, labels


# ---- the device-resident loader ------------------------------------------------------------------------------


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for (seed, epoch, stream): a pure function of them, so resumed runs replay batches.

    CPU so that it works whatever the device (indexes are moved to the device afterwards); SeedSequence mixes
    the three numbers so that neighbouring seeds/epochs give unrelated streams.
    """
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None = None,
              pad: int = CROP_PAD) -> torch.Tensor:
    """Random-crop (with `pad` pixels of zero padding) and optionally mirror a batch.

    x: [B,C,H,W]; dy, dx: int64 [B] crop offsets in [0, 2*pad] into the padded image (pad, pad = no shift);
    flip: bool [B] or None. Returns [B,C,H,W].
    """
    h, w = x.shape[-2:]
    return _crop_padded(F.pad(x, (pad, pad, pad, pad)), dy, dx, flip, h, w)


def _crop_padded(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None,
                 h: int, w: int) -> torch.Tensor:
    """The h x w window at (dy, dx) of each already-padded image, mirrored where flip: one gather, no per-sample
    Python. Every output pixel's source index is computed by index arithmetic, the flip folded in with
    torch.where (output column j reads column w-1-j of the window)."""
    b, c, hp, wp = padded.shape
    rows = dy[:, None] + torch.arange(h, device=padded.device)  # [B,h]
    cols = torch.arange(w, device=padded.device).expand(b, w)
    if flip is not None:
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    cols = dx[:, None] + cols  # [B,w]
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, index).reshape(b, c, h, w)


class DeviceLoader:
    """Batches of a whole split kept on `device` as uint8, made by indexing; augmentation batched on device.

    Every epoch's order is a permutation drawn from a CPU generator seeded by (seed, epoch), so `epoch(e)` is a
    pure function of (seed, e): a resumed run sees the same batches, bit for bit. Images keep their own size
    (Fashion-MNIST stays 28x28, so an attack perturbs only the dataset's own pixels); `pad_to` zero-pads them
    (centred) once, at construction, for a model that needs a larger input. augment: None, "crop" (random
    crop with 4-pixel zero padding) or "crop_flip" (plus horizontal flip); its random numbers come from a
    second generator seeded by (seed, epoch, rank). Batches are float32 in [0,1] on the device, labels int64.

    Distributed: every rank draws the same permutation and takes its own contiguous slice of
    N // world_size samples, so the ranks are disjoint and equal in size (what DDP training needs); the
    remainder (fewer than world_size samples, different ones each shuffled epoch) is dropped. With
    equal_shards=False the slices instead cover every sample exactly once, their sizes differing by at most one
    (what evaluation needs: no test image lost). With world_size=1 nothing is ever dropped.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 device: str | torch.device = "cpu", shuffle: bool = False, augment: str | None = None,
                 seed: int = 0, drop_last: bool = False, pad_to: int | None = None, rank: int = 0, world_size: int = 1,
                 equal_shards: bool = True):
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise UserError(f"DeviceLoader needs uint8 images [N,C,H,W], got {images.dtype} "
                            f"{tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise UserError(f"DeviceLoader: {len(images)} images but labels of shape {tuple(labels.shape)}")
        if augment not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {augment!r}; valid: none, crop, crop_flip")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if seed < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"bad distributed setting: rank {rank} of world size {world_size}")
        h, w = images.shape[-2:]
        if pad_to is not None and (h > pad_to or w > pad_to):
            raise UserError(f"images of {h}x{w} do not fit pad_to={pad_to}")
        self.device = torch.device(device)
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        # Padded once, here: centred to pad_to, plus the crop margin when augmenting, so that a batch is one
        # index_select and one gather with no per-batch padding. self.images is the unaugmented view.
        self.height, self.width = (h, w) if pad_to is None else (pad_to, pad_to)
        m = CROP_PAD if augment else 0
        top, left = (self.height - h) // 2 + m, (self.width - w) // 2 + m
        self._store = F.pad(images.to(self.device), (left, self.width + 2 * m - w - left,
                                                     top, self.height + 2 * m - h - top)).contiguous()
        self.images = self._store[..., m:m + self.height, m:m + self.width]
        self.labels = labels.to(self.device, torch.int64)
        n = len(images)
        if equal_shards:
            self._shard = (rank * (n // world_size), (rank + 1) * (n // world_size))
        else:
            self._shard = (rank * n // world_size, (rank + 1) * n // world_size)
        self.num_samples = self._shard[1] - self._shard[0]  # this rank's share per epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in batch order (CPU int64)."""
        n = len(self.labels)
        order = torch.randperm(n, generator=_generator(self.seed, epoch, 0)) if self.shuffle else torch.arange(n)
        return order[self._shard[0]:self._shard[1]]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 [B,C,H,W] in [0,1] (H = W = pad_to when given), y int64 [B]) on the device for this epoch."""
        order = self.indices(epoch)
        if self.augment is not None:
            # Drawn for the whole epoch up front: one small transfer per epoch instead of one per batch.
            gen = _generator(self.seed, epoch, 1 + self.rank)
            shift = torch.randint(0, 2 * CROP_PAD + 1, (len(order), 2), generator=gen).to(self.device)
            flip = (torch.randint(0, 2, (len(order),), generator=gen).bool().to(self.device)
                    if self.augment == "crop_flip" else None)
        order = order.to(self.device)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self._store.index_select(0, idx)  # index_select: much faster than x[idx] on the CPU
            if self.augment is not None:
                part = slice(start, start + len(idx))
                x = _crop_padded(x, shift[part, 0], shift[part, 1], None if flip is None else flip[part],
                                 self.height, self.width)
            yield x.to(torch.float32).div_(255), self.labels.index_select(0, idx)
