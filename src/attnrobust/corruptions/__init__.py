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

One module per part, each importing only those listed before it:
- draws.py: the per-image generators (`generators`) and the draws made from them;
- imageops.py: the image operations the corruptions share (blur, bilinear sampling, affine warps, the HSV round
  trip, Canny edges), each matching the skimage/OpenCV call the references make;
- cifar_c.py: the CIFAR-10-C recipes, several of which MNIST-C reuses;
- mnist_c.py: MNIST-C's own corruptions and its variants of the shared recipes;
- registry.py: `Corruption`, both families' severity tables (`CIFAR_C`, `MNIST_C`, `FAMILIES`), `family_of`,
  `expand_names` and `corrupt`.

Import the names from here (`from attnrobust.corruptions import corrupt`): which module holds one is this package's
business.
"""

from attnrobust.corruptions.registry import (ALL_NAMES, CIFAR_C, FAMILIES, MNIST_C, SEVERITIES, Corruption, corrupt,
                                             expand_names, family_names, family_of)

__all__ = ["Corruption", "FAMILIES", "MNIST_C", "CIFAR_C", "SEVERITIES", "family_of", "family_names",
           "expand_names", "corrupt", "ALL_NAMES"]
