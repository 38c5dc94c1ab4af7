"""Data commands: `phantom` (synthetic raw data), `verify` (check a download), `prepare` (the cache)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors
from cxrbench.cli.progress import progress_bar
from cxrbench.errors import CxrbenchError


@reports_user_errors
def phantom_cmd(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder to write OUT_DIR/<dataset>/ raw phantom data into.")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset name or 'all'.")] = "all",
    n_images: Annotated[
        int | None, typer.Option(help="Images per dataset (default: per-dataset demo size).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write synthetic chest X-ray datasets in each dataset's real raw layout and formats."""
    from cxrbench.datasets import DATASET_NAMES
    from cxrbench.datasets.phantom import write_phantom

    names = list(DATASET_NAMES) if dataset == "all" else [dataset]
    with progress_bar() as bar:
        task = bar.add_task("phantom", total=len(names))
        for name in names:
            bar.update(task, description=f"phantom {name}")
            write_phantom(name, out_dir / name, n_images, seed)
            bar.advance(task)
    console.print(f"phantom data written to {escape(str(out_dir))}/{{{','.join(names)}}}", highlight=False)


@reports_user_errors
def verify_cmd(
    dataset: Annotated[str | None, typer.Argument(help="Dataset adapter name.")] = None,
    raw_dir: Annotated[Path | None, typer.Argument(help="The raw download folder.")] = None,
    deep: Annotated[bool, typer.Option(help="Decode every image (slow) instead of reading headers.")] = False,
    prepared: Annotated[
        Path | None, typer.Option(help="Check a prepared cache's files against its checksums instead.")
    ] = None,
) -> None:
    """Check a raw download (layout, rows, image headers, boxes) or, with --prepared, a prepared cache."""
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.prepared import verify_prepared

    if prepared is not None:
        damaged = verify_prepared(prepared)
        for line in damaged:
            console.print(f"[red]damaged[/] {escape(line)}", highlight=False, soft_wrap=True)
        if damaged:
            raise typer.Exit(1)
        console.print(
            f"[green]OK[/] {escape(str(prepared))}: every file matches its checksum", highlight=False
        )
        return
    if dataset is None or raw_dir is None:
        raise CxrbenchError("verify needs DATASET RAW_DIR (or --prepared PATH to check a prepared cache)")
    report = get_adapter(dataset).verify(raw_dir, deep=deep)
    for path in report.missing:
        console.print(f"[red]missing[/] {escape(path)}", highlight=False)
    for path in report.extra[:50]:
        console.print(f"[yellow]extra[/] {escape(path)} (not listed in the annotations)", highlight=False)
    if len(report.extra) > 50:
        console.print(f"[yellow]... {len(report.extra) - 50} more extra files[/]")
    for problem in report.problems:
        console.print(f"[red]problem[/] {escape(str(problem))}", highlight=False)
    if not report.missing and report.n_samples == 0:
        console.print(
            "[red]problem[/] the annotations list no images: prepare would find no usable images",
            highlight=False,
        )
    for key, count in report.info.items():
        console.print(f"[cyan]info[/] {count} images {key.replace('_', ' ')} (excluded by design)")
    summary = f"{dataset}: {report.n_samples} samples, {len(report.missing)} missing, {len(report.extra)} extra, {len(report.problems)} problems (rows, images or boxes prepare would skip)"
    if report.ok:
        console.print(f"[green]OK[/] {summary}")
        return
    console.print(
        f"[red]FAILED[/] {escape(summary)}\nexpected layout:\n{escape(report.expected_layout)}",
        highlight=False,
    )
    raise typer.Exit(1)


@reports_user_errors
def prepare_cmd(
    dataset: Annotated[str, typer.Argument(help="Dataset adapter name.")],
    raw_dir: Annotated[Path, typer.Argument(help="The raw download folder.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the prepared cache.")],
    size: Annotated[int, typer.Option(help="Prepared image side in pixels.")] = 224,
    strict: Annotated[bool, typer.Option(help="Treat skipped rows/images as errors.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing cache made with other settings.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes for decoding images.")] = 1,
    splits: Annotated[
        str,
        typer.Option(
            help="reference: the published split lists (every listed image must be in the download); "
            "patient: seeded splits by patient. MIMIC-CXR always uses its official split."
        ),
    ] = "reference",
) -> None:
    """Convert a raw download (or phantom) into the prepared cache that every task reads."""
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.prepare import prepare

    adapter = get_adapter(dataset)
    with progress_bar() as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = bar.add_task(f"prepare {dataset}", total=None)
        summary = prepare(
            adapter,
            raw_dir,
            out_dir,
            size=size,
            strict=strict,
            force=force,
            workers=workers,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            splits=splits,
        )
    if summary.reused:
        console.print(
            f"{escape(str(out_dir))} is already prepared with these settings; nothing to do.", highlight=False
        )
        return
    for problem in summary.problems:
        console.print(f"[yellow]warning[/] {escape(str(problem))}", highlight=False)
    table = Table(title=f"prepared {dataset} -> {escape(str(out_dir))}")
    for col in ("split", "images"):
        table.add_column(col)
    for split, count in summary.counts.items():
        table.add_row(split, str(count))
    console.print(table)
    for key, count in summary.info.items():
        console.print(f"[cyan]info[/] {count} images {key.replace('_', ' ')} (excluded by design)")
    if summary.split is not None:
        console.print(f"[cyan]info[/] split: {escape(summary.split.describe())}", highlight=False)
    console.print(
        f"[cyan]info[/] {summary.patients_in_several_splits} patients have images in more than one split"
    )
    if summary.clipped_boxes:
        console.print(
            f"[cyan]info[/] {summary.clipped_boxes} boxes overhung their image and were clipped to it"
        )
    console.print(
        f"skipped rows: {summary.skipped_rows}, skipped images: {summary.skipped_images}"
        + (" (see warnings above; --strict makes them errors)" if summary.problems else "")
    )
