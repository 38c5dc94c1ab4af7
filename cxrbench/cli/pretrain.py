"""`cxrbench pretrain METHOD --data PREPARED_MIMIC --out DIR`: the CLI face of `baselines.training`.

Registered by the main CLI as `app.command("pretrain")(pretrain_command)`; errors a user can fix
(CxrbenchError) become one red line and exit code 2, like every other cxrbench command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import TextColumn

from cxrbench.baselines.training import PretrainReporter, PretrainResult
from cxrbench.cli.errors import user_error_exit
from cxrbench.cli.progress import make_progress
from cxrbench.errors import CxrbenchError


class RichPretrainReporter(PretrainReporter):
    """Two bars: epochs, and steps of the current epoch with the running loss."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = make_progress(console, TextColumn("{task.fields[status]}"))
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
        self.console.print(f"best epoch {result.best_epoch}{note}; encoder: {result.encoder_path}")


def pretrain_command(
    method: Annotated[
        str, typer.Argument(help="Pre-training method (convirt, clip, lovt, uniformity_prior, ...).")
    ],
    data: Annotated[
        Path, typer.Option("--data", help="Prepared MIMIC-CXR folder (`cxrbench prepare mimic_cxr`).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: encoder checkpoint, training state, history.")
    ],
    profile: Annotated[str, typer.Option(help="full (docs/protocol.md) or demo (CPU minutes).")] = "demo",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    epochs: Annotated[
        int | None, typer.Option(help="Override the profile's maximum number of epochs.")
    ] = None,
    percent: Annotated[
        float | None,
        typer.Option(
            help="Share of the MIMIC-CXR train split: 30 (the fixed subset) or 100 (default: the profile's)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bert: Annotated[
        str | None, typer.Option(help="Report encoder: local folder or hub name (default: the profile's).")
    ] = None,
) -> None:
    """Pre-train an image encoder on image-report pairs and export it for `cxrbench evaluate`."""
    from cxrbench.baselines.training import pretrain

    console = Console()
    try:
        with RichPretrainReporter(console) as reporter:
            result = pretrain(
                method,
                data,
                out,
                profile,
                resume=resume,
                epochs=epochs,
                percent=percent,
                device=device,
                bert=bert,
                reporter=reporter,
            )
    except CxrbenchError as exc:
        raise user_error_exit(exc) from None
    console.print(f"evaluate it with: cxrbench evaluate {result.encoder_path} --name {method}")
