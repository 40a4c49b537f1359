"""Datasets: specs, readers of the official files, download and MD5 verification, a decoded cache, and the
device-resident loader, one file each:

- specs.py: what a dataset is (DatasetSpec, SourceFile; the built-in datasets' class names and mean/std);
- readers.py: the file formats -> uint8 arrays: IDX (Fashion-MNIST), the CIFAR binary archives, the user's .npz
  and PNG class folders (our own PNG decoder);
- cache.py: the data directory, the per-user cache folder and the decoded-array cache in it;
- catalog.py: the datasets by name: the built-in ones (DATASETS), get_spec, and the user's resolved to a spec;
- store.py: where source files are, MD5 checks, downloads, the embedded file, and the `attnrobust data` verbs
  (download, verify, info);
- loader.py: load_dataset (a split as CPU tensors) and DeviceLoader (batches made on the device).

Where a dataset's files are looked for, first hit wins:

1. the data directory: the `data_dir` argument (`--data-dir`), else $ATTNROBUST_DATA; as DIR/<name>/<file> or
   DIR/<file> (so both `--data-dir ../shared/data` and `--data-dir ../shared/data/fashion-mnist` work);
2. the user cache: $ATTNROBUST_CACHE, else $XDG_CACHE_HOME/attnrobust, else ~/.cache/attnrobust; as
   CACHE/<name>/<file>;
3. a download from the official URL ($ATTNROBUST_MIRROR replaces it: MIRROR/<file>) into CACHE/<name>/, written
   under a temporary name, MD5-checked, then renamed; a failed download leaves nothing behind.

Only official distribution files are read: Fashion-MNIST's four IDX .gz files, and for CIFAR-10/100 the *binary*
archives (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz), read straight from the .tar.gz. Reading the archive
rather than extracted copies is deliberate: the archive is what has a published MD5, so every byte we decode has
been checked. (The pickled "python version" of CIFAR is never read: no pickle anywhere.)

Decoded once, the arrays are cached as CACHE/decoded/<name>-<key>.npz (uint8, no pickle), where <key> is derived
from the sources' MD5s, so different source bytes can never be served from a stale cache. The cache also records
each source's path, size and mtime when it was hashed: a later load whose sources are unchanged by those
measures skips re-hashing (hashing the 170 MB CIFAR archive alone takes about half a second) and takes well
under a second. `attnrobust data verify` always hashes in full.

`fashion-mnist-mini` is embedded in the package (attnrobust/embedded/fashion-mnist-mini.npz, made from the real
files by scripts/make_fashion_mnist_mini.py): no download, no data directory.

The user's own datasets: a name that is not built in is looked up in the data directory (`data_dir` or
$ATTNROBUST_DATA) as either
- DIR/NAME.npz holding uint8 x_train, x_test (N x H x W x C or N x C x H x W, C = 1 or 3, detected; or N x H x W
  for grey) and integer y_train, y_test (labels 0..C-1, every class present in the training split), optionally
  class_names (strings; no pickle: np.savez of a str array is fine); or
- a folder DIR/NAME/train/CLASS/*.png and DIR/NAME/test/CLASS/*.png (8-bit grey or RGB, not interlaced; classes
  are the sorted folder names, the same in both splits; label = index in that order).
Its spec (classes, channels, size, per-channel mean/std over the training split) is computed when it is first
decoded; images keep their size (no resizing, no padding); training augments with random crops (no flips: whether
a mirror image keeps its label is the user's knowledge, not ours). The decoded arrays are cached as
CACHE/decoded/user-NAME-<key of the source path>.npz (never next to the input files) with the sources' sizes and
mtimes and an MD5 of their bytes: unchanged sources are served from the cache, changed bytes are decoded again.
"""

from attnrobust.data.cache import cache_dir
from attnrobust.data.catalog import DATASETS, get_spec
from attnrobust.data.loader import CROP_PAD, DeviceLoader, crop_flip, load_dataset
from attnrobust.data.readers import SPLITS, parse_cifar_records, read_idx
from attnrobust.data.specs import DatasetSpec, SourceFile
from attnrobust.data.store import check_md5, download, info, verify

__all__ = ["CROP_PAD", "DATASETS", "SPLITS", "DatasetSpec", "DeviceLoader", "SourceFile", "cache_dir", "check_md5",
           "crop_flip", "download", "get_spec", "info", "load_dataset", "parse_cifar_records", "read_idx",
           "verify"]
