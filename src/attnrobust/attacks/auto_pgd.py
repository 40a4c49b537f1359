"""APGD-CE and APGD-T (Croce & Hein, 2020): the step-size-free PGD of AutoAttack, untargeted on the cross-entropy
and targeted on the DLR loss, to check that a conclusion survives a stronger adversary."""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnrobust.attacks.core import (attack_hygiene, check_batch, check_eps, input_grad, loss_grad, project_,
                                     uniform_start)
from attnrobust.errors import UserError


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps) at which APGD may halve its step size, with p_0 = 0, p_1 = 0.22 and
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Section 3.2)."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(pj * steps, 9)) for pj in p})


def apgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 20, *, rho: float = 0.75,
         momentum: float = 0.75, random_start: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """APGD-CE (Croce & Hein 2020, Algorithm 1) in L-inf, per sample:

    step size eta starts at 2*eps; z = P(x_k + eta * sign(grad)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)
    (x_k - x_{k-1})) with a = `momentum` (1 on the first step); at each checkpoint w_j the step size halves and
    the iterate restarts from the best point so far when (1) the loss increased in fewer than rho * (w_j - w_{j-1})
    of the steps since the last checkpoint, or (2) the step size was not halved at the last checkpoint and the best
    loss has not improved since. `steps` counts gradient steps (the paper uses 100; AutoAttack too).

    Returns the adversarial batch: for each sample the first iterate that fools the model if one does (AutoAttack's
    convention; the sample then leaves the batch), else the highest-loss iterate.
    """
    eps = check_eps(eps)
    _check_apgd_args(steps, rho, momentum)
    x, y = check_batch(model, x, y)
    with attack_hygiene(model):
        x_start = uniform_start(x, eps, generator) if random_start else x.clone()
        result, _ = _apgd_core(model, x, y, eps, steps, rho, momentum, x_start, {},
                               lambda x_k, s: loss_grad(model, x_k, s["y"]),
                               lambda logits, s: F.cross_entropy(logits, s["y"], reduction="none"))
    return result


def _check_apgd_args(steps: int, rho: float, momentum: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"APGD steps must be a positive integer, got {steps!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) and 0.0 < v <= 1.0 for v in (rho, momentum)):
        raise UserError(f"APGD rho and momentum must be in (0, 1], got rho={rho!r}, momentum={momentum!r}")


def _apgd_core(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, rho: float, momentum: float,
               x_start: Tensor, extra: dict[str, Tensor], loss_grad, loss_of) -> tuple[Tensor, Tensor]:
    """The APGD loop of `apgd`, for any per-sample loss to maximize; call under attack_hygiene.

    loss_grad(x_k, s) -> (logits, per-sample loss, d(summed loss)/dx) and loss_of(logits, s) -> per-sample loss,
    where s holds the per-sample tensors of the samples still attacked: "y" and every entry of `extra` (APGD-T's
    targets "t"), subset together with the rest of the state when samples leave.
    Returns (adversarial batch, broken mask): success is always "the prediction is not y".
    """
    checkpoints = set(apgd_checkpoints(steps)[1:])
    x_cur = x_start
    result = x_cur.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    rows = torch.arange(x.shape[0], device=x.device)  # rows of `result` still attacked
    s = dict(x_nat=x, y=y, **extra)
    logits, f_cur, g_cur = loss_grad(x_cur, s)
    # per-sample state of the samples still attacked, subset together when broken samples leave
    s.update(x_cur=x_cur, x_prev=x_cur.clone(), f_cur=f_cur, g_cur=g_cur,
             x_max=x_cur.clone(), f_max=f_cur.clone(), g_max=g_cur.clone(),
             eta=torch.full_like(f_cur, 2 * eps), increases=torch.zeros_like(f_cur),
             f_max_ckpt=f_cur.clone(), halved_ckpt=torch.zeros_like(f_cur, dtype=torch.bool))
    last_ckpt = 0
    for k in range(steps + 1):
        if k > 0:  # iterate k from iterate k-1
            eta = s["eta"].view(-1, 1, 1, 1)
            z = project_(s["x_cur"] + eta * s["g_cur"].sign(), s["x_nat"], eps)
            a = 1.0 if k == 1 else momentum
            x_new = project_(s["x_cur"] + a * (z - s["x_cur"]) + (1 - a) * (s["x_cur"] - s["x_prev"]),
                              s["x_nat"], eps)
            if k < steps:
                logits, f_new, g_new = loss_grad(x_new, s)
            else:  # the last iterate is only scored: no step follows it
                with torch.inference_mode():
                    logits = model(x_new)
                f_new, g_new = loss_of(logits, s), s["g_cur"]
            s["increases"] += (f_new > s["f_cur"]).float()
            better = f_new > s["f_max"]
            s["x_max"][better], s["g_max"][better], s["f_max"][better] = (
                x_new[better], g_new[better], f_new[better])
            s["x_prev"], s["x_cur"], s["f_cur"], s["g_cur"] = s["x_cur"], x_new, f_new, g_new
        fooled = logits.argmax(1) != s["y"]  # logits are those of x_cur
        if fooled.any():
            result[rows[fooled]] = s["x_cur"][fooled]
            broken[rows[fooled]] = True
            keep = ~fooled
            rows = rows[keep]
            s = {name: value[keep] for name, value in s.items()}
            if rows.numel() == 0:
                break
        if k in checkpoints and k < steps:
            window = k - last_ckpt
            halve = (s["increases"] < rho * window) | (~s["halved_ckpt"] & (s["f_max"] <= s["f_max_ckpt"]))
            s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
            # restart from the best point; the momentum term then runs from the last iterate (as the paper)
            s["x_cur"][halve], s["g_cur"][halve], s["f_cur"][halve] = (
                s["x_max"][halve], s["g_max"][halve], s["f_max"][halve])
            s["halved_ckpt"], s["f_max_ckpt"] = halve, s["f_max"].clone()
            s["increases"] = torch.zeros_like(s["increases"])
            last_ckpt = k
    if rows.numel():
        result[rows] = s["x_max"]
    return result, broken


# ---- APGD-T -----------------------------------------------------------------------------------------------------


def _dlr_targeted(logits: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """Targeted DLR loss (Croce & Hein 2020, eq. 6): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12), pi the
    logits sorted in decreasing order. The denominator makes the loss invariant to shifting and rescaling the
    logits, which is what keeps it informative on models whose cross-entropy saturates."""
    top = logits.topk(4, dim=1).values
    margin = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, t[:, None]).squeeze(1)
    return -margin / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def _dlr_targeted_grad(model: nn.Module, x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """As loss_grad, for the targeted DLR loss summed over the batch."""
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    losses = _dlr_targeted(logits, y, t)
    return logits.detach(), losses.detach(), input_grad(losses.sum(), xr)


def apgd_t(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 100, n_target_classes: int = 9, *,
           rho: float = 0.75, momentum: float = 0.75, random_start: bool = False,
           generator: torch.Generator | None = None) -> Tensor:
    """APGD-T (Croce & Hein 2020, AutoAttack's targeted APGD): APGD (the loop of `apgd`, step size and restarts
    included) on the targeted DLR loss, once per target class: the classes ranked 2nd, 3rd, ... by the model's
    logits at the clean image, min(n_target_classes, classes - 1) of them. Each target run attacks only the images
    no earlier target has broken; an image broken by any target is broken ("not y" is success, as AutoAttack).
    Cost: up to n_target_classes * steps forward+backward passes per robust image, fewer as images break.

    Returns the adversarial batch: for each broken image its first fooling iterate; for images the model already
    misclassifies, x; for the others the highest-loss iterate of the last target's run.
    The targeted DLR loss reads the 4 largest logits, so the model needs at least 4 classes.
    """
    eps = check_eps(eps)
    _check_apgd_args(steps, rho, momentum)
    if isinstance(n_target_classes, bool) or not isinstance(n_target_classes, int) or n_target_classes < 1:
        raise UserError(f"APGD-T n_target_classes must be a positive integer, got {n_target_classes!r}")
    x, y = check_batch(model, x, y)
    with attack_hygiene(model):
        with torch.inference_mode():
            logits = model(x)
        n_classes = logits.shape[1]
        if n_classes < 4:
            raise UserError(f"APGD-T needs a model with at least 4 classes (the targeted DLR loss reads the 4 "
                            f"largest logits), this one has {n_classes}; use apgd (APGD-CE) instead")
        # a normal tensor: the targets enter the autograd graph (gather saves its index)
        ranked = logits.argsort(dim=1, descending=True).clone()
        result = x.clone()
        alive = ranked[:, 0] == y  # the clean-misclassified are broken already
        for rank in range(1, min(n_target_classes, n_classes - 1) + 1):
            rows = alive.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            x_sub = x[rows]
            x_start = uniform_start(x_sub, eps, generator) if random_start else x_sub.clone()
            adv, broken = _apgd_core(model, x_sub, y[rows], eps, steps, rho, momentum, x_start,
                                     {"t": ranked[rows, rank]},
                                     lambda x_k, s: _dlr_targeted_grad(model, x_k, s["y"], s["t"]),
                                     lambda z, s: _dlr_targeted(z, s["y"], s["t"]))
            result[rows] = adv
            alive[rows[broken]] = False
    return result
