"""MNIST-C's own corruptions (Mu & Gilmer's corruptions.py) on 28x28 grey images, and its variants of the
CIFAR-10-C recipes it reuses (fog on a 256x256 fractal, glass blur with its swap and column-only blur).

Each corruption is f(x [N, H, W, 1] in [0, 1], the parameters of the severity, rngs) -> x', before clipping.
"""

from __future__ import annotations

import numpy as np

from attnrobust.corruptions.cifar_c import fog, glass_blur
from attnrobust.corruptions.draws import each, signs
from attnrobust.corruptions.imageops import about_centre, affine, blur, canny


def spatter(x, c, rngs):
    """MNIST-C's spatter (mud at every severity, its variant of ImageNet-C's): a thresholded blurred noise layer,
    blurred again, where it is >= 0.8 the pixel is covered with mud of grey level 63/255."""
    loc, scale, sigma, threshold, sigma2, _ = c
    layer = each(rngs, lambda r: r.normal(loc, scale, x.shape[1:]))
    layer = blur(layer, sigma)
    mask = blur((layer > threshold).astype(float), sigma2)
    mask[mask < 0.8] = 0
    return x * (1 - mask) + 63 / 255 * mask


def mnist_c_affine(kind: str):
    def apply(x, c, rngs):
        n, h, w, _ = x.shape
        lin = np.zeros((n, 2, 2))
        if kind == "translate":
            m = np.tile(np.eye(3), (n, 1, 1))
            m[:, :2, 2] = c * signs(rngs, 2)  # (dx, dy), each of random sign
            return affine(x, m)
        if kind == "scale":
            lin[:, 0, 0] = lin[:, 1, 1] = c
        else:
            angle = c * signs(rngs)[:, 0]  # radians, random direction
            # skimage's AffineTransform: rotation r, shear s -> [[cos r, -sin(r + s)], [sin r, cos(r + s)]]
            r, s = (angle, 0 * angle) if kind == "rotate" else (0 * angle, angle)
            lin[:, 0, 0], lin[:, 0, 1] = np.cos(r), -np.sin(r + s)
            lin[:, 1, 0], lin[:, 1, 1] = np.sin(r), np.cos(r + s)
        return affine(x, about_centre(lin, h, w))

    apply.__name__ = kind
    return apply


def _line(h: int, w: int, c0, r0, c1, r1) -> np.ndarray:
    """MNIST-C's anti-aliased line from (c0, r0) to (c1, r1): intensity log(1 - d / 2.3) + 1 at distance d from
    the line (rows measured vertically), zero beyond 2.3 pixels and outside columns [floor(c0), ceil(c1)).
    Arguments are arrays [N] (one line per image); returns [N, H, W]."""
    c0, r0, c1, r1 = (np.asarray(v, dtype=float)[:, None, None] for v in (c0, r0, c1, r1))
    cc = np.arange(w, dtype=float)[None, None, :]
    rr = np.arange(h, dtype=float)[None, :, None]
    vertical = c1 == c0
    slope = (r1 - r0) / np.where(vertical, 1, c1 - c0)
    dist = np.clip(np.abs(rr - (slope * (cc - c0) + r0)), 0, 2.3 - 1e-10)
    line = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
    inside = (cc >= np.floor(c0)) & (cc < np.ceil(c1))
    return np.where(inside & ~vertical, line, 0.0)


def stripe(x, width, rngs):
    """Invert `width` columns at each side (MNIST-C: 7 of 28, i.e. half the image)."""
    out = x.copy()
    out[:, :, :width] = 1 - x[:, :, :width]
    out[:, :, x.shape[2] - width:] = 1 - x[:, :, x.shape[2] - width:]
    return out


def dotted_line(x, strength, rngs):
    """A line across the image between two random rows, every other pair of columns blanked (MNIST-C), drawn at
    `strength` (1 at severity 5)."""
    n, h, w, _ = x.shape
    ends = each(rngs, lambda r: r.integers(0, h - 1, 2))
    line = _line(h, w, np.zeros(n), ends[:, 0], np.full(n, w - 1), ends[:, 1])
    line[:, :, (np.arange(w) // 2) % 2 == 0] = 0  # columns 0-1, 4-5, ... off
    return x + strength * line[..., None]


def zigzag(x, strength, rngs):
    """MNIST-C's zigzag: segments of length 2 and amplitude 2 along a random slanted line from column 2 to 25,
    drawn at `strength` (1 at severity 5)."""
    n, h, w, _ = x.shape
    a = b = 2.0
    c0, c1 = 2, 25
    total = np.zeros((n, h, w))
    for k, r in enumerate(rngs):
        r0 = r.integers(0, h - 1)
        r1 = r0 + r.integers(-5, 5)
        theta = np.arctan((r1 - r0) / (c1 - c0))
        d = (c1 - c0) / np.cos(theta)
        points = [(0.0, 0.0)]
        for i in range(int((d - a) // (2 * a)) + 1):
            r_i = (-1) ** i * b
            points.append(((2 * i + 1) * a, r_i))
        end = (2 * a) * (d // (2 * a))
        if d != end:
            points.append((d, r_i / (2 * (d - end))))  # MNIST-C's last point, as written there
        pts = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.array(points).T
        cs, rs = pts[0] + c0, pts[1] + r0
        total[k] = _line(h, w, cs[:-1], rs[:-1], cs[1:], rs[1:]).sum(axis=0)
    return x + strength * total[..., None]


def canny_edges(x, strength, rngs):
    """MNIST-C replaces the image by its Canny edges (severity 5); lower severities blend the image with them."""
    edges = canny(x[..., 0])[..., None]
    return (1 - strength) * x + strength * edges


def fog_256(x, c, rngs):
    return fog(x, c, rngs, mapsize=256)


def glass_mnist_c(x, c, rngs):
    return glass_blur(x, c, rngs, swap=True, move_probability=0.5, vertical_blur=True)
