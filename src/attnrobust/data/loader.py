"""Loading: load_dataset (a split as CPU tensors, via the decoded cache) and DeviceLoader (a whole split on the
device as uint8, batched and augmented there, same seed -> same batches)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnrobust.data.cache import decoded_path, read_decoded, write_decoded, cache_dir
from attnrobust.data.catalog import get_spec, user_dataset
from attnrobust.data.readers import SPLITS
from attnrobust.data.specs import Arrays, DatasetSpec
from attnrobust.data.store import download_file, load_embedded, locate_file, missing_file_error, check_md5
from attnrobust.errors import UserError

AUGMENTATIONS = (None, "crop", "crop_flip")
# Random-crop padding in pixels: the standard CIFAR recipe (pad 4, crop back to 32).
CROP_PAD = 4


# ---- loading -------------------------------------------------------------------------------------------------


def _stamp(path: Path, md5: str) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{md5}"


def _load_files(spec: DatasetSpec, split: str, data_dir: Path | str | None, download: bool) -> Arrays:
    paths = {}
    for src in spec.files:
        path = locate_file(spec, src.name, data_dir)
        if path is None:
            if not download:
                raise missing_file_error(spec, src.name, data_dir)
            try:
                path = download_file(spec, src, cache_dir() / spec.name, None, quiet=False)
            except UserError as err:
                raise missing_file_error(spec, src.name, data_dir, f" and the download failed: {err}") from None
        paths[src.name] = path
    keys = [f"{split}_images", f"{split}_labels"]
    target = decoded_path(spec)
    stamps = [_stamp(paths[src.name], src.md5) for src in spec.files]
    cached = read_decoded(target, keys + ["sources"])
    if cached is not None and cached.pop("sources").tolist() == stamps:
        return cached  # the sources are the very files hashed when this cache was written
    for src in spec.files:
        check_md5(paths[src.name], src.md5, spec.name)
    if cached is not None:
        return cached  # same MD5s -> same bytes -> same arrays, only found elsewhere or touched
    arrays = spec.reader(spec, paths)
    write_decoded(target, {**arrays, "sources": np.array(stamps)})
    return {k: arrays[k] for k in keys}


def load_dataset(name: str, split: str, data_dir: Path | str | None = None, *,
                 download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as (uint8 images [N,C,H,W] at native size, int64 labels [N]) CPU tensors.

    Files are found in data_dir / $ATTNROBUST_DATA, then the user cache, then downloaded (unless
    download=False), MD5-checked, decoded once and cached (see the attnrobust.data docstring).
    """
    spec = get_spec(name, data_dir)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for {name}; valid splits: {', '.join(SPLITS)}")
    if spec.source:
        arrays = user_dataset(name, Path(spec.source))[1]()
    else:
        arrays = load_embedded(spec) if spec.embedded else _load_files(spec, split, data_dir, download)
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
        """Yield (x float32 [B,C,H,W] in [0,1] (H = W = pad_to when given), y int64 [B]) on the device for this
        epoch."""
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
