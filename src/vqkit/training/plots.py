"""PNG plots for reports and ablations (matplotlib's object API: no pyplot, no global backend change)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["line_plot", "image_grid", "usage_histogram", "moving_average"]


def _figure(width: float = 6.0, height: float = 3.6):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reports need matplotlib: pip install matplotlib (or pip install 'vqkit[train]')") from e
    return Figure(figsize=(width, height), dpi=100)


def moving_average(y: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start); same length as ``y``."""
    y = np.asarray(y, dtype=np.float64)
    if window <= 1 or y.size == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    idx = np.arange(1, y.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def line_plot(
    path: str | Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    logy: bool = False,
    logx: bool = False,
    smooth: int = 1,
    bands: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """Overlaid curves ``{label: (x, y)}``; ``smooth`` > 1 draws the raw curve faintly under a moving
    average; ``bands`` ``{label: (low, high)}`` shades a range around a curve (e.g. +- std over seeds)."""
    wide_legend = len(series) > 4
    fig = _figure(width=9.5 if wide_legend else 6.0)
    ax = fig.subplots()
    for i, (label, (x, y)) in enumerate(series.items()):
        color = f"C{i % 10}"
        style = "-" if i < 10 else "--"
        if smooth > 1 and len(y) > smooth:
            ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(x, moving_average(y, smooth), color=color, label=label, linewidth=1.5, linestyle=style)
        else:
            ax.plot(x, y, color=color, label=label, linewidth=1.5, linestyle=style,
                    marker="o" if len(x) <= 12 else None, markersize=3)
        if bands and label in bands:
            low, high = bands[label]
            ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if wide_legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    elif len(series) > 1:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def image_grid(path: str | Path, rows: dict[str, Tensor], *, title: str = "") -> Path:
    """One row of images per entry ``{row label: (N, C, H, W) in [0, 1]}``."""
    n_rows = len(rows)
    n_cols = max(t.shape[0] for t in rows.values())
    fig = _figure(width=max(4.0, 0.8 * n_cols), height=0.9 * n_rows + 0.5)
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < images.shape[0]:
                img = images[c].detach().float().clamp(0, 1).cpu()
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def usage_histogram(path: str | Path, counts: Tensor, *, title: str) -> Path:
    """Code counts ``(columns, K)`` (summed over columns) sorted from most to least used, log scale."""
    c = torch.as_tensor(counts).double().sum(0).sort(descending=True).values.numpy()
    fig = _figure()
    ax = fig.subplots()
    ax.bar(np.arange(c.size), np.maximum(c, 0), width=1.0, color="C0")
    used = int((c > 0).sum())
    ax.set_title(f"{title} ({used}/{c.size} codes used)")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("assignments")
    if c.max() > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
