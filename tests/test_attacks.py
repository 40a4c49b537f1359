"""The attack invariants of DESIGN.md, the differential tests against torchattacks 3.5.1, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnrobust.attacks import apgd, apgd_checkpoints, fgsm, pgd, predict
from attnrobust.errors import UserError

EPS_SWEEP = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def small_cnn(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, classes))
    # non-trivial BatchNorm statistics, so that eval mode (running stats) differs from train mode (batch stats)
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def batch(n: int = 16, seed: int = 1, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, classes, (n,), generator=g)


def assert_in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x) == y).float().mean().item()


# ---- the invariants --------------------------------------------------------------------------------------------


def test_perturbations_stay_in_the_ball_and_in_pixel_range():
    model, (x, y) = small_cnn(), batch()
    for eps, adv in zip(EPS_SWEEP, fgsm(model, x, y, EPS_SWEEP)):
        assert_in_ball(adv, x, eps)
    for random_start in (False, True):
        for keep_best in (False, True):
            out = pgd(model, x, y, 0.2, 0.05, [1, 3, 7], random_start=random_start, keep_best=keep_best,
                      generator=torch.Generator().manual_seed(0))
            assert sorted(out) == [1, 3, 7]
            for adv in out.values():
                assert_in_ball(adv, x, 0.2)
    assert_in_ball(apgd(model, x, y, 0.1, steps=10), x, 0.1)


def test_fgsm_equals_one_step_pgd_with_step_eps():
    model, (x, y) = small_cnn(), batch()
    for eps, adv in zip(EPS_SWEEP[1:], fgsm(model, x, y, EPS_SWEEP[1:])):
        assert torch.equal(adv, pgd(model, x, y, eps, eps, [1])[1])
    # eps = 0: the ball is a point, both return x itself
    assert torch.equal(fgsm(model, x, y, [0.0])[0], x)
    assert torch.equal(pgd(model, x, y, 0.0, 0.01, [1])[1], x)


def test_fgsm_closed_form_on_a_linear_model():
    # logits = W x + b, CE loss: dL/dx = W^T (softmax - onehot). The sign is computed here in float64, so it is
    # exact wherever the float32 gradient is not within rounding of zero (checked: margin below).
    torch.manual_seed(3)
    lin = nn.Linear(3 * 4 * 4, 5)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x, y = torch.rand(12, 3, 4, 4), torch.randint(0, 5, (12,))
    w, b = lin.weight.double(), lin.bias.double()
    xf = x.double().flatten(1)
    p = torch.softmax(xf @ w.T + b, dim=1)
    grad = (p - nn.functional.one_hot(y, 5).double()) @ w
    assert grad.abs().min().item() > 1e-6
    for eps, adv in zip(EPS_SWEEP, fgsm(model, x, y, EPS_SWEEP)):
        expected = (x + eps * grad.sign().view_as(x).float()).clamp(0, 1)
        assert torch.equal(adv, expected)


def test_robust_accuracy_not_above_clean_accuracy():
    model, (x, y) = small_cnn(), batch(64)
    y = predict(model, x)  # all clean-correct: the attack has something to break
    y[:8] = (y[:8] + 1) % 10  # and a few clean-wrong
    clean = accuracy(model, x, y)
    for keep_best in (False, True):
        for adv in pgd(model, x, y, 0.1, 0.01, [5, 10, 20], keep_best=keep_best).values():
            assert accuracy(model, adv, y) <= clean
    assert accuracy(model, apgd(model, x, y, 0.1, steps=10), y) <= clean


def test_pgd_error_non_decreasing_in_iterations_with_keep_best():
    model, (x, y) = small_cnn(), batch(64)
    y = predict(model, x)
    out = pgd(model, x, y, 0.05, 0.005, list(range(1, 21)), keep_best=True)
    errors = [1 - accuracy(model, out[k], y) for k in range(1, 21)]
    assert errors == sorted(errors) and errors[-1] > errors[0]


def test_snapshots_of_one_run_equal_separate_shorter_runs():
    model, (x, y) = small_cnn(), batch()
    for random_start in (False, True):
        for keep_best in (False, True):
            def run(steps):
                g = torch.Generator().manual_seed(7)
                return pgd(model, x, y, 0.2, 0.01, steps, random_start=random_start, keep_best=keep_best,
                           generator=g)
            long = run([5, 10, 20])
            assert torch.equal(long[5], run([5])[5])
            assert torch.equal(long[10], run([10])[10])
            assert torch.equal(long[20], run(20)[20])


def test_keep_best_matches_a_naive_reference():
    # AutoAttack's convention written out plainly, full batch, no pruning: a sample's result is its first iterate
    # (the start included) that fools the model, else the k-th iterate.
    model, (x, y) = small_cnn(), batch(64)
    y = predict(model, x)
    y[:5] = (y[:5] + 1) % 10
    eps, alpha = 0.05, 0.005

    def reference(k):
        x_adv, result = x.clone(), x.clone()
        broken = torch.zeros(len(y), dtype=torch.bool)
        for i in range(k + 1):
            fooled = predict(model, x_adv) != y
            result[fooled & ~broken] = x_adv[fooled & ~broken]
            broken |= fooled
            if i < k:
                xr = x_adv.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)
                x_adv = torch.min(torch.max(x_adv + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
        result[~broken] = x_adv[~broken]
        return result

    out = pgd(model, x, y, eps, alpha, [1, 5, 20], keep_best=True)
    for k in (1, 5, 20):
        torch.testing.assert_close(out[k], reference(k), rtol=0, atol=1e-6)
    assert 5 < (predict(model, out[20]) != y).sum() < len(y)


def test_keep_best_counts_clean_misclassified_as_broken_at_the_start():
    model, (x, y) = small_cnn(), batch()
    y = (predict(model, x) + 1) % 10  # every sample misclassified clean
    out = pgd(model, x, y, 0.2, 0.01, [3], keep_best=True)
    assert torch.equal(out[3], x)


def test_apgd_is_at_least_as_strong_as_pgd_with_keep_best():
    model, (x, y) = small_cnn(), batch(64)
    y = predict(model, x)
    acc_pgd = accuracy(model, pgd(model, x, y, 0.03, 0.003, [20], keep_best=True)[20], y)
    acc_apgd = accuracy(model, apgd(model, x, y, 0.03, steps=20), y)
    assert acc_apgd <= acc_pgd + 0.05


def test_apgd_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, Section 3.2)
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_attacks_are_deterministic():
    model, (x, y) = small_cnn(), batch()
    a = pgd(model, x, y, 0.2, 0.01, [5], random_start=True, generator=torch.Generator().manual_seed(1))
    b = pgd(model, x, y, 0.2, 0.01, [5], random_start=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[5], b[5])
    assert torch.equal(apgd(model, x, y, 0.1, steps=8), apgd(model, x, y, 0.1, steps=8))


# ---- hygiene -----------------------------------------------------------------------------------------------------


def test_hygiene_restores_training_mode_and_requires_grad():
    model, (x, y) = small_cnn(), batch()
    model.train()
    model[1].eval()  # a mixed state must come back exactly
    model[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    fgsm(model, x, y, [0.1])
    pgd(model, x, y, 0.1, 0.01, [2], keep_best=True)
    apgd(model, x, y, 0.1, steps=3)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())

    class Boom(nn.Module):
        def forward(self, x):
            assert not self.training
            raise RuntimeError("boom")

    broken = nn.Sequential(nn.Linear(2, 2), Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        fgsm(broken, torch.rand(2, 1, 1, 2), torch.zeros(2, dtype=torch.long), [0.1])
    assert broken.training and broken[0].weight.requires_grad


def test_attack_in_eval_mode_even_if_model_was_training():
    model, (x, y) = small_cnn(), batch()
    expected = fgsm(model, x, y, [0.1])[0]
    model.train()
    assert torch.equal(fgsm(model, x, y, [0.1])[0], expected)  # eval BatchNorm, no dropout


def test_attacks_work_under_no_grad_and_inference_mode():
    model, (x, y) = small_cnn(), batch()
    expected = pgd(model, x, y, 0.1, 0.02, [3])[3]
    with torch.no_grad():
        assert torch.equal(pgd(model, x, y, 0.1, 0.02, [3])[3], expected)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
    assert torch.equal(pgd(model, xi, yi, 0.1, 0.02, [3])[3], expected)
    # called from inside inference mode with inference tensors (as an evaluation loop might)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        assert torch.equal(pgd(model, xi, yi, 0.1, 0.02, [3])[3], expected)
        assert torch.equal(pgd(model, xi, yi, 0.1, 0.02, [3], keep_best=True)[3],
                           pgd(model, x, y, 0.1, 0.02, [3], keep_best=True)[3])
        assert torch.equal(fgsm(model, xi, yi, [0.1])[0], fgsm(model, x, y, [0.1])[0])
        assert torch.equal(apgd(model, xi, yi, 0.1, steps=4), apgd(model, x, y, 0.1, steps=4))


# ---- differential tests against torchattacks 3.5.1 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def torchattacks():
    return pytest.importorskip("torchattacks")


@pytest.mark.parametrize("n", [16, 10])
def test_fgsm_matches_torchattacks(torchattacks, n):
    model, (x, y) = small_cnn(), batch(n)
    ours = fgsm(model, x, y, EPS_SWEEP)
    for eps, adv in zip(EPS_SWEEP, ours):
        attack = torchattacks.FGSM(model, eps=eps)
        attack.set_device("cpu")
        torch.testing.assert_close(adv, attack(x, y), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [16, 10])
def test_pgd_matches_torchattacks(torchattacks, n):
    model, (x, y) = small_cnn(), batch(n)
    ours = pgd(model, x, y, 0.2, 0.01, [5, 10, 20])
    for steps in (5, 10, 20):
        attack = torchattacks.PGD(model, eps=0.2, alpha=0.01, steps=steps, random_start=False)
        attack.set_device("cpu")
        torch.testing.assert_close(ours[steps], attack(x, y), rtol=0, atol=1e-6)


# ---- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: fgsm(m, x, y, [0.1, 1.5]), "eps must be"),
    (lambda m, x, y: fgsm(m, x, y, [-0.1]), "eps must be"),
    (lambda m, x, y: pgd(m, x, y, 2.0, 0.01, [5]), "eps must be"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.0, [5]), "alpha"),
    (lambda m, x, y: pgd(m, x, y, 0.1, -0.01, [5]), "alpha"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, [5, 0]), "steps"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, []), "steps"),
    (lambda m, x, y: apgd(m, x, y, 0.1, steps=0), "steps"),
    (lambda m, x, y: fgsm(m, x * 255, y, [0.1]), r"\[0, 1\]"),
    (lambda m, x, y: fgsm(m, x - 0.5, y, [0.1]), r"\[0, 1\]"),
    (lambda m, x, y: fgsm(m, x[0], y, [0.1]), r"\[B, C, H, W\]"),
    (lambda m, x, y: fgsm(m, x, y[:-1], [0.1]), "labels"),
    (lambda m, x, y: pgd(m, x, y.float(), 0.1, 0.01, [1]), "labels"),
    (lambda m, x, y: fgsm(m, x, y, 0.1), "eps_list must be a list"),
    (lambda m, x, y: pgd(m, x, y, 0.1, 0.01, 5.0), "steps"),
    (lambda m, x, y: pgd(m, x, y, 0.1, float("inf"), [5]), "alpha"),
    (lambda m, x, y: apgd(m, x, y, 0.1, steps=[5, 10]), "steps"),
    (lambda m, x, y: apgd(m, x, y, 0.1, steps=5, rho="0.75"), "rho"),
    (lambda m, x, y: fgsm(m.to(torch.float64), x, y, [0.1]), "fp32"),
    (lambda m, x, y: fgsm(m, x.to("meta"), y, [0.1]), "device"),
])
def test_bad_input_raises_one_line_user_error(call, match):
    model, (x, y) = small_cnn(), batch()
    with pytest.raises(UserError, match=match) as info:
        call(model, x, y)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_pgd_on_a_registry_model():
    models = pytest.importorskip("attnrobust.models")
    model = models.build_model("resnet14", 10, width=8).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = pgd(model, x, y, 0.05, 0.01, [2, 4], keep_best=True)
    for adv in out.values():
        assert_in_ball(adv, x, 0.05)
    # pruning: per-sample gradients do not depend on the batch (summed loss), so each image's result is the same
    # whether its batch-mates broke early or not
    alone = torch.cat([pgd(model, x[i:i + 1], y[i:i + 1], 0.05, 0.01, [4], keep_best=True)[4] for i in range(4)])
    torch.testing.assert_close(out[4], alone, rtol=0, atol=1e-6)
