"""Corruptions (attnrobust.corruptions): every corruption of both families, at every severity, on a small batch of
real Fashion-MNIST images (the shipped subset) and CIFAR-shaped images built from them."""

from __future__ import annotations

import numpy as np
import pytest

from attnrobust.corruptions import FAMILIES, SEVERITIES, corrupt, expand_names, family_of
from attnrobust.errors import UserError

# Published tables that are not monotone in the mean absolute difference to the clean image, and why; every other
# corruption must be strictly monotone in it.
NOT_MONOTONE = {
    ("CIFAR-10-C-style", "saturate"): "severities 1-2 desaturate (x0.3, x0.1), 3-5 oversaturate (x1.5 ...)",
    ("CIFAR-10-C-style", "elastic_transform"): "the table trades the affine jitter (2.56 px at 1) for elastic "
                                               "displacement (at 5: 0.96 px jitter)",
    ("CIFAR-10-C-style", "glass_blur"): "severities 3 and 5 blur more, which smooths the shuffled pixels back",
    ("MNIST-C-style", "spatter"): "MNIST-C's table moves from many small to few large mud drops at severity 4",
    ("MNIST-C-style", "fog"): "severities 3 and 4 share the strength 2.5 and differ in the fractal's decay only",
}
N = 24


@pytest.fixture(scope="module")
def batches() -> dict[str, np.ndarray]:
    from attnrobust.data import load_dataset

    grey = load_dataset("fashion-mnist-mini", "test")[0][:N].numpy()
    rng = np.random.default_rng(0)
    # CIFAR-shaped: the garments padded to 32x32, each tinted with a random colour over a smooth random background
    from scipy import ndimage

    background = ndimage.gaussian_filter(rng.random((N, 3, 32, 32)), (0, 0, 3, 3))
    background = (background - background.min()) / (background.max() - background.min())
    garment = np.pad(grey[:, 0] / 255, ((0, 0), (2, 2), (2, 2)))[:, None] * rng.random((N, 3, 1, 1))
    rgb = np.rint(255 * np.clip(0.5 * background + garment, 0, 1)).astype(np.uint8)
    return {"MNIST-C-style": grey, "CIFAR-10-C-style": rgb}


CASES = [(label, name) for label, (_, family) in FAMILIES.items() for name in family]


@pytest.mark.parametrize("label,name", CASES, ids=[f"{label[:5]}-{name}" for label, name in CASES])
def test_every_corruption(batches, label, name):
    clean = batches[label]
    distance = []
    for severity in SEVERITIES:
        out = corrupt(clean, name, severity, dataset="d")
        assert out.shape == clean.shape and out.dtype == np.uint8
        distance.append(np.abs(out.astype(float) - clean).mean() / 255)
        if severity in (1, 5):
            again = corrupt(clean, name, severity, dataset="d")
            assert again.tobytes() == out.tobytes()  # same seed, same bytes
            floats = corrupt(clean.astype(np.float32) / 255, name, severity, dataset="d")
            assert floats.dtype == np.float32 and floats.shape == clean.shape
            assert floats.min() >= 0 and floats.max() <= 1
            # the image's draws depend on its index, not on the batch it is in
            single = corrupt(clean[3:4], name, severity, dataset="d", indices=[3])
            assert single.tobytes() == out[3:4].tobytes()
    assert distance[0] > 0, f"{name}: severity 1 leaves the images unchanged"
    if (label, name) in NOT_MONOTONE:
        assert distance[-1] > 0
    else:
        assert all(a < b for a, b in zip(distance, distance[1:])), f"{name}: not monotone: {distance}"


def test_random_corruptions_differ_by_image_index_and_dataset(batches):
    grey = np.repeat(batches["MNIST-C-style"][:1], 2, axis=0)  # the same image twice
    for name in ("shot_noise", "impulse_noise", "glass_blur", "rotate", "fog"):
        out = corrupt(grey, name, 3, dataset="d")
        assert out[0].tobytes() != out[1].tobytes(), name  # different index, different noise
        other = corrupt(grey, name, 3, dataset="other")
        assert other.tobytes() != out.tobytes(), name
    rgb = np.repeat(batches["CIFAR-10-C-style"][:1], 2, axis=0)
    out = corrupt(rgb, "gaussian_noise", 2, dataset="d")
    assert out[0].tobytes() != out[1].tobytes()


def test_unknown_names_and_shapes_are_one_clear_error(batches):
    with pytest.raises(UserError, match=r"attack\.corruptions: unknown corruption 'snow'"):
        corrupt(batches["MNIST-C-style"], "snow", 1, dataset="d")
    with pytest.raises(UserError, match=r"attack\.corruptions: 'defocus_blur' is not in the MNIST-C-style"):
        expand_names(["defocus_blur"], "MNIST-C-style")
    with pytest.raises(UserError, match=r"attack\.corruptions: no corruption family for .* 3x28x28"):
        family_of((3, 28, 28))
    with pytest.raises(UserError, match=r"attack\.severities"):
        corrupt(batches["MNIST-C-style"], "fog", 6, dataset="d")
    assert expand_names(["zigzag", "all"], "MNIST-C-style")[0] == "zigzag"
    assert len(expand_names(["all"], "MNIST-C-style")) == 15
    assert family_of((1, 28, 28)) == "MNIST-C-style" and family_of((3, 32, 32)) == "CIFAR-10-C-style"


def test_closed_forms(batches):
    """Corruptions with a closed form, checked exactly: brightness on grey adds c, contrast keeps the mean,
    stripe at severity 5 inverts 7 columns at each side (MNIST-C's), canny at 5 is binary."""
    grey = batches["MNIST-C-style"]
    out = corrupt(grey.astype(np.float32) / 255, "brightness", 5, dataset="d")
    assert np.allclose(out, np.clip(grey / 255 + 0.5, 0, 1), atol=1e-6)
    stripe = corrupt(grey, "stripe", 5, dataset="d")
    assert np.array_equal(stripe[..., :7], 255 - grey[..., :7]) and np.array_equal(stripe[..., 7:21], grey[..., 7:21])
    edges = corrupt(grey, "canny_edges", 5, dataset="d")
    assert set(np.unique(edges)) <= {0, 255} and (edges == 255).any()
    rgb = batches["CIFAR-10-C-style"].astype(np.float32) / 255
    low = corrupt(rgb, "contrast", 5, dataset="d")
    assert np.allclose(low.mean(axis=(2, 3)), rgb.mean(axis=(2, 3)), atol=2e-3)  # clipping aside
