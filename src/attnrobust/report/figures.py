"""Figures for the report, in the spirit of the paper's Figures 2-7, as PNG (matplotlib, Agg backend).

`curves` draws panels of lines (accuracy vs eps, error vs iterations) from plain data the report prepares
(`Plot`s of `Series`), so this file knows nothing of records. `attention_figure` shows CBAM's last spatial
attention map over clean and FGSM images; it needs a checkpoint and the dataset files, and the report builds
without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

from attnrobust.attacks import fgsm
from attnrobust.checkpoint import load_model
from attnrobust.data import DeviceLoader, get_spec, load_dataset
from attnrobust.errors import UserError
from attnrobust.models import attention_maps

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
DPI = 110
# PNG metadata fixed so that the same data gives the same bytes whatever the matplotlib version.
_META = {"Software": "attnrobust"}


@dataclass
class Series:
    """One line of a panel; y in percent."""

    label: str
    x: list[float]
    y: list[float]
    color: str
    style: str = "solid"  # "solid" | "dashed" | "paper" (a published curve: thin, dotted, hollow markers)
    err: list[float | None] | None = None  # CI half-widths, drawn as error bars
    low: list[float] | None = None  # an optional shaded band (e.g. the range over seeds) from low to high
    high: list[float] | None = None


@dataclass
class Plot:
    """One subplot of a figure: its title, axis labels and lines."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    xticks: list[float] = field(default_factory=list)  # [] = matplotlib's own
    ylim: tuple[float, float] | None = (-2, 102)  # percent by default; None = matplotlib's own (differences)
    zero_line: bool = False  # a thin line at y = 0 (differences: above it attention is more robust)


def _draw(ax, panel: Plot, legend_size: float = 7) -> None:
    """One panel's lines on an axes (shared by `curves` and `small_multiples`)."""
    for s in panel.series:
        kw = dict(color=s.color, label=s.label)
        if s.low is not None:  # a band (e.g. the range over seeds) around the line
            ax.fill_between(s.x, s.low, s.high, color=s.color, alpha=0.2, linewidth=0)
        if s.style == "paper":  # the published curve: thin, dotted, hollow markers
            ax.plot(s.x, s.y, linestyle=":", linewidth=1.2, marker="o", markersize=3,
                    markerfacecolor="none", alpha=0.8, **kw)
        elif s.err is not None and any(e is not None for e in s.err):
            ax.errorbar(s.x, s.y, yerr=[e or 0.0 for e in s.err], capsize=3, marker="o",
                        markersize=4, linestyle="--" if s.style == "dashed" else "-", **kw)
        else:
            ax.plot(s.x, s.y, marker="o", markersize=4, linestyle="--" if s.style == "dashed" else "-",
                    **kw)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.xticks:
        ax.set_xticks(panel.xticks)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    if panel.zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8, alpha=0.6)
    ax.grid(True, alpha=0.3)
    if legend_size:
        ax.legend(fontsize=legend_size, loc="best")


def curves(path: Path, title: str, panels: list[Plot]) -> None:
    """One row of panels."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        _draw(ax, panel)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata=_META)
    plt.close(fig)


def small_multiples(path: Path, title: str, panels: list[Plot], columns: int = 5) -> None:
    """Many small panels in rows of `columns` sharing one legend (e.g. accuracy vs severity per corruption)."""
    rows = -(-len(panels) // columns)
    cols = min(columns, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.5 * rows + 0.6), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw(ax, panel, legend_size=0)
        ax.title.set_fontsize(9)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=DPI, metadata=_META)
    plt.close(fig)


def image_grid(path: Path, title: str, rows: list[list], row_labels: list[str], col_labels: list[str]) -> None:
    """A mosaic of images, drawn as one picture: rows[i][j] is a batch (K x C x H x W, uint8) shown side by side
    in cell (i, j), e.g. corruption i at severity j. Grey images in grey, RGB as they are."""
    k, c, h, w = np.asarray(rows[0][0]).shape
    gap = 2
    cell_w = k * (w + 1) - 1
    mosaic = np.full((len(rows) * (h + gap) - gap, len(rows[0]) * (cell_w + 3 * gap) - 3 * gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, batch in enumerate(row):
            for n, img in enumerate(np.asarray(batch)):
                top, left = i * (h + gap), j * (cell_w + 3 * gap) + n * (w + 1)
                mosaic[top:top + h, left:left + w] = np.repeat(img, 3, axis=0).transpose(1, 2, 0) if c == 1 \
                    else img.transpose(1, 2, 0)
    height = 0.45 * len(rows) + 0.8
    fig, ax = plt.subplots(figsize=(1.0 * len(rows[0]) * k * 0.55 + 1.6, height))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(len(rows))], row_labels, fontsize=7)
    ax.set_xticks([j * (cell_w + 3 * gap) + cell_w / 2 for j in range(len(rows[0]))], col_labels, fontsize=7)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata=_META)
    plt.close(fig)


def attention_figure(path: Path, checkpoint: Path, eps: float, count: int = 6) -> str:
    """Clean vs FGSM(eps) images of the test split with the last CBAM's spatial attention over them.

    Returns a one-line caption. Raises ImportError/UserError/OSError/RuntimeError when the checkpoint, the
    dataset files or a piece of the package is missing; the caller skips the figure then.
    """
    model = load_model(checkpoint)
    dataset = model.meta["dataset"]
    spec = get_spec(dataset)
    images, labels = load_dataset(dataset, "test", download=False)
    x, y = next(iter(DeviceLoader(images[:count], labels[:count], batch_size=count)))
    clean_maps = attention_maps(model, x)
    if not clean_maps or "spatial" not in clean_maps[-1]:
        raise UserError(f"{checkpoint} has no CBAM module (no spatial attention map to show)")
    x_adv = fgsm(model, x, y, [eps])[0]
    adv_maps = attention_maps(model, x_adv)
    with torch.no_grad():
        pred_clean, pred_adv = model(x).argmax(1), model(x_adv).argmax(1)

    def overlay(maps):
        # The last CBAM sees the most semantic features; bilinear upsampling puts its map over the image.
        spatial = maps[-1]["spatial"].float()
        return F.interpolate(spatial, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    att_clean, att_adv = overlay(clean_maps), overlay(adv_maps)
    both = torch.cat([att_clean, att_adv], dim=1).flatten(1)
    scale_lo, scale_hi = both.min(1).values, both.max(1).values
    rows = [("clean", x, None, pred_clean), ("clean + attention", x, att_clean, pred_clean),
            (f"FGSM eps={eps:g}", x_adv, None, pred_adv), ("FGSM + attention", x_adv, att_adv, pred_adv)]
    fig, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.75 * len(rows)), squeeze=False)
    for r, (name, imgs, att, pred) in enumerate(rows):
        for c in range(count):
            ax = axes[r][c]
            img = imgs[c].detach().cpu().permute(1, 2, 0).numpy()
            if img.shape[2] == 1:
                ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.clip(0, 1))
            if att is not None:
                # One colour scale per column, shared by the clean and the adversarial map: trained gates often
                # vary over a narrow range, and the question is how the map moves under attack.
                lo, hi = float(scale_lo[c]), float(scale_hi[c])
                ax.imshow(att[c].cpu().numpy(), cmap="jet", alpha=0.5, vmin=lo, vmax=max(hi, lo + 1e-6))
            ok = int(pred[c]) == int(y[c])
            ax.set_title(spec.class_names[int(pred[c])][:12], fontsize=7, color="green" if ok else "red")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    name = model.build_args.get("name", checkpoint.stem)
    fig.suptitle(f"{dataset}: {name} spatial attention (last CBAM), clean vs FGSM eps={eps:g}\n"
                 f"titles: prediction (green right, red wrong); colours: blue low, red high, one scale per column",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata=_META)
    plt.close(fig)
    return f"{name} on {dataset} ({checkpoint.name}), first {count} test images, FGSM eps={eps:g}"
