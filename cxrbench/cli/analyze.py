"""`cxrbench analyze run` (statistics of one encoder) and `cxrbench analyze correlate` (vs scores).

`analyze run --out DIR` writes its record into DIR, the folder `analyze correlate --analysis-dir DIR`
reads; both default to RUNS_DIR/../analysis (next to the run records). `cxrbench analyze CHECKPOINT
...` (without `run`) still works: an unknown first word is taken as the checkpoint of `run`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors

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
DEFAULT_ANALYSIS_DIR = Path("analysis")


class _RunByDefault(TyperGroup):
    """A group whose unknown first word is the CHECKPOINT of `run` (the form before sub-commands)."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[Any, ...]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


analyze_app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help="Local uniformity/alignment statistics of encoders (run), and their relation to scores (correlate).",
)


def default_analysis_dir(runs_dir: list[Path]) -> Path:
    """RUNS_DIR/../analysis for the first --runs-dir (records sit next to the run records), else ./analysis."""
    return Path(runs_dir[0]).parent / "analysis" if runs_dir else DEFAULT_ANALYSIS_DIR


def resolve_dataset_path(data: Path, dataset: str) -> Path:
    """PREPARED_ROOT/<dataset>, or --data itself when it is a prepared dataset folder."""
    from cxrbench.protocol.task_data import open_task_dataset

    data = Path(data)
    if not (data / dataset / "prepared.json").exists() and (data / "prepared.json").exists():
        return data
    return open_task_dataset(data, dataset).root


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def statistics_table(record: dict) -> Table:
    """A rich table of an analysis record's statistics (with the spatial smoothness curve)."""
    st = record["statistics"]
    sample = record["sample"]
    table = Table(
        title=f"{record.get('name', '')} on {record['dataset']}: {sample['n_images']} test images, "
        f"{sample['resolution']} px, conv5 grid {'x'.join(map(str, record['features']['grid']))}"
    )
    projected = record.get("projected_statistics")
    table.add_column("statistic")
    table.add_column("backbone" if projected else "value", justify="right")
    if projected:
        table.add_column(f"projected ({record['projected_features']['dim']}-d)", justify="right")
    for key, label in ROW_LABELS.items():
        table.add_row(label, _fmt(st.get(key)), *([_fmt(projected.get(key))] if projected else []))
    dist = st["effective_rank_distribution"]
    table.add_row(
        "effective rank per image (min / median / max)",
        " / ".join(_fmt(dist.get(k)) for k in ("min", "median", "max")),
    )
    curve = ", ".join(f"{d}: {_fmt(v)}" for d, v in st["spatial_smoothness"].items())
    table.add_row("spatial smoothness (cosine by grid distance)", curve or "n/a")
    captions = []
    if st.get("alignment_note"):
        captions.append(f"alignment: {st['alignment_note']}")
    if projected:
        captions.append(f"projected regions from {record['projected_features']['source']}")
    if captions:
        table.caption = "; ".join(captions)
    return table


def correlation_table(frame: Any, mean_task: str) -> Table:
    """Rho and permutation p of every statistic against the mean score over tasks, per dataset."""
    mean = frame[frame.task_id == mean_task]
    table = Table(title=f"Spearman correlation with the {mean_task.replace('_', ' ')}")
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
    return table


@analyze_app.command("run")
@reports_user_errors
def run_command(
    checkpoint: Annotated[
        str,
        typer.Argument(help="Checkpoint file, 'random', 'imagenet' or a `cxrbench pretrain` output folder."),
    ],
    data: Annotated[
        Path, typer.Option("--data", help="Prepared root (PREPARED_ROOT/<dataset>) or dataset folder.")
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="Prepared dataset whose test images are used.")
    ] = "rsna",
    n_images: Annotated[int, typer.Option("--n-images", help="Seeded sample of test images.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image sample.")] = 0,
    resolution: Annotated[
        int | None, typer.Option("--resolution", help="Input size in pixels (default 224: 7x7 conv5 grid).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Analysis folder: writes OUT/<name>__<dataset>.json (default RUNS_DIR/../analysis, or "
            "./analysis without --runs-dir); `analyze correlate --analysis-dir OUT` reads it.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Encoder name; must equal the name of its run records.")
    ] = None,
    runs_dir: Annotated[
        list[Path],
        typer.Option("--runs-dir", help="Runs directory of cxrbench evaluate; sets the default --out."),
    ] = [],  # noqa: B006 (typer needs a list default; it is never mutated)
    device: Annotated[str, typer.Option(help="'cpu', 'auto', 'cuda', 'cuda:1', ...")] = "cpu",
    arch: Annotated[str | None, typer.Option(help="Encoder architecture (auto-detected).")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="State-dict key prefix of the encoder (auto-detected).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Input preset, as for `evaluate --preset` (default: what the checkpoint says)."),
    ] = None,
) -> None:
    """Local uniformity/alignment statistics of one encoder on a seeded sample of test images."""
    from cxrbench.analysis import analyze_encoder, default_name, write_analysis
    from cxrbench.errors import check_count
    from cxrbench.output_dirs import ANALYSIS, check_name, claim_folder, take_folder

    check_count("--n-images", n_images)
    label = check_name(name) if name is not None else check_name(default_name(checkpoint), "encoder name")
    analysis_dir = out if out is not None else default_analysis_dir(runs_dir)
    claim_folder(analysis_dir, ANALYSIS)
    record = analyze_encoder(
        checkpoint,
        resolve_dataset_path(data, dataset),
        n_images=n_images,
        seed=seed,
        resolution=resolution,
        device=device,
        arch=arch,
        prefix=prefix,
        preset=preset,
    )
    take_folder(analysis_dir, ANALYSIS)
    written = write_analysis(record, analysis_dir, label)
    console.print(statistics_table({**record, "name": label}))
    console.print(f"analysis record: {escape(str(written))} ({record['wall_time_s']:.1f} s)", highlight=False)


@analyze_app.command("correlate")
@reports_user_errors
def correlate_command(
    runs_dir: Annotated[
        list[Path], typer.Option("--runs-dir", help="Runs directory of cxrbench evaluate (repeatable).")
    ],
    analysis_dir: Annotated[
        Path | None,
        typer.Option(
            "--analysis-dir",
            help="Folder of analysis records (`analyze run --out`; default RUNS_DIR/../analysis).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where correlation.csv and the plots go (default: the analysis folder)."),
    ] = None,
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="Statistics to correlate: 'backbone' (conv5 regions) or 'projected' (a pre-training run's "
            "projected regions, the space its local losses and prior act on; files get a _projected suffix).",
        ),
    ] = "backbone",
) -> None:
    """Spearman correlation (permutation p-values) of the analysed statistics with run-record scores."""
    from cxrbench.analysis import MEAN_TASK, correlate
    from cxrbench.output_dirs import CORRELATION, take_folder

    if out is not None:  # the default (the analysis folder) is cxrbench's; a given one is claimed
        take_folder(out, CORRELATION, inputs=runs_dir)
    frame = correlate(
        runs_dir, analysis_dir or default_analysis_dir(runs_dir), out_dir=out, features=features
    )
    console.print(correlation_table(frame, MEAN_TASK))
    for note in frame.attrs.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    for name, path in frame.attrs.get("paths", {}).items():
        console.print(f"{name}: {escape(str(path))}", highlight=False)
