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

__all__ = ["fgsm", "pgd", "apgd", "apgd_t", "square", "minimal_eps", "robust_accuracy_curve", "worst_case",
           "attack_hygiene", "predict", "apgd_checkpoints"]


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


def check_eps(eps: float, name: str = "eps") -> float:
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


def _input_grad(loss: Tensor, xr: Tensor) -> Tensor:
    """d loss / d xr as a tensor of its own: the attacks update it in place, and a model that pools its input
    first (a user's, say) hands back a broadcast view."""
    (grad,) = torch.autograd.grad(loss, xr)
    return grad.clone() if 0 in grad.stride() else grad


def loss_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, per-sample cross-entropy, d(summed CE)/dx) at x: the only forward+backward an attack step needs."""
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    losses = F.cross_entropy(logits, y, reduction="none")
    return logits.detach(), losses.detach(), _input_grad(losses.sum(), xr)


def project_(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """In place: onto the eps-ball around x, then onto [0, 1]; the same arithmetic as torchattacks, so our
    iterates and theirs are bit-equal rather than one rounding apart."""
    return x_adv.sub_(x).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0)


def uniform_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
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
    eps_values = [check_eps(e) for e in eps_list]
    x, y = _check_batch(model, x, y)
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
    wanted = set(_check_steps(steps_list, "PGD steps"))
    total = max(wanted)
    x, y = _check_batch(model, x, y)
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
        _, _, out = _pgd_best(model, x_adv, x, y, torch.full((b,), eps, device=x.device),
                              torch.full((b,), alpha, device=x.device), total, wanted)
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
    eps = check_eps(eps)
    _check_apgd_args(steps, rho, momentum)
    x, y = _check_batch(model, x, y)
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
    return logits.detach(), losses.detach(), _input_grad(losses.sum(), xr)


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
    x, y = _check_batch(model, x, y)
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


# ---- minimal eps and the curve read off it -----------------------------------------------------------------------


def _margin_targeted_grad(model: nn.Module, x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """As loss_grad, for the targeted margin z_t - z_y summed over the batch. Linear in the input on a linear
    model, so its sign-gradient ascent walks straight to the optimal corner sign(w_t - w_y) of the ball."""
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    losses = logits.gather(1, t[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    return logits.detach(), losses.detach(), _input_grad(losses.sum(), xr)


def _pgd_best(model: nn.Module, x_start: Tensor, x: Tensor, y: Tensor, eps: Tensor, alpha: Tensor, steps: int,
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
    x, y = _check_batch(model, x, y)
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
                b, f, _ = _pgd_best(model, x[rows], x[rows], y[rows], e[left], a[left], steps,
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


# ---- Square -------------------------------------------------------------------------------------------------------


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j: negative iff the image is misclassified."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - logits.scatter(1, y[:, None], -math.inf).amax(1)


def _square_fraction(p_init: float, it: int, queries: int) -> float:
    """Share of the image a square covers at iteration `it`: p_init halved at iterations 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 of a 10000-query run, rescaled to `queries` (Andriushchenko et al. 2020)."""
    scaled = int(it / queries * 10000)
    return p_init / 2 ** sum(scaled > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))


def square(model: nn.Module, x: Tensor, y: Tensor, eps: float, queries: int = 5000, p_init: float = 0.8,
           generator: torch.Generator | None = None) -> Tensor:
    """The L-inf Square attack (Andriushchenko et al. 2020): score-based, no gradients, so it sees through
    gradient masking.

    Start at x + eps * s with one random sign s per image, channel and pixel column (vertical stripes). Each query
    proposes, per image still attacked, a random square (side sqrt(p * H * W), p from `_square_fraction`) whose
    pixels move to x +- eps, one random sign per channel (redrawn when it would change nothing); the proposal is
    kept when it lowers the margin z_y - max_{j != y} z_j. An image leaves as soon as the margin is negative.
    `queries` counts model evaluations per image, the start included: one forward per query for the images still
    attacked, run under inference_mode: square never calls backward. Random draws come from `generator` (a CPU
    torch.Generator; None = the global RNG) on the CPU, so a seed gives the same attack on every device.

    Returns the adversarial batch: for each fooled image the first fooling query, else the lowest-margin one.
    The clean image itself is not scored: callers that need clean accuracy score it (worst_case does).
    """
    eps = check_eps(eps)
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise UserError(f"Square queries must be a positive integer, got {queries!r}")
    if isinstance(p_init, bool) or not isinstance(p_init, Real) or not 0.0 < p_init <= 1.0:
        raise UserError(f"Square p_init must be a number in (0, 1], got {p_init!r}")
    if generator is not None and generator.device.type != "cpu":
        raise UserError(f"the Square generator must be a CPU torch.Generator, got one on {generator.device}")
    x, y = _check_batch(model, x, y)
    n, c, h, w = x.shape
    if n == 0 or eps == 0.0:
        return x.clone()

    def signs(*shape: int) -> Tensor:
        return (torch.randint(0, 2, shape, generator=generator, dtype=torch.float32) * 2 - 1).to(x.device)

    with attack_hygiene(model), torch.inference_mode():
        result = _square_loop(model, x, y, eps, queries, p_init, signs, generator)
    return result.clone()  # outside inference mode: a normal tensor, as the other attacks return


def _square_loop(model: nn.Module, x: Tensor, y: Tensor, eps: float, queries: int, p_init: float, signs,
                 generator: torch.Generator | None) -> Tensor:
    """square's search, run under inference_mode; `signs(*shape)` draws +-1 on the CPU and moves them to x's device."""
    n, c, h, w = x.shape
    x_best = (x + eps * signs(n, c, 1, w)).clamp_(0.0, 1.0)
    margin = _margin(model(x_best), y)
    result = x_best.clone()
    rows = torch.arange(n, device=x.device)
    x_nat, y_act = x, y
    hh = torch.arange(h, device=x.device).view(1, 1, h, 1)
    ww = torch.arange(w, device=x.device).view(1, 1, 1, w)
    for it in range(queries):
        fooled = margin < 0
        if fooled.any():
            result[rows[fooled]] = x_best[fooled]
            keep = ~fooled
            rows, x_best, x_nat, y_act, margin = rows[keep], x_best[keep], x_nat[keep], y_act[keep], margin[keep]
        if rows.numel() == 0 or it == queries - 1:
            break
        m = rows.numel()
        side = round(math.sqrt(_square_fraction(p_init, it, queries) * h * w))
        side = min(max(side, 1), max(min(h, w) - 1, 1))
        top = torch.randint(0, h - side + 1, (m, 1, 1, 1), generator=generator).to(x.device)
        left = torch.randint(0, w - side + 1, (m, 1, 1, 1), generator=generator).to(x.device)
        window = (hh >= top) & (hh < top + side) & (ww >= left) & (ww < left + side)
        x_new = torch.where(window, (x_nat + eps * signs(m, c, 1, 1)).clamp_(0.0, 1.0), x_best)
        # a proposal equal to the current window wastes a query: redraw the signs of those (the paper does);
        # each draw changes the window with probability >= 2^-C, so a few rounds suffice
        for _ in range(16):
            same = ~((x_new - x_best).abs() > 1e-7).flatten(1).any(1)
            if not same.any():
                break
            k = int(same.sum())
            x_new[same] = torch.where(window[same], (x_nat[same] + eps * signs(k, c, 1, 1)).clamp_(0.0, 1.0),
                                      x_best[same])
        new_margin = _margin(model(x_new), y_act)
        better = new_margin < margin
        x_best[better], margin[better] = x_new[better], new_margin[better]
    if rows.numel():
        result[rows] = x_best
    return result


# ---- the ensemble -------------------------------------------------------------------------------------------------

WHITE_BOX = ("apgd-ce", "apgd-t")
BLACK_BOX = ("square",)


def worst_case(model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
               attacks: Sequence[str] = ("apgd-ce", "apgd-t", "square"), steps: int = 100, queries: int = 5000,
               n_target_classes: int = 9, generator: torch.Generator | None = None) -> dict:
    """The worst case over an ensemble of attacks at one eps, AutoAttack's way: each attack runs only on the
    images still robust after the previous ones (an image broken once is broken; later attacks would only repeat
    work), white-box attacks first (in the order given), then the black-box one.

    attacks: names from "apgd-ce" (apgd, `steps`), "apgd-t" (apgd_t, `steps`, `n_target_classes`) and "square"
    (square, `queries`, `generator`).
    Returns a dict of per-image [B] tensors:
      "clean":   the model classifies x correctly;
      "robust":  correct on x and no attack fooled it (the ensemble's robust accuracy is its mean);
      "fooled":  {attack name: the images that attack broke}: disjoint, each image credited to the first attack
                 that broke it (later attacks never saw it);
      "masking": images the black-box attack fooled after every white-box attack failed on them: a sign of
                 gradient masking (all False when the list lacks either kind, no evidence either way);
      "x_adv":   the adversarial batch (the breaking attack's image; x for robust and clean-misclassified images).
    """
    eps = check_eps(eps)
    if isinstance(attacks, str) or not isinstance(attacks, Iterable):
        raise UserError(f"worst_case attacks must be a list of names from {WHITE_BOX + BLACK_BOX}, got {attacks!r}")
    names = list(attacks)
    unknown = [a for a in names if a not in WHITE_BOX + BLACK_BOX]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(f"worst_case attacks must be distinct names from {', '.join(WHITE_BOX + BLACK_BOX)}, "
                        f"got {names!r}")
    x, y = _check_batch(model, x, y)
    run = {
        "apgd-ce": lambda xs, ys: apgd(model, xs, ys, eps, steps=steps),
        "apgd-t": lambda xs, ys: apgd_t(model, xs, ys, eps, steps=steps, n_target_classes=n_target_classes),
        "square": lambda xs, ys: square(model, xs, ys, eps, queries=queries, generator=generator),
    }
    clean = predict(model, x) == y
    robust = clean.clone()
    x_adv = x.clone()
    fooled = {}
    for name in [a for a in names if a in WHITE_BOX] + [a for a in names if a in BLACK_BOX]:
        rows = robust.nonzero().squeeze(1)
        fooled[name] = torch.zeros_like(robust)
        if rows.numel() == 0:
            continue
        adv = run[name](x[rows], y[rows])
        broke = predict(model, adv) != y[rows]  # re-scored: the verdict does not trust the attack's bookkeeping
        fooled[name][rows[broke]] = True
        x_adv[rows[broke]] = adv[broke]
        robust[rows[broke]] = False
    has_white = any(a in WHITE_BOX for a in names)
    masking = fooled["square"].clone() if has_white and "square" in fooled else torch.zeros_like(robust)
    return {"clean": clean, "robust": robust, "fooled": {a: fooled[a] for a in names}, "masking": masking,
            "x_adv": x_adv}
