"""Image operations the corruptions share, on float64 [N, H, W, C] in [0, 1], vectorised over the batch: the
Gaussian blur, bilinear sampling and affine warps (skimage.transform.warp's border), the HSV round trip of
skimage.color, and Canny edges as skimage.feature.canny computes them."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def blur(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over H and W of [N, H, W, C] (skimage.filters.gaussian's defaults: mode nearest, truncate 4);
    sigma a number, or (rows, columns) for a blur along one axis."""
    rows, cols = (sigma, sigma) if np.isscalar(sigma) else sigma
    if rows <= 0 and cols <= 0:
        return x
    return ndimage.gaussian_filter(x, sigma=(0, rows, cols, 0), mode=mode, truncate=truncate)


def sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str, order: int = 1) -> np.ndarray:
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


def affine(x: np.ndarray, matrices: np.ndarray, mode: str = "grid-constant") -> np.ndarray:
    """skimage.transform.warp(x, inverse_map=A) per image: output pixel (col, row) reads the input at
    A @ (col, row, 1); matrices [N, 3, 3]. scipy's "constant" would return 0 for any point past the last pixel
    centre; warp (and "grid-constant") interpolates between the edge pixel and 0 there, as MNIST-C's images do."""
    n, h, w, _ = x.shape
    rows, cols = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    src_c = matrices[:, 0, 0, None, None] * cols + matrices[:, 0, 1, None, None] * rows + matrices[:, 0, 2, None, None]
    src_r = matrices[:, 1, 0, None, None] * cols + matrices[:, 1, 1, None, None] * rows + matrices[:, 1, 2, None, None]
    return sample(x, src_r, src_c, mode)


def about_centre(linear: np.ndarray, h: int, w: int) -> np.ndarray:
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


def scale_hsv(x: np.ndarray, saturation: tuple[float, float] | None = None, value_add: float = 0.0) -> np.ndarray:
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


def canny(x: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
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
