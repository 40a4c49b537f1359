"""What every attack shares: `attack_hygiene` (eval mode, frozen parameters, fp32, the model's state restored
after), the checks of an attack's arguments, the one gradient (`loss_grad`), the projection onto the eps-ball and
the random start.

The loss is the cross-entropy *summed* over the batch: each sample's gradient is then independent of which other
samples share its batch (a mean would scale it by 1/B), which is what lets broken samples leave the batch without
changing anyone else's iterates. sign(grad) is invariant to that positive scale, so the images equal those of
torchattacks (which uses the mean); bit for bit when B is a power of two, since scaling by 2^-k is exact.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from numbers import Real
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnrobust.errors import UserError


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


def check_steps(steps: int | Sequence[int], name: str = "steps") -> list[int]:
    try:
        values = [steps] if isinstance(steps, int) else list(steps)
    except TypeError:  # a float or None: not a count, not a list of counts
        values = [steps]
    if not values or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in values):
        raise UserError(f"{name} must be positive integers, got {steps!r}")
    return values


def check_batch(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
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


def input_grad(loss: Tensor, xr: Tensor) -> Tensor:
    """d loss / d xr as a tensor of its own: the attacks update it in place, and a model that pools its input
    first (a user's, say) hands back a broadcast view."""
    (grad,) = torch.autograd.grad(loss, xr)
    return grad.clone() if 0 in grad.stride() else grad


def loss_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, per-sample cross-entropy, d(summed CE)/dx) at x: the only forward+backward an attack step needs."""
    xr = x.detach().requires_grad_(True)
    logits = model(xr)
    losses = F.cross_entropy(logits, y, reduction="none")
    return logits.detach(), losses.detach(), input_grad(losses.sum(), xr)


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
