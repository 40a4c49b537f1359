"""The paper's attacks. `fgsm`: one gradient at x serves every eps, because FGSM's direction sign(grad) does not
depend on eps. `pgd`: one run of max(steps_list) steps records the iterate at every requested count: with a fixed
step size the iterates do not depend on the final count, so 5/10/20 iterations cost one 20-step run. `pgd_best`:
PGD keeping each sample's best iterate, broken samples leaving the batch (pgd's keep_best, and minimal_eps's loop).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from attnrobust.attacks.core import (attack_hygiene, check_batch, check_eps, check_steps, input_grad, loss_grad,
                                     project_, uniform_start)
from attnrobust.errors import UserError


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps_list: Sequence[float]) -> list[Tensor]:
    """FGSM at every eps of `eps_list` from one forward+backward: x + eps * sign(grad at x), clamped to [0, 1].

    Returns the adversarial batches as a list aligned with eps_list.
    """
    if isinstance(eps_list, (Real, str)) or not isinstance(eps_list, Iterable):
        raise UserError(f"FGSM eps_list must be a list of numbers in [0, 1], got {eps_list!r}")
    eps_values = [check_eps(e) for e in eps_list]
    x, y = check_batch(model, x, y)
    with attack_hygiene(model):
        _, _, grad = loss_grad(model, x, y)
        direction = grad.sign_()
        return [torch.add(x, direction, alpha=e).clamp_(0.0, 1.0) for e in eps_values]


# ---- PGD --------------------------------------------------------------------------------------------------------


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps_list: int | Sequence[int],
        random_start: bool = False, keep_best: bool = False,
        generator: torch.Generator | None = None) -> dict[int, Tensor]:
    """L-inf PGD (Madry et al.): x <- P(x + alpha * sign(grad)), P = projection onto the eps-ball and [0, 1].

    One run of max(steps_list) steps; returns {steps: adversarial batch} for every requested count.
    random_start: start uniformly in the eps-ball, drawn from `generator` (a CPU torch.Generator; None = global RNG).
    keep_best: AutoAttack's convention: a sample counts as broken once any iterate (the start included) fools the
      model, and its result is that iterate from then on; the others get the current iterate. Broken samples leave
      the batch, so a trained model, where most samples break within a few steps, costs far fewer than
      max(steps_list) full steps (tests compare it with a plain full-batch reference loop).
    """
    eps = check_eps(eps)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < math.inf:
        raise UserError(f"PGD step size alpha must be a positive finite number, got {alpha!r}")
    alpha = float(alpha)
    wanted = set(check_steps(steps_list, "PGD steps"))
    total = max(wanted)
    x, y = check_batch(model, x, y)
    out: dict[int, Tensor] = {}
    with attack_hygiene(model):
        x_adv = uniform_start(x, eps, generator) if random_start else x.clone()
        if not keep_best:
            for k in range(1, total + 1):
                _, _, grad = loss_grad(model, x_adv, y)
                project_(x_adv.add_(grad.sign_(), alpha=alpha), x, eps)
                if k in wanted:
                    out[k] = x_adv.clone()
            return out

        # keep_best: the loop minimal_eps runs too, here with one radius and step for the whole batch
        b = x.shape[0]
        _, _, out = pgd_best(model, x_adv, x, y, torch.full((b,), eps, device=x.device),
                              torch.full((b,), alpha, device=x.device), total, wanted)
    return out


def _margin_targeted_grad(model: nn.Module, x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """As loss_grad, for the targeted margin z_t - z_y summed over the batch. Linear in the input on a linear
    model, so its sign-gradient ascent walks straight to the optimal corner sign(w_t - w_y) of the ball."""
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    losses = logits.gather(1, t[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    return logits.detach(), losses.detach(), input_grad(losses.sum(), xr)


def pgd_best(model: nn.Module, x_start: Tensor, x: Tensor, y: Tensor, eps: Tensor, alpha: Tensor, steps: int,
              wanted: Iterable[int] = (), t: Tensor | None = None) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
    """PGD keeping the best iterate, broken samples leaving the batch: the one loop of `pgd(keep_best=True)` and of
    minimal_eps. Starts at x_start, in the ball around x of radius `eps` with step `alpha`, both per sample ([B]
    float32), on the cross-entropy or, given targets t, on the targeted margin z_t - z_y. Call under
    attack_hygiene.

    Returns (broken mask, adversarial batch, snapshots): a broken sample's first fooling iterate (the start
    included), else x_start; and for every step count in `wanted` the batch after that many steps (broken samples
    at their fooling iterate, the others at the current one). The summed loss keeps each sample's gradient
    independent of its batch, so pruning changes no sample's iterates.
    """
    wanted = set(wanted)
    best = x_start.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    x_adv, x_nat, y_act, t_act = x_start.clone(), x, y, t
    eps_act, alpha_act = eps.view(-1, 1, 1, 1), alpha.view(-1, 1, 1, 1)
    snapshots: dict[int, Tensor] = {}
    for k in range(steps + 1):
        if rows.numel() == 0:  # everything broken: the remaining snapshots are `best`
            snapshots.update({s: best.clone() for s in wanted if s >= k})
            break
        if k < steps:
            logits, _, grad = (loss_grad(model, x_adv, y_act) if t_act is None
                               else _margin_targeted_grad(model, x_adv, y_act, t_act))
        else:  # the last iterate is only scored
            with torch.inference_mode():
                logits = model(x_adv)
        fooled = logits.argmax(1) != y_act
        if fooled.any():
            best[rows[fooled]] = x_adv[fooled]
            broken[rows[fooled]] = True
            keep = ~fooled
            rows, x_adv, x_nat, y_act = rows[keep], x_adv[keep], x_nat[keep], y_act[keep]
            eps_act, alpha_act = eps_act[keep], alpha_act[keep]
            t_act = None if t_act is None else t_act[keep]
            if k < steps:
                grad = grad[keep]
        if k in wanted:
            snap = best.clone()
            snap[rows] = x_adv
            snapshots[k] = snap
        if k < steps:
            project_(x_adv.add_(grad.sign_().mul_(alpha_act)), x_nat, eps_act)
    return broken, best, snapshots
