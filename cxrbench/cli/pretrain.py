"""`cxrbench pretrain METHOD --data PREPARED_MIMIC --out DIR`: the CLI face of `baselines.training`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors


@reports_user_errors
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
    profile: Annotated[
        str, typer.Option(help="full (the published setting) or demo (minutes on a CPU).")
    ] = "demo",
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
    from cxrbench.cli.reporters import RichPretrainReporter
    from cxrbench.errors import check_count
    from cxrbench.output_dirs import PRETRAIN, take_folder

    check_count("--epochs", epochs)
    take_folder(out, PRETRAIN, inputs=[data])  # claimed, write-probed and marked before any training
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
    console.print(
        f"evaluate it with: cxrbench evaluate {escape(str(result.encoder_path))} --name {method}",
        highlight=False,
    )
