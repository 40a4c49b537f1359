"""The paper's published numbers (reference/paper.json) and how our names and settings map onto them.

Our dataset "fashion-mnist" and its embedded subset "fashion-mnist-mini" both map to the paper's Fashion-MNIST.
Models map by family: a plain bottleneck ResNet of any depth -> ResNet-50, a CBAM ResNet of any depth ->
CBAM+ResNet-50, VGG-16 with or without BN -> VGG-16; anything else (SE) has no counterpart. So a reduced model is
compared with the full-size one: `reduced_notes` says when that makes the comparison only indicative.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from attnrobust.config import DEFAULTS, study_axes
from attnrobust.report.grid import Grid, registered_info
from attnrobust.report.tables import column_titles
from attnrobust.results import CLEAN, Panel, Setting

PAPER_N = 10000  # test images in the paper's evaluation (full CIFAR / Fashion-MNIST test split)
# The depths of the paper's networks (a registered model's ModelInfo.base): anything else is a reduced model.
FULL_DEPTH = ("resnet50", "vgg16", "vgg16_bn")
_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "fashion-mnist": "fashion-mnist",
             "fashion-mnist-mini": "fashion-mnist"}


@functools.cache
def load_paper() -> dict:
    """reference/paper.json (Tables II and III, percent as printed; see reference/README.md)."""
    return json.loads(resources.files("attnrobust").joinpath("reference/paper.json").read_text())


def paper_dataset(panel: Panel) -> str | None:
    """The paper's dataset our panel stands for: only a standard-training panel of a study without axes (the paper
    trained nothing else)."""
    return _DATASETS.get(panel.dataset) if panel == Panel(panel.dataset) else None


def paper_model(name: str) -> str | None:
    """The paper's model our registered model stands for, by family (base network and attention kind)."""
    info = registered_info(name)
    if info is None:
        return None
    if info.base.startswith("resnet") and info.attention in (None, "cbam"):
        return "cbam_resnet50" if info.attention == "cbam" else "resnet50"
    if info.base.startswith("vgg16"):
        return "vgg16"
    return None


def _key(x: float) -> str:
    return f"{x:g}"


def _column(dataset: str, source: str, target: str) -> dict | None:
    """The paper's (source, target) entry: Table II for the white-box ResNets, else Table III's column."""
    ref = load_paper()
    if source == target and target in ref["table2"].get(dataset, {}):
        return ref["table2"][dataset][target]
    for col in ref["table3"].get(dataset, []):
        if col["source"] == source and col["target"] == target:
            return col
    return None


def matches_paper_pgd(setting: Setting) -> bool:
    """Same attack, budget, step size and iterate rule (the final iterate) as the paper's PGD (eps 0.2, alpha 0.01);
    random start not compared. A best-iterate column is a stronger attack than the paper ran: never set beside it."""
    pgd = load_paper()["pgd"]
    return (setting.attack == "pgd" and not setting.keep_best and abs(setting.eps - pgd["eps"]) < 1e-9
            and setting.alpha is not None and abs(setting.alpha - pgd["alpha"]) < 1e-9
            and setting.steps in pgd["steps"])


def paper_value(dataset: Panel, source: str, target: str, setting: Setting) -> float | None:
    """The paper's number (percent, the same quantity our tables show) for our cell and setting, or None.

    The clean column is compared with the target's own clean accuracy (Table II, or Table III's VGG-16 source
    column): Table III's CIFAR-10 eps-0 transfer row disagrees with Table II (see reference/README.md).
    """
    d, s, t = paper_dataset(dataset), paper_model(source), paper_model(target)
    if d is None or s is None or t is None:
        return None
    col = _column(d, s, t)
    if col is None:
        return None
    if setting == CLEAN:
        return _column(d, t, t)["fgsm_accuracy"].get("0")
    if setting.attack == "fgsm":
        return col["fgsm_accuracy"].get(_key(setting.eps))
    if matches_paper_pgd(setting):
        return col["pgd_error"].get(str(setting.steps))
    return None


def comparison_rows(grid: Grid) -> list[dict]:
    """Every cell and setting the paper also measured: {dataset, source, target, setting (column title), ours,
    ours_ci95 (None with one seed), paper, difference (ours - paper)}, in percent / percentage points."""
    rows = []
    settings = grid.settings()
    titles = dict(zip(settings, column_titles(settings)))
    for d in grid.datasets():
        models = grid.models(d)
        for src in models:
            for tgt in models:
                for st in settings:
                    ours = grid.summary(d, src, tgt, st)
                    ref = paper_value(d, src, tgt, st)
                    if ours is not None and ref is not None:
                        rows.append({"dataset": d, "source": src, "target": tgt, "setting": titles[st],
                                     "ours": ours[0], "ours_ci95": ours[1], "paper": ref,
                                     "difference": ours[0] - ref})
    return rows


def reduced_notes(grid: Grid, config: dict | None) -> list[str]:
    """Reasons why our numbers are only indicative next to the paper's (empty when the setup matches)."""
    notes = []
    # the models set beside the paper's (paper_model), by what the registry says they are
    models = sorted({m for d in grid.datasets() for m in grid.models(d) if paper_model(m) is not None})
    small = [m for m in models if registered_info(m).base not in FULL_DEPTH]
    if small:
        notes.append(f"reduced-depth models ({', '.join(small)}) are compared with the paper's full-size "
                     f"ResNet-50 / CBAM+ResNet-50 / VGG-16")
    # the study's widths axis, else the config's [train] width, else each dataset's recipe (DEFAULTS), else
    # TrainConfig's 64
    study, train = (config or {}).get("study") or {}, (config or {}).get("train") or {}
    axes = dict(study_axes(study.get("widths"), study.get("axes")))
    width = train.get("width")
    widths = sorted(axes.get("width") or {width if width is not None else DEFAULTS.get(d.dataset, {}).get("width", 64)
                                          for d in grid.datasets()})
    if any(isinstance(w, int) and w < 64 for w in widths):
        notes.append(f"reduced width ({', '.join(map(str, widths))} channels in the first stage; the paper's "
                     f"models have 64)")
    strides = axes.get("model_args.stem_stride") or [train.get("model_args", {}).get("stem_stride", 1)]
    if any(s != 1 for s in strides):
        where = "" if len(strides) == 1 else \
            f" in the panels with stem_stride {', '.join(str(s) for s in strides if s != 1)}"
        notes.append(f"the ResNets' first convolution has stride 2{where} (stem_stride, a CPU budget: a quarter of "
                     f"the pixels in the first stage), where the paper's CIFAR-style stem keeps the input side")
    if any(d.dataset == "fashion-mnist-mini" for d in grid.datasets()):
        notes.append("fashion-mnist-mini is a small embedded subset of Fashion-MNIST, not the full dataset")
    ns = sorted({n for d in grid.datasets() for m in grid.models(d) for n in grid.n_images(d, m, m)})
    if ns and min(ns) < PAPER_N:
        notes.append(f"attacks scored on {'/'.join(map(str, ns))} test images, the paper on the full "
                     f"{PAPER_N}-image test split")
    return notes
