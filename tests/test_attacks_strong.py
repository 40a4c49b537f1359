"""The stronger attacks (issue 12): minimal eps per image and the curve read off it, APGD-T, Square, and the
worst case over an ensemble with its gradient-masking flag. Tiny models: the whole file runs in seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnrobust.attacks import (apgd, apgd_t, minimal_eps, pgd, predict, robust_accuracy_curve,
                                square, worst_case)
from attnrobust.attacks.fgsm_pgd import pgd_best
from attnrobust.errors import UserError
from test_attacks import assert_in_ball, batch, small_cnn


def linear_model(seed: int, bias: bool, classes: int = 5) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(seed)
    lin = nn.Linear(3 * 4 * 4, classes, bias=bias)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def closed_form_min_eps(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """min over j != y of (z_y - z_j) / ||w_y - w_j||_1 in float64: the L-inf distance to the nearest decision
    boundary of a linear model when the [0, 1] box does not bind (0 for misclassified images)."""
    w = lin.weight.detach().double()
    z = x.double().flatten(1) @ w.T + (lin.bias.detach().double() if lin.bias is not None else 0.0)
    dist = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(2)
    dist.scatter_(1, y[:, None], float("inf"))
    return dist.min(1).values.clamp(min=0.0)


class ZeroGradQuantize(torch.autograd.Function):
    """Rounds pixels to the 8-bit grid; backward returns zero: the gradient of a staircase almost everywhere, the
    textbook case of gradient masking (the classifier behind it is unchanged, only its gradient is hidden)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 255) / 255

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class BackwardRaises(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward was called")


class Wrap(nn.Module):
    def __init__(self, fn, inner: nn.Module):
        super().__init__()
        self.fn, self.inner = fn, inner

    def forward(self, x):
        return self.inner(self.fn.apply(x))


def mid_pixels(n: int, seed: int = 0) -> torch.Tensor:
    # away from 0 and 1, so that the [0, 1] box does not bind for the eps used here
    return 0.3 + 0.4 * torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


# ---- minimal eps -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_minimal_eps_matches_the_closed_form_on_a_linear_model(bias):
    model, lin = linear_model(0, bias)
    x = mid_pixels(32)
    y = predict(model, x)
    y[:4] = (y[:4] + 1) % 5  # misclassified: 0
    truth = closed_form_min_eps(lin, x, y)
    assert truth.max() < 0.3  # every correct image breaks below max_eps; pixels +- 0.3 stay inside [0, 1]
    tol = 0.002
    found, adv = minimal_eps(model, x, y, max_eps=0.3, tol=tol, steps=10, return_adv=True)  # the defaults' attack
    assert found.dtype == torch.float32 and found.shape == (32,)
    assert torch.equal(found[:4], torch.zeros(4))
    correct = slice(4, None)
    # never below the truth (the adversarial example exists), and within tol above it
    assert (found[correct].double() >= truth[correct] - 1e-6).all()
    assert (found[correct].double() <= truth[correct] + tol + 1e-6).all()
    assert (predict(model, adv[correct]) != y[correct]).all()
    assert ((adv - x).flatten(1).abs().amax(1) <= found + 1e-6).all()
    # cross-entropy PGD alone (the default before issue 23) is a weaker attack here (it stops at a corner that is
    # not the nearest boundary), but its answer is still a certificate: never below the truth
    plain = minimal_eps(model, x, y, max_eps=0.3, tol=tol, steps=10, candidates=0, cross_entropy=True)
    assert (plain.double() >= truth - 1e-6).all() and (plain >= found).all()
    # max_eps too small: inf for every correct image, still 0 for the misclassified
    below = float(truth[correct].min()) / 2
    small = minimal_eps(model, x, y, max_eps=below, tol=below / 4)
    assert torch.equal(small[:4], torch.zeros(4)) and torch.isinf(small[correct]).all()


def test_minimal_eps_is_not_above_a_radius_where_pgd_succeeds():
    model, (x, y) = small_cnn(), batch(32)
    y = predict(model, x)
    y[:2] = (y[:2] + 1) % 10
    steps, tol = 5, 1 / 255
    # with the cross-entropy stage, every radius minimal_eps tries runs pgd's own attack (and the targeted one
    # before it); without it, "never above pgd" is what evaluate's minimum over the records guarantees
    found, adv = minimal_eps(model, x, y, max_eps=8 / 255, tol=tol, steps=steps, cross_entropy=True,
                             return_adv=True)
    assert_in_ball(adv, x, 8 / 255)
    assert ((adv - x).flatten(1).abs().amax(1) <= torch.where(found.isinf(), 0.0, found) + 1e-6).all()
    finite = found.isfinite()
    assert (predict(model, adv[finite]) != y[finite]).all() and (found[~finite] == float("inf")).all()
    for j in range(1, 9):
        e = j * tol
        broken = predict(model, pgd(model, x, y, e, 2.5 * e / steps, [steps], keep_best=True)[steps]) != y
        assert (found[broken] <= e + 1e-7).all(), j
    assert 0 < finite.sum() < 32  # something to bisect, something left unbroken


def test_minimal_eps_does_not_grow_with_more_steps():
    model, (x, y) = small_cnn(), batch(48)
    y = predict(model, x)
    grid = [j / 255 for j in range(17)]
    weak = robust_accuracy_curve(minimal_eps(model, x, y, steps=2), grid)
    strong = robust_accuracy_curve(minimal_eps(model, x, y, steps=12), grid)
    assert all(s <= w for s, w in zip(strong, weak)) and sum(strong) < sum(weak)


def test_the_per_radius_pgd_equals_pgd():
    # minimal_eps's verdict at a radius is pgd's (keep_best), bit for bit, whatever the other radii in the batch
    model, (x, y) = small_cnn(), batch(16)
    y = predict(model, x)
    eps = torch.tensor([2 / 255, 6 / 255] * 8)
    broken, adv, _ = pgd_best(model, x, x, y, eps, eps * 2.5 / 4, 4)
    for e in (2 / 255, 6 / 255):
        rows = (eps == torch.tensor(e, dtype=torch.float32)).nonzero().squeeze(1)
        ref = pgd(model, x[rows], y[rows], e, 2.5 * e / 4, [4], keep_best=True)[4]
        ref_broken = predict(model, ref) != y[rows]
        assert torch.equal(broken[rows], ref_broken)
        assert torch.equal(adv[rows][ref_broken], ref[ref_broken])


def test_robust_accuracy_curve_reads_min_eps():
    min_eps = torch.tensor([0.0, 0.01, 0.02, float("inf")])
    assert robust_accuracy_curve(min_eps, [0.0, 0.01, 0.015, 0.5, 1.0]) == [0.75, 0.5, 0.5, 0.25, 0.25]
    assert robust_accuracy_curve(min_eps, [0.0, 0.02], counts=True) == [3, 1]
    # at eps = 0 the curve is clean accuracy
    model, (x, y) = small_cnn(), batch(16)
    found = minimal_eps(model, x, y, max_eps=2 / 255, steps=2)
    assert robust_accuracy_curve(found, [0.0])[0] == (predict(model, x) == y).float().mean().item()


def test_robust_accuracy_curve_counts_an_image_broken_at_its_own_radius():
    # minimal_eps returns radii j * tol in float32; the records' grid is round(j / 255, 10), which for 8/255 and
    # 16/255 rounds to the float32 just below: an image broken at exactly 8/255 is not robust at 8/255
    from attnrobust.evaluate import FINE_GRID

    radii = (torch.arange(len(FINE_GRID), dtype=torch.float64) * (1 / 255)).float()  # as minimal_eps's grid
    assert torch.tensor(FINE_GRID[8], dtype=torch.float32) < radii[8]  # the rounding the margin is for
    counts = robust_accuracy_curve(radii, FINE_GRID, counts=True)
    assert counts == [len(FINE_GRID) - 1 - j for j in range(len(FINE_GRID))]


# ---- APGD-T ------------------------------------------------------------------------------------------------------


def test_apgd_t_bounds_and_strength():
    model, (x, y) = small_cnn(), batch(48)
    y = predict(model, x)
    y[:3] = (y[:3] + 1) % 10
    eps = 2 / 255
    adv_t = apgd_t(model, x, y, eps, steps=10, n_target_classes=3)
    assert_in_ball(adv_t, x, eps)
    assert torch.equal(adv_t[:3], x[:3])  # misclassified clean: nothing to do
    broken_t = (predict(model, adv_t) != y).sum()
    broken_ce = (predict(model, apgd(model, x, y, eps, steps=10)) != y).sum()
    assert broken_t >= broken_ce > 3  # in aggregate, on this model
    # deterministic, and a random start stays in the ball
    assert torch.equal(adv_t, apgd_t(model, x, y, eps, steps=10, n_target_classes=3))
    assert_in_ball(apgd_t(model, x, y, eps, steps=3, n_target_classes=2, random_start=True,
                          generator=torch.Generator().manual_seed(0)), x, eps)


def test_stronger_attacks_restore_the_model_state():
    model, (x, y) = small_cnn(), batch(8)
    model.train()
    model[1].eval()
    model[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    apgd_t(model, x, y, 0.03, steps=3, n_target_classes=2)
    minimal_eps(model, x, y, max_eps=4 / 255, steps=2, n_target_classes=1)
    square(model, x, y, 0.03, queries=5)
    worst_case(model, x, y, 0.03, steps=2, queries=5, n_target_classes=2)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


# ---- Square and gradient masking -----------------------------------------------------------------------------


def test_square_stays_in_the_ball_and_never_calls_backward():
    model, _ = linear_model(1, True)
    trap = Wrap(BackwardRaises, model)
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(3))  # pixels near 0 and 1 too: clamping
    y = predict(model, x)
    with pytest.raises(RuntimeError, match="backward was called"):
        pgd(trap, x, y, 0.05, 0.01, [1])  # the trap works
    adv = square(trap, x, y, 0.05, queries=50, generator=torch.Generator().manual_seed(0))
    assert_in_ball(adv, x, 0.05)
    again = square(trap, x, y, 0.05, queries=50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again) and not adv.is_inference()
    with torch.inference_mode():
        assert torch.equal(square(trap, x, y, 0.05, queries=50, generator=torch.Generator().manual_seed(0)), adv)


def test_gradient_masking_is_exposed():
    # a linear classifier, easy to fool at this eps, behind an input layer whose gradient is zero
    inner, lin = linear_model(2, True)
    model = Wrap(ZeroGradQuantize, inner)
    x = mid_pixels(24, seed=4)
    y = predict(model, x)
    eps = 0.2  # pixels +- eps stay inside [0, 1]
    assert (closed_form_min_eps(lin, x, y) < 0.7 * eps).all()  # broken easily by an attack that sees the model
    assert (predict(model, pgd(model, x, y, eps, eps / 4, [10], keep_best=True)[10]) == y).all()
    assert (predict(model, apgd(model, x, y, eps, steps=10)) == y).all()
    assert (predict(model, apgd_t(model, x, y, eps, steps=10, n_target_classes=4)) == y).all()
    fooled = predict(model, square(model, x, y, eps, queries=100, generator=torch.Generator().manual_seed(0))) != y
    assert fooled.float().mean() > 0.9

    out = worst_case(model, x, y, eps, steps=10, queries=100, n_target_classes=4,
                     generator=torch.Generator().manual_seed(0))
    assert set(out) == {"clean", "robust", "fooled", "masking", "x_adv"}
    assert list(out["fooled"]) == ["apgd-ce", "apgd-t", "square"]
    assert not out["fooled"]["apgd-ce"].any() and not out["fooled"]["apgd-t"].any()
    assert torch.equal(out["masking"], out["fooled"]["square"]) and out["masking"].float().mean() > 0.9
    assert torch.equal(out["robust"], out["clean"] & ~out["fooled"]["square"])
    assert_in_ball(out["x_adv"], x, eps)
    assert (predict(model, out["x_adv"]) != y).eq(~out["robust"]).all()


def test_worst_case_runs_attacks_on_the_images_still_robust():
    model, (x, y) = small_cnn(), batch(32)
    y = predict(model, x)
    y[:2] = (y[:2] + 1) % 10
    eps = 3 / 255
    # square listed first: it still runs after the white-box attack
    out = worst_case(model, x, y, eps, attacks=("square", "apgd-ce"), steps=5, queries=20,
                     generator=torch.Generator().manual_seed(0))
    ce, sq = out["fooled"]["apgd-ce"], out["fooled"]["square"]
    assert list(out["fooled"]) == ["square", "apgd-ce"]
    assert not (ce & sq).any() and not (out["clean"].logical_not() & (ce | sq)).any()
    assert torch.equal(out["robust"], out["clean"] & ~ce & ~sq)
    assert torch.equal(ce, (predict(model, apgd(model, x, y, eps, steps=5)) != y) & out["clean"])
    assert torch.equal(out["masking"], sq)
    assert_in_ball(out["x_adv"], x, eps)
    only_white = worst_case(model, x, y, eps, attacks=["apgd-ce"], steps=5)
    assert not only_white["masking"].any()


# ---- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: minimal_eps(m, x, y, max_eps=1.5), "max_eps"),
    (lambda m, x, y: minimal_eps(m, x, y, tol=0.0), "tol"),
    (lambda m, x, y: minimal_eps(m, x, y, max_eps=0.01, tol=0.02), "tol"),
    (lambda m, x, y: minimal_eps(m, x, y, steps=0), "steps"),
    (lambda m, x, y: minimal_eps(m, x, y, n_target_classes=-1), "n_target_classes"),
    (lambda m, x, y: minimal_eps(m, x, y, candidates=1.5), "candidates"),
    (lambda m, x, y: minimal_eps(m, x, y, candidates=0), "needs an attack"),
    (lambda m, x, y: minimal_eps(m, x[0], y), r"\[B, C, H, W\]"),
    (lambda m, x, y: robust_accuracy_curve(torch.tensor([0.1, float("nan")]), [0.1]), "NaN"),
    (lambda m, x, y: robust_accuracy_curve(torch.tensor([0.1]), 0.1), "eps_grid"),
    (lambda m, x, y: robust_accuracy_curve(torch.tensor([0.1]), [2.0]), "eps_grid"),
    (lambda m, x, y: robust_accuracy_curve([0.1], [0.1]), "min_eps"),
    (lambda m, x, y: apgd_t(m, x, y, 1.5), "eps must be"),
    (lambda m, x, y: apgd_t(m, x, y, 0.1, steps=0), "steps"),
    (lambda m, x, y: apgd_t(m, x, y, 0.1, n_target_classes=0), "n_target_classes"),
    (lambda m, x, y: apgd_t(nn.Sequential(nn.Flatten(), nn.Linear(768, 3)), x, y % 3, 0.1), "at least 4 classes"),
    (lambda m, x, y: square(m, x, y, -0.1), "eps must be"),
    (lambda m, x, y: square(m, x, y, 0.1, queries=0), "queries"),
    (lambda m, x, y: square(m, x, y, 0.1, p_init=0.0), "p_init"),
    (lambda m, x, y: square(m, x, y[:-1], 0.1), "labels"),
    (lambda m, x, y: worst_case(m, x, y, 0.1, attacks=("apgd-ce", "fab")), "attacks"),
    (lambda m, x, y: worst_case(m, x, y, 0.1, attacks="square"), "attacks"),
    (lambda m, x, y: worst_case(m, x, y, 0.1, attacks=()), "attacks"),
    (lambda m, x, y: worst_case(m, x, y, 0.1, attacks=("square", "square")), "attacks"),
])
def test_bad_input_raises_one_line_user_error(call, match):
    model, (x, y) = small_cnn(), batch(4)
    with pytest.raises(UserError, match=match) as info:
        call(model, x, y)
    assert "\n" not in str(info.value)
