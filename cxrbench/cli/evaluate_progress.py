"""Rich progress display and summary table for `cxrbench evaluate`."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.progress import TextColumn
from rich.table import Table

from cxrbench.cli.progress import make_progress
from cxrbench.protocol.runner import Reporter, TaskOutcome
from cxrbench.protocol.tasks import Task


class RichReporter(Reporter):
    """Two bars: tasks overall, runs of the current task (with the latest epoch's metric)."""

    def __init__(self, console: Console):
        self.progress = make_progress(console, TextColumn("{task.fields[status]}"))
        self.overall = None
        self.current = None

    def __enter__(self) -> RichReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def planned(self, n_tasks: int) -> None:
        self.overall = self.progress.add_task("tasks", total=n_tasks, status="")

    def task_started(self, task: Task, n_runs: int) -> None:
        if self.current is not None:
            self.progress.update(self.overall, advance=1)
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(task.task_id, total=n_runs, status="")

    def run_started(self, task: Task, phase: str, lr: float, seed: int) -> None:
        self.progress.update(self.current, status=f"{phase} lr={lr:g} seed={seed}")

    def epoch(self, task: Task, entry: dict) -> None:
        self.progress.update(
            self.current,
            status=f"epoch {entry['epoch']}/{task.max_epochs} loss {entry['train_loss']:.3f} val {task.metric} {entry['val_metric']:.3f}",
        )

    def run_finished(self, task: Task, record: dict, skipped: bool) -> None:
        note = "skipped (done)" if skipped else record.get("status", "")
        self.progress.update(self.current, advance=1, status=note)

    def finished(self) -> None:
        if self.overall is not None:
            self.progress.update(self.overall, completed=self.progress.tasks[0].total)


def summary_table(encoder: str, outcomes: list[TaskOutcome]) -> Table:
    table = Table(title=f"{encoder}: test metric over final runs")
    for col in ("task", "metric", "lr", "runs ok", "failed", "mean", "sd"):
        table.add_column(col)
    for outcome in outcomes:
        finals = [r for r in outcome.records if r.get("phase") == "final"]
        ok = [r["test"][outcome.task.metric] for r in finals if r.get("status") == "ok"]
        values = np.array([v for v in ok if v is not None and not math.isnan(v)], dtype=float)
        failed = sum(r.get("status") != "ok" for r in finals)
        mean = f"{values.mean():.4f}" if len(values) else "-"
        sd = f"{values.std(ddof=1):.4f}" if len(values) > 1 else "-"
        table.add_row(
            outcome.task.task_id, outcome.task.metric, f"{outcome.lr:g}", str(len(ok)), str(failed), mean, sd
        )
    return table
