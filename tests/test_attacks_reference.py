"""Issue 23: the primary measure as strong as AutoAttack. minimal_eps with its defaults against the exact minimal
L-inf eps of linear models (the [0, 1] box included, by linear programming), against the AutoAttack-grade ensemble
on a small trained CNN, and our ensemble against torchattacks' APGD/APGD-T/Square on the same model and images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attnrobust.attacks import minimal_eps, predict, robust_accuracy_curve, worst_case

# The stated slack of the CNN checks: on N_IMAGES images one image is 1.6 points; minimal_eps and the ensemble
# are different attacks (bisection over PGD-10 radii against 20-step APGD-CE/APGD-T and Square at one radius), so
# neither dominates the other per image, but the minimal eps may not leave more than 3 images more robust.
N_IMAGES, SLACK = 64, 3 / 64


# ---- linear models: the exact answer -----------------------------------------------------------------------------


def linear_model(seed: int, classes: int, pixels: int = 48) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(seed)
    lin = nn.Linear(pixels, classes)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def box_min_eps(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The exact minimal L-inf eps of a linear model inside the [0, 1] box, per image: for each class j != y the
    linear program min e s.t. (w_j - w_y) . (x + d) + b_j - b_y >= 0, |d_i| <= e, 0 <= x_i + d_i <= 1 (scipy's
    HiGHS), then the minimum over j; inf where no point of the box reaches another class. Independent of the code
    under test (which reads a closed form off sorted pixel room)."""
    from scipy.optimize import linprog

    w, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    out = []
    for xi, yi in zip(x.double().flatten(1).numpy(), y.tolist()):
        d = xi.size
        best = math.inf
        for j in range(w.shape[0]):
            if j == yi:
                continue
            g = w[j] - w[yi]
            margin = g @ xi + b[j] - b[yi]
            if margin >= 0:
                best = 0.0
                break
            # variables (delta_1..delta_d, e): minimize e
            c = np.zeros(d + 1)
            c[-1] = 1.0
            eye = np.eye(d)
            a_ub = np.vstack([np.append(-g, 0.0)[None],  # -g . delta <= margin  (g . (x + delta) + b_j - b_y >= 0)
                              np.hstack([eye, -np.ones((d, 1))]),  # delta_i - e <= 0
                              np.hstack([-eye, -np.ones((d, 1))])])  # -delta_i - e <= 0
            b_ub = np.concatenate([[margin], np.zeros(2 * d)])
            bounds = [(-v, 1.0 - v) for v in xi] + [(0.0, None)]
            res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
            if res.status == 0:
                best = min(best, res.x[-1])
        out.append(best)
    return np.array(out)


def near_edges(n: int, seed: int) -> torch.Tensor:
    """Pixels of which about two thirds lie within 0.03 of 0 or 1, where the box binds for a few /255 already."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, 4, 4, generator=g)
    kind = torch.randint(0, 3, (n, 3, 4, 4), generator=g)
    return torch.where(kind == 0, 0.03 * u, torch.where(kind == 1, 1 - 0.03 * u, 0.2 + 0.6 * u))


@pytest.mark.parametrize("seed, classes, edges", [(11, 3, False), (12, 5, True), (13, 7, False), (14, 10, True),
                                                  (15, 10, False)])
def test_minimal_eps_with_its_defaults_is_exact_on_held_out_linear_models(seed, classes, edges):
    model, lin = linear_model(seed, classes)
    g = torch.Generator().manual_seed(seed)
    x = near_edges(16, seed) if edges else 0.3 + 0.4 * torch.rand(16, 3, 4, 4, generator=g)
    y = predict(model, x)
    y[0] = (y[0] + 1) % classes  # one misclassified image: 0
    truth = box_min_eps(lin, x, y)
    # the defaults (tol 1/255, 10 steps, 9 candidate classes), over a range that holds most true minima here
    max_eps, tol = 30 / 255, 1 / 255
    found = minimal_eps(model, x, y, max_eps=max_eps).double().numpy()
    inside = truth <= max_eps - tol  # well inside the range: the answer must be finite and within tol
    assert found[0] == 0.0 and inside.sum() >= 10
    assert (found[inside] >= truth[inside] - 1e-6).all()  # an adversarial example exists at the result
    over = (found[inside] - truth[inside]) * 255
    assert (over <= 1.0 + 1e-4).all(), f"above the true minimum by {over.max():.2f}/255 (tolerance 1/255)"
    assert np.isinf(found[truth > max_eps]).all()  # nothing exists up to max_eps: inf, never a false radius


def test_the_pre_issue_23_attack_fails_the_same_check():
    """The check above can fail: cross-entropy PGD alone (candidates=0) overshoots on these models."""
    overs = []
    for seed, classes in ((12, 5), (14, 10)):
        model, lin = linear_model(seed, classes)
        x = 0.3 + 0.4 * torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
        y = predict(model, x)
        truth = box_min_eps(lin, x, y)
        old = minimal_eps(model, x, y, max_eps=30 / 255, candidates=0, cross_entropy=True).double().numpy()
        inside = truth <= 29 / 255
        overs.append(((old - truth)[inside] * 255).max())
    assert max(overs) > 1.0


# ---- a small trained CNN ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """A two-convolution CNN trained one epoch on the embedded fashion-mnist-mini (about a second on one core,
    ~70% test accuracy), and N_IMAGES test images: a model whose samples break the way a trained model's do."""
    import torch.nn.functional as F

    from attnrobust.data import load_dataset

    torch.manual_seed(1)
    xs, ys = load_dataset("fashion-mnist-mini", "train")
    xs = xs.float() / 255
    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 7 * 7, 10))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(1))
    for i in range(0, len(ys), 100):
        idx = perm[i:i + 100]
        loss = F.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = load_dataset("fashion-mnist-mini", "test")
    return model.eval(), xt[:N_IMAGES].float() / 255, yt[:N_IMAGES]


EPS = 16 / 255  # where this model is neither saturated nor untouched (about 36% robust, 70% clean)


@pytest.fixture(scope="module")
def ensemble(trained):
    # the fast budgets except 9 targets (as torchattacks' APGD-T) and 500 queries (time): the same on both sides
    model, x, y = trained
    return worst_case(model, x, y, EPS, steps=20, queries=500, n_target_classes=9,
                      generator=torch.Generator().manual_seed(0))


def test_minimal_eps_leaves_no_more_robust_than_the_ensemble(trained, ensemble):
    model, x, y = trained
    robust_aa = ensemble["robust"].float().mean().item()
    assert 0.2 < robust_aa < ensemble["clean"].float().mean().item()  # a measure with room on both sides
    (robust_min,) = robust_accuracy_curve(minimal_eps(model, x, y), [EPS])
    assert robust_min <= robust_aa + SLACK, (robust_min, robust_aa)


def test_our_ensemble_is_as_strong_as_torchattacks(trained, ensemble):
    torchattacks = pytest.importorskip("torchattacks", reason="torchattacks (installed with --no-deps in the test "
                                                              "setup) is the reference implementation")
    model, x, y = trained
    reference = torchattacks.MultiAttack([
        torchattacks.APGD(model, eps=EPS, steps=20, loss="ce"),
        torchattacks.APGDT(model, eps=EPS, steps=20, n_classes=10),
        torchattacks.Square(model, eps=EPS, n_queries=500)])
    theirs = predict(model, reference(x, y)) == y
    ours = ensemble["robust"]
    # per image: hardly any image survives ours that theirs broke, and the other way round (the same algorithms;
    # random starts and Square's draws differ)
    assert int((ours & ~theirs).sum()) <= SLACK * N_IMAGES
    assert int((theirs & ~ours).sum()) <= SLACK * N_IMAGES
    assert ours.float().mean().item() <= theirs.float().mean().item() + SLACK
