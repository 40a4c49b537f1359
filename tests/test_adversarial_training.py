"""Adversarial training: train_step, PGD-AT / FGSM-RS batches, exact reproducibility and resume, the collapse
check, regime labels, model_args, field validation. Tiny models and data: the whole file runs in seconds."""

import dataclasses
import json
from importlib import resources

import pytest
import torch
from safetensors.torch import load_file

import attnrobust.train as train_mod
from attnrobust.checkpoint import load_model, read_meta
from attnrobust.config import TrainConfig, load_config
from attnrobust.errors import UserError
from attnrobust.models import build_model
from attnrobust.train import (adversarial_batch, checkpoint_path, is_collapse, is_finished,
                              make_adversary, regime_label, train, train_step)

# 4 steps of 16 images per epoch, 2 epochs, a 16-image check: a run takes about a second of CPU.
TINY = dict(width=4, epochs=2, batch_size=16, n_train=64, n_test=32, lr=0.05, adv_check_n=16, adv_steps=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # train() otherwise takes every core: on a shared 2-core machine its threads then mostly wait for each other
    # (these models are tiny), and a thread count is part of what bit-for-bit comparisons hold fixed anyway.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNROBUST_THREADS", "1")
        yield


def tiny_cfg(**kw):
    return TrainConfig.for_dataset("fashion-mnist-mini", model="resnet14", seed=0, **{**TINY, **kw})


def same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def log_of(out, cfg):
    return [json.loads(line) for line in (out / "logs" / f"{train_mod.checkpoint_name(cfg)}.jsonl").read_text()
            .splitlines()]


def tiny_model_and_batch():
    torch.manual_seed(0)
    model = build_model("resnet14", 10, in_channels=1, width=4)
    x = torch.rand(8, 1, 28, 28)
    x[0] = 0.0  # pixels at the edges of [0, 1]: the projection must keep them inside
    x[1] = 1.0
    return model, x, torch.arange(8) % 10


# ---- the step and its batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("adversarial", ["pgd", "fgsm-rs"])
def test_train_step_trains_on_batches_inside_the_eps_ball(adversarial):
    model, x, y = tiny_model_and_batch()
    cfg = tiny_cfg(adversarial=adversarial, adv_eps=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    adversary = make_adversary(cfg, model, torch.Generator().manual_seed(1))
    crafted = []

    def recording(xb, yb):
        params = [p.clone() for p in model.parameters()]
        x_adv = adversary(xb, yb)
        # crafting computes input gradients only: no weight moved, no parameter gradient left behind
        assert all(torch.equal(p, q) and p.grad is None for p, q in zip(model.parameters(), params))
        crafted.append(x_adv)
        return x_adv

    before = [p.clone() for p in model.parameters()]
    loss, logits = train_step(model, optimizer, scaler, x, y, lr=0.1, adversary=recording)
    (x_adv,) = crafted
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0.05 and not x_adv.requires_grad
    assert logits.shape == (8, 10) and not loss.requires_grad and torch.isfinite(loss)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the step trained
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_adversarial_batch_climbs_the_loss_and_is_seeded():
    model, x, y = tiny_model_and_batch()
    model.eval()  # fixed BatchNorm statistics: the losses below compare like with like
    kw = dict(eps=0.1, alpha=0.025, steps=10)
    a = adversarial_batch(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    b = adversarial_batch(model, x, y, generator=torch.Generator().manual_seed(3), **kw)
    c = adversarial_batch(model, x, y, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        assert ce(model(a), y) > ce(model(x), y)


def test_fgsm_rs_is_one_projected_step_from_the_random_start():
    from attnrobust.attacks import uniform_start

    model, x, y = tiny_model_and_batch()
    model.eval()
    got = adversarial_batch(model, x, y, eps=0.1, alpha=0.125, steps=1, generator=torch.Generator().manual_seed(5))
    start = uniform_start(x, 0.1, torch.Generator().manual_seed(5)).requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(start), y, reduction="sum"), start)
    want = torch.min(torch.max(start.detach() + 0.125 * grad.sign(), x - 0.1), x + 0.1).clamp(0, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_standard_regime_has_no_adversary_and_default_step_sizes():
    model, _, _ = tiny_model_and_batch()
    assert make_adversary(tiny_cfg(), model, torch.Generator()) is None
    assert tiny_cfg(adversarial="pgd", adv_eps=0.1, adv_steps=10).alpha() == pytest.approx(0.025)
    assert tiny_cfg(adversarial="fgsm-rs", adv_eps=0.1).alpha() == pytest.approx(0.125)
    assert tiny_cfg(adversarial="pgd", adv_alpha=0.01).alpha() == 0.01
    assert tiny_cfg().adv_eps == 0.1  # the Fashion-MNIST budget
    assert tiny_cfg(adv_check_n=None).check_images() == 0
    assert tiny_cfg(adversarial="pgd", adv_check_n=None).check_images() == 500


# ---- whole runs ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["pgd", "fgsm-rs"])
def adv_reference(request, tmp_path_factory):
    cfg = tiny_cfg(adversarial=request.param)
    out = tmp_path_factory.mktemp(request.param)
    return cfg, train(cfg, out, device="cpu", quiet=True)


def test_adversarial_run_is_reproducible_and_logged(adv_reference, tmp_path):
    cfg, reference = adv_reference
    again = train(cfg, tmp_path, device="cpu", quiet=True)
    assert same_weights(reference, again)
    assert log_of(tmp_path, cfg) == [{**r, "images_per_s": r2["images_per_s"], "seconds": r2["seconds"]}
                                     for r, r2 in zip(log_of(reference.parent.parent, cfg), log_of(tmp_path, cfg))]
    if cfg.adversarial == "pgd":  # (once is enough) the adversary changes what is trained
        assert not same_weights(reference, train(tiny_cfg(), tmp_path / "standard", device="cpu", quiet=True))
    meta = read_meta(reference)
    assert meta["regime"] == regime_label(cfg) != "standard"
    assert meta["catastrophic_overfitting"] is False and meta["collapse_epoch"] is None
    for r in log_of(reference.parent.parent, cfg):
        assert 0 <= r["adv_test_acc"] <= 1 and r["catastrophic_overfitting"] is False


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way up handles it."""


def test_adversarial_resume_equals_uninterrupted(adv_reference, tmp_path, monkeypatch):
    cfg, reference = adv_reference
    real_save = train_mod.save_checkpoint

    def save_then_die(path, model, meta):
        real_save(path, model, meta)
        if meta["epoch"] == 1:
            raise Killed

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(cfg, tmp_path, device="cpu", quiet=True)
    assert read_meta(checkpoint_path(cfg, tmp_path))["epoch"] == 1
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    # adv_check_n decides only what is logged: it may change on resume
    resumed = train(dataclasses.replace(cfg, adv_check_n=16), tmp_path, device="cpu", quiet=True)
    assert same_weights(reference, resumed)
    assert [r["epoch"] for r in log_of(tmp_path, cfg)] == [1, 2]


def test_changed_attack_setting_is_another_run(adv_reference, tmp_path):
    """Another regime is another run beside it (its own checkpoint name); a changed recipe of the same regime is
    refused, not silently mixed into the finished run."""
    import shutil

    cfg, reference = adv_reference
    out = tmp_path / "run"
    shutil.copytree(reference.parent.parent, out)
    assert is_finished(cfg, out)
    other = dataclasses.replace(cfg, adv_eps=0.2)
    assert checkpoint_path(other, out) != checkpoint_path(cfg, out) and not is_finished(other, out)
    with pytest.raises(UserError, match=r"different config \(lr 0.05 there, 0.2 now\)"):
        train(dataclasses.replace(cfg, lr=0.2), out, device="cpu", quiet=True)


def test_run_written_before_adversarial_fields_existed_still_counts():
    saved = dataclasses.asdict(tiny_cfg())
    for key in ("adversarial", "adv_eps", "adv_alpha", "adv_steps", "adv_check_n", "model_args"):
        del saved[key]
    assert train_mod._config_differences(saved, tiny_cfg()) == []
    assert regime_label(saved) == "standard"
    # an old run was standard training: an adversarial config is another run
    assert "adversarial 'none' there, 'pgd' now" in train_mod._config_differences(saved, tiny_cfg(adversarial="pgd"))


# ---- catastrophic overfitting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("history, collapsed", [
    ([], False),
    ([0.4], False),                     # nothing to compare with
    ([0.3, 0.35, 0.4, 0.38], False),    # noise
    ([0.3, 0.45, 0.12], True),          # below 30% of the best (0.135)
    ([0.3, 0.45, 0.14], False),         # just above it
    ([0.5, 0.0], True),                 # the classic: robust, then ~0 within an epoch
    ([0.05, 0.01], False),              # never robust (a standard model): cannot collapse
    ([0.5, 0.01, 0.4], False),          # recovered: judged against the best earlier value
])
def test_collapse_decision(history, collapsed):
    assert is_collapse(history) is collapsed


def test_collapse_is_flagged_in_log_and_checkpoint_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    accuracies = iter([0.6, 0.02, 0.5])  # epoch 2 collapses; epoch 3 partly recovers, the flag stays

    def fake_check(*args, **kw):
        return next(accuracies)

    monkeypatch.setattr(train_mod, "_pgd_check_accuracy", fake_check)
    cfg = tiny_cfg(adversarial="fgsm-rs", epochs=3)
    path = train(cfg, tmp_path, device="cpu")
    log = log_of(tmp_path, cfg)
    assert [r["adv_test_acc"] for r in log] == [0.6, 0.02, 0.5]
    assert [r["catastrophic_overfitting"] for r in log] == [False, True, False]
    meta = read_meta(path)
    assert meta["epoch"] == 3 and meta["catastrophic_overfitting"] is True and meta["collapse_epoch"] == 2
    assert "catastrophic overfitting" in capsys.readouterr().err


def test_check_does_not_touch_training(adv_reference, tmp_path):
    # the same run with the check on and off computes the same weights: it uses its own generator, eval mode,
    # and restores the model's state
    cfg, on = adv_reference
    if cfg.adversarial != "pgd":
        pytest.skip("one regime is enough")
    off = train(dataclasses.replace(cfg, adv_check_n=0), tmp_path, device="cpu", quiet=True)
    assert same_weights(on, off)
    assert log_of(tmp_path, cfg)[0]["adv_test_acc"] is None


# ---- labels, model_args, validation ---------------------------------------------------------------------------


def test_regime_label():
    assert regime_label(tiny_cfg()) == "standard"
    assert regime_label(tiny_cfg(adversarial="pgd", adv_eps=0.1, adv_steps=10)) == "PGD-AT eps 0.1 (10 steps)"
    assert regime_label(tiny_cfg(adversarial="fgsm-rs", adv_eps=0.1)) == "FGSM-RS eps 0.1"
    assert regime_label(tiny_cfg(adversarial="fgsm-rs", adv_eps=8 / 255)) == "FGSM-RS eps 8/255"
    assert regime_label(tiny_cfg(adversarial="pgd", adv_eps=0.2, adv_steps=7, adv_alpha=0.05)) == \
        "PGD-AT eps 0.2 (7 steps, alpha 0.05)"
    assert regime_label(tiny_cfg(adversarial="fgsm-rs", adv_alpha=0.2)) == "FGSM-RS eps 0.1 (alpha 0.2)"
    assert regime_label(dataclasses.asdict(tiny_cfg(adversarial="pgd"))) == "PGD-AT eps 0.1 (2 steps)"


def test_model_args_reach_the_model(tmp_path):
    cfg = tiny_cfg(epochs=1, n_train=16, model_args={"zero_init_residual": False})
    cfg.validate()
    model = load_model(train(cfg, tmp_path, device="cpu", quiet=True))
    assert model.build_args["zero_init_residual"] is False


@pytest.mark.parametrize("field, value, match", [
    ("adversarial", "trades", "adversarial: must be one of none, pgd, fgsm-rs"),
    ("adv_eps", 1.5, "adv_eps: must be a number in"),
    ("adv_eps", -0.1, "adv_eps: must be a number in"),
    ("adv_eps", "0.1", "adv_eps: must be a number in"),
    ("adv_alpha", 0.0, "adv_alpha: must be a positive number"),
    ("adv_alpha", float("nan"), "adv_alpha: must be a positive number"),
    ("adv_steps", 0, "adv_steps: must be a positive integer"),
    ("adv_steps", 2.0, "adv_steps: must be a positive integer"),
    ("adv_check_n", -1, "adv_check_n: must be an integer >= 0"),
    ("model_args", ["cbam"], "model_args: must be a table"),
    ("model_args", {1: 2}, "model_args: must be a table"),
    ("model_args", {"no_such_arg": 1}, "model_args: unknown argument 'no_such_arg'"),
    ("model_args", {"zero_init_residual": 3}, "model_args: zero_init_residual must be a bool"),
])
def test_bad_adversarial_values(field, value, match):
    cfg = tiny_cfg(adversarial="pgd")
    setattr(cfg, field, value)
    with pytest.raises(UserError, match=match):
        cfg.validate()


def test_adversarial_training_needs_a_positive_eps():
    with pytest.raises(UserError, match="adv_eps: must be > 0 for adversarial = 'fgsm-rs'"):
        tiny_cfg(adversarial="fgsm-rs", adv_eps=0.0).validate()
    tiny_cfg(adv_eps=0.0).validate()  # irrelevant to a standard run


def test_quick_adversarial_config_parses():
    path = resources.files("attnrobust").joinpath("configs", "quick-adversarial.toml")
    cfg = load_config(str(path))
    for model in cfg.study.models:
        job = cfg.train_config(cfg.study.datasets[0], model, cfg.study.seeds[0])
        job.validate()
        assert job.adversarial != "none" and job.adv_eps == 0.1
