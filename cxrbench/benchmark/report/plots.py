"""Matplotlib (Agg) figures: per-task bars with 95% t-intervals and a rank heat-map (measured rows)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrbench.benchmark.report.layout import METRIC_NAMES, Layout
from cxrbench.io_utils import atomic_path


def _measured(layout: Layout):
    return [r for r in layout.rows if r.source == "measured"]


def plot_bars(layout: Layout, path: Path, ncols: int = 6) -> Path:
    """One panel per task: a bar per measured encoder (mean, percent) with its 95% t-interval."""
    rows = _measured(layout)
    cols = layout.columns
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig = Figure(figsize=(2.6 * ncols, 2.4 * nrows + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = colormaps["tab20"](np.linspace(0, 1, max(len(rows), 1)))
    for ax, col in zip(axes.flat, cols, strict=False):
        means, errs = [], [[], []]
        for row in rows:
            cell = row.cells.get(col.task_id)
            mean = 100 * cell.mean if cell is not None else math.nan
            half = 100 * cell.half if cell is not None and np.isfinite(cell.half) else 0.0
            means.append(mean)
            errs[0].append(half)
            errs[1].append(half)
        x = np.arange(len(rows))
        ax.bar(x, np.nan_to_num(means), yerr=errs, color=colors[: len(rows)], capsize=2, ecolor="black")
        ax.set_title(f"{col.task_id}\n{METRIC_NAMES.get(col.metric, col.metric)} (%)", fontsize=7)
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(rows))]
    fig.legend(
        handles, [r.encoder for r in rows], loc="lower center", ncol=min(len(rows), 5) or 1, fontsize=7
    )
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(rows) / 5), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def plot_rank_heatmap(layout: Layout, ranks: dict[tuple[str, str], float], path: Path) -> Path:
    """Encoders (best mean rank first) x tasks, coloured by per-task rank (1 = best)."""
    rows = _measured(layout)
    cols = layout.columns
    grid = np.array([[ranks.get((r.encoder, c.task_id), math.nan) for c in cols] for r in rows], dtype=float)
    fig = Figure(figsize=(1.0 + 0.45 * len(cols), 1.2 + 0.32 * len(rows)))
    ax = fig.subplots()
    cmap = colormaps["viridis_r"].copy()
    cmap.set_bad("#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid.reshape(len(rows), len(cols))), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.task_id for c in cols], rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), [r.encoder for r in rows], fontsize=7)
    if grid.size <= 900:
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:g}",
                    ha="center",
                    va="center",
                    fontsize=5,
                    color="white" if v < 0.5 * np.nanmax(grid) else "black",
                )
    fig.colorbar(im, ax=ax, label="rank (1 = best)")
    ax.set_title("Per-task rank of measured encoders", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path
