"""Random numbers of the corruptions: one generator per image, seeded by (seed, dataset, corruption, severity,
image index in the split) through numpy's SeedSequence, so an image's corruption does not depend on its batch; and
the draws each corruption makes from them, one per image, stacked over the batch."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np


def _text_key(text: str) -> int:
    """A stable 64-bit number for a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def generators(seed: int, dataset: str, name: str, severity: int, indices: np.ndarray) -> list[np.random.Generator]:
    base = [int(seed), _text_key(dataset), _text_key(name), int(severity)]
    return [np.random.Generator(np.random.PCG64(np.random.SeedSequence(base + [int(i)]))) for i in indices]


def each(rngs, draw: Callable[[np.random.Generator], Any]) -> np.ndarray:
    """One draw per image, stacked over the batch."""
    return np.stack([np.asarray(draw(r)) for r in rngs])


def signs(rngs, k: int = 1) -> np.ndarray:
    """Random directions, -1 or +1, k per image (MNIST-C's np.random.choice([-1, 1]))."""
    return each(rngs, lambda r: r.choice([-1, 1], k)).astype(float)
