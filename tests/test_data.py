"""The dataset layer: readers on small synthetic files in the official formats, the real Fashion-MNIST files
when present, every bad-input case, downloads from a local server, the decoded cache, and the DeviceLoader."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from attnrobust import data
from attnrobust.cli import main
from attnrobust.errors import UserError

# The repo is <root>/main and the shared data sits beside it in <root>/shared.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_FASHION = SHARED_DATA / "fashion-mnist"
needs_real = pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                reason=f"real Fashion-MNIST files not found in {REAL_FASHION}")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test gets its own cache, no data dir, and a dead mirror: no test ever reaches the internet."""
    monkeypatch.setenv("ATTNROBUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTNROBUST_DATA", raising=False)
    monkeypatch.setenv("ATTNROBUST_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---- writers of the official formats ----------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))
    return path


def fake_fashion(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0):
    """Four IDX .gz files with Fashion-MNIST's names; returns (spec whose MD5s match them, arrays)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[split] = (images, labels)
    return respec("fashion-mnist", folder, n_train, n_test), arrays


def respec(name: str, folder: Path, n_train: int, n_test: int) -> data.DatasetSpec:
    """The real spec with the MD5s of the synthetic files in `folder` and their sizes."""
    spec = data.get_spec(name)
    files = tuple(data.SourceFile(f.name, md5(folder / f.name)) for f in spec.files)
    return dataclasses.replace(spec, files=files, train_size=n_train, test_size=n_test)


def cifar_records(images: np.ndarray, labels: list[bytes]) -> bytes:
    return b"".join(lab + img.tobytes() for lab, img in zip(labels, images))


def fake_cifar(folder: Path, name: str, n_train: int = 10, n_test: int = 3, names: bool = True,
               mutate=None):
    """A synthetic cifar-10-binary.tar.gz / cifar-100-binary.tar.gz; returns (spec, arrays, archive path)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    spec = data.get_spec(name)
    members: dict[str, bytes] = {}
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = (np.arange(n) * 7 % spec.num_classes).astype(np.uint8)
        arrays[split] = (images, fine)
        if name == "cifar10":
            labels = [bytes([f]) for f in fine]
            if split == "train":  # five batch files of n/5 records
                for i in range(5):
                    part = slice(i * n // 5, (i + 1) * n // 5)
                    members[f"cifar-10-batches-bin/data_batch_{i + 1}.bin"] = cifar_records(images[part],
                                                                                            labels[part])
            else:
                members["cifar-10-batches-bin/test_batch.bin"] = cifar_records(images, labels)
        else:
            labels = [bytes([f // 5, f]) for f in fine]  # (coarse, fine)
            members[f"cifar-100-binary/{split}.bin"] = cifar_records(images, labels)
    if names:
        text = "\n".join(spec.class_names) + "\n\n"
        members["cifar-10-batches-bin/batches.meta.txt" if name == "cifar10"
                else "cifar-100-binary/fine_label_names.txt"] = text.encode()
    if mutate:
        mutate(members)
    archive = folder / spec.files[0].name
    with tarfile.open(archive, "w:gz") as tar:
        for member, payload in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return respec(name, folder, n_train, n_test), arrays, archive


def use(monkeypatch, spec: data.DatasetSpec) -> None:
    monkeypatch.setitem(data.DATASETS, spec.name, spec)


# ---- readers ----------------------------------------------------------------------------------------------------


def test_idx_roundtrip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / "a.gz", a), ndim=3), a)


@pytest.mark.parametrize("magic", [0x0801, 0x0903, 0x01000803])
def test_idx_bad_magic(tmp_path, magic):
    path = write_idx(tmp_path / "a.gz", np.zeros((2, 3, 4)), magic=magic)
    with pytest.raises(UserError, match=r"bad IDX magic .*expected 0x00000803"):
        data.read_idx(path, ndim=3)


def test_idx_truncated_data_and_gzip(tmp_path):
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(struct.pack(">IIII", 0x0803, 5, 28, 28) + bytes(4 * 28 * 28)))
    with pytest.raises(UserError, match=r"IDX data truncated: 3136 bytes, header dims \(5, 28, 28\) need 3920"):
        data.read_idx(path, ndim=3)
    good = write_idx(tmp_path / "b.gz", np.zeros((5, 28, 28))).read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="not a complete gzip file") as err:
        data.read_idx(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_cifar_records_length_checked():
    with pytest.raises(UserError, match="not a positive multiple of the 3073-byte record"):
        data.parse_cifar_records(bytes(3073 * 2 - 1), 1, "x.bin")
    images, labels = data.parse_cifar_records(bytes([7]) + bytes(range(256)) * 12, 1, "x.bin")
    assert labels.tolist() == [7] and images.shape == (1, 3, 32, 32) and images[0, 0, 0, 1] == 1


# ---- loading synthetic files through the whole pipeline -----------------------------------------------------


def test_fashion_mnist_synthetic_load_and_cache(tmp_path, monkeypatch):
    spec, arrays = fake_fashion(tmp_path / "d")
    use(monkeypatch, spec)
    x, y = data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")
    assert x.dtype == torch.uint8 and x.shape == (20, 1, 28, 28) and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), arrays["train"][0]) and np.array_equal(y.numpy(), arrays["train"][1])
    cached = list((tmp_path / "cache" / "decoded").iterdir())
    assert [p.name for p in cached] == [f"fashion-mnist-{data.cache.decoded_path(spec).name.split('-')[-1]}"]
    # Later loads come from the cache: a reader that would fail is never called.
    use(monkeypatch, dataclasses.replace(spec, reader=None))
    xt, yt = data.load_dataset("fashion-mnist", "test", data_dir=tmp_path / "d")
    assert np.array_equal(xt[:, 0].numpy(), arrays["test"][0])
    # The same files found elsewhere (new path, so re-hashed) still use the cache.
    (tmp_path / "e").mkdir()
    for f in spec.files:
        os.link(tmp_path / "d" / f.name, tmp_path / "e" / f.name)
    assert torch.equal(data.load_dataset("fashion-mnist", "test", data_dir=tmp_path / "e")[0], xt)


@pytest.mark.parametrize("damage", [b"garbage", b"PK\x03\x04garbage", None])
def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    spec, arrays = fake_fashion(tmp_path / "d")
    use(monkeypatch, spec)
    data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")
    cache = data.cache.decoded_path(spec)
    cache.write_bytes(damage if damage is not None else cache.read_bytes()[: cache.stat().st_size // 2])
    x, _ = data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")
    assert np.array_equal(x[:, 0].numpy(), arrays["train"][0])
    assert data.cache.read_decoded(cache, ["train_images"]) is not None  # rewritten whole


def test_changed_source_is_not_served_from_cache(tmp_path, monkeypatch):
    spec, _ = fake_fashion(tmp_path / "d", seed=0)
    use(monkeypatch, spec)
    first = data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")[0]
    spec2, arrays2 = fake_fashion(tmp_path / "d", seed=1)  # new bytes, new MD5s
    use(monkeypatch, spec2)
    second = data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")[0]
    assert not torch.equal(first, second) and np.array_equal(second[:, 0].numpy(), arrays2["train"][0])
    # ...and with the old MD5s the changed files are a checksum mismatch, not the old cached arrays.
    use(monkeypatch, spec)
    with pytest.raises(UserError, match="checksum mismatch"):
        data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")


def test_short_dataset_is_an_error(tmp_path, monkeypatch):
    spec, _ = fake_fashion(tmp_path / "d", n_train=20)
    use(monkeypatch, dataclasses.replace(spec, train_size=30))
    with pytest.raises(UserError, match=r"train split has images \(20, 1, 28, 28\).*expected \(30, 1, 28, 28\)"):
        data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")
    assert not (tmp_path / "cache" / "decoded").exists() or not any((tmp_path / "cache" / "decoded").iterdir())


def test_label_count_mismatch_and_range(tmp_path, monkeypatch):
    spec, _ = fake_fashion(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(19))
    use(monkeypatch, respec("fashion-mnist", tmp_path / "d", 20, 10))
    with pytest.raises(UserError, match=r"labels \(19,\)"):
        data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.full(20, 10))
    use(monkeypatch, respec("fashion-mnist", tmp_path / "d", 20, 10))
    with pytest.raises(UserError, match="labels go up to 10, expected < 10"):
        data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive(tmp_path, monkeypatch, name):
    spec, arrays, _ = fake_cifar(tmp_path / "d", name)
    use(monkeypatch, spec)
    for split in data.SPLITS:
        x, y = data.load_dataset(name, split, data_dir=tmp_path / "d")
        assert x.shape == (len(arrays[split][0]), 3, 32, 32) and x.dtype == torch.uint8
        assert np.array_equal(x.numpy(), arrays[split][0]) and np.array_equal(y.numpy(), arrays[split][1])


def test_cifar_without_names_file(tmp_path, monkeypatch):
    spec, arrays, _ = fake_cifar(tmp_path / "d", "cifar100", names=False)
    use(monkeypatch, spec)
    assert np.array_equal(data.load_dataset("cifar100", "test", data_dir=tmp_path / "d")[1].numpy(),
                          arrays["test"][1])


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.__setitem__("cifar-10-batches-bin/test_batch.bin", m["cifar-10-batches-bin/test_batch.bin"][:-5]),
     "not a positive multiple of the 3073-byte record"),
    (lambda m: m.pop("cifar-10-batches-bin/data_batch_3.bin"), "archive lacks cifar-10-batches-bin/data_batch_3.bin"),
    (lambda m: m.__setitem__("cifar-10-batches-bin/batches.meta.txt", b"cat\ndog\n"), "differ from the 10"),
])
def test_cifar_malformed_archive(tmp_path, monkeypatch, mutate, message):
    spec, _, archive = fake_cifar(tmp_path / "d", "cifar10", mutate=mutate)
    use(monkeypatch, spec)
    with pytest.raises(UserError, match=message) as err:
        data.load_dataset("cifar10", "train", data_dir=tmp_path / "d")
    assert str(archive) in str(err.value)


def test_cifar_truncated_archive(tmp_path, monkeypatch):
    _, _, archive = fake_cifar(tmp_path / "d", "cifar10")
    archive.write_bytes(archive.read_bytes()[:-100])
    use(monkeypatch, respec("cifar10", tmp_path / "d", 10, 3))
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        data.load_dataset("cifar10", "train", data_dir=tmp_path / "d")


# ---- bad input ----------------------------------------------------------------------------------------------


def test_unknown_names():
    with pytest.raises(UserError, match="unknown dataset 'nosuch'; valid datasets: fashion-mnist, "
                                        "fashion-mnist-mini, cifar10, cifar100"):
        data.get_spec("nosuch")
    with pytest.raises(UserError, match="valid splits: train, test"):
        data.load_dataset("fashion-mnist-mini", "val")


def test_checksum_mismatch(tmp_path):
    fake_fashion(tmp_path / "d")  # official names and the official spec: MD5s differ
    with pytest.raises(UserError) as err:
        data.load_dataset("fashion-mnist", "train", data_dir=tmp_path / "d")
    msg = str(err.value)
    assert "checksum mismatch" in msg and "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in msg
    assert md5(tmp_path / "d" / "train-images-idx3-ubyte.gz") in msg and str(tmp_path / "d") in msg
    assert "attnrobust data download fashion-mnist" in msg and "\n" not in msg
    with pytest.raises(UserError, match="checksum mismatch"):
        data.verify("fashion-mnist", data_dir=tmp_path / "d", quiet=True)


def test_missing_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError) as err:
        data.load_dataset("cifar10", "train", data_dir=tmp_path / "d", download=False)
    msg = str(err.value)
    assert "cifar-10-binary.tar.gz not found" in msg and str(tmp_path / "d") in msg
    assert str(tmp_path / "cache" / "cifar10") in msg and "attnrobust data download cifar10" in msg
    assert "http://127.0.0.1:9/cifar-10-binary.tar.gz" in msg and "\n" not in msg
    # With downloading allowed the failed download is part of the same one-line message.
    with pytest.raises(UserError, match=r"not found .* and the download failed: .*Connection refused"):
        data.load_dataset("cifar10", "train", data_dir=tmp_path / "d")
    assert not any((tmp_path / "cache").rglob("*.*"))


# ---- downloads from a local server --------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; /broken/* promises 100000 bytes and hangs up after 10."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/broken/"):
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                return
            super().do_GET()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


def test_download_then_load(tmp_path, monkeypatch, server):
    root, url = server
    spec, arrays = fake_fashion(root)
    use(monkeypatch, spec)
    paths = data.download("fashion-mnist", base_url=url, quiet=True)
    assert [p.parent for p in paths] == [tmp_path / "cache" / "fashion-mnist"] * 4
    assert [md5(p) for p in paths] == [f.md5 for f in spec.files]
    for p in root.iterdir():  # the server is no longer needed: everything comes from the cache
        p.unlink()
    assert np.array_equal(data.load_dataset("fashion-mnist", "test")[0][:, 0].numpy(), arrays["test"][0])


def test_load_downloads_from_mirror_env(tmp_path, monkeypatch, server):
    root, url = server
    spec, arrays, _ = fake_cifar(root, "cifar10")
    use(monkeypatch, spec)
    monkeypatch.setenv("ATTNROBUST_MIRROR", url)
    assert np.array_equal(data.load_dataset("cifar10", "test")[1].numpy(), arrays["test"][1])
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz").is_file()


def test_download_into_data_dir_and_file_url(tmp_path, monkeypatch):
    spec, _ = fake_fashion(tmp_path / "src")
    use(monkeypatch, spec)
    paths = data.download("fashion-mnist", data_dir=tmp_path / "d", base_url=(tmp_path / "src").as_uri(),
                          quiet=True)
    assert all(p.parent == tmp_path / "d" / "fashion-mnist" for p in paths)
    data.verify("fashion-mnist", data_dir=tmp_path / "d", quiet=True)


@pytest.mark.parametrize("case", ["wrong-bytes", "not-found", "hang-up"])
def test_failed_download_leaves_nothing(tmp_path, monkeypatch, server, case):
    root, url = server
    spec, _, archive = fake_cifar(root, "cifar10")
    if case == "wrong-bytes":
        archive.write_bytes(b"not the archive")
    elif case == "not-found":
        archive.unlink()
    else:
        url += "broken/"
    use(monkeypatch, spec)
    expect = {"wrong-bytes": f"checksum mismatch: expected MD5 {spec.files[0].md5}, got "
                             f"{hashlib.md5(b'not the archive').hexdigest()}",
              "not-found": "404", "hang-up": "connection closed after 10 of 100000 bytes"}[case]
    with pytest.raises(UserError, match=expect) as err:
        data.download("cifar10", base_url=url, quiet=True)
    assert "\n" not in str(err.value)
    dest = tmp_path / "cache" / "cifar10"
    assert not dest.exists() or list(dest.iterdir()) == []


# ---- the real files and the embedded subset -----------------------------------------------------------------


@needs_real
def test_real_fashion_mnist(capsys):
    assert len(data.verify("fashion-mnist", data_dir=SHARED_DATA)) == 4
    assert capsys.readouterr().out.count("OK  ") == 4
    spec = data.get_spec("fashion-mnist")
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = data.load_dataset("fashion-mnist", split, data_dir=SHARED_DATA)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert y.bincount(minlength=10).tolist() == [n // 10] * 10
        if split == "train":  # the spec's mean/std were computed from exactly this (via a histogram: cheap)
            counts = torch.bincount(x.flatten(), minlength=256).double()
            values = torch.arange(256, dtype=torch.float64) / 255
            mean = (counts * values).sum() / counts.sum()
            std = ((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt()
            assert abs(mean.item() - spec.mean[0]) < 1e-4 and abs(std.item() - spec.std[0]) < 1e-4


@needs_real
def test_mini_is_a_balanced_subset_of_the_real_files():
    with np.load(data.store._embedded_path(data.get_spec("fashion-mnist-mini")), allow_pickle=False) as z:
        mini = {k: z[k] for k in z.files}
    spec = data.get_spec("fashion-mnist")
    assert mini["source_md5"].tolist() == [f.md5 for f in spec.files]
    real = spec.reader(spec, {f.name: REAL_FASHION / f.name for f in spec.files})
    for split in data.SPLITS:
        idx = mini[f"{split}_indices"]
        assert np.array_equal(mini[f"{split}_images"], real[f"{split}_images"][idx])
        assert np.array_equal(mini[f"{split}_labels"], real[f"{split}_labels"][idx])


def test_mini_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNROBUST_DATA", str(tmp_path / "nowhere"))
    x, y = data.load_dataset("fashion-mnist-mini", "train")
    assert x.shape == (6000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.bincount().tolist() == [600] * 10
    xt, yt = data.load_dataset("fashion-mnist-mini", "test")
    assert xt.shape == (1000, 1, 28, 28) and yt.bincount().tolist() == [100] * 10
    assert data.get_spec("fashion-mnist-mini").class_names == data.get_spec("fashion-mnist").class_names
    assert data.store._embedded_path(data.get_spec("fashion-mnist-mini")).stat().st_size < 5_000_000


# ---- the loader ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_test():
    return data.load_dataset("fashion-mnist-mini", "test")


def batches(loader, epoch=0):
    return list(loader.epoch(epoch))


def test_loader_shapes_range_and_padding(mini_test):
    x, y = mini_test
    loader = data.DeviceLoader(x, y, batch_size=64)
    assert len(loader) == 16
    got = batches(loader)
    assert [len(b[1]) for b in got] == [64] * 15 + [40]
    xb, yb = got[0]
    # No augmentation, no shuffle, no pad_to: exactly the dataset's own 28x28 pixels, divided by 255.
    assert xb.dtype == torch.float32 and xb.shape == (64, 1, 28, 28) and yb.dtype == torch.int64
    assert torch.equal(xb, x[:64].float() / 255) and torch.equal(yb, y[:64])
    padded = batches(data.DeviceLoader(x, y, batch_size=64, pad_to=32))[0][0]
    # pad_to: zero-padded by 2 on every side
    assert padded.shape == (64, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30], xb)
    assert padded[:, :, :2].abs().sum() == 0 and padded[:, :, :, 30:].abs().sum() == 0
    assert len(data.DeviceLoader(x, y, batch_size=64, drop_last=True)) == 15
    assert len(batches(data.DeviceLoader(x, y, batch_size=64, drop_last=True))) == 15


def test_loader_deterministic_and_epochs_differ(mini_test):
    x, y = mini_test[0][:300], mini_test[1][:300]

    def make():
        return data.DeviceLoader(x, y, batch_size=100, shuffle=True, augment="crop_flip", seed=3)

    a, b = batches(make(), 1), batches(make(), 1)
    assert len(a) == 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(batches(make()), list(iter(make()))))
    assert not torch.equal(a[0][1], batches(make(), 2)[0][1])
    other_seed = data.DeviceLoader(x, y, batch_size=100, shuffle=True, augment="crop_flip", seed=4)
    assert not torch.equal(a[0][1], batches(other_seed, 1)[0][1])
    # Shuffling permutes: every sample exactly once per epoch.
    assert sorted(torch.cat([q[1] for q in a]).tolist()) == sorted(y.tolist())


def test_loader_augmentation_changes_images_but_not_labels(mini_test):
    x, y = mini_test
    plain = batches(data.DeviceLoader(x, y, batch_size=500))
    crop = batches(data.DeviceLoader(x, y, batch_size=500, augment="crop"))
    assert torch.equal(plain[0][1], crop[0][1]) and not torch.equal(plain[0][0], crop[0][0])


def test_loader_sharding_disjoint_equal_and_covering():
    n = 103
    images, labels = torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n)
    shards = []
    for rank in range(4):
        loader = data.DeviceLoader(images, labels, batch_size=8, shuffle=True, seed=1, rank=rank,
                                   world_size=4, pad_to=4)
        shards.append(torch.cat([b[1] for b in loader.epoch(5)]).tolist())
        assert len(loader) == 4  # 25 samples per rank in batches of 8
    assert [len(s) for s in shards] == [25] * 4
    union = set().union(*shards)
    assert len(union) == 100 and set(range(n)) - union and len(set(range(n)) - union) == 3
    covering = [torch.cat([b[1] for b in data.DeviceLoader(images, labels, batch_size=8, shuffle=True, seed=1,
                                                              rank=r, world_size=4, pad_to=4,
                                                              equal_shards=False).epoch(5)]).tolist()
                for r in range(4)]
    assert sorted(sum(covering, [])) == list(range(n)) and {len(c) for c in covering} == {25, 26}
    whole = data.DeviceLoader(images[:100], labels[:100], batch_size=8, rank=1, world_size=2, pad_to=4)
    assert torch.cat([b[1] for b in whole]).tolist() == list(range(50, 100))


def test_crop_flip_geometry():
    x = torch.randint(0, 256, (3, 2, 6, 5), dtype=torch.uint8)
    four = torch.full((3,), 4)
    assert torch.equal(data.crop_flip(x, four, four), x)  # offset (4,4) = no shift
    assert torch.equal(data.crop_flip(x, four, four, torch.ones(3, dtype=torch.bool)), x.flip(-1))
    zero = torch.zeros(3, dtype=torch.long)
    shifted = data.crop_flip(x, zero, zero)  # content moves down-right by 4, zeros fill in
    assert torch.equal(shifted[..., 4:, 4:], x[..., :-4, :-4]) and shifted[..., :4, :].sum() == 0
    mixed = data.crop_flip(x, torch.tensor([4, 8, 4]), torch.tensor([4, 4, 5]), torch.tensor([True, False, False]))
    assert torch.equal(mixed[0], x[0].flip(-1))
    assert torch.equal(mixed[1, :, :2], x[1, :, 4:]) and mixed[1, :, 2:].sum() == 0
    assert torch.equal(mixed[2, :, :, :4], x[2, :, :, 1:])


def test_loader_rejects_bad_arguments(mini_test):
    x, y = mini_test
    with pytest.raises(UserError, match="unknown augmentation 'rotate'"):
        data.DeviceLoader(x, y, batch_size=8, augment="rotate")
    with pytest.raises(UserError, match="batch size"):
        data.DeviceLoader(x, y, batch_size=0)
    with pytest.raises(UserError, match="rank 2 of world size 2"):
        data.DeviceLoader(x, y, batch_size=8, rank=2, world_size=2)
    with pytest.raises(UserError, match="uint8"):
        data.DeviceLoader(x.float(), y, batch_size=8)


# ---- CLI ----------------------------------------------------------------------------------------------------


def test_cli_info_mini(capsys):
    assert main(["data", "info", "fashion-mnist-mini"]) == 0
    out = capsys.readouterr().out
    assert "train: 6000" in out and "test: 1000" in out and "Ankle boot" in out


def test_cli_verify_mini(capsys):
    assert main(["data", "verify", "fashion-mnist-mini"]) == 0
    assert capsys.readouterr().out.startswith("OK  ")


@pytest.mark.parametrize("argv, message", [
    (["data", "verify", "nosuch"], "unknown dataset 'nosuch'; valid datasets:"),
    (["data", "verify", "cifar100"], "cifar-100-binary.tar.gz not found"),
    (["data", "download", "cifar10"], "could not download cifar-10-binary.tar.gz"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("attnrobust: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
