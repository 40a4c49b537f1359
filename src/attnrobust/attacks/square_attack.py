"""The L-inf Square attack (Andriushchenko et al. 2020): score-based, no gradients, so it sees through gradient
masking."""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from attnrobust.attacks.core import attack_hygiene, check_batch, check_eps
from attnrobust.errors import UserError


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
    x, y = check_batch(model, x, y)
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
