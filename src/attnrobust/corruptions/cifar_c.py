"""The CIFAR-10-C recipes (Hendrycks & Dietterich's make_cifar_c.py, ImageNet-C's code at 32x32), several of which
MNIST-C reuses with its own tables (shot and impulse noise, glass and motion blur, fog, brightness; mnist_c.py
holds its variants of glass blur and fog).

Each corruption is f(x [N, H, W, C] in [0, 1], the parameters of the severity, rngs) -> x', before clipping.
"""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from attnrobust.corruptions.draws import each
from attnrobust.corruptions.imageops import affine, blur, sample, scale_hsv


def gaussian_noise(x, c, rngs):
    return x + c * each(rngs, lambda r: r.standard_normal(x.shape[1:]))


def shot_noise(x, c, rngs):
    return np.stack([r.poisson(xi * c) for r, xi in zip(rngs, x)]) / c


def impulse_noise(x, amount, rngs):
    """skimage's random_noise(mode='s&p'): each value (each channel) replaced with probability `amount`, by 1 or 0
    with equal chance."""
    u = each(rngs, lambda r: r.random(x.shape[1:]))
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
    x = np.floor(blur(x, sigma) * 255) / 255  # np.uint8(... * 255), as the originals
    walk = [(r, col) for r in range(h - delta, delta, -1) for col in range(w - delta, delta, -1)]
    batch = np.arange(n)
    for _ in range(iterations):
        moves = each(rngs, lambda r: r.random(len(walk)) < move_probability) if move_probability < 1 else \
            np.ones((n, len(walk)), dtype=bool)
        offsets = each(rngs, lambda r: r.integers(-delta, delta, (len(walk), 2))) * moves[..., None]  # (dx, dy)
        for k, (r, col) in enumerate(walk):
            r2, c2 = r + offsets[:, k, 1], col + offsets[:, k, 0]
            neighbour = x[batch, r2, c2]
            if swap:
                x[batch, r2, c2] = x[:, r, col]
            x[:, r, col] = neighbour
    return blur(x, sigma)


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
    angle = np.deg2rad(each(rngs, lambda r: r.uniform(-45, 45)))
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
    return scale_hsv(x, value_add=c)


def saturate(x, c, rngs):
    return scale_hsv(x, saturation=c)


def _pil_roundtrip(x: np.ndarray, process: Callable) -> np.ndarray:
    """Each image through Pillow as 8-bit (the originals work on PIL images), back to floats."""
    out = np.empty_like(x)
    u8 = np.rint(x * 255).astype(np.uint8)
    for i, img in enumerate(u8):
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        out[i] = np.asarray(process(pil), dtype=np.float64).reshape(img.shape) / 255
    return out


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
    pts2 = pts1 + each(rngs, lambda r: r.uniform(-jitter, jitter, (3, 2)))
    # the forward affine map taking pts1 to pts2 (cv2.getAffineTransform); warpAffine reads the source at its
    # inverse, which maps pts2 back to pts1
    src = np.concatenate([pts2, np.ones((n, 3, 1))], axis=2)  # [N, 3, 3]
    inverse = np.linalg.solve(src, np.broadcast_to(pts1, (n, 3, 2)))  # [N, 3 (x, y, 1), 2]
    matrices = np.zeros((n, 3, 3))
    matrices[:, :2, :] = inverse.transpose(0, 2, 1)
    matrices[:, 2, 2] = 1
    x = affine(x, matrices, mode="mirror")
    fields = each(rngs, lambda r: r.uniform(-1, 1, (2, h, w)))
    if sigma > 0:
        fields = ndimage.gaussian_filter(fields, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3)
    dx, dy = alpha * fields[:, 0], alpha * fields[:, 1]
    rows, cols = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    return sample(x, rows + dy, cols + dx, mode="reflect")


def _plasma(rngs, mapsize: int, decay: float) -> np.ndarray:
    """The diamond-square height map of ImageNet-C's fog (a power-of-two square in [0, 1]), for each image:
    [N, mapsize, mapsize]. Each image draws all its wibbles at once from its own generator (mapsize^2 - 1 uniforms,
    used level by level: squares, then the two diamond sets). Vectorised over the batch with the batch as the last
    axis and in float32: the levels write strided grids, which then move whole contiguous vectors (4-5x faster than
    batch-first float64 for MNIST-C's 256x256 map, the costliest corruption to make)."""
    n = len(rngs)
    unit = each(rngs, lambda r: r.uniform(-1, 1, mapsize * mapsize - 1)).T.astype(np.float32)  # [draws, N]
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


def fog(x, c, rngs, mapsize: int = 32):
    """Add a plasma fractal, rescaled so the image's own maximum is kept. MNIST-C draws a 256x256 fractal and uses
    its top-left 28x28 corner (mapsize 256); CIFAR-10-C a 32x32 one."""
    strength, decay = c
    h, w = x.shape[1:3]
    top = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma(rngs, mapsize, decay)[:, :h, :w, None]
    return x * top / (top + strength)
