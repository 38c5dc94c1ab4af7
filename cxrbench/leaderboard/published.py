"""Published reference numbers, shown beside measured rows and never mixed into their statistics."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cxrbench.errors import CxrbenchError, DataError
from cxrbench.leaderboard.aggregate import TABLE_COLUMNS, protocol_tasks

PUBLISHED_CSV = Path(__file__).resolve().parent / "data" / "lovt_published.csv"
CITATION = (
    'Müller, Kaissis, Zou, Rueckert: "Joint Learning of Localized Representations from Medical Images '
    'and Reports", ECCV 2022'
)
PUBLISHED_RUNS = 5
COLUMNS = ("method", "pretrain_data", "task_id", "mean_percent", "ci95_percent")


def published_label(method: str, pretrain_data: str) -> str:
    """Row label, e.g. "LoVT 100% (published)" or "ImageNet (published)"."""
    data = "" if str(pretrain_data).strip().lower() in {"", "none", "nan"} else f" {pretrain_data}"
    return f"{method}{data} (published)"


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """The published rows in the leaderboard's tidy layout, 0-1 scale, with ``source == "published"``.

    The CSV holds mean and 95% interval half-width in percent (5 runs each); ``sd`` and the
    bootstrap columns are NaN because the paper does not report them.
    """
    path = Path(path) if path is not None else PUBLISHED_CSV
    if not path.is_file():
        raise CxrbenchError(
            f"published reference table {path} not found (it ships inside the package, cxrbench/leaderboard/data/)"
        )
    raw = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}", expected=",".join(COLUMNS))
    tasks = {t.task_id: t for t in protocol_tasks()}
    rows = []
    for i, rec in enumerate(raw.to_dict("records"), start=1):
        task = tasks.get(rec["task_id"])
        if task is None:
            raise DataError(path, f"unknown task id {rec['task_id']!r}", row=i, expected="a protocol task id")
        try:
            mean, half = float(rec["mean_percent"]) / 100, float(rec["ci95_percent"]) / 100
        except ValueError as exc:
            raise DataError(
                path, "non-numeric mean or interval", row=i, expected="numbers in percent"
            ) from exc
        rows.append(
            {
                "encoder": published_label(rec["method"], rec["pretrain_data"]),
                "task_id": task.task_id,
                "dataset": task.dataset,
                "metric": task.metric,
                "n_runs": PUBLISHED_RUNS,
                "n_nan": 0,
                "n_failed": 0,
                "mean": mean,
                "sd": math.nan,
                "ci95_low": mean - half,
                "ci95_high": mean + half,
                "boot_low": math.nan,
                "boot_high": math.nan,
                "n_boot": 0,
                "n_images": 0,
                "protocol_hash": "",
                "profile": "",
                "splits": "reference splits (as published)",
                "comparable": None,
                "flags": "",
                "source": "published",
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
