"""Minimal eps per image and the robust-accuracy curve read off it: `minimal_eps` bisects, per image, the smallest
L-inf radius at which PGD (targeted towards the nearest class, then cross-entropy) finds an adversarial example;
`robust_accuracy_curve` turns those radii into accuracy at every eps of a grid in one pass."""

from __future__ import annotations

import math
from numbers import Real
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from attnrobust.attacks.core import attack_hygiene, check_batch, check_eps
from attnrobust.attacks.fgsm_pgd import pgd_best
from attnrobust.errors import UserError


def _closest_target(model: nn.Module, x: Tensor, y: Tensor, ranked: Tensor, candidates: int) -> Tensor:
    """Per image, the class among those ranked 2nd .. (candidates + 1)th by the clean logits whose decision
    boundary is nearest in L-inf when the model is replaced by its linearization at x, the [0, 1] box included.

    For a target t with margin m = z_y - z_t > 0 and gradient g of z_t - z_y at x, the most that a perturbation of
    L-inf norm <= e inside the box raises z_t - z_y to first order is f(e) = sum_i |g_i| min(e, r_i), r_i the room
    of pixel i in the direction sign(g_i) (1 - x_i or x_i); the linearized distance is the smallest e with f(e) >= m
    (inf if none), read off the sorted r_i in one pass. On a linear model it is the exact box-constrained distance,
    so the class it picks is the nearest one. Costs one forward and `candidates` backward passes per image.
    """
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    n = x.shape[0]
    best = torch.full((n,), math.inf, device=x.device)
    target = ranked[:, 1].clone()
    flat = x.flatten(1)
    for rank in range(1, candidates + 1):
        t = ranked[:, rank]
        m = (z_y - logits.gather(1, t[:, None]).squeeze(1)).detach()
        (g,) = torch.autograd.grad((logits.gather(1, t[:, None]).squeeze(1) - z_y).sum(), xr,
                                   retain_graph=rank < candidates)
        g = g.flatten(1)
        room = torch.where(g > 0, 1.0 - flat, flat)
        r, order = room.sort(dim=1)
        a = g.abs().gather(1, order)
        below = torch.cumsum(a * r, 1) - a * r  # sum_{i<k} a_i r_i
        above = a.flip(1).cumsum(1).flip(1)  # sum_{i>=k} a_i
        f_at = below + r * above  # f(r_k), non-decreasing in k
        k = torch.searchsorted(f_at, m[:, None].contiguous()).squeeze(1)  # first k with f(r_k) >= m
        reachable = k < f_at.shape[1]
        kk = k.clamp(max=f_at.shape[1] - 1)[:, None]
        dist = (m - below.gather(1, kk).squeeze(1)) / above.gather(1, kk).squeeze(1).clamp(min=1e-30)
        dist = torch.where(reachable, dist.clamp(min=0.0), torch.full_like(dist, math.inf))
        closer = dist < best
        best, target = torch.where(closer, dist, best), torch.where(closer, t, target)
    return target


def minimal_eps(model: nn.Module, x: Tensor, y: Tensor, *, max_eps: float = 16 / 255, tol: float = 1 / 255,
                steps: int = 10, candidates: int = 9, cross_entropy: bool = False, n_target_classes: int = 0,
                return_adv: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Per image, the smallest L-inf eps (pixel units) at which PGD finds an adversarial example, to within `tol`.

    The attack at a radius e is PGD with keep_best, step 2.5 * e / steps (the step rule of Madry et al. 2018: every
    pixel can cross the ball 1.25 times) and `steps` steps, on:
      1. the targeted margin z_t - z_y towards the nearest class t (candidates > 0): the class, among the
         `candidates` ranked 2nd, 3rd, ... by the clean logits (capped at classes - 1), whose boundary is nearest
         for the model linearized at x, the [0, 1] box included (`_closest_target`: one forward and `candidates`
         backward passes per image, once per call, not per radius);
      2. then, on the images it failed on, the cross-entropy (cross_entropy=True), as `pgd(keep_best=True)`;
      3. then the targeted margin towards each of the n_target_classes classes ranked 2nd, 3rd, ... (skipping
         none: a class already tried is tried again, cheaply, since few images reach this stage).
    Success is always "the prediction is not y". The defaults run stage 1 only.

    Why this attack (issue 23). Cross-entropy ascent follows a mixture of classes and can stop at a corner of the
    ball that is not the nearest decision boundary, even on a linear model: there the old default (cross_entropy
    only, `candidates=0`) overshot the exact minimal eps by more than tol on about half the images (up to 10/255
    with 10 classes). The targeted margin is linear on a linear model, so sign-gradient ascent walks to the
    optimal point of the ball-and-box, and the linearized distance picks the nearest class exactly: the result is
    the exact minimal eps to within tol whenever the nearest class is among the candidates (always with
    <= candidates + 1 classes). On trained CNNs the linearized-nearest class is the one a minimum-norm attack
    (FAB, FMN) heads for first, and one targeted run per radius costs what the cross-entropy run cost. Measured
    roughly (one run each, process CPU time, a shared and busy 2-core CPU; docs/attacks.md): 1.26x the old
    default's time per image on resnet14 (width 8, one epoch on fashion-mnist-mini, 16 images), where robust
    accuracy read off it at 8/255 fell from 31.2% to 25.0%, equal to AutoAttack's; 1.1-1.3x on a small CNN, where
    at 16/255 it fell from 43.5% to 41.0%, again AutoAttack's. Stronger per unit of time than the alternatives:
    adding the cross-entropy stage cost 1.6-1.9x for at most one image more; the old default plus 3 ranked targets
    3.2x; every failed radius runs all its steps, so each extra stage costs up to one run per failed radius.
    Why bisection and not a minimum-norm attack (FMN, Pintor et al. 2021): FMN runs every image for all of its
    steps (100 is its cheapest competitive setting, against about 25 forward+backward passes per image here), and
    its precision is not set by a parameter.

    Radii are those of the grid e_j = min(j * tol, max_eps), j = 1..K. Per image a bisection over j keeps lo (a
    radius where the attack failed; 0 = clean) and hi (a radius within which an adversarial example is known):
      - round 0 scores x: misclassified images get 0 and leave;
      - round 1 attacks at max_eps: images it cannot break get inf and leave; for the others hi is the grid radius
        just above the L-inf norm of the adversarial example actually found, which early stopping keeps well
        below max_eps (the first fooling iterate after i steps has norm <= i * alpha);
      - then rounds at the midpoint of (lo, hi) on the images whose bracket spans more than one grid step;
        success sets hi from the norm found (again often below the midpoint), failure sets lo.
    All images of a round run in one batch and leave it when broken, as pgd's pruning.

    Returns float32 [B] on x's device: the L-inf norm of the adversarial example found (capped by the radius of the
    ball it was found in, against float rounding when the norm is re-measured), so "broken at every eps >= the
    result" is a certificate (the adversarial example exists) rather than an estimate; 0 for misclassified images;
    inf where the attack fails at max_eps. With return_adv=True also the adversarial batch (x where none is known
    or the image is misclassified). Tolerance: the attack failed at the grid radius below the result, so the
    attack's minimal eps lies in (result's grid step - tol, result], provided its success is monotone in eps
    (true of PGD in practice, not guaranteed: a radius left untried could be broken below a failed one).
    Because the grid is j * tol, with tol = 1/255 robust_accuracy_curve at j/255 reads exactly the attack's
    verdict at that radius, as if it had been run there.
    """
    max_eps = check_eps(max_eps, "max_eps")
    if isinstance(tol, bool) or not isinstance(tol, Real) or not 0.0 < tol <= max_eps:
        raise UserError(f"minimal_eps tol must be a number in (0, max_eps] = (0, {max_eps:.4g}], got {tol!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"minimal_eps steps must be a positive integer, got {steps!r}")
    for name, value in (("candidates", candidates), ("n_target_classes", n_target_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"minimal_eps {name} must be an integer >= 0, got {value!r}")
    if not isinstance(cross_entropy, bool):
        raise UserError(f"minimal_eps cross_entropy must be True or False, got {cross_entropy!r}")
    if candidates == 0 and not cross_entropy and n_target_classes == 0:
        raise UserError("minimal_eps needs an attack: candidates > 0, cross_entropy=True or n_target_classes > 0")
    x, y = check_batch(model, x, y)
    n_grid = max(1, math.ceil(max_eps / tol - 1e-9))
    # the grid in float64 on the CPU, then float32 on the device: e and alpha are then the very float32 numbers
    # that pgd(e, 2.5 * e / steps) uses, whatever the device supports (MPS has no float64)
    grid64 = (torch.arange(n_grid + 1, dtype=torch.float64) * float(tol)).clamp_(max=max_eps)
    grid = grid64.float().to(x.device)
    alphas = (grid64 * 2.5 / steps).float().to(x.device)
    n = x.shape[0]
    result = torch.full((n,), math.inf, dtype=torch.float32, device=x.device)
    adv = x.clone()
    lo = torch.zeros(n, dtype=torch.long, device=x.device)
    hi = torch.full((n,), n_grid + 1, dtype=torch.long, device=x.device)  # n_grid + 1: nothing known yet
    with attack_hygiene(model):
        with torch.inference_mode():
            logits = model(x)
        ranked = logits.argsort(dim=1, descending=True).clone()  # a normal tensor: targets enter autograd
        n_classes = logits.shape[1]
        wrong = ranked[:, 0] != y
        result[wrong] = 0.0
        hi[wrong] = 0
        # the per-radius attacks, in order: (targets per image or None for cross-entropy)
        runs: list[Tensor | None] = []
        if candidates > 0 and n_classes > 1 and (~wrong).any():
            nearest = ranked[:, 1].clone()
            right = (~wrong).nonzero().squeeze(1)
            nearest[right] = _closest_target(model, x[right], y[right], ranked[right],
                                             min(candidates, n_classes - 1))
            runs.append(nearest)
        if cross_entropy:
            runs.append(None)
        runs += [ranked[:, rank] for rank in range(1, min(n_target_classes, n_classes - 1) + 1)]
        first = True
        while True:
            active = (hi - lo > 1).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            mid = torch.full_like(active, n_grid) if first else (lo[active] + hi[active]) // 2
            e, a = grid[mid], alphas[mid]
            broken = torch.zeros(active.numel(), dtype=torch.bool, device=x.device)
            found = x[active].clone()
            for t in runs:  # each run on the images the earlier ones failed on
                left = (~broken).nonzero().squeeze(1)
                if left.numel() == 0:
                    break
                rows = active[left]
                b, f, _ = pgd_best(model, x[rows], x[rows], y[rows], e[left], a[left], steps,
                                    t=None if t is None else t[rows])
                broken[left[b]], found[left[b]] = True, f[b]
            # success: hi is the grid index just above the norm found (never above mid: float rounding of the
            # re-measured norm must not undo the progress); failure: lo = mid
            rows, j = active[broken], mid[broken]
            norm = torch.minimum((found[broken] - x[rows]).flatten(1).abs().amax(1), grid[j])
            hi[rows] = torch.minimum(torch.searchsorted(grid, norm), j)
            result[rows], adv[rows] = norm, found[broken]
            failed = active[~broken]
            if first:  # not broken at max_eps: inf, settled
                lo[failed] = hi[failed] = n_grid + 1
            else:
                lo[failed] = mid[~broken]
            first = False
    return (result, adv) if return_adv else result


def robust_accuracy_curve(min_eps: Tensor, eps_grid: Sequence[float], *, counts: bool = False) -> list:
    """Robust accuracy at every eps of `eps_grid` read off per-image minimal eps in one pass: an image counts as
    robust at eps iff min_eps > eps (so min_eps = 0, the misclassified, is never robust and inf always is).

    One `minimal_eps` run thus gives a whole curve. Approximation: minimal_eps is known to within its `tol`, so the
    curve is the attack's own verdict at grid radii k * tol (exact there, given monotone success) and may count an
    image robust up to tol too far in between. Over all N = len(min_eps) images; counts=True returns the number of
    robust images at each eps instead of the fraction (store n and counts, not only ratios).
    """
    if not isinstance(min_eps, Tensor) or min_eps.dim() != 1 or not min_eps.is_floating_point():
        raise UserError(f"min_eps must be a float tensor [N] as minimal_eps returns, got "
                        f"{tuple(min_eps.shape) if isinstance(min_eps, Tensor) else type(min_eps).__name__}")
    if isinstance(eps_grid, (Real, str)) or not isinstance(eps_grid, Iterable):
        raise UserError(f"eps_grid must be a list of numbers in [0, 1], got {eps_grid!r}")
    eps_values = [check_eps(e, "eps_grid values") for e in eps_grid]
    values = min_eps.detach().float().cpu()
    if torch.isnan(values).any() or (values < 0).any():
        raise UserError("min_eps must be >= 0 (inf allowed, no NaN), as minimal_eps returns")
    n = values.numel()
    ordered = values.sort().values
    # min_eps is float32, capped by float32 radii computed as j * tol; a grid given in decimals (round(j / 255, 10),
    # as stored in records) can round to the float32 just below such a radius (1, 4, 8 and 16 /255 do), which would
    # count an image broken at exactly that radius as robust there. A relative margin of 1e-6 (about 8 float32
    # steps, far below any tol) puts every radius on the right side of its own float32 value.
    at = (torch.tensor(eps_values, dtype=torch.float64) * (1 + 1e-6)).float()
    robust = (n - torch.searchsorted(ordered, at, right=True)).tolist()
    if counts:
        return robust
    return [r / n if n else math.nan for r in robust]
