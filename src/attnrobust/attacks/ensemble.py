"""The worst case over an ensemble of attacks at one eps, AutoAttack's way (`worst_case`): APGD-CE, APGD-T, then
the black-box Square on the images the others left."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from attnrobust.attacks.auto_pgd import apgd, apgd_t
from attnrobust.attacks.core import check_batch, check_eps, predict
from attnrobust.attacks.square_attack import square
from attnrobust.errors import UserError

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
    x, y = check_batch(model, x, y)
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
