"""Matplotlib (Agg) figures: per-task bars with 95% t-intervals and a rank heat-map (measured rows).

Rendering dominates a leaderboard rebuild, so each PNG carries a digest of what it draws (a PNG text
chunk) and is only redrawn when that changes. Margins are computed from the figure's size and its
labels' lengths instead of by matplotlib's constrained layout, which measured every text extent and
took about half of a cold 20-encoder build."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrbench.io_utils import atomic_path, stable_hash
from cxrbench.leaderboard.report.layout import METRIC_NAMES, Layout


def _measured(layout: Layout):
    return [r for r in layout.rows if r.source == "measured"]


PNG_KEY = "cxrbench-input"
_PLOTS_VERSION = 2  # bump when the drawing code changes, so existing PNGs are redrawn


def up_to_date(path: Path, key: str) -> bool:
    """Whether the PNG at `path` was drawn from the same inputs (its text chunk holds `key`)."""
    if not path.is_file():
        return False
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.text.get(PNG_KEY) == key  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return False


def _save(fig: Figure, path: Path, key: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={PNG_KEY: key})


def _char_in(fontsize: float) -> float:
    """Rough width of one character in inches (DejaVu Sans averages ~0.6 em)."""
    return 0.62 * fontsize / 72


def _grid_margins(fig: Figure, nrows: int, ncols: int, *, left: float, right: float, top: float,
                  bottom: float, gap_w: float, gap_h: float) -> None:  # fmt: skip
    """Place a subplot grid by margins and gaps in inches."""
    width, height = fig.get_size_inches()
    axes_w = max((width - left - right - (ncols - 1) * gap_w) / ncols, 0.1)
    axes_h = max((height - top - bottom - (nrows - 1) * gap_h) / nrows, 0.1)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=gap_w / axes_w,
        hspace=gap_h / axes_h,
    )


def digest(*parts: object) -> str:
    return stable_hash({"version": _PLOTS_VERSION, "parts": repr(parts)})


def plot_bars(layout: Layout, path: Path, max_cols: int = 6) -> Path:
    """One panel per task: a bar per measured encoder (mean, percent) with its 95% t-interval."""
    rows = _measured(layout)
    cols = layout.columns
    values = [
        [(c.mean, c.half) if (c := r.cells.get(col.task_id)) is not None else None for col in cols]
        for r in rows
    ]
    key = digest("bars", max_cols, [(c.task_id, c.metric) for c in cols], [r.encoder for r in rows], values)
    if up_to_date(path, key):
        return path
    ncols = max(1, min(max_cols, len(cols)))
    nrows = max(1, math.ceil(len(cols) / ncols))
    legend_rows = math.ceil(len(rows) / 5)
    fig = Figure(figsize=(2.8 * ncols, 2.4 * nrows + 0.3 * legend_rows + 0.3))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    legend_in = 0.25 * legend_rows + 0.2
    _grid_margins(fig, nrows, ncols, left=0.4, right=0.1, top=0.35, bottom=legend_in, gap_w=0.4, gap_h=0.45)
    colors = colormaps["tab20"](np.linspace(0, 1, max(len(rows), 1)))
    for j, (ax, col) in enumerate(zip(axes.flat, cols, strict=False)):
        # no result: no bar (a zero-height bar would read as a score of 0); one call per panel
        drawn = [x for x in range(len(rows)) if values[x][j] is not None and np.isfinite(values[x][j][0])]
        if drawn:
            means = np.array([100 * values[x][j][0] for x in drawn])
            halves = np.array([100 * values[x][j][1] for x in drawn])
            with_err = np.isfinite(halves)
            ax.bar(drawn, means, color=colors[drawn])
            if with_err.any():
                ax.errorbar(
                    np.array(drawn)[with_err], means[with_err], yerr=halves[with_err],
                    fmt="none", ecolor="black", capsize=2,
                )  # fmt: skip
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
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(rows), 5) or 1,
        fontsize=7,
    )
    _save(fig, path, key)
    return path


def plot_rank_heatmap(layout: Layout, ranks: dict[tuple[str, str], float], path: Path) -> Path:
    """Encoders (best mean rank first) x tasks, coloured by per-task rank (1 = best)."""
    rows = _measured(layout)
    cols = layout.columns
    grid = np.array([[ranks.get((r.encoder, c.task_id), math.nan) for c in cols] for r in rows], dtype=float)
    grid = grid.reshape(len(rows), len(cols))
    key = digest("ranks", [c.task_id for c in cols], [r.encoder for r in rows], grid.tolist())
    if up_to_date(path, key):
        return path
    fig = Figure(figsize=(2.5 + 0.5 * len(cols), 2.0 + 0.35 * len(rows)))
    ax = fig.subplots()
    longest_task = max((len(c.task_id) for c in cols), default=1)
    longest_encoder = max((len(r.encoder) for r in rows), default=1)
    _grid_margins(fig, 1, 1, left=0.15 + _char_in(8) * longest_encoder, right=0.1, top=0.35,
                  bottom=0.3 + _char_in(7) * longest_task, gap_w=0, gap_h=0)  # fmt: skip
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
    _save(fig, path, key)
    return path
