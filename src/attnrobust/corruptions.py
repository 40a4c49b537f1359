"""Common corruptions generated in code: the CIFAR-10-C families at 32x32 and the MNIST-C set at 28x28 grey.

Not the published files (nothing is downloaded): the same recipes, re-implemented with numpy, scipy and Pillow,
so results are labelled "CIFAR-10-C-style" and "MNIST-C-style". Sources of the severity tables:
- CIFAR-10-C: Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness to Common Corruptions and
  Perturbations", the 32x32 tables of their make_cifar_c.py (milder than ImageNet-C's, which wipe out a 32x32
  object: the reason not to reuse the `imagecorruptions` package's ImageNet tables);
- MNIST-C: Mu & Gilmer (2019), "MNIST-C: A Robustness Benchmark for Computer Vision", the tables of its
  corruptions.py. MNIST-C publishes one setting per corruption; where its code has a 5-level table we use that
  table (the code's default severity, `Corruption.published`, is the setting of its files), and where it has none
  (stripe, dotted line, zigzag, canny edges) we define a ladder whose severity 5 is MNIST-C's corruption.
Where the reference scripts do something other than what they read (MNIST-C's glass blur blurs down the columns
only, CIFAR-10-C's copies pixels where it means to swap them, skimage's warp interpolates across the image edge),
the images here do what the scripts did, since the published numbers come from those images; tests compare them
with the scripts' own outputs (tests/fixtures/corruption_reference.md). docs/corruptions.md lists every
corruption, these quirks, the one algorithm of another source (motion blur) and what is skipped, and why.

`corrupt(images, name, severity, dataset=...)` takes N x C x H x W images (uint8, or float in [0, 1]) and returns
the corrupted images with the same shape and dtype. The family is chosen by the image shape (`family_of`): grey
28x28 -> MNIST-C-style, RGB 32x32 -> CIFAR-10-C-style. Every random draw of an image comes from its own generator,
seeded by (seed, dataset, corruption, severity, image index in the split) through numpy's SeedSequence: an image's
corruption does not depend on the batch it is in, nor on which other images are corrupted with it, so every
model and every training seed is scored on the same corrupted test set (paired comparisons stay paired).

Internally every corruption works on float64 arrays [N, H, W, C] in [0, 1] (channels last, as the originals),
vectorised over the batch; only JPEG and pixelate (Pillow) and the zigzag's few segments loop over images, and
glass blur over pixel positions (the references' sequential walk, each step done for the whole batch).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from attnrobust.errors import UserError

__all__ = ["Corruption", "FAMILIES", "MNIST_C", "CIFAR_C", "SEVERITIES", "family_of", "family_names",
           "expand_names", "corrupt", "ALL_NAMES"]

SEVERITIES = (1, 2, 3, 4, 5)

# ---- random numbers: one generator per image ----------------------------------------------------------------------


def _text_key(text: str) -> int:
    """A stable 64-bit number for a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _generators(seed: int, dataset: str, name: str, severity: int, indices: np.ndarray) -> list[np.random.Generator]:
    base = [int(seed), _text_key(dataset), _text_key(name), int(severity)]
    return [np.random.Generator(np.random.PCG64(np.random.SeedSequence(base + [int(i)]))) for i in indices]


def _each(rngs, draw: Callable[[np.random.Generator], Any]) -> np.ndarray:
    """One draw per image, stacked over the batch."""
    return np.stack([np.asarray(draw(r)) for r in rngs])


# ---- helpers --------------------------------------------------------------------------------------------------------


def _blur(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over H and W of [N, H, W, C] (skimage.filters.gaussian's defaults: mode nearest, truncate 4);
    sigma a number, or (rows, columns) for a blur along one axis."""
    rows, cols = (sigma, sigma) if np.isscalar(sigma) else sigma
    if rows <= 0 and cols <= 0:
        return x
    return ndimage.gaussian_filter(x, sigma=(0, rows, cols, 0), mode=mode, truncate=truncate)


def _sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str, order: int = 1) -> np.ndarray:
    """x [N, H, W, C] read at (rows, cols) [N, H, W] (bilinear), every channel alike; scipy's `mode` at borders
    (grid-constant = skimage's warp: 0 outside, interpolated between the edge pixel and 0 across the last pixel;
    mirror = OpenCV's BORDER_REFLECT_101; reflect)."""
    n, h, w, c = x.shape
    coords = np.empty((4, n, h, w, c))
    coords[0] = np.arange(n)[:, None, None, None]
    coords[1] = rows[..., None]
    coords[2] = cols[..., None]
    coords[3] = np.arange(c)
    return ndimage.map_coordinates(x, coords, order=order, mode=mode, cval=0.0)


def _affine(x: np.ndarray, matrices: np.ndarray, mode: str = "grid-constant") -> np.ndarray:
    """skimage.transform.warp(x, inverse_map=A) per image: output pixel (col, row) reads the input at
    A @ (col, row, 1); matrices [N, 3, 3]. scipy's "constant" would return 0 for any point past the last pixel
    centre; warp (and "grid-constant") interpolates between the edge pixel and 0 there, as MNIST-C's images do."""
    n, h, w, _ = x.shape
    rows, cols = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    src_c = matrices[:, 0, 0, None, None] * cols + matrices[:, 0, 1, None, None] * rows + matrices[:, 0, 2, None, None]
    src_r = matrices[:, 1, 0, None, None] * cols + matrices[:, 1, 1, None, None] * rows + matrices[:, 1, 2, None, None]
    return _sample(x, src_r, src_c, mode)


def _about_centre(linear: np.ndarray, h: int, w: int) -> np.ndarray:
    """[N, 3, 3] affine maps with linear parts [N, 2, 2] that keep the image centre fixed (MNIST-C's
    translation a3 = 13.5 * (1 - a1 - a2), b3 = 13.5 * (1 - b1 - b2) at 28x28)."""
    n = len(linear)
    out = np.zeros((n, 3, 3))
    out[:, :2, :2] = linear
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out[:, 0, 2] = cx - linear[:, 0, 0] * cx - linear[:, 0, 1] * cy
    out[:, 1, 2] = cy - linear[:, 1, 0] * cx - linear[:, 1, 1] * cy
    out[:, 2, 2] = 1
    return out


def _signs(rngs, k: int = 1) -> np.ndarray:
    """Random directions, -1 or +1, k per image (MNIST-C's np.random.choice([-1, 1]))."""
    return _each(rngs, lambda r: r.choice([-1, 1], k)).astype(float)


def _plasma(rngs, mapsize: int, decay: float) -> np.ndarray:
    """The diamond-square height map of ImageNet-C's fog (a power-of-two square in [0, 1]), for each image:
    [N, mapsize, mapsize]. Each image draws all its wibbles at once from its own generator (mapsize^2 - 1 uniforms,
    used level by level: squares, then the two diamond sets). Vectorised over the batch with the batch as the last
    axis and in float32: the levels write strided grids, which then move whole contiguous vectors (4-5x faster than
    batch-first float64 for MNIST-C's 256x256 map, the costliest corruption to make)."""
    n = len(rngs)
    unit = _each(rngs, lambda r: r.uniform(-1, 1, mapsize * mapsize - 1)).T.astype(np.float32)  # [draws, N]
    m = np.zeros((mapsize, mapsize, n), np.float32)
    used, step, wibble = 0, mapsize, 100.0

    def wibbled(a):
        nonlocal used
        k = a.shape[0] * a.shape[1]
        noise = unit[used:used + k].reshape(a.shape)
        used += k
        return a / 4 + np.float32(wibble * wibble) * noise  # wibble * uniform(-wibble, wibble)

    while step >= 2:
        half = step // 2
        corners = m[0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        m[half:mapsize:step, half:mapsize:step] = wibbled(square)
        dr = m[half:mapsize:step, half:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        m[0:mapsize:step, half:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1))
        m[half:mapsize:step, 0:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0))
        step //= 2
        wibble /= decay
    m -= m.min(axis=(0, 1), keepdims=True)
    return (m / m.max(axis=(0, 1), keepdims=True)).transpose(2, 0, 1).astype(np.float64)


def _scale_hsv(x: np.ndarray, saturation: tuple[float, float] | None = None, value_add: float = 0.0) -> np.ndarray:
    """The RGB -> HSV -> RGB round trip of skimage.color, with S -> clip(S * a + b) and V -> clip(V + value_add),
    done in RGB: at fixed hue each channel is V * (1 - S * g(hue)), so V scales every channel and S scales each
    channel's distance below V. A grey pixel (S = 0) has hue 0 (red) in skimage: saturating it gives
    (V, V(1 - S'), V(1 - S')). One channel (grey) has V = the pixel and S = 0, so only value_add applies."""
    v = x.max(axis=3, keepdims=True)
    out = x
    if saturation is not None and x.shape[3] == 3:
        a, b = saturation
        s = np.where(v > 0, (v - x.min(axis=3, keepdims=True)) / np.where(v > 0, v, 1), 0.0)
        s_new = np.clip(s * a + b, 0, 1)
        grey = s == 0
        scaled = v - (v - x) * np.where(grey, 0.0, s_new / np.where(grey, 1, s))
        red = np.concatenate([v, v * (1 - s_new), v * (1 - s_new)], axis=3)
        out = np.where(grey, red, scaled)
    if value_add:
        v_new = np.clip(v + value_add, 0, 1)
        out = np.where(v > 0, out * v_new / np.where(v > 0, v, 1), v_new)
    return out


def _pil_roundtrip(x: np.ndarray, process: Callable) -> np.ndarray:
    """Each image through Pillow as 8-bit (the originals work on PIL images), back to floats."""
    out = np.empty_like(x)
    u8 = np.rint(x * 255).astype(np.uint8)
    for i, img in enumerate(u8):
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        out[i] = np.asarray(process(pil), dtype=np.float64).reshape(img.shape) / 255
    return out


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


# ---- the corruptions: f(x [N, H, W, C] in [0, 1], parameters of the severity, rngs) -> x' -----------------------


def gaussian_noise(x, c, rngs):
    return x + c * _each(rngs, lambda r: r.standard_normal(x.shape[1:]))


def shot_noise(x, c, rngs):
    return np.stack([r.poisson(xi * c) for r, xi in zip(rngs, x)]) / c


def impulse_noise(x, amount, rngs):
    """skimage's random_noise(mode='s&p'): each value (each channel) replaced with probability `amount`, by 1 or 0
    with equal chance."""
    u = _each(rngs, lambda r: r.random(x.shape[1:]))
    return np.where(u < amount / 2, 1.0, np.where(u < amount, 0.0, x))


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's defocus kernel for radius <= 8: a 17x17 disk, normalised, smoothed by a 3x3 Gaussian
    (cv2.GaussianBlur(ksize=(3, 3), sigmaX=alias_blur))."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(float)
    disk /= disk.sum()
    g = np.exp(-(np.arange(3) - 1) ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    return ndimage.correlate(disk, np.outer(g, g), mode="mirror")


def defocus_blur(x, c, rngs):
    kernel = _disk_kernel(*c)
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")  # cv2.filter2D: BORDER_REFLECT_101


def glass_blur(x, c, rngs, *, swap: bool = False, move_probability: float = 1.0, vertical_blur: bool = False):
    """Blur, shuffle pixels locally, blur again, as the reference code does, quirks included (docs/corruptions.md).
    Each iteration walks the interior pixels from the bottom right, row by row, and for each draws an offset
    (dx, dy) from randint(-max_delta, max_delta), i.e. [-max_delta, max_delta - 1]:
    - CIFAR-10-C (swap=False): its `x[h, w], x[h', w'] = x[h', w'], x[h, w]` runs on numpy views of an RGB pixel,
      so it copies the neighbour into the pixel and leaves the neighbour as it was. With offsets in [-1, 0] the
      neighbour is not yet visited: the picture drifts down and right, about half a pixel per iteration;
    - MNIST-C (swap=True): on a 2-D image the same line swaps two scalars (a true swap), each pixel only with
      probability 1/2 (move_probability); its gaussian(..., multichannel=True) on a 2-D image takes the columns
      for channels, so both blurs run down the columns only (vertical_blur).
    The walk is sequential (a pixel may move again after a swap), so it loops over the pixels, vectorised over the
    batch: each image draws, per iteration, its coins (MNIST-C only) and then all its offsets at once."""
    sigma, delta, iterations = c
    n, h, w, _ = x.shape
    sigma = (sigma, 0) if vertical_blur else sigma
    x = np.floor(_blur(x, sigma) * 255) / 255  # np.uint8(... * 255), as the originals
    walk = [(r, col) for r in range(h - delta, delta, -1) for col in range(w - delta, delta, -1)]
    batch = np.arange(n)
    for _ in range(iterations):
        moves = _each(rngs, lambda r: r.random(len(walk)) < move_probability) if move_probability < 1 else \
            np.ones((n, len(walk)), dtype=bool)
        offsets = _each(rngs, lambda r: r.integers(-delta, delta, (len(walk), 2))) * moves[..., None]  # (dx, dy)
        for k, (r, col) in enumerate(walk):
            r2, c2 = r + offsets[:, k, 1], col + offsets[:, k, 0]
            neighbour = x[batch, r2, c2]
            if swap:
                x[batch, r2, c2] = x[:, r, col]
            x[:, r, col] = neighbour
    return _blur(x, sigma)


def _zoom_axis(x: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Linear resampling of one axis to round(size * factor) samples, the corners kept (scipy.ndimage.zoom with
    order=1, whose linear interpolation is separable: one axis at a time gives the same result, much faster)."""
    size = x.shape[axis]
    out = int(round(size * factor))
    where = np.arange(out) * ((size - 1) / (out - 1)) if out > 1 else np.zeros(1)
    low = np.minimum(np.floor(where).astype(int), size - 1)
    high = np.minimum(low + 1, size - 1)
    w = (where - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, low, axis=axis) * (1 - w) + np.take(x, high, axis=axis) * w


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre crop of size ceil(H / factor), zoomed back by `factor` (bilinear) and trimmed to H x W."""
    h = x.shape[1]
    ch = int(math.ceil(h / factor))
    top = (h - ch) // 2
    zoomed = _zoom_axis(_zoom_axis(x[:, top:top + ch, top:top + ch], factor, 1), factor, 2)
    trim = (zoomed.shape[1] - h) // 2
    return zoomed[:, trim:trim + h, trim:trim + h]


def zoom_blur(x, factors, rngs):
    out = np.zeros_like(x)
    for f in factors:
        out += _clipped_zoom(x, f)
    return (x + out) / (len(factors) + 1)


def motion_blur(x, c, rngs):
    """ImageMagick's motion blur (radius, sigma, a random angle in [-45, 45] degrees), which the references call,
    by the numpy kernel of the `imagecorruptions` package: 2 * radius + 1 taps along the angle, one-sided Gaussian
    weights, the image edge repeated where a shift leaves it. ImageMagick 6.9.11 gives the same images to 1/255 at
    the same angles (tests/fixtures/corruption_reference.md)."""
    radius, sigma = c
    n, h, w, _ = x.shape
    width = 2 * radius + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    angle = np.deg2rad(_each(rngs, lambda r: r.uniform(-45, 45)))
    batch = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for i in range(width):
        # the package's rounding of the i-th tap's offset along (sin, cos) of the angle
        dy = -np.ceil(i * np.sin(angle) - 0.5).astype(int)
        dx = -np.ceil(i * np.cos(angle) - 0.5).astype(int)
        # past the image border the original stops adding taps for that image (and does not renormalise)
        alive = ((np.abs(dy) < h) & (np.abs(dx) < w)).astype(float)
        rows = np.clip(np.arange(h)[None, :] - dy[:, None], 0, h - 1)
        cols = np.clip(np.arange(w)[None, :] - dx[:, None], 0, w - 1)
        out += weights[i] * alive[:, None, None, None] * x[batch, rows[:, :, None], cols[:, None, :]]
    return out


def contrast(x, c, rngs):
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def brightness(x, c, rngs):
    return _scale_hsv(x, value_add=c)


def saturate(x, c, rngs):
    return _scale_hsv(x, saturation=c)


def jpeg_compression(x, quality, rngs):
    def roundtrip(img):
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert(img.mode)

    return _pil_roundtrip(x, roundtrip)


def pixelate(x, c, rngs):
    h, w = x.shape[1:3]
    return _pil_roundtrip(x, lambda img: img.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))


def elastic_transform(x, c, rngs):
    """A random affine warp of three points (jitter c[2] pixels; OpenCV's warpAffine, BORDER_REFLECT_101), then a
    smooth random displacement field (alpha c[0], sigma c[1]; map_coordinates, reflect), as make_cifar_c.py."""
    alpha, sigma, jitter = c
    n, h, w, _ = x.shape
    centre = np.array([h // 2, w // 2], dtype=float)
    size = min(h, w) // 3
    pts1 = np.array([centre + size, [centre[0] + size, centre[1] - size], centre - size])  # (x, y) points
    pts2 = pts1 + _each(rngs, lambda r: r.uniform(-jitter, jitter, (3, 2)))
    # the forward affine map taking pts1 to pts2 (cv2.getAffineTransform); warpAffine reads the source at its
    # inverse, which maps pts2 back to pts1
    src = np.concatenate([pts2, np.ones((n, 3, 1))], axis=2)  # [N, 3, 3]
    inverse = np.linalg.solve(src, np.broadcast_to(pts1, (n, 3, 2)))  # [N, 3 (x, y, 1), 2]
    matrices = np.zeros((n, 3, 3))
    matrices[:, :2, :] = inverse.transpose(0, 2, 1)
    matrices[:, 2, 2] = 1
    x = _affine(x, matrices, mode="mirror")
    fields = _each(rngs, lambda r: r.uniform(-1, 1, (2, h, w)))
    if sigma > 0:
        fields = ndimage.gaussian_filter(fields, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3)
    dx, dy = alpha * fields[:, 0], alpha * fields[:, 1]
    rows, cols = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    return _sample(x, rows + dy, cols + dx, mode="reflect")


def fog(x, c, rngs, mapsize: int = 32):
    """Add a plasma fractal, rescaled so the image's own maximum is kept. MNIST-C draws a 256x256 fractal and uses
    its top-left 28x28 corner (mapsize 256); CIFAR-10-C a 32x32 one."""
    strength, decay = c
    h, w = x.shape[1:3]
    top = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma(rngs, mapsize, decay)[:, :h, :w, None]
    return x * top / (top + strength)


def spatter(x, c, rngs):
    """MNIST-C's spatter (mud at every severity, its variant of ImageNet-C's): a thresholded blurred noise layer,
    blurred again, where it is >= 0.8 the pixel is covered with mud of grey level 63/255."""
    loc, scale, sigma, threshold, sigma2, _ = c
    layer = _each(rngs, lambda r: r.normal(loc, scale, x.shape[1:]))
    layer = _blur(layer, sigma)
    mask = _blur((layer > threshold).astype(float), sigma2)
    mask[mask < 0.8] = 0
    return x * (1 - mask) + 63 / 255 * mask


def _mnist_c_affine(kind: str):
    def apply(x, c, rngs):
        n, h, w, _ = x.shape
        lin = np.zeros((n, 2, 2))
        if kind == "translate":
            m = np.tile(np.eye(3), (n, 1, 1))
            m[:, :2, 2] = c * _signs(rngs, 2)  # (dx, dy), each of random sign
            return _affine(x, m)
        if kind == "scale":
            lin[:, 0, 0] = lin[:, 1, 1] = c
        else:
            angle = c * _signs(rngs)[:, 0]  # radians, random direction
            # skimage's AffineTransform: rotation r, shear s -> [[cos r, -sin(r + s)], [sin r, cos(r + s)]]
            r, s = (angle, 0 * angle) if kind == "rotate" else (0 * angle, angle)
            lin[:, 0, 0], lin[:, 0, 1] = np.cos(r), -np.sin(r + s)
            lin[:, 1, 0], lin[:, 1, 1] = np.sin(r), np.cos(r + s)
        return _affine(x, _about_centre(lin, h, w))

    apply.__name__ = kind
    return apply


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
    ends = _each(rngs, lambda r: r.integers(0, h - 1, 2))
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


def _canny(x: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Canny edges of [N, H, W] grey images in [0, 1], step by step as skimage.feature.canny with its defaults
    (MNIST-C calls it so): Gaussian smoothing (sigma 1, zero outside and renormalised by the smoothed all-ones
    image), Sobel gradients, non-maximum suppression interpolating the magnitude between the two neighbours on
    each side of the gradient direction, hysteresis between 0.1 and 0.2, the outermost pixels never edges.
    The suppression is skimage's Cython loop (_nonmaximum_suppression_bilinear) vectorised: its four cases, its
    tie rules (>= and <=), its arithmetic in the same order, so the edges are skimage's, pixel for pixel
    (tests/test_corruptions.py checks them against skimage's output stored as a fixture)."""
    blur = (0, sigma, sigma)
    smooth = ndimage.gaussian_filter(x, blur, mode="constant") / \
        (ndimage.gaussian_filter(np.ones_like(x), blur, mode="constant") + np.finfo(float).eps)
    # scipy's sobel (the difference, then [1, 2, 1] along every other axis) minus the batch axis
    def sobel(axis, other):
        return ndimage.correlate1d(ndimage.correlate1d(smooth, [-1, 0, 1], axis, mode="reflect"), [1, 2, 1], other,
                                   mode="reflect")

    i, j = sobel(1, 2), sobel(2, 1)  # d/d row and d/d column (skimage's isobel, jsobel)
    mag = np.sqrt(i * i + j * j)
    ai, aj = np.abs(i), np.abs(j)
    same_sign = ((i >= 0) & (j >= 0)) | ((i <= 0) & (j <= 0))  # skimage's cond1; else cond2
    h, w = x.shape[1:]
    padded = np.pad(mag, ((0, 0), (1, 1), (1, 1)))  # only the border, never an edge, reads the padding

    def at(dr, dc):
        return padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 only where the magnitude is 0: below the threshold
        # (weight, the first side's (near, diagonal) neighbours, the second side's), per case of skimage's loop
        cases = [(same_sign & (ai > aj), aj / ai, (at(1, 0), at(1, 1)), (at(-1, 0), at(-1, -1))),
                 (same_sign & ~(ai > aj), ai / aj, (at(0, 1), at(1, 1)), (at(0, -1), at(-1, -1))),
                 (~same_sign & (ai < aj), ai / aj, (at(0, 1), at(-1, 1)), (at(0, -1), at(1, -1))),
                 (~same_sign & ~(ai < aj), aj / ai, (at(-1, 0), at(-1, 1)), (at(1, 0), at(1, -1)))]
        keep = np.zeros_like(mag, dtype=bool)
        for case, weight, (near1, diag1), (near2, diag2) in cases:
            keep |= case & ((diag1 * weight + near1 * (1.0 - weight)) <= mag) & \
                ((diag2 * weight + near2 * (1.0 - weight)) <= mag)
    interior = np.zeros((h, w), dtype=bool)
    interior[1:-1, 1:-1] = True
    candidates = keep & interior & (mag >= low)
    strong = candidates & (mag >= high)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    labels, count = ndimage.label(candidates, structure=structure)
    hit = np.zeros(count + 1, dtype=bool)
    hit[labels[strong]] = True
    hit[0] = False
    return hit[labels].astype(float)


def canny_edges(x, strength, rngs):
    """MNIST-C replaces the image by its Canny edges (severity 5); lower severities blend the image with them."""
    edges = _canny(x[..., 0])[..., None]
    return (1 - strength) * x + strength * edges


# ---- the families -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """One corruption of a family: its function, its parameters at severities 1-5, and how faithful it is."""

    name: str
    apply: Callable
    levels: tuple  # parameters of severities 1..5
    note: str = ""  # "" = the original recipe; else what is approximated or defined here
    published: int | None = None  # MNIST-C: the severity its published files use (its code's default)


def _fog_256(x, c, rngs):
    return fog(x, c, rngs, mapsize=256)


def _glass_mnist_c(x, c, rngs):
    return glass_blur(x, c, rngs, swap=True, move_probability=0.5, vertical_blur=True)


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
    Corruption("glass_blur", _glass_mnist_c, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
               _GLASS_MNIST, published=1),
    Corruption("motion_blur", motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), _MOTION,
               published=1),
    Corruption("shear", _mnist_c_affine("shear"), (0.2, 0.4, 0.6, 0.8, 1.0), published=2),
    Corruption("scale", _mnist_c_affine("scale"), (1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5), published=3),
    Corruption("rotate", _mnist_c_affine("rotate"), (0.2, 0.4, 0.6, 0.8, 1.0), published=2),
    Corruption("brightness", brightness, (0.1, 0.2, 0.3, 0.4, 0.5), published=5),
    Corruption("translate", _mnist_c_affine("translate"), (1, 2, 3, 4, 5), published=3),
    Corruption("stripe", stripe, (1, 3, 4, 6, 7),
               "MNIST-C has one setting (7 columns inverted at each side); severity k inverts 1, 3, 4, 6, 7",
               published=5),
    Corruption("fog", _fog_256, ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), published=5),
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
    rngs = _generators(seed, dataset, name, severity, indices)
    out = corruption.apply(x.transpose(0, 2, 3, 1), corruption.levels[severity - 1], rngs)
    out = np.clip(out, 0, 1).transpose(0, 3, 1, 2)
    # rounded, not truncated as np.uint8() in the originals: float error would move unchanged pixels a level down
    return np.rint(out * 255).astype(np.uint8) if is_uint8 else out.astype(np.float32)
