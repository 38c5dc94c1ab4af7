"""Leaderboard commands: `leaderboard` (tables, plots, overlays from run records) and `rescore`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.markup import escape

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors


@reports_user_errors
def leaderboard_command(
    runs_dir: Annotated[
        list[Path], typer.Option("--runs-dir", help="Runs directory of cxrbench evaluate (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output directory for the tables and plots.")],
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline", help="Encoder name in the baseline set for 'wins on k of n' (repeatable)."
        ),
    ] = None,
    published: Annotated[
        bool, typer.Option("--published/--no-published", help="Show the published LoVT rows.")
    ] = True,
    n_boot: Annotated[
        int,
        typer.Option("--n-boot", help="Bootstrap replicates over test images, Dice tasks (0: none)."),
    ] = 1000,
    n_boot_detection: Annotated[
        int,
        typer.Option("--n-boot-detection", help="Bootstrap replicates for mAP/FROC tasks (0: none)."),
    ] = 200,
    cache: Annotated[
        bool,
        typer.Option("--cache/--no-cache", help="Reuse bootstrap replicates of unchanged runs (OUT/.cache)."),
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0, max=1.0, help="Significance level of a win.")
    ] = 0.05,
    allow_mixed: Annotated[
        bool,
        typer.Option(
            "--allow-mixed", help="Flag, instead of refusing, records of different protocols/checkpoints."
        ),
    ] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots.")] = True,
    overlays: Annotated[
        bool, typer.Option("--overlays/--no-overlays", help="Write qualitative overlays.")
    ] = True,
    cost: Annotated[
        bool,
        typer.Option(
            "--cost", help="Also show each encoder's parameters, peak memory and images/s (cost.md/.csv)."
        ),
    ] = False,
) -> None:
    """Aggregate run records into the 18-task leaderboard (Markdown, CSV, LaTeX, HTML, PNG)."""
    from cxrbench.errors import check_count
    from cxrbench.leaderboard.report import build_leaderboard
    from cxrbench.output_dirs import LEADERBOARD, take_folder

    check_count("--n-boot", n_boot, 0)
    check_count("--n-boot-detection", n_boot_detection, 0)
    take_folder(out, LEADERBOARD, inputs=runs_dir)  # before any bootstrap: refused or probed now
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build_leaderboard(
            runs_dir,
            out,
            baselines=tuple(baseline or ()),
            include_published=published,
            n_boot=n_boot,
            n_boot_detection=n_boot_detection,
            cache=cache,
            seed=seed,
            alpha=alpha,
            allow_mixed=allow_mixed,
            plots=plots,
            overlays=overlays,
            cost=cost,
        )
    for w in caught:
        console.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False, soft_wrap=True)
    console.print(Markdown(result.markdown))
    for name, path in result.paths.items():
        console.print(f"{name}: {escape(str(path))}", highlight=False)
    if result.overlays:
        console.print(
            f"overlays: {len(result.overlays)} file(s) in {result.overlays[0].parent}", highlight=False
        )


@reports_user_errors
def rescore_command(
    runs_dir: Annotated[Path, typer.Argument(help="Runs directory whose records are re-scored in place.")],
) -> None:
    """Recompute test metrics of stored runs from their predictions files (after a metric fix)."""
    from cxrbench.protocol.rescore import rescore_all

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = rescore_all(runs_dir)
    for w in caught:
        console.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False, soft_wrap=True)
    for line in result.damaged:
        console.print(f"[red]damaged[/] {escape(line)}", highlight=False, soft_wrap=True)
    for line in result.summary():
        console.print(f"changed {escape(line)}", highlight=False, soft_wrap=True)
    if result.rescored and not result.changes:
        console.print(f"no test value changed in the {result.rescored} run(s) re-scored", highlight=False)
    console.print(
        f"{result.rewritten} record(s) re-scored and rewritten under {escape(str(runs_dir))}", highlight=False
    )
    if result.damaged:
        console.print(
            f"[red]{len(result.damaged)} run(s) not re-scored[/]: their predictions files are damaged "
            "(re-run those runs, e.g. delete the record and re-run the same evaluate)",
            highlight=False,
        )
        raise typer.Exit(1)
