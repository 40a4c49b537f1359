"""What a dataset is: DatasetSpec (shape, classes, normalization, augmentation, source files) and SourceFile, and
the published facts of the built-in datasets (class names, per-channel mean/std) that catalog.py builds their specs
from. The bottom of data/: it imports none of its neighbours, which all speak of a DatasetSpec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# What a reader returns: {"train_images": uint8 [N,C,H,W], "train_labels": uint8 [N], "test_images": ...,
# "test_labels": ...}
Arrays = dict[str, np.ndarray]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The 100 fine labels in the order of the archive's fine_label_names.txt (alphabetical = label index).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# Per-channel mean/std of pixel values in [0,1] over all pixels of the training split (what the models use to
# normalize inside themselves).
# Fashion-MNIST: computed here from the official train-images-idx3-ubyte.gz (60000 images): 0.2860 / 0.3530.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
# CIFAR-10/100: the standard values over the 50000 training images (the dataset-wide pixel std; the other
# triple often quoted for CIFAR-10, (0.2023, 0.1994, 0.2010), is an average of per-image stds, not this).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class SourceFile:
    """One official distribution file and its official MD5."""

    name: str
    md5: str


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is (shape, classes, normalization, augmentation) and where its bytes come from.

    A dataset is a spec plus a reader: `reader(spec, paths)` turns the verified source files (file name -> Path)
    into uint8 arrays; `embedded` names a file in attnrobust/embedded/ instead of source files.
    """

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # "crop" | "crop_flip": what training applies (DeviceLoader's augment)
    train_size: int
    test_size: int
    files: tuple[SourceFile, ...] = ()
    urls: tuple[str, ...] = ()  # official base URLs, tried in order; a file's URL is base + file name
    reader: Callable[[DatasetSpec, dict[str, Path]], Arrays] | None = field(default=None, compare=False,
                                                                            repr=False)
    embedded: str | None = None
    citation: str = ""
    source: str | None = None  # a user dataset's .npz file or image folder (see the attnrobust.data docstring)

    def size(self, split: str) -> int:
        return self.train_size if split == "train" else self.test_size
