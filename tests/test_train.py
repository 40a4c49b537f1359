"""Training: bit-for-bit determinism, exact resume (also after a real SIGKILL), refusals, NaN stop, DDP on gloo."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import attnrobust.train as train_mod
from attnrobust import cli
from attnrobust.checkpoint import load_model, read_meta
from attnrobust.errors import UserError
from attnrobust.config import TrainConfig
from attnrobust.train import checkpoint_path, is_finished, lr_at, train

# Tiny on purpose: 4 steps of 16 images per epoch, 32 test images.
TINY = dict(width=4, epochs=2, batch_size=16, n_train=64, n_test=32, lr=0.05)


def tiny_cfg(model="resnet14", **kw):
    return TrainConfig.for_dataset("fashion-mnist-mini", model=model, seed=0, **{**TINY, **kw})


def weights(path):
    return load_file(str(path))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted tiny run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("reference")
    return train(tiny_cfg(), out, device="cpu", quiet=True)


def test_layout_log_and_metadata(reference):
    out = reference.parent.parent
    cfg = tiny_cfg()
    name = "fashion-mnist-mini-resnet14-s0-w4"  # width 4 is not the recipe's 8: the name says so
    assert reference == checkpoint_path(cfg, out) == out / "checkpoints" / f"{name}.safetensors"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [reference.name]  # resume state removed
    lines = [json.loads(line) for line in (out / "logs" / f"{name}.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert set(r) == {"epoch", "loss", "train_acc", "test_acc", "adv_test_acc", "catastrophic_overfitting",
                          "lr", "images_per_s", "seconds"}
        assert r["adv_test_acc"] is None and r["catastrophic_overfitting"] is False  # no check when standard
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["threads"] >= 1
    meta = read_meta(reference)
    assert meta["epoch"] == meta["epochs"] == 2
    assert meta["dataset"] == "fashion-mnist-mini" and meta["num_classes"] == 10 and meta["in_channels"] == 1
    assert meta["train"]["lr"] == 0.05 and meta["metrics"] == lines[-1]
    assert meta["regime"] == "standard" and meta["catastrophic_overfitting"] is False
    model = load_model(reference)
    assert model.build_args["width"] == 4 and not model.training
    assert is_finished(cfg, out)


def test_same_seed_same_weights_bit_for_bit(reference, tmp_path):
    assert_same_weights(reference, train(tiny_cfg(), tmp_path, device="cpu", quiet=True))


def test_other_seed_other_weights(reference, tmp_path):
    other = train(TrainConfig.for_dataset("fashion-mnist-mini", model="resnet14", seed=1, **TINY), tmp_path,
                  device="cpu", quiet=True)
    assert other.name == "fashion-mnist-mini-resnet14-s1-w4.safetensors"
    a, b = weights(reference), weights(other)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way up handles it."""


@pytest.mark.parametrize("where", ["after_checkpoint", "between_state_and_checkpoint"])
def test_resume_equals_uninterrupted(reference, tmp_path, monkeypatch, where):
    real_save = train_mod.save_checkpoint

    def save_then_die(path, model, meta):
        if where == "between_state_and_checkpoint" and meta["epoch"] == 2:
            raise Killed  # the state file already holds epoch 2; the checkpoint is still at epoch 1
        real_save(path, model, meta)
        if where == "after_checkpoint" and meta["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(tiny_cfg(), tmp_path, device="cpu", quiet=True)
    assert read_meta(checkpoint_path(tiny_cfg(), tmp_path))["epoch"] == 1
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = train(tiny_cfg(), tmp_path, device="cpu", quiet=True)
    assert_same_weights(reference, resumed)
    log = (tmp_path / "logs" / "fashion-mnist-mini-resnet14-s0-w4.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]
    assert not list((tmp_path / "checkpoints").glob("*.state.safetensors"))


def test_finished_run_is_not_retrained(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(reference.parent.parent, out)
    before = checkpoint_path(tiny_cfg(), out).stat().st_mtime_ns

    def no_data(*a, **k):
        raise AssertionError("a finished run must not load data or train")

    monkeypatch.setattr("attnrobust.data.load_dataset", no_data)
    assert train(tiny_cfg(), out, device="cpu", quiet=True) == checkpoint_path(tiny_cfg(), out)
    assert checkpoint_path(tiny_cfg(), out).stat().st_mtime_ns == before
    # speed-only settings may change without counting as another run
    assert train(tiny_cfg(eval_every=2, n_test=10), out, device="cpu", quiet=True).exists()


def test_folder_of_another_run_is_refused(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference.parent.parent, out)
    with pytest.raises(UserError, match=r"different config \(lr 0.05 there, 0.1 now\).*new output folder"):
        train(tiny_cfg(lr=0.1), out, device="cpu", quiet=True)
    assert not is_finished(tiny_cfg(lr=0.1), out)


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    path = checkpoint_path(tiny_cfg(), tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match=str(path.name)):
        train(tiny_cfg(), tmp_path, device="cpu", quiet=True)
    assert not is_finished(tiny_cfg(), tmp_path)


def test_corrupt_resume_state_is_a_user_error(tmp_path):
    state = checkpoint_path(tiny_cfg(), tmp_path).with_suffix(".state.safetensors")
    state.parent.mkdir(parents=True)
    state.write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"resume state .*\.state\.safetensors is corrupt.*delete it"):
        train(tiny_cfg(), tmp_path, device="cpu", quiet=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):  # fine for the first epoch (4 steps), NaN afterwards
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(UserError, match=r"loss became nan in epoch 2.*epoch 1\) is kept.*--lr"):
        train(tiny_cfg(), tmp_path, device="cpu", quiet=True)
    model = load_model(checkpoint_path(tiny_cfg(), tmp_path))
    assert model.meta["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("field, value, match", [
    ("model", "resnet9000", "model: unknown model"),
    ("dataset", "mnist", "dataset:"),
    ("epochs", 0, "epochs: must be a positive integer"),
    ("batch_size", -1, "batch_size: must be a positive integer"),
    ("batch_size", 65, "batch_size: 65 is larger than the 64 training images"),
    ("lr", 0.0, "lr: must be a positive number"),
    ("schedule", "step", "schedule: must be one of onecycle, cosine"),
    ("warmup_epochs", 5, "warmup_epochs: must be between 0 and epochs"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("width", 0, "width"),
])
def test_bad_config_values(field, value, match):
    cfg = tiny_cfg()
    setattr(cfg, field, value)
    with pytest.raises(UserError, match=match):
        cfg.validate()


def test_batch_larger_than_the_data(tmp_path):
    cfg = TrainConfig.for_dataset("fashion-mnist-mini", model="resnet14", width=4, batch_size=7000)
    with pytest.raises(UserError, match="batch_size: 7000 is larger than the 6000 training images"):
        train(cfg, tmp_path, device="cpu", quiet=True)


def test_for_dataset_rejects_unknown_setting():
    with pytest.raises(UserError, match="train.lrr: unknown key; valid keys: "):
        TrainConfig.for_dataset("cifar10", model="resnet50", lrr=0.1)
    cfg = TrainConfig.for_dataset("cifar10", model="resnet50", seed=3, epochs=2)
    assert (cfg.dataset, cfg.model, cfg.seed, cfg.epochs, cfg.width) == ("cifar10", "resnet50", 3, 2, 64)


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 10, 1.0, "onecycle") for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == lrs[10] == 1.0 and all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    assert 0 < lrs[-1] < 0.02
    cos = [lr_at(s, 100, 10, 1.0, "cosine") for s in range(100)]
    assert cos[10] == 1.0 and 0 < cos[-1] < 0.01


@pytest.mark.parametrize("setting, words", [
    ("train.epochs=0", "train.epochs: must be a positive integer, got 0"),
    ("train.epochs='ten'", "train.epochs"),
    ("train.epcohs=3", "train.epcohs"),  # a typo is named, with the valid keys
    ("attack.pgd_steps=[5]", "only [train] keys apply here"),
    ("train.seed=1", "train.seed: give it as --seed"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, setting, words):
    code = cli.main(["train", "--dataset", "fashion-mnist-mini", "--model", "resnet14", "--set", setting,
                     "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("attnrobust: error: ") and words in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_cli_train_one_epoch(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "fashion-mnist-mini", "--model", "vgg16_bn", "--set", "train.width=4",
                     "--set", "train.epochs=1", "--set", "train.batch_size=64", "--out", str(tmp_path / "out"),
                     "--quiet"])
    assert code == 0
    assert "checkpoint:" in capsys.readouterr().out
    meta = read_meta(tmp_path / "out" / "checkpoints" / "fashion-mnist-mini-vgg16_bn-s0-w4.safetensors")
    assert meta["epoch"] == 1 and meta["metrics"]["test_acc"] > 0.5  # 75% measured; chance is 10%


# ---- real processes ---------------------------------------------------------------------------------------------

DRIVER = textwrap.dedent("""
    import json, sys
    from attnrobust.config import TrainConfig
    from attnrobust.train import train
    cfg = TrainConfig.for_dataset("fashion-mnist-mini", model=sys.argv[2], **json.loads(sys.argv[3]))
    train(cfg, sys.argv[1], device="cpu", quiet=True)
""")


def _driver(tmp_path: Path) -> Path:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return script


def _env():
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env["ATTNROBUST_THREADS"] = str(torch.get_num_threads())  # same threads as this process: same kernels
    return env


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_equals_uninterrupted(tmp_path):
    # 16 steps per epoch, 6 epochs: long enough that a kill soon after the first checkpoint lands mid-run on
    # an idle machine, short enough for a test.
    settings = {**TINY, "epochs": 6, "n_train": 256}
    script, out = _driver(tmp_path), tmp_path / "killed"
    args = [sys.executable, str(script), str(out), "resnet14", json.dumps(settings)]
    proc = subprocess.Popen(args, env=_env())
    ckpt = out / "checkpoints" / "fashion-mnist-mini-resnet14-s0-w4.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # inside epoch 2: between writes, or inside one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_meta(ckpt)["epoch"] < 6, "the run finished before it could be killed; make it longer"
    cfg = TrainConfig.for_dataset("fashion-mnist-mini", model="resnet14", **settings)
    train(cfg, out, device="cpu", quiet=True)  # the rerun, in this process (same thread count as the killed one)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]  # no state, no stray temporary file
    reference = train(TrainConfig.for_dataset("fashion-mnist-mini", model="resnet14", **settings),
                      tmp_path / "reference", device="cpu", quiet=True)
    assert_same_weights(reference, ckpt)


@pytest.mark.slow
def test_ddp_two_processes_on_gloo_match_one_process(tmp_path):
    # vgg16 (no BatchNorm, no dropout at the CIFAR stem): per-rank BatchNorm statistics would be the only
    # legitimate difference between the runs, so a model without it must follow the single-process curve.
    settings = {**TINY, "epochs": 2, "batch_size": 32, "n_train": 128, "width": 8, "lr": 0.02}
    script = _driver(tmp_path)
    env = _env()
    env["ATTNROBUST_THREADS"] = "1"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path / "ddp"), "vgg16", json.dumps(settings)], env=env, check=True,
                   timeout=300)
    single = train(TrainConfig.for_dataset("fashion-mnist-mini", model="vgg16", **settings), tmp_path / "one",
                   device="cpu", quiet=True)
    name = "logs/fashion-mnist-mini-vgg16-s0.jsonl"
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2
    ddp_log = [json.loads(line) for line in (tmp_path / "ddp" / name).read_text().splitlines()]
    one_log = [json.loads(line) for line in (tmp_path / "one" / name).read_text().splitlines()]
    assert len(ddp_log) == len(one_log) == 2
    for a, b in zip(ddp_log, one_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        # an image whose top two logits differ by float noise may flip; allow one
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1.5 / settings["n_train"])
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1.5 / settings["n_test"])
    # Float noise only: the same single-process run with 1 thread instead of 2 differs from itself by ~3e-4
    # after these 8 steps (summation order, amplified by 13 unnormalized conv layers).
    ddp_w = weights(tmp_path / "ddp" / "checkpoints" / "fashion-mnist-mini-vgg16-s0.safetensors")
    for k, v in weights(single).items():
        torch.testing.assert_close(ddp_w[k], v, rtol=1e-2, atol=1e-3)


def test_compiled_model_saves_plain_weights(tmp_path, monkeypatch):
    # torch.compile wraps the model (keys gain "_orig_mod."); the checkpoint must still load into a bare model.
    # The wrapper is what matters here, not the code inductor generates (37 s of C++ compilation): the eager
    # backend makes the same OptimizedModule wrapper around the same model in no time.
    real_compile, wrapped = torch.compile, []

    def eager_compile(model, **kw):
        compiled = real_compile(model, **{**kw, "backend": "eager"})
        wrapped.append(compiled)
        return compiled

    monkeypatch.setattr(torch, "compile", eager_compile)
    path = train(tiny_cfg(epochs=1, compile=True), tmp_path, device="cpu", quiet=True)
    assert len(wrapped) == 1 and any(k.startswith("_orig_mod.") for k in wrapped[0].state_dict())
    model = load_model(path)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in weights(path))
    assert model.meta["train"]["compile"] is True
