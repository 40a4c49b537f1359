"""L-inf attacks as plain functions on a model and a batch of pixels in [0, 1].

- `fgsm`: one gradient at x serves every eps, because FGSM's direction sign(grad) does not depend on eps.
- `pgd`: one run of max(steps_list) steps records the iterate at every requested count: with a fixed step size
  the iterates do not depend on the final count, so 5/10/20 iterations cost one 20-step run.
- `apgd`: APGD-CE (Croce & Hein, 2020), the step-size-free PGD used by AutoAttack, to check that a conclusion
  survives a stronger adversary.

Every attack runs under `attack_hygiene`: eval mode, frozen parameters, fp32, the model's state restored after.
The loss is the cross-entropy *summed* over the batch: each sample's gradient is then independent of which other
samples share its batch (a mean would scale it by 1/B), which is what lets broken samples leave the batch without
changing anyone else's iterates. sign(grad) is invariant to that positive scale, so the images equal those of
torchattacks (which uses the mean); bit for bit when B is a power of two, since scaling by 2^-k is exact.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from numbers import Real
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnrobust.errors import UserError

__all__ = ["fgsm", "pgd", "apgd", "attack_hygiene", "predict", "apgd_checkpoints"]


# ---- hygiene, validation, the one gradient ---------------------------------------------------------------------


@contextmanager
def attack_hygiene(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, parameters frozen, autocast off (fp32), grad enabled; restore every module's training flag and
    every parameter's requires_grad afterwards, even when the attack raises."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            raise UserError(f"model parameters are {p.dtype}; attacks run in fp32: call model.float() first")
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        # inference_mode(False)/enable_grad: an attack needs input gradients even when the caller scores
        # under no_grad; autocast off: a half-precision gradient sign is not the fp32 attack the paper ran.
        no_autocast = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else nullcontext()
        with torch.inference_mode(False), torch.enable_grad(), no_autocast:
            yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Predicted labels for a batch: a pure scoring forward, in eval mode and inference mode."""
    with attack_hygiene(model):
        with torch.inference_mode():
            labels = model(x).argmax(1)
        return labels.clone()  # a normal tensor: callers may modify it or use it in autograd


def _check_eps(eps: float, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, Real) or not 0.0 <= float(eps) <= 1.0:
        raise UserError(f"{name} must be a number in [0, 1] (pixel units, 0.05 = 12.75/255), got {eps!r}")
    return float(eps)


def _check_steps(steps: int | Sequence[int], name: str = "steps") -> list[int]:
    try:
        values = [steps] if isinstance(steps, int) else list(steps)
    except TypeError:  # a float or None: not a count, not a list of counts
        values = [steps]
    if not values or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in values):
        raise UserError(f"{name} must be positive integers, got {steps!r}")
    return values


def _check_batch(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise UserError(f"attack inputs must be a float tensor [B, C, H, W] of pixels in [0, 1], got {shape}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise UserError(f"labels must be an integer tensor [B] with B = {x.shape[0]} (the batch size), got {shape}")
    device = next((p.device for p in model.parameters()), x.device)
    if x.device != device or y.device != device:
        raise UserError(f"attack inputs are on {x.device} and labels on {y.device} but the model is on {device}; "
                        f"move them to the model's device")
    if x.numel():
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one host sync for both
        if lo < 0.0 or hi > 1.0:
            raise UserError(f"attack inputs must be pixels in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                            f"normalization belongs inside the model")
    # tensors made under inference_mode cannot enter autograd; a clone made outside it is a normal tensor (the
    # clone must itself run outside inference mode: an attack may be called from inside one)
    with torch.inference_mode(False):
        x, y = x.detach().float(), y.detach().long()
        return (x.clone() if x.is_inference() else x), (y.clone() if y.is_inference() else y)


def _loss_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, per-sample cross-entropy, d(summed CE)/dx) at x: the only forward+backward an attack step needs."""
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    losses = F.cross_entropy(logits, y, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), xr)
    return logits.detach(), losses.detach(), grad


def _project_(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """In place: onto the eps-ball around x, then onto [0, 1]; the same arithmetic as torchattacks, so our
    iterates and theirs are bit-equal rather than one rounding apart."""
    return x_adv.sub_(x).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0)


def _random_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    # Drawn on the CPU so that a seed gives the same start on every device.
    if generator is not None and generator.device.type != "cpu":
        raise UserError(f"the random-start generator must be a CPU torch.Generator, got one on {generator.device}")
    noise = torch.empty(x.shape, dtype=torch.float32).uniform_(-eps, eps, generator=generator)
    return (x + noise.to(x.device)).clamp_(0.0, 1.0)


# ---- FGSM -------------------------------------------------------------------------------------------------------


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps_list: Sequence[float]) -> list[Tensor]:
    """FGSM at every eps of `eps_list` from one forward+backward: x + eps * sign(grad at x), clamped to [0, 1].

    Returns the adversarial batches as a list aligned with eps_list.
    """
    if isinstance(eps_list, (Real, str)) or not isinstance(eps_list, Iterable):
        raise UserError(f"FGSM eps_list must be a list of numbers in [0, 1], got {eps_list!r}")
    eps_values = [_check_eps(e) for e in eps_list]
    x, y = _check_batch(model, x, y)
    with attack_hygiene(model):
        _, _, grad = _loss_grad(model, x, y)
        direction = grad.sign_()
        return [torch.add(x, direction, alpha=e).clamp_(0.0, 1.0) for e in eps_values]


# ---- PGD --------------------------------------------------------------------------------------------------------


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps_list: int | Sequence[int],
        random_start: bool = False, keep_best: bool = False, generator: torch.Generator | None = None, *,
        prune: bool = True) -> dict[int, Tensor]:
    """L-inf PGD (Madry et al.): x <- P(x + alpha * sign(grad)), P = projection onto the eps-ball and [0, 1].

    One run of max(steps_list) steps; returns {steps: adversarial batch} for every requested count.
    random_start: start uniformly in the eps-ball, drawn from `generator` (a CPU torch.Generator; None = global RNG).
    keep_best: AutoAttack's convention: a sample counts as broken once any iterate (the start included) fools the
      model, and its result is that iterate from then on; the others get the current iterate. With `prune` (the
      default) broken samples leave the batch, so a trained model, where most samples break within a few steps,
      costs far fewer than max(steps_list) full steps. prune=False gives the same result at full cost (for tests).
    """
    eps = _check_eps(eps)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < math.inf:
        raise UserError(f"PGD step size alpha must be a positive finite number, got {alpha!r}")
    alpha = float(alpha)
    wanted = set(_check_steps(steps_list, "PGD steps"))
    total = max(wanted)
    x, y = _check_batch(model, x, y)
    out: dict[int, Tensor] = {}
    with attack_hygiene(model):
        x_adv = _random_start(x, eps, generator) if random_start else x.clone()
        if not keep_best:
            for k in range(1, total + 1):
                _, _, grad = _loss_grad(model, x_adv, y)
                _project_(x_adv.add_(grad.sign_(), alpha=alpha), x, eps)
                if k in wanted:
                    out[k] = x_adv.clone()
            return out

        # keep_best: rows of `best` hold each broken sample's breaking iterate; `rows` maps the samples still
        # attacked (the batch x_adv, x_nat, y_act) to their rows in the full batch.
        best = x_adv.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        x_nat, y_act = x, y
        broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)  # only used when not pruning
        for k in range(total + 1):
            if rows.numel() == 0:  # everything broken: the remaining snapshots are `best`
                out.update({s: best.clone() for s in wanted if s >= k})
                break
            if k < total:
                logits, _, grad = _loss_grad(model, x_adv, y_act)
            else:  # the last iterate is only scored
                with torch.inference_mode():
                    logits = model(x_adv)
            fooled = logits.argmax(1) != y_act
            if not prune:
                fooled &= ~broken
            if fooled.any():
                best[rows[fooled]] = x_adv[fooled]
                if prune:
                    keep = ~fooled
                    rows, x_adv, x_nat, y_act = rows[keep], x_adv[keep], x_nat[keep], y_act[keep]
                    if k < total:
                        grad = grad[keep]
                else:
                    broken |= fooled
            if k in wanted:
                snap = best.clone()
                live = ~broken if not prune else slice(None)
                snap[rows[live]] = x_adv[live]
                out[k] = snap
            if k < total:
                _project_(x_adv.add_(grad.sign_(), alpha=alpha), x_nat, eps)
    return out


# ---- APGD-CE ----------------------------------------------------------------------------------------------------


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
    eps = _check_eps(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"APGD steps must be a positive integer, got {steps!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) and 0.0 < v <= 1.0 for v in (rho, momentum)):
        raise UserError(f"APGD rho and momentum must be in (0, 1], got rho={rho!r}, momentum={momentum!r}")
    x, y = _check_batch(model, x, y)
    checkpoints = set(apgd_checkpoints(steps)[1:])
    with attack_hygiene(model):
        x_cur = _random_start(x, eps, generator) if random_start else x.clone()
        result = x_cur.clone()
        rows = torch.arange(x.shape[0], device=x.device)  # rows of `result` still attacked
        logits, f_cur, g_cur = _loss_grad(model, x_cur, y)
        # per-sample state of the samples still attacked, subset together when broken samples leave
        s = dict(x_nat=x, y=y, x_cur=x_cur, x_prev=x_cur.clone(), f_cur=f_cur, g_cur=g_cur,
                 x_max=x_cur.clone(), f_max=f_cur.clone(), g_max=g_cur.clone(),
                 eta=torch.full_like(f_cur, 2 * eps), increases=torch.zeros_like(f_cur),
                 f_max_ckpt=f_cur.clone(), halved_ckpt=torch.zeros_like(f_cur, dtype=torch.bool))
        last_ckpt = 0
        for k in range(steps + 1):
            if k > 0:  # iterate k from iterate k-1
                eta = s["eta"].view(-1, 1, 1, 1)
                z = _project_(s["x_cur"] + eta * s["g_cur"].sign(), s["x_nat"], eps)
                a = 1.0 if k == 1 else momentum
                x_new = _project_(s["x_cur"] + a * (z - s["x_cur"]) + (1 - a) * (s["x_cur"] - s["x_prev"]),
                                  s["x_nat"], eps)
                if k < steps:
                    logits, f_new, g_new = _loss_grad(model, x_new, s["y"])
                else:  # the last iterate is only scored: no step follows it
                    with torch.inference_mode():
                        logits = model(x_new)
                    f_new, g_new = F.cross_entropy(logits, s["y"], reduction="none"), s["g_cur"]
                s["increases"] += (f_new > s["f_cur"]).float()
                better = f_new > s["f_max"]
                s["x_max"][better], s["g_max"][better], s["f_max"][better] = (
                    x_new[better], g_new[better], f_new[better])
                s["x_prev"], s["x_cur"], s["f_cur"], s["g_cur"] = s["x_cur"], x_new, f_new, g_new
            fooled = logits.argmax(1) != s["y"]  # logits are those of x_cur
            if fooled.any():
                result[rows[fooled]] = s["x_cur"][fooled]
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
    return result
