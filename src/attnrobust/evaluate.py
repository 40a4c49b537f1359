"""Clean, white-box and transfer evaluation -> result records (see attnrobust.results for the schema).

`craft_and_score` is the one evaluation loop: for every batch and every source model it crafts each attack
setting once (one gradient for the whole FGSM sweep, one PGD run for every iteration count) and scores the
adversarial batch on every target in the same pass. The source is always among the targets, so the matrix's
diagonal is the white-box result; `white_box` is `craft_and_score` with one model. Counts are integers
accumulated on the device (no per-batch host syncs) and, under torchrun, summed over ranks, each of which
attacks its own shard of the split.

Gradient-masking sanity checks (AutoAttack / Carlini et al. 2019 "On evaluating adversarial robustness") are
stored per record in record["flags"] = {name: {"ok": bool, "detail": str}}:
  white-box  unbounded_eps   PGD at eps = 1 (the whole pixel cube) drives accuracy to about 0 on a small subset;
             pgd_ge_fgsm     PGD (or APGD) error >= FGSM error at the same eps, when the iterations can reach
                             the whole ball (steps * alpha >= eps: PGD at 5 x 0.01 cannot match FGSM at 0.2);
             monotone_steps  PGD error non-decreasing in iterations (with keep_best, where it is guaranteed);
  transfer   transfer_ge_white_box  transfer accuracy on a target >= that target's white-box accuracy at the same
             setting (when the target's white-box record is in the same set; see `sanity_flags`).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attnrobust.attacks import apgd, attack_hygiene, fgsm, minimal_eps, pgd, predict, robust_accuracy_curve, worst_case
from attnrobust.checkpoint import load_attack_model
from attnrobust.config import AttackConfig
from attnrobust.corruptions import corrupt, expand_names, family_of
from attnrobust.data import DeviceLoader, load_dataset
from attnrobust.distributed import all_sum_, dist_info, init_distributed, is_distributed
from attnrobust.errors import UserError
from attnrobust.results import (COUNT_KEYS, Setting, make_record, pack_bits, pack_floats, point_of, regime_of,
                                unpack_bits, unpack_floats)
from attnrobust.runtime import resolve_device

__all__ = ["clean_accuracy", "craft_and_score", "white_box", "white_box_measures", "corruption_scores",
           "sanity_flags", "tighten_minimal", "evaluate_checkpoints"]

# Measured white-box only, per image, beside the paper's grid: not transferred (see white_box_measures).
WHITE_BOX_MEASURES = ("minimal", "autoattack")
# The fine grid of robustness curves (read off the per-image minimal eps): 0, 1/255, ..., 16/255.
FINE_GRID = [round(j / 255, 10) for j in range(17)]
# The unbounded-eps check: eps = 1 allows any image, so 20 steps of 0.1 (keeping the best iterate) should break
# essentially every sample of a model whose gradients are informative.
UNBOUNDED_STEPS, UNBOUNDED_ALPHA, UNBOUNDED_MAX_ACCURACY = 20, 0.1, 0.05


# ---- helpers ----------------------------------------------------------------------------------------------------


def _progress(loader, device, desc: str, quiet: bool):
    """The loader's batches, moved to `device` (None: left where they are), behind a progress bar on rank 0."""
    rank = dist_info()[0]
    show = not quiet and rank == 0 and sys.stderr.isatty()
    batches = ((x, y) if device is None else (x.to(device), y.to(device)) for x, y in loader)
    total = len(loader) if hasattr(loader, "__len__") else None  # a generator of batches has no length
    return tqdm(batches, total=total, desc=desc, disable=not show, leave=False, unit="batch")


def clean_accuracy(model: nn.Module, loader, *, device=None, quiet: bool = True) -> float:
    """Accuracy of `model` on every batch of `loader` (summed over torchrun ranks)."""
    counts = None
    for x, y in _progress(loader, device, "clean", quiet):
        c = torch.stack([(predict(model, x) == y).sum(), torch.tensor(len(y), device=y.device)])
        counts = c if counts is None else counts + c
    if counts is None:
        raise UserError("clean_accuracy: the loader yielded no batches; give at least one test image")
    correct, n = all_sum_(counts).tolist()
    return correct / n


def _craft(model: nn.Module, x: Tensor, y: Tensor, settings: list[Setting], wanted: set[int],
           generator: torch.Generator) -> Iterable[tuple[int, Tensor]]:
    """(index into settings, adversarial batch) for every wanted setting, each attack run computed once: one
    gradient for the FGSM sweep, one PGD run per (eps, step size, start, iterate rule) for every iteration count,
    one APGD run per (eps, steps, start). Everything an attack needs is read off its Setting."""
    by_attack: dict[str, list[int]] = {}
    for i in sorted(wanted):
        by_attack.setdefault(settings[i].attack, []).append(i)
    if "fgsm" in by_attack:
        yield from zip(by_attack["fgsm"], fgsm(model, x, y, [settings[i].eps for i in by_attack["fgsm"]]))
    # Both PGD runs (final iterate for transfer, best for white-box) start from the same random start, and the
    # generator ends where one run leaves it: a white-box-only call draws exactly what the transfer call draws.
    start = generator.get_state()
    runs_of: dict[Setting, list[int]] = {}  # the run without its iteration count -> the settings it scores
    for i in by_attack.get("pgd", []):
        runs_of.setdefault(replace(settings[i], steps=0, iterate=None), []).append(i)
    for run, members in sorted(runs_of.items(), key=lambda item: item[0].keep_best):
        generator.set_state(start)
        adv = pgd(model, x, y, run.eps, run.alpha, [settings[i].steps for i in members],
                  random_start=run.random_start, keep_best=run.keep_best, generator=generator)
        yield from ((i, adv[settings[i].steps]) for i in members)
    apgd_runs: dict[Setting, list[int]] = {}
    for i in by_attack.get("apgd", []):
        apgd_runs.setdefault(replace(settings[i], iterate=None), []).append(i)
    for run, members in apgd_runs.items():
        adv = apgd(model, x, y, run.eps, steps=run.steps, random_start=run.random_start, generator=generator)
        yield from ((i, adv) for i in members)


def _full_vectors(local: list[list[Tensor]], loader) -> list[Tensor]:
    """Per-image values of several quantities (each a list of batches in loader order; all bool or all float),
    each placed at its images' positions in the whole attacked split and summed over torchrun ranks in one
    collective: every rank ends with the same full vectors."""
    values = torch.stack([torch.cat(batches) for batches in local])  # [quantities, this rank's images]
    if not is_distributed():
        return list(values)
    is_bool = values.dtype == torch.bool
    values = values.to(torch.uint8 if is_bool else torch.float32)
    positions = loader.indices(0).to(values.device)  # a DeviceLoader: each rank's contiguous shard, in order
    full = torch.zeros(len(local), len(loader.labels), dtype=values.dtype, device=values.device)
    full[:, positions] = values
    full = all_sum_(full)
    return list(full.bool() if is_bool else full)


def _counts(robust: Tensor, target_clean: Tensor, source_clean: Tensor) -> dict[str, int]:
    """The COUNT_KEYS counts of a record from its per-image outcomes."""
    both = target_clean & source_clean
    return dict(zip(COUNT_KEYS, torch.stack([
        torch.tensor(len(robust), device=robust.device), target_clean.sum(), source_clean.sum(), both.sum(),
        robust.sum(), (robust & both).sum(), (robust & target_clean).sum()]).tolist()))


# ---- the evaluation loop ----------------------------------------------------------------------------------------


def craft_and_score(sources: dict[str, nn.Module], targets: dict[str, nn.Module], loader, cfg: AttackConfig, *,
             dataset: str, seed: int = 0, device=None, quiet: bool = False,
             attack_seed: int | None = None, images: str = "test",
             others: dict[tuple[str, int], nn.Module] | None = None) -> list[dict[str, Any]]:
    """Craft every attack of `cfg` on each source, once per batch, and score it on every target and the source.

    Returns one record per (source, target, attack, eps, steps, iterate); target == source is the white-box
    diagonal (kind "white-box"). Every record carries the per-image outcomes of its target (clean and under
    attack) for paired statistics. `seed` is recorded; random starts draw from a CPU generator seeded with
    attack_seed (default: seed) and the rank, so a run is reproducible for a given world size. `device`: where
    batches go (None: wherever the loader puts them); the models must already be there. `images` names the
    attacked images in the records (e.g. "test[:1000]").

    others: targets trained with other seeds, keyed (model name, its seed): independent targets of the same
    adversarial images (a forward pass each), scored on the transfer settings only; their records carry the
    target's seed as "seed" and `seed` as "source_seed" (results.make_record).
    """
    if not sources:
        raise UserError("transfer: give at least one source model")
    # targets keyed (name, training seed): this seed's models and the other seeds' ones
    models: dict[tuple[str, int], nn.Module] = {(name, seed): model for name, model in targets.items()}
    for name, model in sources.items():
        if (name, seed) in models and models[(name, seed)] is not model:
            raise UserError(f"transfer: two different models are both named {name!r}; give them distinct names")
        models[(name, seed)] = model
    for (name, other_seed), model in (others or {}).items():
        if other_seed == seed:
            raise UserError(f"transfer: {name!r} of seed {seed} is one of this seed's targets, not another seed's")
        models[(name, other_seed)] = model
    settings = [st for st in cfg.settings() if st.attack not in WHITE_BOX_MEASURES]
    if not settings:
        return []
    rank = dist_info()[0]
    robust: dict[tuple[str, tuple, int], list[Tensor]] = {}  # (source, target, setting index) -> per-batch masks
    clean: dict[tuple[str, int], list[Tensor]] = {t: [] for t in models}
    unbounded: dict[str, Tensor] = {}  # source -> (correct, n) of the eps = 1 check
    generators = {s: torch.Generator().manual_seed((seed if attack_seed is None else attack_seed) * 65537 + rank)
                  for s in sources}

    def scored_on(setting: Setting, source: str, target: tuple[str, int]) -> bool:
        scope = cfg.scope(setting)
        return scope == "all" or (scope == "white-box") == (target == (source, seed))

    wanted = {s: {i for i, st in enumerate(settings) if any(scored_on(st, s, t) for t in models)}
              for s in sources}
    desc = "attack " + ",".join(sources)
    first = True
    for x, y in _progress(loader, device, desc, quiet):
        for t, m in models.items():
            clean[t].append(predict(m, x) == y)
        for s, source in sources.items():
            for i, adv in _craft(source, x, y, settings, wanted[s], generators[s]):
                # FGSM at eps 0 is the clean batch itself: its outcomes are the clean ones, no pass needed
                unchanged = settings[i].attack == "fgsm" and settings[i].eps == 0
                for t, target in models.items():
                    if scored_on(settings[i], s, t):
                        robust.setdefault((s, t, i), []).append(clean[t][-1] if unchanged else
                                                                 predict(target, adv) == y)
            if first and cfg.sanity_checks:
                m = min(cfg.sanity_n, len(y))
                adv = pgd(source, x[:m], y[:m], 1.0, UNBOUNDED_ALPHA, [UNBOUNDED_STEPS], keep_best=True,
                          generator=generators[s])[UNBOUNDED_STEPS]
                unbounded[s] = torch.stack([(predict(source, adv) == y[:m]).sum(),
                                            torch.tensor(m, device=y.device)])
        first = False
    if first:
        raise UserError("transfer: the loader yielded no batches; give at least one test image")

    # every rank has the same keys in the same order (each rank saw at least one batch; evaluate_checkpoints
    # refuses fewer images than ranks up front), so the collectives below pair up
    keys = [(s, t, i) for s in sources for i in range(len(settings)) for t in models if (s, t, i) in robust]
    full = _full_vectors([clean[t] for t in models] + [robust[k] for k in keys], loader)
    clean_full, robust_full = dict(zip(models, full)), dict(zip(keys, full[len(models):]))
    checked = [s for s in sources if cfg.sanity_checks]
    unbounded_totals = dict(zip(checked, all_sum_(torch.stack([unbounded[s] for s in checked])).tolist())) \
        if checked else {}
    records = []
    for s, (t, target_seed), i in keys:
        r, ct = robust_full[(s, (t, target_seed), i)], clean_full[(t, target_seed)]
        flags = {}
        if (s, seed) == (t, target_seed) and s in unbounded_totals:
            correct, m = unbounded_totals[s]
            flags["unbounded_eps"] = _flag(
                correct <= UNBOUNDED_MAX_ACCURACY * m,
                f"PGD at eps=1 ({UNBOUNDED_STEPS} steps of {UNBOUNDED_ALPHA}, best iterate) on {m} images: "
                f"accuracy {100 * correct / m:.1f}% (expected about 0; more suggests masked gradients)")
        records.append(make_record(dataset=dataset, seed=target_seed, source=s, target=t, setting=settings[i],
                                   counts=_counts(r, ct, clean_full[(s, seed)]), robust_bits=pack_bits(r),
                                   clean_bits=pack_bits(ct), images=images, flags=flags, source_seed=seed))
    return sanity_flags(records)


def white_box(model: nn.Module, loader, cfg: AttackConfig, *, dataset: str, name: str = "model", seed: int = 0,
              device=None, quiet: bool = False, images: str = "test") -> list[dict[str, Any]]:
    """White-box evaluation of one model: `craft_and_score` with the model as its own only target, then the per-image
    measures (minimal eps, AutoAttack-grade worst case) when cfg asks for them."""
    return sanity_flags(
        craft_and_score({name: model}, {}, loader, cfg, dataset=dataset, seed=seed, device=device, quiet=quiet,
                 images=images)
        + white_box_measures(model, loader, cfg, dataset=dataset, name=name, seed=seed, device=device,
                             quiet=quiet, images=images))


def white_box_measures(model: nn.Module, loader, cfg: AttackConfig, *, dataset: str, name: str = "model",
                       seed: int = 0, device=None, quiet: bool = False, images: str = "test",
                       attack_seed: int | None = None) -> list[dict[str, Any]]:
    """The non-saturated white-box measures of cfg.attacks, one record each:

    - "minimal": per-image minimal L-inf eps (attacks.minimal_eps) in `min_eps` (base64 float32, inf = not
      broken up to `eps` = minimal_max_eps), its median, and the robust-accuracy curve on FINE_GRID (images
      correct at each eps, read off the per-image values: one attack, not one per eps); robust_bits = not broken
      up to minimal_max_eps; `min_eps_attack` says how it ran. sanity_flags later lowers it to the radius of any
      other white-box record that broke the image (`tighten_minimal`, counted in `min_eps_lowered_by`).
    - "autoattack": the worst case over APGD-CE, APGD-T and Square at autoattack_eps (attacks.worst_case) with
      the budgets of cfg.autoattack_version, recorded in `autoattack` (version, attacks, steps, queries, targets
      as run); robust_bits = robust to all three; per attack the images it broke (`broken_by`), and the
      `gradient_masking` flag when Square (no gradients) broke an image no gradient attack could.
    """
    wanted = {st.attack: st for st in cfg.settings() if st.attack in WHITE_BOX_MEASURES}
    if not wanted:
        return []
    rank = dist_info()[0]
    generator = torch.Generator().manual_seed((seed if attack_seed is None else attack_seed) * 65537 + rank + 1)
    clean, min_eps, aa_robust, masked = [], [], [], []
    ensemble = None
    broken_by: dict[str, list[Tensor]] = {}
    for x, y in _progress(loader, device, f"measures {name}", quiet):
        clean.append(predict(model, x) == y)
        if "minimal" in wanted:
            min_eps.append(minimal_eps(model, x, y, max_eps=wanted["minimal"].eps, tol=cfg.minimal_tol,
                                       steps=wanted["minimal"].steps, candidates=cfg.minimal_candidates,
                                       cross_entropy=cfg.minimal_cross_entropy))
        if "autoattack" in wanted:
            if ensemble is None:  # APGD-T's targeted DLR loss reads the 4 largest logits
                with attack_hygiene(model), torch.inference_mode():  # eval mode: no BatchNorm update
                    classes = model(x[:1]).shape[1]
                ensemble = ("apgd-ce", "apgd-t", "square") if classes >= 4 else ("apgd-ce", "square")
            aa = wanted["autoattack"]
            out = worst_case(model, x, y, aa.eps, attacks=ensemble, steps=aa.steps, queries=cfg.autoattack_queries,
                             n_target_classes=cfg.autoattack_targets, generator=generator)
            aa_robust.append(out["robust"])
            masked.append(out["masking"])
            for attack, fooled in out["fooled"].items():
                broken_by.setdefault(attack, []).append(fooled)
    if not clean:
        raise UserError("white_box_measures: the loader yielded no batches; give at least one test image")
    (c,) = _full_vectors([clean], loader)
    records = []
    for st in wanted.values():
        extra: dict[str, Any] = {}
        flags: dict[str, Any] = {}
        if st.attack == "minimal":
            (values,) = _full_vectors([min_eps], loader)
            r = torch.isinf(values)
            extra = {"min_eps_tol": float(cfg.minimal_tol),
                     "min_eps_attack": {"steps": st.steps, "candidates": cfg.minimal_candidates,
                                        "cross_entropy": cfg.minimal_cross_entropy},
                     "min_eps_lowered_by": {},  # filled by tighten_minimal from the other records
                     **_minimal_fields(values)}
        else:
            r, m, *fooled = _full_vectors([aa_robust, masked, *broken_by.values()], loader)
            extra = {"broken_by": {a: int(v.sum()) for a, v in zip(broken_by, fooled)},
                     # what ran: the version's budgets (APGD-T's targets capped at classes - 1, as apgd_t does)
                     "autoattack": {"version": cfg.autoattack_version, "attacks": list(ensemble),
                                    "steps": st.steps, "queries": cfg.autoattack_queries,
                                    "targets": min(cfg.autoattack_targets, classes - 1)
                                    if "apgd-t" in ensemble else 0}}
            flags["gradient_masking"] = _flag(
                not bool(m.any()),
                f"Square (no gradients) broke {int(m.sum())} image(s) that APGD-CE and APGD-T could not at "
                f"eps={st.eps:g} (a black-box attack beating the white-box ones suggests masked "
                f"gradients)")
        records.append(make_record(dataset=dataset, seed=seed, source=name, target=name, setting=st,
                                   counts=_counts(r, c, c), robust_bits=pack_bits(r), clean_bits=pack_bits(c),
                                   images=images, flags=flags, **extra))
    return records


# Corrupted test images made in this process, kept for the next attack job of the study: a corrupted image depends
# on no model, and every job of a study (each source model and seed) scores the same ones. In bytes, up to
# CORRUPTION_CACHE_BYTES: all fifteen MNIST-C-style corruptions at five severities on Fashion-MNIST's 10,000 test
# images take 588 MB; beyond the budget, batches are made anew each time (same bytes: they are seeded per image).
CORRUPTION_CACHE_BYTES = 1 << 30
_CORRUPTED: dict[tuple, np.ndarray] = {}


def _batch_digest(pixels: np.ndarray, where: np.ndarray) -> str:
    """What identifies a batch in _CORRUPTED: its images' positions in the split and their bytes (once per batch,
    not once per corruption and severity)."""
    return hashlib.sha256(where.tobytes() + pixels.tobytes()).hexdigest()


def _corrupted(pixels: np.ndarray, name: str, severity: int, dataset: str, where: np.ndarray,
               digest: str) -> np.ndarray:
    """The batch under one corruption and severity; `digest`: _batch_digest(pixels, where)."""
    key = (dataset, name, severity, pixels.shape, digest)
    if key in _CORRUPTED:
        return _CORRUPTED[key]
    out = corrupt(pixels, name, severity, dataset=dataset, indices=where)
    if sum(a.nbytes for a in _CORRUPTED.values()) + out.nbytes <= CORRUPTION_CACHE_BYTES:
        _CORRUPTED[key] = out
    return out


def clear_corruption_cache() -> None:
    _CORRUPTED.clear()


def corruption_scores(models: dict[str, nn.Module], loader, cfg: AttackConfig, *, dataset: str, seed: int = 0,
                      device=None, quiet: bool = False, images: str = "test") -> list[dict[str, Any]]:
    """Each model's accuracy on the test images under every corruption and severity cfg asks for (attnrobust.
    corruptions), one record per (model, corruption, severity): attack "corruption", `corruption`, `severity` and
    `corruption_family` ("MNIST-C-style" / "CIFAR-10-C-style"), eps 0, source = target = the model (kind
    "white-box": nothing is crafted on a model), per-image outcomes in robust_bits beside clean_bits.

    A corrupted batch does not depend on the model: it is made once per batch and scored on every model given
    (a forward pass per model and corrupted image). The images' corruptions are seeded by the dataset name and
    their positions in the split (`loader.indices`), never by the training seed: every model and seed sees the
    same corrupted test set. `seed` is the training seed the records carry."""
    if not cfg.corruptions:
        return []
    shape = tuple(loader.images.shape[1:])
    family = family_of(shape, dataset)
    names = expand_names(cfg.corruptions, family, dataset)
    severities = cfg.corruption_severities()
    positions = loader.indices(0).numpy()
    clean: dict[str, list[Tensor]] = {m: [] for m in models}
    robust: dict[tuple[str, str, int], list[Tensor]] = {}
    start = 0
    for x, y in _progress(loader, device, "corruptions " + ",".join(models), quiet):
        where = positions[start:start + len(y)]
        start += len(y)
        for m, model in models.items():
            clean[m].append(predict(model, x) == y)
        # the loader's floats are its uint8 images / 255: back to the exact bytes the corruptions start from
        pixels = (x * 255).round().to(torch.uint8).cpu().numpy()
        digest = _batch_digest(pixels, where)
        for c in names:
            for sev in severities:
                bad = torch.from_numpy(_corrupted(pixels, c, sev, dataset, where, digest)).to(x.device)
                bad = bad.to(torch.float32).div_(255)
                for m, model in models.items():
                    robust.setdefault((m, c, sev), []).append(predict(model, bad) == y)
    if not start:
        raise UserError("corruptions: the loader yielded no batches; give at least one test image")
    keys = list(robust)
    full = _full_vectors([clean[m] for m in models] + [robust[k] for k in keys], loader)
    clean_full = dict(zip(models, full))
    records = []
    for (m, c, sev), r in zip(keys, full[len(models):]):
        ct = clean_full[m]
        records.append(make_record(dataset=dataset, seed=seed, source=m, target=m,
                                   setting=Setting("corruption", corruption=c, severity=sev),
                                   counts=_counts(r, ct, ct), robust_bits=pack_bits(r), clean_bits=pack_bits(ct),
                                   images=images, corruption_family=family))
    return records


def _minimal_fields(values: Tensor) -> dict[str, Any]:
    """The fields of a minimal record read off its per-image minimal eps (float32 [N], inf = not broken)."""
    return {"median_min_eps": None if torch.isinf(median := values.median()) else float(median.item()),  # JSON: no inf
            "fine_grid": FINE_GRID,
            "fine_correct": [int(v) for v in robust_accuracy_curve(values, FINE_GRID, counts=True)],
            "min_eps": pack_floats(values)}


# Fields make_record computes; everything else of a record is passed back to it when a record is rebuilt.
_COMPUTED = {"kind", "clean_accuracy", "robust_accuracy", "error", "success_rate", "accuracy_on_both_correct",
             "denominators", *COUNT_KEYS}


# The attacks whose records certify an adversarial example within their eps (L-inf, crafted on the model itself).
_BOUNDED_ATTACKS = ("fgsm", "pgd", "apgd", "autoattack")


def tighten_minimal(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with each minimal record's per-image minimal eps lowered to the radius of every other white-box
    record of the same model, seed, regime and images that broke that image (FGSM, PGD, APGD, AutoAttack at eps
    <= the minimal record's eps): an adversarial example within that radius exists, so the primary measure is
    never weaker than any attack the record set holds. min_eps_lowered_by counts the images each attack lowered
    (accumulated: a second call lowers nothing more, so it is idempotent). The robust bits, counts, median and
    fine curve are recomputed from the lowered values. New dicts where changed; the inputs are not modified."""
    def same(r: dict) -> tuple:
        return (r["dataset"], regime_of(r), point_of(r), r["seed"], r["source"], r["images"], r["n"])

    others: dict[tuple, list[dict]] = {}
    for w in records:
        # adversarial attacks only: a corruption record (eps 0) breaks images without an L-inf budget
        if w["kind"] == "white-box" and w["attack"] in _BOUNDED_ATTACKS:
            others.setdefault(same(w), []).append(w)
    out = []
    for r in records:
        if r["attack"] != "minimal" or r["kind"] != "white-box" or same(r) not in others:
            out.append(r)
            continue
        n = r["n"]
        values = unpack_floats(r["min_eps"], n).astype(np.float32)
        lowered = dict(r.get("min_eps_lowered_by", {}))
        changed = False
        for w in others[same(r)]:
            radius = np.float32(w["eps"])  # compared in float32, as stored: a second pass finds nothing to lower
            if radius > np.float32(r["eps"]):
                continue  # beyond the measured range: "not broken up to eps" stays true
            broken = unpack_bits(w["clean_bits"], n) & ~unpack_bits(w["robust_bits"], n)
            lower = broken & (values > radius)
            if lower.any():
                values[lower] = radius
                name = w["attack"] if w["steps"] is None else f"{w['attack']}-{w['steps']}"
                lowered[name] = lowered.get(name, 0) + int(lower.sum())
                changed = True
        if not changed:
            out.append(r)
            continue
        v = torch.from_numpy(values)
        c = torch.from_numpy(unpack_bits(r["clean_bits"], n))
        robust = torch.isinf(v)
        setting = Setting.of(r)
        fields = {k: val for k, val in r.items()
                  if k not in _COMPUTED and k not in setting.fields() and k not in setting.corruption_fields()}
        fields.update(_minimal_fields(v), min_eps_lowered_by=lowered, robust_bits=pack_bits(robust),
                      counts=_counts(robust, c, c), setting=setting)
        out.append(make_record(**fields))
    return out


# ---- sanity flags -----------------------------------------------------------------------------------------------


def _flag(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail}


def _pct(r: dict, key: str = "error") -> str:
    value = r[key]
    return "n/a" if value is None else f"{100 * value:.1f}%"


# Flags that compare a record with others; recomputed from the whole record set by `sanity_flags`. Flags
# measured inside a job (unbounded_eps) are kept as they are.
CROSS_RECORD_FLAGS = ("pgd_ge_fgsm", "monotone_steps", "transfer_ge_white_box")


def sanity_flags(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with their cross-record gradient-masking flags computed over this whole set (new dicts; the
    inputs are not changed). Call it on the union of a study's records: a transfer flag needs the target's
    white-box record, which another job writes. Rates, not counts, are compared: FGSM may be scored on more
    images than PGD (eval.strong_n). The minimal records are tightened by the others first (`tighten_minimal`):
    every caller that unites records calls this function, so no stored minimal eps escapes it."""
    def same(r: dict) -> tuple:
        return (r["dataset"], regime_of(r), point_of(r), r["seed"], r["source"], r["target"])

    out = [{**r, "flags": {k: v for k, v in r["flags"].items() if k not in CROSS_RECORD_FLAGS}}
           for r in tighten_minimal(records)]
    white = [r for r in out if r["kind"] == "white-box"]
    fgsm_by = {(*same(r), Setting.of(r)): r for r in white if r["attack"] == "fgsm"}
    for r in white:
        if r["attack"] not in ("pgd", "apgd"):
            continue
        f = fgsm_by.get((*same(r), Setting("fgsm", r["eps"])))
        reaches = r["alpha"] is None or r["steps"] * r["alpha"] >= r["eps"] - 1e-9
        if f is not None and reaches:
            r["flags"]["pgd_ge_fgsm"] = _flag(
                r["robust_accuracy"] <= f["robust_accuracy"] + 1e-12,
                f"{r['attack'].upper()}-{r['steps']} error {_pct(r)} vs FGSM error {_pct(f)} at eps={r['eps']:g} "
                f"(an iterative attack weaker than one step suggests masked gradients)")
    best = sorted((r for r in white if r["attack"] == "pgd" and r["iterate"] == "best"),
                  key=lambda r: (same(r), r["steps"]))
    for prev, r in zip(best, best[1:]):
        if same(prev) == same(r):
            r["flags"]["monotone_steps"] = _flag(
                r["robust_correct"] <= prev["robust_correct"],
                f"PGD error {_pct(prev)} at {prev['steps']} steps -> {_pct(r)} at {r['steps']} steps "
                f"(keeping the best iterate, it cannot decrease)")

    def run(r: dict) -> tuple:
        return (r["dataset"], regime_of(r), point_of(r), r["seed"], r["target"], Setting.of(r).run)

    # the white-box record to compare a transfer with: the same attack run, final iterate preferred (the transfer
    # record's own rule), else the best iterate (which only makes white-box stronger)
    white_by = {}
    for r in sorted(white, key=lambda r: r["iterate"] == "final"):
        white_by[run(r)] = r
    for r in out:
        w = white_by.get(run(r))
        if r["kind"] == "transfer" and w is not None:
            r["flags"]["transfer_ge_white_box"] = _flag(
                r["robust_accuracy"] >= w["robust_accuracy"] - 1e-12,
                f"accuracy of {r['target']} under {r['attack']} crafted on {r['source']}: "
                f"{_pct(r, 'robust_accuracy')}; white-box on {r['target']}: {_pct(w, 'robust_accuracy')}")
    return out


# ---- checkpoints ------------------------------------------------------------------------------------------------


def _names(paths: list[Path], metas: list[dict]) -> list[str]:
    """The model name of each checkpoint (build_args["name"]), made unique with the file name where needed."""
    base = [str(m["build_args"].get("name", p.stem)) for p, m in zip(paths, metas)]
    names = [f"{b}@{p.stem}" if base.count(b) > 1 else b for b, p in zip(base, paths)]
    return [f"{name}#{i}" if names.count(name) > 1 else name for i, name in enumerate(names, start=1)]


def evaluate_checkpoints(sources: list[Path], targets: list[Path] | None, cfg: AttackConfig, *,
                         n: int | None = None, batch_size: int = 256, device=None, data_dir=None, seed: int = 0,
                         quiet: bool = False, allow_code=()) -> list[dict[str, Any]]:
    """White-box (targets None) or transfer evaluation of checkpoints on the test split they were trained on.
    allow_code: user code the checkpoints may run to rebuild their models (see checkpoint.load_model).

    Every checkpoint must come from the same dataset and class count. The first `n` test images are attacked (all
    when None). Records name each model by its model name (disambiguated by file name when two share one) and
    carry the sources' training seed when they share one (else `seed`); `seed` seeds the random starts.
    """
    if not sources:
        raise UserError("give at least one source checkpoint to attack")
    init_distributed()
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise UserError(f"n (images to attack) must be a positive integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    device = resolve_device(device)
    paths: list[Path] = []
    for p in [*sources, *(targets or [])]:
        if Path(p).resolve() not in [q.resolve() for q in paths]:
            paths.append(Path(p))
    models = [load_attack_model(p, device=device, allow_code=allow_code) for p in paths]
    metas = [m.meta for m in models]
    first = metas[0]
    for p, meta in zip(paths[1:], metas[1:]):
        if meta.get("dataset") != first.get("dataset"):
            raise UserError(f"{p} was trained on {meta.get('dataset')!r} but {paths[0]} on "
                            f"{first.get('dataset')!r}; attack checkpoints of one dataset together")
        if meta.get("num_classes") != first.get("num_classes"):
            raise UserError(f"{p} has {meta.get('num_classes')} classes but {paths[0]} has "
                            f"{first.get('num_classes')}; give checkpoints with the same classes")
    names = _names(paths, metas)
    by_path = {p.resolve(): (name, model) for p, name, model in zip(paths, names, models)}
    source_models = dict(by_path[Path(p).resolve()] for p in sources)
    target_models = dict(by_path[Path(p).resolve()] for p in (targets or []))
    seeds = {by_path[Path(p).resolve()][1].meta.get("seed") for p in sources}
    record_seed = seeds.pop() if len(seeds) == 1 and None not in seeds else seed

    dataset = first["dataset"]
    images, labels = load_dataset(dataset, "test", data_dir)
    if n is not None:
        images, labels = images[:n], labels[:n]
    rank, world_size, _ = dist_info()
    if len(labels) < world_size:  # every rank decides the same, so none is left waiting in the all-reduce
        raise UserError(f"{len(labels)} test images for {world_size} processes; attack at least one image per "
                        f"process (raise --num-images or use fewer processes)")
    # equal_shards=False: every test image is scored by exactly one rank (counts are all-reduced once, at the end)
    loader = DeviceLoader(images, labels, batch_size=batch_size, device=device, rank=rank, world_size=world_size,
                          equal_shards=False)
    name = f"test[:{len(labels)}]"
    records = craft_and_score(source_models, target_models, loader, cfg, dataset=dataset, seed=record_seed,
                              device=device, quiet=quiet, attack_seed=seed, images=name)
    for source, model in source_models.items():  # minimal eps / AutoAttack, when asked: white-box only
        records += white_box_measures(model, loader, cfg, dataset=dataset, name=source, seed=record_seed,
                                      device=device, quiet=quiet, images=name, attack_seed=seed)
    records += corruption_scores(source_models, loader, cfg, dataset=dataset, seed=record_seed, device=device,
                                 quiet=quiet, images=name)
    return sanity_flags(records)
