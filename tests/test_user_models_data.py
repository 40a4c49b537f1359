"""Bring your own model and data: user entry points, declared pairs, user .npz and image-folder datasets."""

from __future__ import annotations

import csv
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnrobust import data
from attnrobust.checkpoint import load_model
from attnrobust.errors import UserError
from attnrobust.models import build_model, code_allowed, model_info, model_options

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, mean, std, hidden, gate):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.gate = nn.Linear(hidden, hidden) if gate else None
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):  # pixels in [0, 1]: normalizing is this model's business
        h = torch.relu(self.conv((x - self.mean) / self.std)).mean((2, 3))
        if self.gate is not None:
            h = h * torch.sigmoid(self.gate(h))
        return self.head(h)


def attn_net(num_classes, in_channels, mean=None, std=None, hidden=4):
    return Net(num_classes, in_channels, mean or [0.0] * in_channels, std or [1.0] * in_channels, hidden, True)


def base_net(num_classes, in_channels, mean=None, std=None, hidden=4):
    return Net(num_classes, in_channels, mean or [0.0] * in_channels, std or [1.0] * in_channels, hidden, False)
'''


def _images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n 12x12 grey images of 4 classes: class k brightens quadrant k (learnable in one tiny epoch)."""
    y = np.arange(n) % 4
    x = rng.integers(0, 60, size=(n, 12, 12, 1))
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 6 * r:6 * r + 6, 6 * c:6 * c + 6] += 180
    return x.astype(np.uint8), y.astype(np.int64)


def _write_npz(path: Path, **override) -> Path:
    rng = np.random.default_rng(0)
    xtr, ytr = _images(200, rng)
    xte, yte = _images(40, rng)
    arrays = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte, **override}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_study_with_user_models_and_dataset(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "data").mkdir()
    _write_npz(tmp_path / "data" / "quads.npz")
    monkeypatch.chdir(tmp_path)  # "./nets.py" is relative to the current directory
    attn, base = "./nets.py:attn_net", "./nets.py:base_net"
    config = {
        "study": {"name": "mine", "datasets": ["quads"], "models": [attn, base], "seeds": [0],
                  "pairs": [[attn, base, "gate"]]},
        "train": {"epochs": 1, "batch_size": 50, "lr": 0.05, "model_args": {"hidden": 6}},
        "attack": {"attacks": ["fgsm", "pgd"], "fgsm_eps": [0.0, 0.05], "pgd_eps": 0.05, "pgd_alpha": 0.02,
                   "pgd_steps": [1, 2], "sanity_checks": False},
        "eval": {"batch_size": 40, "min_clean_accuracy": 0.0},
    }
    from attnrobust.study import run_study

    run = run_study(config, out=tmp_path / "run", data_dir=tmp_path / "data", quiet=True)

    with open(run / "report" / "verdicts.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {(r["attention_model"], r["baseline_model"]) for r in rows} == {(attn, base)}
    assert {r["scenario"] for r in rows} == {"white-box", "transfer (twin)"}
    assert f"{attn} vs {base}" in (run / "report" / "README.md").read_text()
    # nothing was written next to the user's data
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["quads.npz"]

    # the checkpoint records the entry point (absolute) and its arguments, and rebuilds only when allowed
    (ckpt,) = [p for p in (run / "checkpoints").glob("*attn_net*.safetensors") if ".state." not in p.name]
    with pytest.raises(UserError, match=r"refused: if you trust it, allow it with allow_code") as err:
        load_model(ckpt)
    assert "\n" not in str(err.value)
    model = load_model(ckpt, allow_code=[str(tmp_path / "nets.py")])
    assert model.meta["build_args"]["name"] == f"{(tmp_path / 'nets.py').resolve()}:attn_net"
    assert model.meta["build_args"]["hidden"] == 6 and model.meta["build_args"]["in_channels"] == 1
    spec = data.get_spec("quads", tmp_path / "data")
    assert model.meta["build_args"]["mean"] == list(spec.mean)
    assert load_model(ckpt, allow_code=True) is not None

    # the CLI refuses the same checkpoint with one line and exit status 2, and accepts --allow-code
    from attnrobust.cli import main

    assert main(["attack", str(ckpt), "--set", 'attack.attacks=["fgsm"]', "--set", "attack.fgsm_eps=[0.05]",
                 "--num-images", "8",
                 "--data-dir", str(tmp_path / "data"), "--quiet"]) == 2
    assert main(["attack", str(ckpt), "--set", 'attack.attacks=["fgsm"]', "--set", "attack.fgsm_eps=[0.05]",
                 "--num-images", "8",
                 "--data-dir", str(tmp_path / "data"), "--quiet", "--allow-code", "./nets.py"]) == 0


def test_module_entry_points_and_allow_code(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "blocks.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "mypkg.blocks:attn_net"
    model = build_model(name, num_classes=3, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3, hidden=5)
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    assert model.build_args == {"name": name, "num_classes": 3, "in_channels": 3, "mean": [0.5] * 3,
                                "std": [0.25] * 3, "hidden": 5}
    assert model_info(name).base == name and model_info(name).attention is None
    assert model_options(name) == {"hidden": 4}
    assert code_allowed(name, ["mypkg"]) and code_allowed(name, ["mypkg.blocks"]) and code_allowed(name, [name])
    assert not code_allowed(name, ["mypk", "other", "mypkg.blocks.sub"])
    with pytest.raises(UserError, match="unknown argument 'depth'"):
        build_model(name, num_classes=3, depth=2)
    with pytest.raises(UserError, match=r"cannot import 'nopkg.x' \(No module named 'nopkg'\)"):
        build_model("nopkg.x:f", num_classes=3)
    with pytest.raises(UserError, match="has no 'missing'"):
        build_model("mypkg.blocks:missing", num_classes=3)

    from attnrobust.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", model, {"dataset": "x"})
    with pytest.raises(UserError, match=r"--allow-code mypkg\.blocks"):
        load_model(path, allow_code=["otherpkg"])
    again = load_model(path, allow_code=["mypkg"])
    x = torch.rand(2, 3, 8, 8)
    # loaded in the layout it trained in (channels_last by default): the same function in that layout
    assert torch.equal(again(x), model.eval().to(memory_format=torch.channels_last)(x))


def test_notebook_function_in_main(monkeypatch):
    def tiny(num_classes, in_channels):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    monkeypatch.setattr(sys.modules["__main__"], "tiny_fn", tiny, raising=False)
    model = build_model("__main__:tiny_fn", num_classes=4, in_channels=1)
    assert model(torch.rand(2, 1, 5, 5)).shape == (2, 4)
    assert model.build_args["name"] == "__main__:tiny_fn"


def test_declared_pair_in_config_is_checked(tmp_path, monkeypatch):
    from attnrobust.config import load_config

    _write_npz(tmp_path / "quads.npz")
    cfg = {"study": {"datasets": ["quads"], "models": ["resnet14", "vgg16_bn"], "pairs": [["resnet14", "x"]]}}
    with pytest.raises(UserError, match=r"study.pairs\[0\]"):
        load_config(cfg, data_dir=tmp_path)
    cfg["study"]["pairs"] = [["resnet14", "vgg16_bn", "none"]]
    assert load_config(cfg, data_dir=tmp_path).study.pairs == [["resnet14", "vgg16_bn", "none"]]
    with pytest.raises(UserError, match=r"study.datasets\[0\]: unknown dataset 'quads'"):
        load_config(cfg)  # no data directory: not found, and the message says where to put it


def test_user_npz_spec_and_cache(tmp_path):
    _write_npz(tmp_path / "quads.npz")  # NHWC on disk
    spec = data.get_spec("quads", tmp_path)
    assert (spec.num_classes, spec.channels, spec.height, spec.width) == (4, 1, 12, 12)
    assert (spec.train_size, spec.test_size, spec.class_names) == (200, 40, ("0", "1", "2", "3"))
    x, y = data.load_dataset("quads", "train", tmp_path)
    assert x.shape == (200, 1, 12, 12) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert spec.mean[0] == pytest.approx(x.double().div(255).mean().item(), abs=1e-5)
    assert spec.std[0] == pytest.approx(x.double().div(255).std(unbiased=False).item(), abs=1e-5)
    assert len(list((data.cache_dir() / "decoded").glob("user-quads-*.npz"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quads.npz"]
    # new bytes at the same path: decoded again, not served stale
    rng = np.random.default_rng(1)
    xtr, ytr = _images(100, rng)
    _write_npz(tmp_path / "quads.npz", x_train=xtr.transpose(0, 3, 1, 2), y_train=ytr)  # NCHW this time
    assert data.get_spec("quads", tmp_path).train_size == 100
    assert data.load_dataset("quads", "train", tmp_path)[0].shape == (100, 1, 12, 12)


_BAD_NPZ = {
    "float images": ({"x_train": np.zeros((8, 12, 12, 1), np.float32)}, "images are float32, expected uint8"),
    "wrong ndim": ({"x_train": np.zeros((8, 12), np.uint8)}, "expected 4 dimensions"),
    "channels": ({"x_train": np.zeros((8, 12, 12, 4), np.uint8)}, "channel count of 1 or 3"),
    "length": ({"y_train": np.zeros(7, np.int64)}, "8 images but 7 labels"),
    "float labels": ({"y_train": np.zeros(8, np.float32)}, "expected integers 0..C-1"),
    "negative label": ({"y_test": -np.ones(40, np.int64)}, "label -1 is negative"),
    "label out of range": ({"y_test": np.full(40, 9)}, "test label 9 is out of range"),
    "missing key": ({"y_test": None}, "lacks y_test"),
    "sizes differ": ({"x_test": np.zeros((40, 10, 10, 1), np.uint8)}, "both splits must have one size"),
}


@pytest.mark.parametrize("case", list(_BAD_NPZ))
def test_malformed_npz(tmp_path, case):
    override, message = _BAD_NPZ[case]
    if "x_train" in override and "y_train" not in override:
        override = {**override, "y_train": np.arange(len(override["x_train"])) % 4}
    if "y_train" in override and "x_train" not in override:
        override = {**override, "x_train": np.zeros((8, 12, 12, 1), np.uint8)}
    _write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(UserError, match=message) as err:
        data.get_spec("bad", tmp_path)
    assert "\n" not in str(err.value) and "bad.npz" in str(err.value)


def test_corrupt_npz_and_too_many_images(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a readable .npz file"):
        data.get_spec("bad", tmp_path)
    huge = np.broadcast_to(np.zeros((1, 1, 2, 2), np.uint8), (2 ** 31, 1, 2, 2))  # a view: no memory
    with pytest.raises(UserError, match="at most 2147483647"):
        data.readers._to_nchw(huge, "x_train")


# ---- image folders: PNGs written here with zlib + struct (every row filter of the PNG spec), read by Pillow --


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _png(path: Path, img: np.ndarray) -> None:
    """img: H x W x C uint8 (C = 1 or 3); row r uses filter r % 5."""
    h, w, c = img.shape
    rows, prev = [], [0] * (w * c)
    for r in range(h):
        line, kind, out = img[r].reshape(-1).tolist(), r % 5, []
        for i, v in enumerate(line):
            a = line[i - c] if i >= c else 0
            b, cc = prev[i], (prev[i - c] if i >= c else 0)
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, cc)][kind]
            out.append((v - pred) & 255)
        rows.append(bytes([kind] + out))
        prev = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + chunk(b"IEND", b""))


def _folder(root: Path, classes=("cat", "dog"), per_class=3, size=(7, 6), channels=3) -> dict:
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 256, size=(*size, channels), dtype=np.uint8)
                _png(root / split / cls / f"{i}.png", img)
                written[(split, cls, i)] = img
    return written


def test_image_folder_round_trip(tmp_path):
    written = _folder(tmp_path / "pets")
    spec = data.get_spec("pets", tmp_path)
    assert spec.class_names == ("cat", "dog") and (spec.channels, spec.height, spec.width) == (3, 7, 6)
    x, y = data.load_dataset("pets", "test", tmp_path)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(x[4].numpy(), written[("test", "dog", 1)].transpose(2, 0, 1))
    train = np.stack([written[("train", c, i)] for c in ("cat", "dog") for i in range(3)])
    assert spec.mean == pytest.approx(tuple((train / 255).mean((0, 1, 2))), abs=1e-5)
    grey = _folder(tmp_path / "grey", channels=1)
    assert np.array_equal(data.load_dataset("grey", "train", tmp_path)[0][2, 0].numpy(),
                          grey[("train", "cat", 2)][..., 0])


def test_malformed_image_folders(tmp_path):
    def expect(name: str, message: str) -> None:
        with pytest.raises(UserError, match=message) as err:
            data.get_spec(name, tmp_path)
        assert "\n" not in str(err.value)

    _folder(tmp_path / "mixed")
    _png(tmp_path / "mixed" / "train" / "dog" / "9.png", np.zeros((5, 5, 3), np.uint8))
    expect("mixed", "all images must have one size")
    _folder(tmp_path / "empty")
    (tmp_path / "empty" / "test" / "bird").mkdir()
    (tmp_path / "empty" / "train" / "bird").mkdir()
    expect("empty", "empty class folder")
    _folder(tmp_path / "differ")
    _folder(tmp_path / "differ", classes=("eel",), per_class=1)
    for p in (tmp_path / "differ" / "test" / "eel").iterdir():
        p.unlink()
    (tmp_path / "differ" / "test" / "eel").rmdir()
    expect("differ", "only in train: eel; only in test: none")
    _folder(tmp_path / "corrupt")
    png = tmp_path / "corrupt" / "test" / "cat" / "0.png"
    png.write_bytes(png.read_bytes()[:40])
    expect("corrupt", "truncated or corrupt PNG")
    _folder(tmp_path / "alpha")
    Image.fromarray(np.zeros((7, 6, 4), np.uint8)).save(tmp_path / "alpha" / "test" / "dog" / "0.png")
    expect("alpha", "PNG of mode RGBA: only 8-bit grey")
    _folder(tmp_path / "notpng")
    (tmp_path / "notpng" / "train" / "cat" / "x.jpg").write_bytes(b"\xff\xd8")
    expect("notpng", "is not a .png file")
    _folder(tmp_path / "nosplit")
    for p in (tmp_path / "nosplit" / "test").rglob("*.png"):
        p.unlink()
    expect("nosplit", "empty class folder")


def test_ls_never_imports_the_user_code_a_run_names(tmp_path):
    # listing a folder of runs someone else made must not run their code
    from attnrobust.runfolder import list_runs

    run = tmp_path / "runs" / "theirs"
    run.mkdir(parents=True)
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef net(**kw): pass\n")
    (run / "config.toml").write_text(f'[study]\ndatasets = ["fashion-mnist-mini"]\n'
                                     f'models = ["{tmp_path / "evil.py"}:net"]\nseeds = [0]\n')
    text = list_runs(tmp_path / "runs")
    assert "theirs:" in text and "0/2 jobs done" in text and not marker.exists()
