"""Rich displays of the libraries' progress callbacks (evaluate, pretrain, sweep).

Each library reports progress through a plain callback class with no-op methods; these subclasses
draw it. Imported inside the commands that use them, since the base classes load torch.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import TextColumn

from cxrbench.baselines.training import PretrainReporter, PretrainResult
from cxrbench.cli.console import console as default_console
from cxrbench.cli.progress import make_progress
from cxrbench.protocol.runner import Reporter
from cxrbench.protocol.tasks import Task
from cxrbench.sweep import STAGE_NAMES, JobOutcome, SweepReporter


class RichReporter(Reporter):
    """`cxrbench evaluate`: two bars, tasks overall and runs of the current task (latest epoch's metric)."""

    def __init__(self, console: Console | None = None):
        self.progress = make_progress(TextColumn("{task.fields[status]}"), console=console)
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


class RichPretrainReporter(PretrainReporter):
    """`cxrbench pretrain`: two bars, epochs and steps of the current epoch with the running loss."""

    def __init__(self, console: Console | None = None):
        self.console = console or default_console
        self.progress = make_progress(TextColumn("{task.fields[status]}"), console=self.console)
        self.epochs = self.steps = None

    def __enter__(self) -> RichPretrainReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def started(self, method: str, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        self.epochs = self.progress.add_task(
            f"pretrain {method}", total=epochs, completed=start_epoch, status=""
        )
        self.steps = self.progress.add_task("steps", total=steps_per_epoch, status="")

    def step(self, epoch: int, loss: float) -> None:
        self.progress.update(self.steps, advance=1, status=f"epoch {epoch} loss {loss:.4f}")

    def epoch(self, entry: dict) -> None:
        train = "-" if entry["train_loss"] is None else f"{entry['train_loss']:.4f}"
        status = f"epoch {entry['epoch']}: train {train} val {entry['val_loss']:.4f}"
        if entry["epoch"] > 0:
            self.progress.update(self.epochs, advance=1, status=status)
            self.progress.reset(self.steps, status="")
        else:
            self.progress.update(self.epochs, status=f"initial val {entry['val_loss']:.4f}")

    def finished(self, result: PretrainResult) -> None:
        note = " (early stop)" if result.stopped_early else ""
        self.console.print(
            f"best epoch {result.best_epoch}{note}; encoder: {escape(str(result.encoder_path))}",
            highlight=False,
        )


class RichSweepReporter(SweepReporter):
    """`cxrbench sweep`: one bar per stage with done / failed / skipped counts; failures as they happen."""

    def __init__(self, console: Console | None = None):
        self.progress = make_progress(
            TextColumn("[green]{task.fields[ok]} done[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("[dim]{task.fields[skipped]} skipped[/]"),
            console=console,
        )
        self.bar: Any = None
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}

    def __enter__(self) -> RichSweepReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def stage_started(self, stage: int, n_jobs: int, n_skipped: int) -> None:
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}
        label = f"stage {stage}/2 {STAGE_NAMES[stage - 1]}"
        self.bar = self.progress.add_task(label, total=n_jobs, **self.counts)

    def job_finished(self, outcome: JobOutcome) -> None:
        kind = {"ok": "ok", "skipped": "skipped"}.get(outcome.status, "failed")
        self.counts[kind] += 1
        self.progress.update(self.bar, advance=1, **self.counts)
        if kind == "failed":
            self.progress.console.print(
                f"[red]{outcome.status}[/] {escape(outcome.job.describe())}: {escape(str(outcome.error))}",
                highlight=False,
            )
