"""The two families by name: each corruption's function and its parameters at severities 1-5 (the severity
tables, with their sources), the family of an image shape, the names a config asks for, and `corrupt`, the one
entry point that seeds the draws and converts the images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from attnrobust.corruptions.cifar_c import (brightness, contrast, defocus_blur, elastic_transform, fog, gaussian_noise,
                                            glass_blur, impulse_noise, jpeg_compression, motion_blur, pixelate,
                                            saturate, shot_noise, zoom_blur)
from attnrobust.corruptions.draws import generators
from attnrobust.corruptions.mnist_c import (canny_edges, dotted_line, fog_256, glass_mnist_c, mnist_c_affine, spatter,
                                            stripe, zigzag)
from attnrobust.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    """One corruption of a family: its function, its parameters at severities 1-5, and how faithful it is."""

    name: str
    apply: Callable
    levels: tuple  # parameters of severities 1..5
    note: str = ""  # "" = the original recipe; else what is approximated or defined here
    published: int | None = None  # MNIST-C: the severity its published files use (its code's default)


_GLASS_CIFAR = "as the reference, quirk included: each pixel copies a neighbour up or left (no swap), a drift"
_GLASS_MNIST = "as the reference, quirk included: both blurs run down the columns only"
_MOTION = "the imagecorruptions package's numpy kernel for ImageMagick's motion blur (equal to 1/255 on the fixture)"

# CIFAR-10-C at 32x32 (make_cifar_c.py). Skipped: snow (ImageMagick's motion blur of a zoomed snow layer) and frost
# (photographs of frost shipped as image files); the extra corruptions speckle noise, Gaussian blur and spatter.
CIFAR_C = {c.name: c for c in [
    Corruption("gaussian_noise", gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    Corruption("shot_noise", shot_noise, (500, 250, 100, 75, 50)),
    Corruption("impulse_noise", impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    Corruption("defocus_blur", defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    Corruption("glass_blur", glass_blur, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
               _GLASS_CIFAR),
    Corruption("motion_blur", motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)), _MOTION),
    Corruption("zoom_blur", zoom_blur,
               tuple(tuple(np.arange(1, top, 0.01)) for top in (1.06, 1.11, 1.16, 1.21, 1.26))),
    Corruption("fog", fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    Corruption("brightness", brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    Corruption("contrast", contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    Corruption("saturate", saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
    Corruption("jpeg_compression", jpeg_compression, (80, 65, 58, 50, 40)),
    Corruption("pixelate", pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    Corruption("elastic_transform", elastic_transform,
               tuple((32 * a, 32 * s, 32 * j) for a, s, j in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                                                (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)))),
]}

_LADDER = "MNIST-C has one setting; severity k draws it at k/5 of its strength (5 = MNIST-C's)"
# MNIST-C's fifteen, in its order (corruptions.py). Where its code has a 5-level table, that table; `published`
# is the function's default severity there.
MNIST_C = {c.name: c for c in [
    Corruption("shot_noise", shot_noise, (60, 25, 12, 5, 3), published=5),
    Corruption("impulse_noise", impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27), published=4),
    Corruption("glass_blur", glass_mnist_c, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
               _GLASS_MNIST, published=1),
    Corruption("motion_blur", motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), _MOTION,
               published=1),
    Corruption("shear", mnist_c_affine("shear"), (0.2, 0.4, 0.6, 0.8, 1.0), published=2),
    Corruption("scale", mnist_c_affine("scale"), (1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5), published=3),
    Corruption("rotate", mnist_c_affine("rotate"), (0.2, 0.4, 0.6, 0.8, 1.0), published=2),
    Corruption("brightness", brightness, (0.1, 0.2, 0.3, 0.4, 0.5), published=5),
    Corruption("translate", mnist_c_affine("translate"), (1, 2, 3, 4, 5), published=3),
    Corruption("stripe", stripe, (1, 3, 4, 6, 7),
               "MNIST-C has one setting (7 columns inverted at each side); severity k inverts 1, 3, 4, 6, 7",
               published=5),
    Corruption("fog", fog_256, ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), published=5),
    Corruption("spatter", spatter, ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
                                    (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
                                    (0.67, 0.4, 1, 0.65, 1.5, 1)), published=4),
    Corruption("dotted_line", dotted_line, (0.2, 0.4, 0.6, 0.8, 1.0), _LADDER, published=5),
    Corruption("zigzag", zigzag, (0.2, 0.4, 0.6, 0.8, 1.0), _LADDER, published=5),
    Corruption("canny_edges", canny_edges, (0.2, 0.4, 0.6, 0.8, 1.0),
               "MNIST-C has one setting (the edges replace the image); severity k blends k/5 of the edges in",
               published=5),
]}

# family label -> (the image shape it is made for (C, H, W), its corruptions)
FAMILIES: dict[str, tuple[tuple[int, int, int], dict[str, Corruption]]] = {
    "MNIST-C-style": ((1, 28, 28), MNIST_C),
    "CIFAR-10-C-style": ((3, 32, 32), CIFAR_C),
}
ALL_NAMES = tuple(dict.fromkeys([*MNIST_C, *CIFAR_C]))


def family_of(shape: tuple[int, ...], dataset: str = "the dataset") -> str:
    """The family label of images of shape (C, H, W); UserError naming attack.corruptions for any other shape."""
    for label, (kind, _) in FAMILIES.items():
        if tuple(shape) == kind:
            return label
    kinds = "; ".join(f"{label}: {'x'.join(map(str, k))}" for label, (k, _) in FAMILIES.items())
    raise UserError(f"attack.corruptions: no corruption family for {dataset}'s {'x'.join(map(str, shape))} images "
                    f"(made for {kinds}); set attack.corruptions = [] to score none")


def family_names(label: str) -> list[str]:
    return list(FAMILIES[label][1])


def expand_names(names: list[str], label: str, dataset: str = "the dataset") -> list[str]:
    """The corruptions `names` asks for in family `label`: "all" is the whole family (in its order); an unknown
    name, or one the family lacks, is a UserError naming attack.corruptions."""
    family = FAMILIES[label][1]
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [n for n in family if n not in out]
        elif name in family:
            if name not in out:
                out.append(name)
        else:
            raise UserError(f"attack.corruptions: {name!r} is not in the {label} set of {dataset}; valid: all, "
                            f"{', '.join(family)} ([] for none)")
    return out


def corrupt(images, name: str, severity: int, *, dataset: str, indices=None, seed: int = 0):
    """The images (N x C x H x W, uint8 or float in [0, 1], numpy or torch on the CPU) corrupted by `name` at
    `severity` (1-5), same shape and dtype (uint8 rounded to the nearest level; floats float32 in [0, 1]).

    indices: each image's position in its split (default 0..N-1): with the dataset name, the corruption and the
    severity it seeds the image's random draws, so the same image is corrupted the same way in any batch.
    """
    array = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if array.ndim != 4:
        raise UserError(f"corrupt: expected images N x C x H x W, got shape {array.shape}")
    label = family_of(array.shape[1:], dataset)
    family = FAMILIES[label][1]
    if name not in family:
        raise UserError(f"attack.corruptions: unknown corruption {name!r} for {label} images; valid: "
                        f"{', '.join(family)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise UserError(f"attack.severities: severity must be one of 1-5, got {severity!r}")
    is_uint8 = array.dtype == np.uint8
    x = array.astype(np.float64) / 255 if is_uint8 else array.astype(np.float64)
    indices = np.arange(len(x)) if indices is None else np.asarray(indices)
    if len(indices) != len(x):
        raise ValueError(f"corrupt: {len(indices)} indices for {len(x)} images")
    corruption = family[name]
    rngs = generators(seed, dataset, name, severity, indices)
    out = corruption.apply(x.transpose(0, 2, 3, 1), corruption.levels[severity - 1], rngs)
    out = np.clip(out, 0, 1).transpose(0, 3, 1, 2)
    # rounded, not truncated as np.uint8() in the originals: float error would move unchanged pixels a level down
    return np.rint(out * 255).astype(np.uint8) if is_uint8 else out.astype(np.float32)
