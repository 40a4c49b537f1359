"""[attack]: AttackConfig, which attacks a study runs and their budgets, valid from construction, and the Settings
(results.Setting) it makes: what the crafting runs and each record stores."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from attnrobust.errors import UserError
from attnrobust.results import Setting, eps_key

ATTACKS = ("fgsm", "pgd", "apgd", "minimal", "autoattack")
# AutoAttack's budgets by version: (APGD steps, Square queries, APGD-T target classes). "standard" is Croce &
# Hein 2020's (their `version='standard'` L-inf run; targets are capped at classes - 1); "fast" the reduced
# ensemble of the CPU studies.
AUTOATTACK_VERSIONS = {"standard": (100, 5000, 9), "fast": (20, 1000, 3)}


def _default_fgsm_eps() -> list[float]:
    # round(): 0.05 * 3 is 0.15000000000000002; the records should say 0.15
    return [round(0.05 * i, 10) for i in range(7)]


@dataclass
class AttackConfig:
    """Which attacks to run and their budgets (the paper's defaults). eps are L-inf in [0, 1] pixel units."""

    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    fgsm_eps: list[float] = field(default_factory=_default_fgsm_eps)
    pgd_eps: float = 0.2  # also APGD's budget
    pgd_alpha: float = 0.01
    pgd_steps: list[int] = field(default_factory=lambda: [5, 10, 20])
    random_start: bool = False  # PGD/APGD start uniformly in the eps-ball (seeded)
    keep_best: bool = False  # PGD: a sample counts as broken once any iterate fools the model
    apgd_steps: int = 20
    # minimal eps per image (attacks.minimal_eps): bisection on the grid j * minimal_tol up to minimal_max_eps,
    # PGD with minimal_steps steps per radius on the targeted margin towards the nearest of minimal_candidates
    # classes (0: none), then cross-entropy PGD where minimal_cross_entropy (0 + true: the weaker pre-issue-23
    # attack). Not saturated where the paper's budgets are.
    minimal_max_eps: float = 0.1
    minimal_tol: float = 1 / 255
    minimal_steps: int = 10
    minimal_candidates: int = 9
    minimal_cross_entropy: bool = False
    # AutoAttack-grade worst case at one eps (below the paper's 0.2, where every standard model is at 0%):
    # APGD-CE, APGD-T and the gradient-free Square attack, each on the images the others left.
    # autoattack_version names the budgets (AUTOATTACK_VERSIONS): "standard" (Croce & Hein's: 100 steps,
    # 9 targets, 5000 queries) or "fast" (20, 3, 1000). The three budget keys, left unset, take the version's
    # values; set, they must agree with an explicit version (a record labelled "standard" must have run
    # standard AutoAttack), and without a version, values other than "fast"'s make the version "custom".
    autoattack_eps: float = 8 / 255
    autoattack_version: str | None = None
    autoattack_steps: int | None = None
    autoattack_queries: int | None = None
    autoattack_targets: int | None = None
    sanity_checks: bool = True  # gradient-masking flags (costs one small eps = 1 PGD run per source)
    sanity_n: int = 100  # images of the first batch used by the unbounded-eps check
    # Common corruptions (attnrobust.corruptions): nothing is crafted on a model, a forward pass per corrupted image.
    # Names of the dataset's family (MNIST-C-style for grey 28x28, CIFAR-10-C-style for RGB 32x32) or "all".
    # None (left out) or []: none (left out also keeps the resolved config.toml of older runs unchanged; [] is how
    # --set turns off a shipped config's corruptions, e.g. for a dataset of another shape).
    corruptions: list[str] | None = None
    severities: list[int] | None = None  # of each corruption, from 1-5; None = all five

    def corruption_severities(self) -> list[int]:
        return sorted(self.severities) if self.severities is not None else [1, 2, 3, 4, 5]

    def __post_init__(self) -> None:
        self._resolve_autoattack()
        self.validate()  # an AttackConfig is valid from birth: the stages that receive one never re-check it

    def _resolve_autoattack(self) -> None:
        """Fill autoattack_version and its three budgets from each other (see the field comments)."""
        keys = ("autoattack_steps", "autoattack_queries", "autoattack_targets")
        version = self.autoattack_version
        if version is not None and version not in AUTOATTACK_VERSIONS and version != "custom":
            raise UserError(f"attack.autoattack_version: expected one of {', '.join(AUTOATTACK_VERSIONS)} (or "
                            f"custom), got {version!r}")
        for key in keys:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"attack.{key}: expected a positive integer, got {value!r}")
        base = AUTOATTACK_VERSIONS["fast" if version in (None, "custom") else version]
        if version in AUTOATTACK_VERSIONS:
            for key, want in zip(keys, base):
                if getattr(self, key) not in (None, want):
                    raise UserError(f"attack.{key} = {getattr(self, key)!r} contradicts attack.autoattack_version = "
                                    f"{version!r} ({key} {want}); leave it unset, or set autoattack_version = "
                                    f"\"custom\" to run other budgets")
        for key, want in zip(keys, base):
            if getattr(self, key) is None:
                setattr(self, key, want)
        if version is None:
            values = tuple(getattr(self, k) for k in keys)
            self.autoattack_version = "fast" if values == AUTOATTACK_VERSIONS["fast"] else "custom"

    def validate(self) -> AttackConfig:
        """Raise UserError naming the first bad field; return self."""
        def bad(name: str, what: str, value: Any) -> UserError:
            return UserError(f"attack.{name}: {what}, got {value!r}")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def positive_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        if not isinstance(self.attacks, (list, tuple)) or not self.attacks \
                or any(a not in ATTACKS for a in self.attacks) or len(set(self.attacks)) != len(self.attacks):
            raise bad("attacks", f"expected a non-empty list of distinct names from {', '.join(ATTACKS)}",
                      self.attacks)
        if not isinstance(self.fgsm_eps, (list, tuple)) or not self.fgsm_eps \
                or any(not number(e) or not 0 <= e <= 1 for e in self.fgsm_eps) \
                or len({eps_key(e) for e in self.fgsm_eps}) != len(self.fgsm_eps):
            raise bad("fgsm_eps", "expected a non-empty list of distinct numbers in [0, 1]", self.fgsm_eps)
        for name in ("pgd_eps", "minimal_max_eps", "autoattack_eps"):
            if not number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                raise bad(name, "expected a number in [0, 1]", getattr(self, name))
        if not number(self.minimal_tol) or not 0 < self.minimal_tol <= self.minimal_max_eps:
            raise bad("minimal_tol", f"expected a number in (0, minimal_max_eps = {self.minimal_max_eps}]",
                      self.minimal_tol)
        if not number(self.pgd_alpha) or not self.pgd_alpha > 0:
            raise bad("pgd_alpha", "expected a positive number", self.pgd_alpha)
        if not isinstance(self.pgd_steps, (list, tuple)) or not self.pgd_steps \
                or not all(positive_int(s) for s in self.pgd_steps):
            raise bad("pgd_steps", "expected a non-empty list of positive integers", self.pgd_steps)
        for name in ("random_start", "keep_best", "sanity_checks"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "expected true or false", getattr(self, name))
        for name in ("apgd_steps", "sanity_n", "minimal_steps", "autoattack_steps", "autoattack_queries",
                     "autoattack_targets"):
            if not positive_int(getattr(self, name)):
                raise bad(name, "expected a positive integer", getattr(self, name))
        if self.corruptions is not None:
            from attnrobust.corruptions import ALL_NAMES

            if not isinstance(self.corruptions, (list, tuple)) \
                    or any(c not in ("all", *ALL_NAMES) for c in self.corruptions) \
                    or len(set(self.corruptions)) != len(self.corruptions):
                raise bad("corruptions", f"expected a list of distinct names ([] for none) from all, "
                                         f"{', '.join(ALL_NAMES)}", self.corruptions)
        if self.severities is not None and (
                not isinstance(self.severities, (list, tuple)) or not self.severities
                or any(not positive_int(s) or s > 5 for s in self.severities)
                or len(set(self.severities)) != len(self.severities)):
            raise bad("severities", "expected a non-empty list of distinct integers from 1 to 5", self.severities)
        if not isinstance(self.minimal_candidates, int) or isinstance(self.minimal_candidates, bool) \
                or self.minimal_candidates < 0:
            raise bad("minimal_candidates", "expected an integer >= 0", self.minimal_candidates)
        if not isinstance(self.minimal_cross_entropy, bool):
            raise bad("minimal_cross_entropy", "expected true or false", self.minimal_cross_entropy)
        if self.minimal_candidates == 0 and not self.minimal_cross_entropy:
            raise bad("minimal_candidates", "0 needs minimal_cross_entropy = true (some attack must run)",
                      self.minimal_candidates)
        return self

    def settings(self) -> list[Setting]:
        """The records one source/target pair gets: one Setting per (attack, eps, steps, iterate), in a fixed order.
        Each is what the crafting runs (evaluate) and what its records store; `scope` says where it is scored.

        PGD with keep_best scores the best iterate white-box (the first that fools the attacked model) and the
        final iterate on other targets: "fooled" is judged on the source, so a best iterate would pass the targets
        images the source already got wrong, unperturbed, and transfer error would no longer mean what the paper's
        (final-iterate) numbers mean. APGD always keeps its best iterate, which on other targets is named
        "best-on-source".
        """
        out = []
        if "fgsm" in self.attacks:
            out += [Setting("fgsm", float(e)) for e in self.fgsm_eps]
        if "pgd" in self.attacks:
            pgd = Setting("pgd", float(self.pgd_eps), alpha=float(self.pgd_alpha), random_start=self.random_start)
            steps = sorted(set(self.pgd_steps))
            if self.keep_best:
                out += [replace(pgd, steps=k, keep_best=True, iterate="best") for k in steps]
            out += [replace(pgd, steps=k, iterate="final") for k in steps]
        if "minimal" in self.attacks:
            out.append(Setting("minimal", float(self.minimal_max_eps), self.minimal_steps, keep_best=True,
                               iterate="best"))
        if "autoattack" in self.attacks:
            out.append(Setting("autoattack", float(self.autoattack_eps), self.autoattack_steps, keep_best=True,
                               iterate="best"))
        if "apgd" in self.attacks:
            # APGD adapts its own step size (alpha None) and always keeps the best iterate
            apgd = Setting("apgd", float(self.pgd_eps), self.apgd_steps, random_start=self.random_start,
                           keep_best=True)
            out += [replace(apgd, iterate="best"), replace(apgd, iterate="best-on-source")]
        return out

    def scope(self, setting: Setting) -> str:
        """Which targets `setting` is scored on: "all", "white-box" (the source itself) or "transfer" (the other
        targets). One-step attacks, and PGD without keep_best, on all; a best iterate and the per-image measures
        white-box; PGD's final iterate beside a best one, and APGD's best-on-source, on the other targets."""
        if setting.iterate == "best":
            return "white-box"
        if setting.iterate == "best-on-source" or (setting.attack == "pgd" and self.keep_best):
            return "transfer"
        return "all"
