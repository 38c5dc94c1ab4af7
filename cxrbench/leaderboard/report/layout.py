"""The wide leaderboard table (rows = encoders, columns = tasks grouped by dataset) shared by all formats.

Every output format renders this one model, so Markdown, LaTeX and HTML cannot disagree on a number,
a bold cell or a footer rule.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrbench.leaderboard.aggregate import Summary, protocol_tasks
from cxrbench.leaderboard.compare import RANK_RULE, TIE_DECIMALS, Wins
from cxrbench.leaderboard.published import CITATION

DATASET_NAMES = {
    "rsna": "RSNA Pneumonia",
    "covid_rural": "COVID Rural",
    "siim": "SIIM-ACR Pneumothorax",
    "object_cxr": "Object-CXR",
    "nih": "NIH ChestX-ray8",
}
METRIC_NAMES = {"map": "mAP", "froc": "FROC", "dice": "Dice"}
_WORDS = {"yolo": "YOLO", "unet": "U-Net", "linear": "Linear", "finetune": "ft", "frozen": "frozen"}
WIN_MARK = "▲"
COMPARABLE_MARK = "†"  # a measured row comparable with the published rows
SINGLE_RUN = "(n=1)"
MISSING = "–"


@dataclass(frozen=True)
class Column:
    task_id: str
    dataset: str
    label: str
    metric: str


@dataclass
class Cell:
    """One (encoder, task) entry; numbers in the 0-1 scale, text in percent."""

    mean: float = math.nan
    half: float = math.nan
    n_runs: int = 0
    bold: bool = False
    win: bool = False
    published: bool = False
    boot: tuple[float, float] = (math.nan, math.nan)
    flags: str = ""

    @property
    def detail(self) -> str:
        """Everything behind the cell in one line (HTML tooltip): runs, both intervals, flags."""
        pct = lambda v: f"{100 * v:.2f}" if np.isfinite(v) else "n/a"  # noqa: E731
        parts = [f"n = {self.n_runs} runs", f"mean {pct(self.mean)}"]
        if np.isfinite(self.half):
            parts.append(f"95% t-interval [{pct(self.mean - self.half)}, {pct(self.mean + self.half)}]")
        if np.isfinite(self.boot[0]):
            parts.append(
                f"95% bootstrap interval over test images [{pct(self.boot[0])}, {pct(self.boot[1])}]"
            )
        if self.flags:
            parts.append(self.flags)
        return "; ".join(parts)

    @property
    def text(self) -> str:
        if not np.isfinite(self.mean):
            return MISSING
        body = f"{100 * self.mean:.1f}"
        if np.isfinite(self.half):
            body += f" ± {100 * self.half:.1f}"
        elif self.n_runs == 1:
            body += f" {SINGLE_RUN}"
        return body + (f" {WIN_MARK}" if self.win else "")


@dataclass
class Row:
    encoder: str
    source: str
    cells: dict[str, Cell]
    mean_rank: float = math.nan
    n_ranked: int = 0
    wins: str = ""
    comparable: bool = False  # measured on the full reference splits under the full profile

    @property
    def label(self) -> str:
        return f"{self.encoder} {COMPARABLE_MARK}" if self.comparable else self.encoder

    def rank_text(self, n_columns: int) -> str:
        """Mean rank, with the number of tasks when the encoder was not ranked on all of them."""
        if not np.isfinite(self.mean_rank):
            return MISSING
        text = f"{self.mean_rank:.2f}"
        return text if self.n_ranked >= n_columns else f"{text} ({self.n_ranked}/{n_columns} tasks)"


@dataclass
class Layout:
    columns: list[Column]
    rows: list[Row]
    footer: list[str] = field(default_factory=list)

    def groups(self) -> list[tuple[str, list[Column]]]:
        """Consecutive columns of one dataset, with the dataset's display name."""
        out: list[tuple[str, list[Column]]] = []
        for col in self.columns:
            name = DATASET_NAMES.get(col.dataset, col.dataset)
            if out and out[-1][0] == name:
                out[-1][1].append(col)
            else:
                out.append((name, [col]))
        return out


def task_label(task_id: str, dataset: str) -> str:
    """Short column label without the dataset, e.g. rsna_yolo_finetune_1 -> "YOLO ft 1%"."""
    words = task_id.split("_")
    prefix = dataset.split("_")[0]
    if words and words[0] == prefix:
        words = words[1:]
    if words[:1] == ["seg"]:
        words = words[1:]
    label = [f"{w}%" if w.isdigit() else _WORDS.get(w, w) for w in words]
    return " ".join(label) or task_id


def build_layout(
    ranked: pd.DataFrame,
    summary: Summary,
    wins: Wins | None,
    published: pd.DataFrame | None,
    skipped: int = 0,
) -> Layout:
    """Turn the ranked tidy table (+ wins, + published rows) into the rendered model."""
    columns = _columns(ranked)
    rows = _measured_rows(ranked, wins)
    if published is not None and not published.empty:
        rows += _published_rows(published, {c.task_id for c in columns})
    footer = _footer(ranked, summary, wins, published, skipped)
    return Layout(columns, rows, footer)


def _columns(ranked: pd.DataFrame) -> list[Column]:
    """Tasks with measured results, in protocol order (published rows are shown for these only)."""
    present = set(ranked["task_id"])
    cols = [
        Column(t.task_id, t.dataset, task_label(t.task_id, t.dataset), t.metric) for t in protocol_tasks()
    ]
    known = {c.task_id for c in cols}
    cols = [c for c in cols if c.task_id in present]
    extra = ranked[~ranked["task_id"].isin(known)].drop_duplicates("task_id")
    cols += [Column(r.task_id, r.dataset, r.task_id, r.metric) for r in extra.itertuples()]
    return cols


def _cell(row: pd.Series, published: bool = False) -> Cell:
    low, high = float(row["ci95_low"]), float(row["ci95_high"])
    boot = (float(row["boot_low"]), float(row["boot_high"]))
    return Cell(
        float(row["mean"]),
        (high - low) / 2,
        int(row["n_runs"]),
        published=published,
        boot=boot,
        flags=str(row["flags"]),
    )


def _measured_rows(ranked: pd.DataFrame, wins: Wins | None) -> list[Row]:
    won = set()
    per_encoder = {}
    if wins is not None:
        won = {(r.encoder, r.task_id) for r in wins.per_task.itertuples() if r.win}
        per_encoder = {r.encoder: f"{r.wins}/{r.n_compared}" for r in wins.per_encoder.itertuples()}
    best = {}
    for task, grp in ranked.groupby("task_id"):
        means = np.round(grp["mean"].astype(float).to_numpy(), TIE_DECIMALS)
        finite = means[np.isfinite(means)]
        if len(finite) and (len(finite) == 1 or finite.min() < finite.max()):  # all tied: nothing is best
            best[task] = np.nanmax(means)
    rows = []
    for encoder, grp in ranked.groupby("encoder", sort=False):
        cells = {}
        for _, r in grp.iterrows():
            cell = _cell(r)
            cell.bold = bool(
                np.isfinite(cell.mean) and round(cell.mean, TIE_DECIMALS) == best.get(r["task_id"])
            )
            cell.win = (encoder, r["task_id"]) in won
            cells[r["task_id"]] = cell
        ranks = grp["rank"].dropna()
        mean_rank = float(ranks.mean()) if len(ranks) else math.nan
        label = per_encoder.get(encoder, "baseline" if wins and encoder in wins.baselines else "")
        comparable = bool(grp["comparable"].astype(bool).all()) if "comparable" in grp else False
        rows.append(Row(str(encoder), "measured", cells, mean_rank, len(ranks), label, comparable))
    return sorted(rows, key=lambda r: (not np.isfinite(r.mean_rank), r.mean_rank, r.encoder))


def _published_rows(published: pd.DataFrame, task_ids: set[str]) -> list[Row]:
    rows = []
    for encoder, grp in published.groupby("encoder", sort=False):
        cells = {
            r["task_id"]: _cell(r, published=True) for _, r in grp.iterrows() if r["task_id"] in task_ids
        }
        rows.append(Row(str(encoder), "published", cells))
    return rows


def _footer(
    ranked: pd.DataFrame, summary: Summary, wins: Wins | None, published: pd.DataFrame | None, skipped: int
) -> list[str]:
    measured = ranked[ranked["source"] == "measured"]
    lines = [
        "Cells: mean ± half-width of the 95% t-interval over runs, mean ± t(0.975, n-1)·sd/√n with the sample sd "
        f"(n-1), in percent (mAP, FROC and Dice × 100); bold: best measured mean per task (none when all are tied); {SINGLE_RUN}: a "
        "single run, no interval.",
        f"Bootstrap 95% intervals over test images ({summary.bootstrap.describe()}, seed {summary.bootstrap.seed}; percentile "
        "interval of the run-mean metric recomputed on resampled test images) are in the CSV and in the HTML cell tooltips.",
        _runs_line(measured),
        RANK_RULE,
    ]
    if wins is not None and wins.baselines:
        lines.append(
            f"{WIN_MARK} {wins.rule} Baselines: {', '.join(wins.baselines)}; Wins column: k/n tasks."
        )
    if published is not None and not published.empty:
        lines.append(
            f"Rows marked (published) are copied from {CITATION} (mean ± 95% interval over 5 runs as published, "
            "not re-measured here); they take no part in bold, ranks or wins."
        )
    lines.append(_comparability_line(measured))
    n_failed = int(measured["n_failed"].sum()) if len(measured) else 0
    if n_failed:
        lines.append(f"{n_failed} failed run(s) were excluded from the statistics.")
    if skipped:
        lines.append(f"{skipped} unreadable record file(s) were skipped.")
    lines += [f"Note: {n}" for n in summary.notes]
    flagged = measured[measured["flags"].astype(str) != ""]
    lines += [f"Flag: {r.encoder} / {r.task_id}: {r.flags}" for r in flagged.itertuples()]
    return lines


def _comparability_line(measured: pd.DataFrame) -> str:
    """Which measured rows may be read beside the published ones, and why the others may not."""
    rule = (
        f"{COMPARABLE_MARK}: comparable with the published rows, i.e. measured on the full reference split "
        "lists (the test images the published numbers were computed on) under the full profile; "
        'deliberate differences from the reference: docs/protocol.md, "Fidelity to the reference evaluation".'
    )
    if "comparable" not in measured or measured.empty:
        return rule
    ok = measured.groupby("encoder")["comparable"].apply(lambda c: bool(c.astype(bool).all()))
    if ok.all():
        return rule
    others = measured[measured["encoder"].isin(ok.index[~ok])]
    splits = sorted({str(s) for s in others["splits"]})
    profiles = sorted({p for text in others["profile"] for p in str(text).split(",") if p})
    return (
        f"{rule} Rows without {COMPARABLE_MARK} are not comparable with the published rows: they used "
        f"{'; '.join(splits)} under the {', '.join(profiles)} profile."
    )


def _runs_line(measured: pd.DataFrame, max_listed: int = 6) -> str:
    """How many runs each cell averages; cells off the most common count are named when few."""
    counts = Counter(int(n) for n in measured["n_runs"])
    if not counts:
        return "No measured runs."
    if len(counts) == 1:
        return f"Runs per cell: {next(iter(counts))} everywhere."
    parts = []
    for n, cells in sorted(counts.items(), reverse=True):
        which = measured[measured["n_runs"] == n]
        named = (
            ": " + ", ".join(f"{r.encoder} / {r.task_id}" for r in which.itertuples())
            if cells <= max_listed
            else ""
        )
        parts.append(f"{n} in {cells} cell{'s' if cells > 1 else ''}{named}")
    return "Runs per cell: " + "; ".join(parts) + "."
