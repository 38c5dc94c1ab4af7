"""Figures of `correlate`: the heat map of rho per statistic and task, and the uniformity-score scatter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.analysis.correlation import MEAN_TASK, task_order
from cxrbench.analysis.statistics import SCALAR_STATISTICS
from cxrbench.io_utils import atomic_path


def plot_heatmap(sub: pd.DataFrame, path: Path, dataset: str) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    table = sub.pivot(index="statistic", columns="task_id", values="spearman_rho")
    table = table.reindex(index=[s for s in SCALAR_STATISTICS if s in table.index])
    table = table[[*task_order(c for c in table.columns if c != MEAN_TASK), MEAN_TASK]]
    values = table.to_numpy(dtype=float)
    fig = Figure(
        figsize=(max(6.0, 3.0 + 0.5 * values.shape[1]), 1.8 + 0.4 * values.shape[0]), layout="constrained"
    )
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(values.shape[1]), table.columns, rotation=90, fontsize=6)
    ax.set_yticks(range(values.shape[0]), table.index, fontsize=7)
    n = int(sub["n_encoders"].max()) if len(sub) else 0
    ax.set_title(
        f"Spearman rho across {n} encoders\nstatistics on {dataset} vs mean test score per task", fontsize=8
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path


def plot_scatter(names: list[str], x: np.ndarray, y: list[float], row: Any, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    y_pct = 100 * np.asarray(y, dtype=float)
    ax.scatter(x, y_pct)
    for name, xi, yi in zip(names, x, y_pct, strict=True):
        if np.isfinite(xi) and np.isfinite(yi):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlabel("within-image uniformity of conv5 regions (lower: more uniform)", fontsize=8)
    ax.set_ylabel("mean test score over tasks (%)", fontsize=8)
    if row is not None and np.isfinite(row.spearman_rho):
        ax.set_title(f"Spearman rho {row.spearman_rho:.2f}, permutation p {row.p_value:.3g}", fontsize=9)
    else:
        ax.set_title(
            "Spearman rho undefined (" + (row.note if row is not None else "no data") + ")", fontsize=8
        )
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path
