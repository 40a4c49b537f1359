"""L-inf attacks as plain functions on a model and a batch of pixels in [0, 1], one module per family:

- core.py: `attack_hygiene` (eval mode, frozen parameters, fp32, the model's state restored after; every attack
  runs under it), `predict`, the argument checks, the one gradient (`loss_grad`: the cross-entropy summed over the
  batch, so each sample's gradient is independent of its batch), the projection and the random start;
- fgsm_pgd.py: `fgsm` (one gradient at x serves every eps: FGSM's direction sign(grad) does not depend on eps) and
  `pgd` (one run of max(steps_list) steps records the iterate at every requested count: with a fixed step size the
  iterates do not depend on the final count, so 5/10/20 iterations cost one 20-step run);
- auto_pgd.py: `apgd` (APGD-CE, Croce & Hein 2020: the step-size-free PGD used by AutoAttack, to check that a
  conclusion survives a stronger adversary) and `apgd_t` (targeted, on the DLR loss);
- minimal.py: `minimal_eps` (per image, the smallest eps at which an attack succeeds) and `robust_accuracy_curve`;
- square_attack.py: `square` (Andriushchenko et al. 2020: score-based, no gradients);
- ensemble.py: `worst_case` (AutoAttack's way: each attack on the images the ones before it left).

Import them from here (`from attnrobust.attacks import pgd`): which module holds an attack is this package's
business.
"""

from attnrobust.attacks.auto_pgd import apgd, apgd_checkpoints, apgd_t
from attnrobust.attacks.core import attack_hygiene, check_eps, loss_grad, predict, project_, uniform_start
from attnrobust.attacks.ensemble import BLACK_BOX, WHITE_BOX, worst_case
from attnrobust.attacks.fgsm_pgd import fgsm, pgd
from attnrobust.attacks.minimal import minimal_eps, robust_accuracy_curve
from attnrobust.attacks.square_attack import square

__all__ = ["fgsm", "pgd", "apgd", "apgd_t", "square", "minimal_eps", "robust_accuracy_curve", "worst_case",
           "attack_hygiene", "predict", "apgd_checkpoints", "check_eps", "loss_grad", "project_", "uniform_start",
           "WHITE_BOX", "BLACK_BOX"]
