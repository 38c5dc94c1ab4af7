"""Matplotlib (Agg) figures: per-task bars with 95% t-intervals and a rank heat-map (measured rows)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrbench.io_utils import atomic_path
from cxrbench.leaderboard.report.layout import METRIC_NAMES, Layout


def _measured(layout: Layout):
    return [r for r in layout.rows if r.source == "measured"]


def plot_bars(layout: Layout, path: Path, max_cols: int = 6) -> Path:
    """One panel per task: a bar per measured encoder (mean, percent) with its 95% t-interval."""
    rows = _measured(layout)
    cols = layout.columns
    ncols = max(1, min(max_cols, len(cols)))
    nrows = max(1, math.ceil(len(cols) / ncols))
    legend_rows = math.ceil(len(rows) / 5)
    fig = Figure(figsize=(2.8 * ncols, 2.4 * nrows + 0.3 * legend_rows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = colormaps["tab20"](np.linspace(0, 1, max(len(rows), 1)))
    for ax, col in zip(axes.flat, cols, strict=False):
        for x, row in enumerate(rows):
            cell = row.cells.get(col.task_id)
            if cell is None or not np.isfinite(cell.mean):
                continue  # no result: no bar (a zero-height bar would read as a score of 0)
            err = 100 * cell.half if np.isfinite(cell.half) else None
            ax.bar(x, 100 * cell.mean, yerr=err, color=colors[x], capsize=2, ecolor="black")
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_title(f"{col.task_id}\n{METRIC_NAMES.get(col.metric, col.metric)} (%)", fontsize=7)
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(rows))]
    fig.legend(
        handles,
        [r.encoder for r in rows],
        loc="outside lower center",
        ncol=min(len(rows), 5) or 1,
        fontsize=7,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def plot_rank_heatmap(layout: Layout, ranks: dict[tuple[str, str], float], path: Path) -> Path:
    """Encoders (best mean rank first) x tasks, coloured by per-task rank (1 = best)."""
    rows = _measured(layout)
    cols = layout.columns
    grid = np.array([[ranks.get((r.encoder, c.task_id), math.nan) for c in cols] for r in rows], dtype=float)
    grid = grid.reshape(len(rows), len(cols))
    fig = Figure(figsize=(2.5 + 0.5 * len(cols), 2.0 + 0.35 * len(rows)), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis_r"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.task_id for c in cols], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [r.encoder for r in rows], fontsize=8)
    middle = (1 + np.nanmax(grid)) / 2 if np.isfinite(grid).any() else 0
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):  # dark text on the light (good) end of viridis_r, light text on the dark end
            ax.text(
                j,
                i,
                f"{v:g}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if v <= middle else "white",
            )
    fig.colorbar(im, ax=ax, label="rank (1 = best)")
    ax.set_title("Per-task rank of measured encoders", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path
