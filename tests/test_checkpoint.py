"""Checkpoints: round trip, metadata, wrappers stripped, resume state without pickle, clear errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from attnrobust.checkpoint import (load_model, load_train_state, read_meta, save_checkpoint, save_train_state,
                                   unwrap)
from attnrobust.errors import UserError
from attnrobust.models import build_model


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("resnet14", 10, in_channels=1, width=4, mean=[0.3], std=[0.4])


def meta():
    return {"dataset": "fashion-mnist-mini", "epoch": 1, "epochs": 2, "metrics": {"test_acc": 0.5}}


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_rebuilds_model_in_eval_mode(tmp_path):
    model = tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model, meta())
    loaded = load_model(path)
    assert not loaded.training
    assert_same_state(model, loaded)
    assert loaded.meta["build_args"] == model.build_args
    assert loaded.meta["metrics"] == {"test_acc": 0.5}
    assert read_meta(path) == loaded.meta
    x = torch.rand(2, 1, 32, 32)
    # loaded in the layout it trained in (channels_last unless its train config said otherwise): the same
    # function as the original in that layout, bit for bit
    assert loaded.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(model.eval().to(memory_format=torch.channels_last)(x), loaded(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_a_model_trained_without_channels_last_loads_contiguous(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny(), {**meta(), "train": {"channels_last": False}})
    assert load_model(path).stem[0].weight.is_contiguous()


def test_wrapper_prefixes_are_stripped(tmp_path):
    model = tiny()

    class Wrapper(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    wrapped = Wrapper(model)
    assert unwrap(wrapped) is model
    path = save_checkpoint(tmp_path / "w.safetensors", wrapped, meta())
    assert_same_state(model, load_model(path))


def test_missing_corrupt_and_foreign_files_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 10 + b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.safetensors"):
        load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not written by attnrobust"):
        read_meta(foreign)


def test_truncated_and_bit_flipped_files_raise_user_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny(), meta())
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(UserError, match="corrupt"):
        load_model(path)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # inside the tensor data: the header still parses
    path.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="checksum"):
        load_model(path)


def test_weights_not_fitting_the_model_raise_user_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny(), {**meta(), "build_args": {
        **tiny().build_args, "width": 8}})
    with pytest.raises(UserError, match="do not fit"):
        load_model(path)


def test_train_state_round_trip_restores_the_optimizer(tmp_path):
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(2):
        opt.zero_grad()
        model(torch.rand(4, 1, 32, 32)).sum().backward()
        opt.step()
    path = save_train_state(tmp_path / "s.safetensors", model, opt, {"epoch": 3, "history": [{"a": 1}]})
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert "attnrobust_state" in header["__metadata__"]

    state, optim_state, info = load_train_state(path)
    assert info == {"epoch": 3, "history": [{"a": 1}]}
    fresh = tiny(seed=1)
    fresh.load_state_dict(state)
    assert_same_state(model, fresh)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    opt2.load_state_dict(optim_state)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        assert torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"])
