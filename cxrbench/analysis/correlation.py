"""Relate analysed statistics to downstream scores across encoders (Spearman rho, permutation p-value).

Encoders are matched by name: an analysis record's `name` equals the `encoder` of its run records.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cxrbench.analysis.statistics import SCALAR_STATISTICS
from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_path, read_json

MEAN_TASK = "mean_over_tasks"
N_PERMUTATIONS = 10_000


# ----------------------------------------------------------------------------------------- correlate
def spearman_permutation(
    x: Iterable[float], y: Iterable[float], n_permutations: int = N_PERMUTATIONS, seed: int = 0
) -> tuple[float, float, str]:
    """Spearman rho of finite (x, y) pairs and its two-sided permutation p-value, plus a note.

    Permutes y's ranks: exact enumeration when n! <= n_permutations (p = share of permutations at
    least as extreme), otherwise `n_permutations` seeded draws with p = (k + 1) / (n_permutations + 1).
    NaN with a note when fewer than 3 pairs or either side is constant.
    """
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 3:
        return math.nan, math.nan, f"only {n} encoder(s) with both values; need at least 3"
    if np.ptp(x) == 0:
        return math.nan, math.nan, "statistic is constant across encoders"
    if np.ptp(y) == 0:
        return math.nan, math.nan, "score is constant across encoders"
    rho = float(stats.spearmanr(x, y).statistic)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    exact = math.factorial(n) <= n_permutations
    if exact:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    cx = rx - rx.mean()
    cy = ry[perms] - ry.mean()
    null = cy @ cx / (np.linalg.norm(cx) * np.linalg.norm(cy, axis=1))
    extreme = int(np.count_nonzero(np.abs(null) >= abs(rho) - 1e-12))
    if exact:
        return rho, extreme / len(perms), f"exact over {len(perms)} permutations"
    return rho, (extreme + 1) / (n_permutations + 1), f"{n_permutations} random permutations (seed {seed})"


FEATURES = {"backbone": "statistics", "projected": "projected_statistics"}


def load_analyses(analysis_dir: str | Path, features: str = "backbone") -> pd.DataFrame:
    """One row per analysis record (name, dataset, scalar statistics) found in `analysis_dir`.

    `features`: "backbone" (conv5 regions of the encoder) or "projected" (the pre-training run's
    projected regions, the space its local losses act on; NaN for encoders without projections).
    """
    if features not in FEATURES:
        raise CxrbenchError(f"unknown features {features!r}; valid: {', '.join(FEATURES)}")
    root = Path(analysis_dir)
    if not root.is_dir():
        raise CxrbenchError(
            f"analysis directory {root} does not exist (write records into it with "
            f"`cxrbench analyze run CHECKPOINT --out {root}`)"
        )
    rows = []
    for path in sorted(root.glob("*.json")):
        try:
            rec = read_json(path)
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or "analysis_schema_version" not in rec:
            continue
        st = rec.get(FEATURES[features]) or {}
        row = {
            "name": rec.get("name") or path.stem.split("__")[0],
            "dataset": rec.get("dataset"),
            "has_features": bool(rec.get(FEATURES[features])),
        }
        row.update({k: math.nan if st.get(k) is None else float(st[k]) for k in SCALAR_STATISTICS})
        rows.append(row)
    if not rows:
        raise CxrbenchError(
            f"no analysis records in {root} (write them with `cxrbench analyze run CHECKPOINT --out {root}`)"
        )
    return pd.DataFrame(rows)


def _task_scores(runs_dirs: Path | Iterable[Path]) -> dict[str, dict[str, float]]:
    """{encoder: {task_id: mean primary test score over its final ok runs}} from the run records."""
    from cxrbench.protocol.record_schema import primary_value, usable_runs
    from cxrbench.protocol.records import load_records, safe_name

    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rec in usable_runs(load_records(runs_dirs)):
        values[(str(rec["encoder"]), str(rec["task_id"]))].append(primary_value(rec))
    scores: dict[str, dict[str, float]] = defaultdict(dict)
    for (encoder, task), vals in values.items():
        scores[encoder][task] = float(np.mean(vals))
        scores[safe_name(encoder)].setdefault(task, float(np.mean(vals)))
    return scores


def task_order(tasks: Iterable[str]) -> list[str]:
    """Task ids in the protocol's order (unknown ones last, alphabetically)."""
    from cxrbench.protocol.tasks import TASKS

    order = {t.task_id: k for k, t in enumerate(TASKS)}
    return sorted(set(tasks), key=lambda t: (order.get(t, len(order)), t))


def correlate(
    runs_dirs: Path | str | Iterable[Path | str],
    analysis_dir: str | Path,
    out_dir: str | Path | None = None,
    n_permutations: int = N_PERMUTATIONS,
    seed: int = 0,
    features: str = "backbone",
) -> pd.DataFrame:
    """Spearman correlation of each statistic with each task's mean test score, across encoders.

    Encoders are matched by name (analysis `--name` == run records' `encoder`). One row per (analysis
    dataset, statistic, task), plus the task "mean_over_tasks": the mean over the tasks that every
    matched encoder has. Writes correlation.csv, a heat map per dataset and the scatter plot of
    within-image uniformity against the mean score to `out_dir` (default: `analysis_dir`); their paths
    are in `df.attrs["paths"]`, and notes (unmatched encoders, too few encoders) in `df.attrs["notes"]`.
    `features` picks the statistics correlated: "backbone" (conv5) or "projected" (see
    `load_analyses`); the output file names and the frame's "features" column say which.
    """
    from cxrbench.analysis.plots import plot_heatmap, plot_scatter

    runs = [Path(runs_dirs)] if isinstance(runs_dirs, str | Path) else [Path(d) for d in runs_dirs]
    analyses = load_analyses(analysis_dir, features)
    notes_first = []
    missing = sorted(analyses.loc[~analyses["has_features"], "name"])
    if missing:
        analyses = analyses[analyses["has_features"]]
        notes_first.append(
            f"no {features} features (not a run with region projections): {', '.join(missing)}"
        )
    scores = _task_scores(runs)
    out = Path(analysis_dir if out_dir is None else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, notes, paths = [], notes_first, {}
    suffix = "" if features == "backbone" else f"_{features}"
    scatter_data = {}
    for dataset, group in analyses.groupby("dataset", sort=True):
        group = group.drop_duplicates("name", keep="last")
        matched = group[group["name"].isin(scores.keys())]
        unmatched = sorted(set(group["name"]) - set(matched["name"]))
        if unmatched:
            notes.append(f"{dataset}: no run records for {', '.join(unmatched)}")
        names = list(matched["name"])
        if len(names) < 3:
            notes.append(
                f"{dataset}: {len(names)} analysed encoder(s) with run records; correlations need at least 3 "
                "and are NaN"
            )
        tasks = task_order(t for n in names for t in scores[n])
        common = [t for t in tasks if all(t in scores[n] for n in names)]
        if len(common) < len(tasks):
            notes.append(
                f"{dataset}: {len(tasks) - len(common)} task(s) lack scores for some encoders; "
                f"{MEAN_TASK} uses the {len(common)} tasks all encoders have"
            )
        score_table = {t: [scores[n].get(t, math.nan) for n in names] for t in tasks}
        score_table[MEAN_TASK] = [
            float(np.mean([scores[n][t] for t in common])) if common else math.nan for n in names
        ]
        for stat in SCALAR_STATISTICS:
            x = matched[stat].to_numpy(dtype=float)
            for task, y in score_table.items():
                rho, p, note = spearman_permutation(x, y, n_permutations, seed)
                n = int(np.count_nonzero(np.isfinite(x) & np.isfinite(np.asarray(y, dtype=float))))
                rows.append(
                    {
                        "dataset": dataset,
                        "features": features,
                        "statistic": stat,
                        "task_id": task,
                        "n_encoders": n,
                        "spearman_rho": rho,
                        "p_value": p,
                        "note": note,
                    }
                )
        scatter_data[dataset] = (
            names,
            matched["within_image_uniformity"].to_numpy(float),
            score_table[MEAN_TASK],
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "features",
            "statistic",
            "task_id",
            "n_encoders",
            "spearman_rho",
            "p_value",
            "note",
        ],
    )
    csv_path = out / f"correlation{suffix}.csv"
    with atomic_path(csv_path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    paths["csv"] = csv_path
    for dataset, sub in frame.groupby("dataset", sort=True):
        if not scatter_data[dataset][0]:
            continue  # no analysed encoder has run records: nothing to plot (noted above)
        paths[f"heatmap_{dataset}"] = plot_heatmap(
            sub, out / f"correlation_heatmap{suffix}__{dataset}.png", dataset
        )
        names, x, y = scatter_data[dataset]
        rho = sub[(sub.statistic == "within_image_uniformity") & (sub.task_id == MEAN_TASK)]
        paths[f"scatter_{dataset}"] = plot_scatter(
            names,
            x,
            y,
            rho.iloc[0] if len(rho) else None,
            out / f"within_uniformity_vs_score{suffix}__{dataset}.png",
        )
    frame.attrs["paths"] = paths
    frame.attrs["notes"] = notes
    return frame
