"""The two folders: the user's data directory (`data_dir`, else $ATTNROBUST_DATA) and the per-user cache, with
the decoded-array cache in it (CACHE/decoded/*.npz: uint8, no pickle, written atomically)."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from attnrobust.data.specs import Arrays, DatasetSpec
from attnrobust.runtime import atomic_path


def cache_dir() -> Path:
    """The per-user cache: $ATTNROBUST_CACHE, else $XDG_CACHE_HOME/attnrobust, else ~/.cache/attnrobust."""
    if os.environ.get("ATTNROBUST_CACHE"):
        return Path(os.environ["ATTNROBUST_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "attnrobust"


def chosen_data_dir(data_dir: Path | str | None) -> Path | None:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("ATTNROBUST_DATA")
    return Path(env).expanduser() if env else None


def decoded_path(spec: DatasetSpec) -> Path:
    key = hashlib.md5("".join(f.md5 for f in spec.files).encode()).hexdigest()[:16]
    return cache_dir() / "decoded" / f"{spec.name}-{key}.npz"


def user_cache_path(name: str, source: Path) -> Path:
    return cache_dir() / "decoded" / f"user-{name}-{hashlib.md5(str(source).encode()).hexdigest()[:12]}.npz"


def read_decoded(path: Path, keys: list[str]) -> Arrays | None:
    """The cached arrays, or None when absent or unreadable (an unreadable cache is rebuilt, not an error)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, zlib.error, EOFError, zipfile.BadZipFile):
        return None


def write_decoded(path: Path, arrays: Arrays) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loading is then a plain read, well under a second
    except OSError as err:
        warnings.warn(f"could not cache decoded arrays at {path} ({err}); the next load decodes again",
                      stacklevel=3)
