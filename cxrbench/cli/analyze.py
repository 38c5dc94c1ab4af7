"""Typer command `analyze` (registered on the main app in `cxrbench.cli` as `app.command("analyze")`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrbench.cli.errors import user_error_exit
from cxrbench.errors import CxrbenchError

ROW_LABELS = {
    "global_uniformity": "global uniformity (pooled, t=2)",
    "within_image_uniformity": "within-image uniformity of regions",
    "between_image_uniformity": "between-image uniformity of regions",
    "mean_within_cosine": "mean within-image cosine",
    "effective_rank_mean": "effective rank (mean)",
    "neighbour_cosine": "neighbour cosine (grid distance 1)",
    "global_alignment": "global alignment E||z_img - z_rep||^2",
    "local_alignment": "local alignment (region vs attended sentences)",
}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def resolve_dataset_path(data: Path | None, dataset: str) -> Path:
    """PREPARED_ROOT/<dataset>, or --data itself when it is a prepared dataset folder."""
    if data is None:
        raise CxrbenchError("--data PREPARED_ROOT is required (the folder of `cxrbench prepare` outputs)")
    candidate = Path(data) / dataset
    if (candidate / "prepared.json").exists():
        return candidate
    if (Path(data) / "prepared.json").exists():
        return Path(data)
    raise CxrbenchError(
        f"prepared dataset {dataset!r} not found at {candidate}. Create it with:\n"
        f"  cxrbench prepare {dataset} RAW_DIR {candidate}\n"
        f"(or `cxrbench phantom PHANTOM_DIR --dataset {dataset}` first for synthetic data)"
    )


def statistics_table(record: dict) -> Table:
    """A rich table of an analysis record's statistics (with the spatial smoothness curve)."""
    st = record["statistics"]
    sample = record["sample"]
    table = Table(
        title=f"{record.get('name', '')} on {record['dataset']}: {sample['n_images']} test images, "
        f"{sample['resolution']} px, conv5 grid {'x'.join(map(str, record['features']['grid']))}"
    )
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, label in ROW_LABELS.items():
        table.add_row(label, _fmt(st.get(key)))
    dist = st["effective_rank_distribution"]
    table.add_row(
        "effective rank per image (min / median / max)",
        " / ".join(_fmt(dist.get(k)) for k in ("min", "median", "max")),
    )
    curve = ", ".join(f"{d}: {_fmt(v)}" for d, v in st["spatial_smoothness"].items())
    table.add_row("spatial smoothness (cosine by grid distance)", curve or "n/a")
    if st.get("alignment_note"):
        table.caption = f"alignment: {st['alignment_note']}"
    return table


def _correlate(runs_dir: list[Path], analysis_dir: Path | None, out: Path | None, console: Console) -> None:
    from cxrbench.analysis.engine import MEAN_TASK, correlate

    if not runs_dir:
        raise CxrbenchError(
            "--correlate needs at least one --runs-dir (the runs directory of cxrbench evaluate)"
        )
    analysis_dir = analysis_dir or Path(runs_dir[0]).parent / "analysis"
    frame = correlate(runs_dir, analysis_dir, out_dir=out)
    mean = frame[frame.task_id == MEAN_TASK]
    table = Table(title=f"Spearman correlation with the {MEAN_TASK.replace('_', ' ')}")
    table.add_column("dataset")
    table.add_column("statistic", no_wrap=True)
    for column in ("encoders", "rho", "permutation p"):
        table.add_column(column, justify="right")
    table.add_column("note", overflow="fold")
    for row in mean.itertuples():
        table.add_row(
            str(row.dataset),
            row.statistic,
            str(row.n_encoders),
            _fmt(row.spearman_rho),
            _fmt(row.p_value),
            row.note,
        )
    console.print(table)
    for note in frame.attrs.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    for name, path in frame.attrs.get("paths", {}).items():
        console.print(f"{name}: {path}", highlight=False)


def analyze_command(
    checkpoint: Annotated[
        str | None,
        typer.Argument(
            help="Checkpoint file, 'random', 'imagenet' or a `cxrbench pretrain` output folder (omit with "
            "--correlate)."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Prepared root (PREPARED_ROOT/<dataset>) or dataset folder.")
    ] = None,
    dataset: Annotated[
        str, typer.Option("--dataset", help="Prepared dataset whose test images are used.")
    ] = "rsna",
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Seeded sample of test images.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image sample.")] = 0,
    resolution: Annotated[
        int | None, typer.Option("--resolution", help="Input size in pixels (default 224: 7x7 conv5 grid).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Writes OUT/analysis/<name>__<dataset>.json (default: next to the first --runs-dir).",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Encoder name; must equal the name of its run records.")
    ] = None,
    correlate: Annotated[
        bool, typer.Option("--correlate", help="Correlate analysed statistics with run-record scores.")
    ] = False,
    runs_dir: Annotated[
        list[Path], typer.Option("--runs-dir", help="Runs directory of cxrbench evaluate (repeatable).")
    ] = [],  # noqa: B006 (typer needs a list default; it is never mutated)
    analysis_dir: Annotated[
        Path | None,
        typer.Option(
            "--analysis-dir", help="Analysis records for --correlate (default RUNS_DIR/../analysis)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="'cpu', 'auto', 'cuda', 'cuda:1', ...")] = "cpu",
    arch: Annotated[str | None, typer.Option(help="Encoder architecture (auto-detected).")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="State-dict key prefix of the encoder (auto-detected).")
    ] = None,
) -> None:
    """Local uniformity/alignment statistics of an encoder, or (--correlate) their relation to scores."""
    console = Console()
    try:
        if correlate:
            _correlate(list(runs_dir), analysis_dir, out, console)
            return
        if checkpoint is None:
            raise CxrbenchError(
                "give a CHECKPOINT ('random', 'imagenet', a file or a pre-training folder), or use --correlate"
            )
        from cxrbench.analysis.engine import analyze_encoder, default_name, write_analysis

        path = resolve_dataset_path(data, dataset)
        record = analyze_encoder(
            checkpoint,
            path,
            n_images=n_images,
            seed=seed,
            resolution=resolution,
            device=device,
            arch=arch,
            prefix=prefix,
        )
        label = name or default_name(checkpoint)
        target = out if out is not None else (Path(runs_dir[0]).parent if runs_dir else Path("."))
        written = write_analysis(record, target, label)
    except CxrbenchError as exc:
        raise user_error_exit(exc) from None
    console.print(statistics_table({**record, "name": label}))
    console.print(f"analysis record: {written} ({record['wall_time_s']:.1f} s)", highlight=False)
