"""Where a dataset's bytes are and the `attnrobust data` verbs: the source files' places (data directory, user
cache), MD5 checks, downloads (atomic, checked before the rename), the embedded file, and download / verify / info.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
import zipfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attnrobust.data.cache import chosen_data_dir, cache_dir
from attnrobust.data.catalog import decode_user, get_spec
from attnrobust.data.readers import SPLITS, check_split
from attnrobust.data.specs import Arrays, DatasetSpec, SourceFile
from attnrobust.errors import UserError
from attnrobust.runtime import atomic_path


# ---- where files are -----------------------------------------------------------------------------------------


def _candidates(spec: DatasetSpec, name: str, data_dir: Path | str | None) -> list[Path]:
    root = chosen_data_dir(data_dir)
    places = [root / spec.name / name, root / name] if root is not None else []
    return places + [cache_dir() / spec.name / name]


def locate_file(spec: DatasetSpec, name: str, data_dir: Path | str | None) -> Path | None:
    return next((p for p in _candidates(spec, name, data_dir) if p.is_file()), None)


def missing_file_error(spec: DatasetSpec, name: str, data_dir: Path | str | None, why: str = "") -> UserError:
    looked = ", ".join(str(p.parent) for p in _candidates(spec, name, data_dir))
    return UserError(f"{spec.name}: file {name} not found (looked in {looked}){why}; "
                     f"{_download_hint(spec, name)}")


def _base_urls(spec: DatasetSpec, base_url: str | None = None) -> tuple[str, ...]:
    mirror = base_url or os.environ.get("ATTNROBUST_MIRROR")
    if mirror:
        return (mirror if mirror.endswith("/") else mirror + "/",)
    return spec.urls


def _download_hint(spec: DatasetSpec, name: str) -> str:
    urls = " or ".join(base + name for base in _base_urls(spec))
    return f"download it from {urls} or run `attnrobust data download {spec.name}`"


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


def download_file(spec: DatasetSpec, src: SourceFile, dest_dir: Path, base_url: str | None,
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
    root = chosen_data_dir(data_dir)
    dest_dir = (root if root is not None else cache_dir()) / spec.name
    paths = []
    for src in spec.files:
        path = locate_file(spec, src.name, data_dir)
        if path is not None:
            check_md5(path, src.md5, spec.name)
            state = "already present"
        else:
            path = download_file(spec, src, dest_dir, base_url, quiet)
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
        spec, arrays = decode_user(name, source)
        if not quiet:
            print(f"OK  {source}  (user dataset: {spec.train_size} train, {spec.test_size} test images "
                  f"{spec.channels}x{spec.height}x{spec.width}, {spec.num_classes} classes, checked)")
        return [source]
    if spec.embedded:
        path = _embedded_path(spec)
        arrays = load_embedded(spec)
        if not quiet:
            print(f"OK  {path}  (embedded: {len(arrays['train_labels'])} train, {len(arrays['test_labels'])} "
                  f"test images, shapes and labels checked)")
        return [path]
    paths = []
    for src in spec.files:
        path = locate_file(spec, src.name, data_dir)
        if path is None:
            raise missing_file_error(spec, src.name, data_dir)
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
        path = locate_file(spec, src.name, data_dir)
        out[src.name] = (f"{path} (MD5 {src.md5})" if path is not None else
                         f"not found; {_download_hint(spec, src.name)}")
    if spec.files:
        out["cache"] = cache_dir()
    return out


# ---- the embedded dataset ------------------------------------------------------------------------------------


def _embedded_path(spec: DatasetSpec) -> Path:
    return Path(str(resources.files("attnrobust") / "embedded" / spec.embedded))


def load_embedded(spec: DatasetSpec) -> Arrays:
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
        check_split(spec, split, arrays[f"{split}_images"], arrays[f"{split}_labels"], str(path))
    return arrays
