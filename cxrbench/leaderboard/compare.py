"""Ranks and significant wins between encoders, from a `results.Summary` (measured rows only).

The paired test reuses the bootstrap replicates of `results`: every group of a task with the same test
images was evaluated on the same resampled image sets, so the difference of two groups' replicates is
a paired bootstrap of the difference of their run-mean metrics, at no extra cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from cxrbench.errors import CxrbenchError
from cxrbench.leaderboard.aggregate import Summary

TIE_DECIMALS = 12

RANK_RULE = (
    "Rank: per task among measured encoders by mean (1 = best; equal means share the average rank); "
    "mean rank over the tasks an encoder was ranked on (shown as k/n tasks when not all). Published rows are not ranked."
)


def win_rule(alpha: float, replicates: str) -> str:
    return (
        f"Win: on a task, the encoder's mean beats the mean of every baseline AND, against every baseline, "
        f"a one-sided paired bootstrap over the same test images ({replicates}; the run-mean metric "
        f"recomputed on each resampled image set) gives p = (1 + #{{diff <= 0}}) / (1 + #replicates) < {alpha:g}; "
        "no correction across tasks. Tasks without a measured result for the encoder and every baseline "
        "are not counted."
    )


def add_ranks(table: pd.DataFrame) -> pd.DataFrame:
    """Copy of the table with a ``rank`` column (NaN for published rows and undefined means)."""
    out = table.copy()
    out["rank"] = math.nan
    measured = (out["source"] == "measured") & np.isfinite(out["mean"].astype(float))
    for _, idx in out[measured].groupby("task_id").groups.items():
        means = np.round(out.loc[idx, "mean"].astype(float).to_numpy(), TIE_DECIMALS)
        out.loc[idx, "rank"] = stats.rankdata(-means, method="average")
    return out


def mean_ranks(ranked: pd.DataFrame) -> pd.DataFrame:
    """Mean rank per measured encoder with the number of tasks it was ranked on, best first."""
    rows = ranked[ranked["rank"].notna()]
    out = rows.groupby("encoder")["rank"].agg(mean_rank="mean", n_tasks="count").reset_index()
    return out.sort_values(["mean_rank", "encoder"]).reset_index(drop=True)


def paired_pvalue(better: np.ndarray, worse: np.ndarray) -> float:
    """One-sided paired bootstrap p-value that `better` exceeds `worse` (same replicate image sets)."""
    diff = np.asarray(better, dtype=float) - np.asarray(worse, dtype=float)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return math.nan
    return float((1 + np.count_nonzero(diff <= 0)) / (1 + diff.size))


@dataclass
class Wins:
    """Per (encoder, task) test outcomes and the per-encoder "wins on k of n" counts."""

    per_task: pd.DataFrame
    per_encoder: pd.DataFrame
    baselines: tuple[str, ...]
    alpha: float
    rule: str


def count_wins(summary: Summary, baselines: Sequence[str], alpha: float = 0.05) -> Wins:
    """Significant wins of every non-baseline encoder against the whole baseline set, per task."""
    table = summary.table
    baselines = tuple(dict.fromkeys(baselines))
    known = set(table["encoder"])
    unknown = [b for b in baselines if b not in known]
    if unknown:
        raise CxrbenchError(f"unknown baseline encoder(s) {unknown}; measured encoders: {sorted(known)}")
    means = {
        (e, t): float(m) for e, t, m in zip(table["encoder"], table["task_id"], table["mean"], strict=True)
    }
    tasks = list(dict.fromkeys(table["task_id"]))
    rows = []
    for encoder in [e for e in dict.fromkeys(table["encoder"]) if e not in baselines]:
        for task in tasks:
            rows.append(_task_outcome(summary, means, encoder, task, baselines, alpha))
    per_task = pd.DataFrame(
        rows, columns=["encoder", "task_id", "compared", "beats_means", "p_value", "win", "note"]
    )
    if per_task.empty:
        per_encoder = pd.DataFrame(columns=["encoder", "wins", "n_compared"])
    else:
        per_encoder = (
            per_task.groupby("encoder", sort=False)
            .agg(wins=("win", "sum"), n_compared=("compared", "sum"))
            .reset_index()
            .astype({"wins": int, "n_compared": int})
        )
    return Wins(per_task, per_encoder, baselines, alpha, win_rule(alpha, summary.bootstrap.describe()))


def _task_outcome(
    summary: Summary, means: dict, encoder: str, task: str, baselines: tuple[str, ...], alpha: float
) -> dict:
    row = {"encoder": encoder, "task_id": task, "compared": False, "beats_means": False, "p_value": math.nan}
    row.update(win=False, note="")
    mine = means.get((encoder, task), math.nan)
    theirs = [means.get((b, task), math.nan) for b in baselines]
    if not baselines or not np.isfinite(mine) or not all(np.isfinite(theirs)):
        return row
    row["compared"] = True
    row["beats_means"] = bool(all(mine > m for m in theirs))
    key = (encoder, task)
    if key not in summary.replicates or any((b, task) not in summary.replicates for b in baselines):
        row["note"] = "no bootstrap replicates: no paired test"
        return row
    if any(summary.image_sets[(b, task)] != summary.image_sets[key] for b in baselines):
        row["note"] = "different test images than a baseline: no paired test"
        return row
    pvals = [paired_pvalue(summary.replicates[key], summary.replicates[(b, task)]) for b in baselines]
    row["p_value"] = max(pvals)
    row["win"] = bool(row["beats_means"] and row["p_value"] < alpha)
    return row
