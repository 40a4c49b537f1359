"""Every shipped config works at its own (full) size: ResNet-50/CBAM/VGG-16 heads, 100 classes, 28x28 inputs.

The other study tests shrink the models (train.width=4) to stay fast, so a crash that only happens at the
published size (a ResNet-50 head on CIFAR-100, VGG on 28x28 Fashion-MNIST, channels_last on a 2048-channel
tensor) would reach a user first, hours into a GPU run. Here a config runs as shipped except for the numbers that
cost time: two training images, one epoch, two attacked images, two FGSM eps and one PGD step.

What it costs, and why not every config runs itself: at full width the time goes into fixed per-call costs (a
first forward/backward of each model, dozens of model forwards per dataset for the transfer matrix and the
sanity checks), not into images, so each dataset costs tens of seconds on one CPU thread whatever the image
counts. `paper` holds every dataset x model at full width, so it runs; a config that is job for job a part of it
(the same training runs, attack and eval settings: today `fashion-mnist`, `cifar10`, `cifar100`) is vouched for
by that run and does not repeat it. Every other config (the small `quick` ones) runs at its own width, which is
its size; so does any config that stops being a part of `paper`.

CIFAR comes from tiny archives in the official binary format (tests/test_data.py writes them and a spec with
their MD5s); Fashion-MNIST is the real files beside the repository, and the tests needing it skip without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnrobust.config import SHIPPED, load_config
from attnrobust.results import read_records, regime_of, point_of
from attnrobust.jobs import plan
from attnrobust.study import run_study
from conftest import SHARED_DATA

N = 2  # training images
N_EVAL = 1  # test-accuracy and attacked images (a ResNet-50 forward of one image costs 60% of one of two)
# Numbers only: widths, depths, class counts and input sizes stay as shipped. A training batch of N >= 2 keeps
# BatchNorm defined where VGG's features reach 1x1 (evaluation runs in eval mode, where one image is fine).
# warmup_epochs: the CIFAR recipes warm up for 5 epochs, more than 1.
TINY = [f"train.n_train={N}", f"train.batch_size={N}", "train.epochs=1", "train.warmup_epochs=1",
        f"train.n_test={N_EVAL}", f"eval.n={N_EVAL}", "attack.fgsm_eps=[0.0,0.1]", "attack.pgd_steps=[1]",
        "study.seeds=[0]",
        "attack.minimal_steps=1", "attack.autoattack_steps=1",
        "attack.autoattack_queries=2", "eval.workers=1",
        # the unbounded-eps check is 20 PGD steps per source whatever the size (tested at small size elsewhere)
        "attack.sanity_checks=false",
        # one severity (tests/test_corruptions.py covers every severity and corruption; here what matters is that
        # corrupted batches of each shape run through the full-size models)
        "attack.severities=[3]"]


def _tiny(config: str) -> list[str]:
    """TINY, one corruption where the config scores them, and the per-epoch PGD check of adversarial training on
    N_EVAL images too (it takes the first images of
    the whole test split, not of n_test), wherever the config sets the check: in [train] or in a regime."""
    cfg = load_config(config, TINY)
    extra = []
    if cfg.attack.corruptions:  # one corruption, in both families (MNIST-C and CIFAR-10-C), instead of all 29
        extra.append('attack.corruptions=["shot_noise"]')
    if cfg.train.get("adversarial", "none") != "none":
        extra.append(f"train.adv_check_n={N_EVAL}")
    if cfg.study.regimes:
        tables = [", ".join(f"{k} = {json.dumps(v)}" for k, v in {**r, "adv_check_n": N_EVAL}.items())
                  for r in cfg.study.regimes]
        extra.append("study.regimes=[" + ", ".join("{" + t + "}" for t in tables) + "]")
    return TINY + extra


def _run_end_to_end(config: str, data_dir: Path, out: Path) -> None:
    overrides = _tiny(config)
    cfg = load_config(config, overrides)
    if "fashion-mnist" in cfg.study.datasets and not (data_dir / "fashion-mnist").exists():
        pytest.skip(f"config {config!r} needs the real Fashion-MNIST files, not found in {SHARED_DATA} (they sit "
                    f"beside the repository in a developer's checkout and in CI)")
    run = run_study(config, out=out, overrides=overrides, data_dir=data_dir, quiet=True)
    records = read_records(run / "results.jsonl")
    models, datasets = cfg.study.models, cfg.study.datasets
    regimes = {d: list(cfg.regimes_of(d)) for d in datasets}
    widths = cfg.points()
    # every source attacked every target on every dataset, regime and width, with each FGSM eps and PGD step count
    assert {(r["dataset"], regime_of(r), point_of(r), r["source"], r["target"]) for r in records} == {
        (d, g, w, s, t) for d in datasets for g in regimes[d] for w in widths for s in models for t in models}
    cells = sum(len(regimes[d]) for d in datasets) * len(widths) * len(models) ** 2
    for attack, settings in (("fgsm", 2), ("pgd", 1)):  # TINY's two eps and one step count
        if attack in cfg.attack.attacks:
            assert sum(r["attack"] == attack for r in records) == cells * settings
    assert (run / "report" / "README.md").is_file()


def _why_not_part_of_paper(config: str) -> list[str]:
    """Why `config` (with TINY) is not job for job a part of `paper` (with TINY); [] when it is."""
    single, paper = load_config(config, TINY), load_config("paper", TINY)
    why = [f"{section} settings differ" for section in ("attack", "eval")
           if getattr(single, section) != getattr(paper, section)]
    for job in plan(single):
        if job not in plan(paper):
            why.append(f"job {job} is not in paper")
        elif single.train_config(job.dataset, job.model, job.seed) != paper.train_config(job.dataset, job.model,
                                                                                    job.seed):
            why.append(f"{job.dataset} {job.model} trains differently")
    return why


@pytest.mark.slow
@pytest.mark.parametrize("config", [c for c in SHIPPED if c != "paper"])
def test_shipped_config_runs_end_to_end_at_its_size(config, data_dir, tmp_path):
    if not _why_not_part_of_paper(config):
        return  # tests/test_fullsize_paper.py runs each of its jobs
    _run_end_to_end(config, data_dir, tmp_path / "run")
