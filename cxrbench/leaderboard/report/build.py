"""`build_leaderboard`: run records -> statistics -> ranks/wins -> Markdown, CSV, LaTeX, HTML, PNGs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_write_text
from cxrbench.leaderboard.aggregate import Summary, summarize_records
from cxrbench.leaderboard.compare import Wins, add_ranks, count_wins
from cxrbench.leaderboard.cost import cost_table, render_cost_markdown
from cxrbench.leaderboard.published import load_published
from cxrbench.leaderboard.report.html import render_html
from cxrbench.leaderboard.report.latex import render_latex
from cxrbench.leaderboard.report.layout import Layout, build_layout
from cxrbench.leaderboard.report.markdown import render_markdown
from cxrbench.leaderboard.report.overlays import plot_overlays
from cxrbench.leaderboard.report.plots import plot_bars, plot_rank_heatmap
from cxrbench.protocol.records import RecordScan, scan_records

CACHE_DIR = Path(".cache") / "bootstrap"  # per-run bootstrap replicates, inside the output directory
CSV_COLUMNS = (
    "encoder",
    "task_id",
    "metric",
    "n_runs",
    "mean",
    "sd",
    "ci95_low",
    "ci95_high",
    "boot_low",
    "boot_high",
    "rank",
    "source",
    "n_boot",
    "dataset",
    "n_nan",
    "n_failed",
    "n_images",
    "win",
    "p_value",
    "protocol_hash",
    "profile",
    "splits",
    "comparable",
    "flags",
)


@dataclass
class LeaderboardResult:
    """What was written (name -> path; overlays as a list) and the Markdown table itself."""

    paths: dict[str, Path]
    overlays: list[Path]
    markdown: str
    table: pd.DataFrame
    summary: Summary
    wins: Wins | None
    scan: RecordScan
    layout: Layout = field(repr=False)


def select_published(published: pd.DataFrame, include: bool | Sequence[str]) -> pd.DataFrame | None:
    """All published rows (True), none (False), or those whose label (with or without "(published)") is listed."""
    if include is True:
        return published
    if not include:
        return None
    wanted = {str(name).removesuffix(" (published)") for name in include}
    labels = published["encoder"].str.removesuffix(" (published)")
    unknown = wanted - set(labels)
    if unknown:
        raise CxrbenchError(f"unknown published rows {sorted(unknown)}; available: {sorted(set(labels))}")
    return published[labels.isin(wanted)]


def tidy_table(ranked: pd.DataFrame, wins: Wins | None, published: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (encoder, task), measured then published, in the CSV column order (0-1 scale)."""
    table = ranked.copy()
    if wins is not None and not wins.per_task.empty:
        outcome = wins.per_task[["encoder", "task_id", "win", "p_value"]]
        table = table.merge(outcome, on=["encoder", "task_id"], how="left")
    if published is not None and not published.empty:
        table = pd.concat([table, published.assign(rank=float("nan"))], ignore_index=True)
    for col in ("win", "p_value"):
        if col not in table:
            table[col] = pd.NA
    return table[list(CSV_COLUMNS)]


def build_leaderboard(
    runs_dirs: Path | str | Iterable[Path | str],
    out_dir: Path | str,
    baselines: Sequence[str] = (),
    include_published: bool | Sequence[str] = True,
    n_boot: int = 1000,
    n_boot_detection: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    allow_mixed: bool = False,
    plots: bool = True,
    overlays: bool = True,
    cache: bool = True,
    title: str = "cxrbench leaderboard",
    cost: bool = False,
) -> LeaderboardResult:
    """Aggregate the run records under `runs_dirs` and write every leaderboard output into `out_dir`.

    ``n_boot`` / ``n_boot_detection``: bootstrap replicates for Dice / mAP and FROC tasks (0 disables the
    bootstrap intervals and the paired tests). ``cache``: keep each run's replicates under
    ``out_dir/.cache/bootstrap`` so that rebuilding only resamples new or changed runs. ``cost``: also
    write the per-encoder cost table (parameters, peak memory, images/s) as cost.csv/cost.md, appended
    to the Markdown.
    """
    out_dir = Path(out_dir)
    scan = scan_records(runs_dirs)
    summary = summarize_records(
        scan.records,
        n_boot=n_boot,
        n_boot_detection=n_boot_detection,
        seed=seed,
        allow_mixed=allow_mixed,
        cache_dir=out_dir / CACHE_DIR if cache else None,
    )
    if summary.table.empty:
        raise CxrbenchError("no final run records found: run cxrbench evaluate first, or check --runs-dir")
    ranked = add_ranks(summary.table)
    wins = count_wins(summary, baselines, alpha) if baselines else None
    published = select_published(load_published(), include_published) if include_published else None
    if published is not None:  # only beside tasks that were measured
        published = published[published["task_id"].isin(set(ranked["task_id"]))]
    layout = build_layout(ranked, summary, wins, published, skipped=len(scan.skipped))
    table = tidy_table(ranked, wins, published)
    paths = {"csv": out_dir / "leaderboard.csv", "markdown": out_dir / "leaderboard.md"}
    paths.update(latex=out_dir / "leaderboard.tex", html=out_dir / "leaderboard.html")
    images: dict[str, Path] = {}
    if plots:
        order = {(r.encoder, r.task_id): r.rank for r in ranked.itertuples()}
        images["Per-task means with 95% t-intervals"] = plot_bars(layout, out_dir / "plots" / "bars.png")
        images["Per-task ranks"] = plot_rank_heatmap(layout, order, out_dir / "plots" / "ranks.png")
        paths.update(bars=images["Per-task means with 95% t-intervals"], ranks=images["Per-task ranks"])
    written_overlays = []
    if overlays:
        encoders = [r.encoder for r in layout.rows if r.source == "measured"]
        written_overlays = plot_overlays(scan.records, out_dir, encoders)
    markdown = render_markdown(layout, title)
    if cost:
        costs = cost_table(scan.records)
        paths.update(cost_csv=out_dir / "cost.csv", cost_markdown=out_dir / "cost.md")
        cost_md = render_cost_markdown(costs)
        atomic_write_text(paths["cost_csv"], costs.to_csv(index=False))
        atomic_write_text(paths["cost_markdown"], cost_md)
        markdown += "\n## Cost per encoder\n\n" + cost_md
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["latex"], render_latex(layout))
    atomic_write_text(paths["html"], render_html(layout, images, title))
    return LeaderboardResult(paths, written_overlays, markdown, table, summary, wins, scan, layout)
