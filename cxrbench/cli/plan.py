"""`cxrbench plan`: what `evaluate` would run and about how long it would take, before it starts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxrbench.cli.console import console
from cxrbench.cli.errors import reports_user_errors

CACHE_MEMORY_OPTION = typer.Option(
    "--cache-memory-gb", help="Frozen-feature cache: memory budget in GiB (default 6; 0: never in memory)."
)
CACHE_DISK_OPTION = typer.Option(
    "--cache-disk-gb",
    help="Frozen-feature cache: disk budget in GiB for features over the memory budget, memmapped in a "
    "temporary folder removed after each task (default 20; 0: never on disk).",
)


def print_plan(
    checkpoint: str,
    data: Path,
    tasks: str = "all",
    profile: str = "full",
    seeds: int | None = None,
    device: str = "auto",
    arch: str | None = None,
    prefix: str | None = None,
    probe: bool = True,
    cache_memory_gb: float | None = None,
    cache_disk_gb: float | None = None,
) -> None:
    """Print the plan table (shared by `plan` and `evaluate --dry-run`)."""
    from cxrbench.encoders import load_encoder
    from cxrbench.errors import check_count
    from cxrbench.protocol.feature_cache import (
        DEFAULT_DISK_BUDGET_BYTES,
        DEFAULT_MEMORY_BUDGET_BYTES,
        budget_bytes,
    )
    from cxrbench.protocol.plan import format_hours, plan_costs, probe_throughput, split_sizes
    from cxrbench.protocol.tasks import get_profile, select_tasks
    from cxrbench.runtime import resolve_device

    check_count("--seeds", seeds)
    memory_budget = budget_bytes("--cache-memory-gb", cache_memory_gb, DEFAULT_MEMORY_BUDGET_BYTES)
    disk_budget = budget_bytes("--cache-disk-gb", cache_disk_gb, DEFAULT_DISK_BUDGET_BYTES)
    prof = get_profile(profile)
    selected = select_tasks(tasks)
    sizes = {t.task_id: split_sizes(data, t, prof) for t in selected}
    loaded = load_encoder(checkpoint, arch=arch, prefix=prefix)
    throughput = None
    if probe:
        dev = resolve_device(device)
        kinds = [(t.head, t.mode) for t in selected]
        throughput = probe_throughput(loaded.encoder, kinds, prof.resolution, dev)
    n_seeds = seeds if seeds is not None else prof.default_seeds
    costs = plan_costs(
        selected, prof, n_seeds, sizes, loaded.encoder.feature_info, throughput, memory_budget, disk_budget
    )
    title = f"plan: {escape(str(checkpoint))} ({prof.name} profile, {n_seeds} seeds"
    title += f", probed on {throughput.device})" if throughput else ", no throughput probe)"
    table = Table(title=title)
    for col in (
        "task",
        "head",
        "mode",
        "runs",
        "train/val/test images",
        "epoch cap",
        "image-steps",
        "cache",
        "est.",
    ):
        table.add_column(col)
    for c in costs:
        table.add_row(
            c.task_id,
            c.head,
            c.mode,
            f"{c.lr_search_runs}+{c.final_runs}",
            "/".join(str(c.images[s]) for s in ("train", "val", "test")),
            str(c.epoch_cap),
            f"{c.image_steps:,}",
            c.feature_cache
            if c.feature_cache == "-"
            else f"{c.feature_cache} {c.cache_bytes / 1024**3:.2f} GiB",
            format_hours(c.seconds),
        )
    console.print(table)
    total_steps = sum(c.image_steps for c in costs)
    console.print(
        f"total: {sum(c.runs for c in costs)} runs, {total_steps:,} worst-case image-steps"
        + (
            f", about {format_hours(sum(c.seconds or 0 for c in costs))} (upper bound: every run to its epoch cap)"
            if throughput
            else ""
        ),
        highlight=False,
    )
    key = (lambda c: c.seconds or 0) if throughput else (lambda c: c.image_steps)
    largest = sorted(costs, key=key, reverse=True)[:3]
    console.print(
        "largest: "
        + ", ".join(
            f"{c.task_id} ({format_hours(c.seconds) if throughput else f'{c.image_steps:,} image-steps'})"
            for c in largest
        ),
        highlight=False,
    )
    console.print(
        f"feature cache budgets: memory {memory_budget / 1024**3:.1f} GiB (--cache-memory-gb), "
        f"disk {disk_budget / 1024**3:.1f} GiB (--cache-disk-gb, in {tempfile.gettempdir()}); "
        "cache sizes are float32 upper bounds",
        highlight=False,
    )


@reports_user_errors
def plan_cmd(
    checkpoint: Annotated[str, typer.Argument(help="Encoder checkpoint file, or 'random' / 'imagenet'.")],
    data: Annotated[Path, typer.Option("--data", help="PREPARED_ROOT holding the prepared datasets.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated task ids or dataset names, or 'all'.")] = "all",
    profile: Annotated[str, typer.Option(help="'full' (the protocol) or 'demo'.")] = "full",
    seeds: Annotated[int | None, typer.Option(help="Final runs per task (default: the profile's).")] = None,
    device: Annotated[
        str, typer.Option(help="Where the throughput probe runs: 'auto', 'cpu', 'cuda'...")
    ] = "auto",
    arch: Annotated[
        str | None, typer.Option(help="ResNet depth (auto-detected from the checkpoint).")
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="State-dict key prefix of the encoder.")] = None,
    probe: Annotated[
        bool, typer.Option(help="Measure a few steps per head kind to estimate wall time.")
    ] = True,
    cache_memory_gb: Annotated[float | None, CACHE_MEMORY_OPTION] = None,
    cache_disk_gb: Annotated[float | None, CACHE_DISK_OPTION] = None,
) -> None:
    """Runs, images, epoch caps, worst-case image-steps and estimated wall time per task, before a run."""
    print_plan(
        checkpoint, data, tasks, profile, seeds, device, arch, prefix, probe, cache_memory_gb, cache_disk_gb
    )
