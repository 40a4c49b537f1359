"""The file formats, read into uint8 arrays: the official ones (Fashion-MNIST's gzipped IDX, the CIFAR binary
archives) and the user's own (a .npz, or class folders of PNGs, decoded by Pillow).

Every reader returns Arrays (the two SPLITS, images uint8 N x C x H x W and labels) and says what is wrong with
a bad file in one line (a UserError).
"""

from __future__ import annotations

import gzip
import math
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from attnrobust.data.specs import Arrays, DatasetSpec
from attnrobust.errors import UserError

SPLITS = ("train", "test")


# ---- errors: one line each, saying what, where and what to do ------------------------------------------------


def _malformed(path: Path | str, problem: str) -> UserError:
    return UserError(f"{path}: {problem}; the file is damaged or not the official one: delete it and download "
                     f"it again")


def _bad(where: Path | str, problem: str) -> UserError:
    return UserError(f"{where}: {problem}")


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


def check_split(spec: DatasetSpec, split: str, images: np.ndarray, labels: np.ndarray, where: str) -> None:
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
        check_split(spec, split, images, labels, f"{img_path} / {lbl_path.name}")
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
        check_split(spec, split, images, labels, str(archive))
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


# ---- the user's own formats ----------------------------------------------------------------------------------

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_MAX_IMAGES = 2 ** 31  # more would overflow the int32 indexes some kernels use; no study needs it on one machine


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
    """A user .npz (see the attnrobust.data docstring) as checked arrays (images N x C x H x W) and class names."""
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
    """An 8-bit grey or RGB PNG as uint8 C x H x W (C = 1 or 3); anything else a UserError.

    Decoded by Pillow (installed with matplotlib). Other modes (palette, alpha, 16-bit) are refused rather than
    converted: a silent conversion would change the pixels the models and attacks see.
    """
    try:
        with open(path, "rb") as f:
            signature = f.read(8)
    except OSError as err:
        raise _bad(path, f"unreadable ({err.strerror or err})") from None
    if signature != b"\x89PNG\r\n\x1a\n":
        raise _bad(path, "not a PNG file (bad signature); image folders hold .png files")
    try:
        with Image.open(path, formats=["PNG"]) as img:
            if img.mode not in ("L", "RGB"):
                raise _bad(path, f"PNG of mode {img.mode}: only 8-bit grey (L) or RGB PNGs are read; convert it")
            img.load()
            array = np.asarray(img, dtype=np.uint8)
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError):  # Pillow's errors for a truncated or corrupt file
        raise _bad(path, "truncated or corrupt PNG (Pillow cannot decode it); export the image again") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


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
