"""`cxrbench demo`: the embedded default end to end on synthetic phantom data.

phantom raw data (real formats) -> prepared caches -> brief pre-training of image-report
baselines (when available) -> evaluation of every encoder on all 18 tasks (demo profile) ->
leaderboard. Every step reuses what a previous run finished, so a second run is fast.
Phantom numbers are not medical results: they only show that every code path works.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxrbench.datasets import DATASET_NAMES, get_adapter
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare

DEMO_ARCH = "resnet18"
DEMO_SIZE = 224


@dataclass
class DemoPaths:
    root: Path
    phantom: Path = field(init=False)
    prepared: Path = field(init=False)
    pretrained: Path = field(init=False)
    runs: Path = field(init=False)
    leaderboard: Path = field(init=False)

    def __post_init__(self) -> None:
        self.phantom = self.root / "phantom"
        self.prepared = self.root / "prepared"
        self.pretrained = self.root / "pretrained"
        self.runs = self.root / "runs"
        self.leaderboard = self.root / "leaderboard"


def ensure_data(paths: DemoPaths, datasets=DATASET_NAMES, log: Callable[[str], None] = print) -> None:
    """Write and prepare every phantom dataset that is not already prepared."""
    for name in datasets:
        if (paths.prepared / name / "prepared.json").exists():
            continue
        raw = paths.phantom / name
        if not raw.exists():
            log(f"writing phantom {name}")
            write_phantom(name, raw, seed=0)
        log(f"preparing {name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(get_adapter(name), raw, paths.prepared / name, size=DEMO_SIZE)


@dataclass(frozen=True)
class DemoEncoder:
    """An encoder the demo evaluates: a spec for `load_encoder` and its leaderboard name."""

    name: str
    spec: str
    arch: str | None = DEMO_ARCH


def evaluate_encoders(
    paths: DemoPaths, encoders: list[DemoEncoder], reporter_factory, profile_name: str = "demo"
) -> None:
    """All 18 tasks for every encoder (finished runs are skipped)."""
    from cxrbench.benchmark.runner import EvaluateOptions, evaluate_checkpoint
    from cxrbench.benchmark.tasks import TASKS, get_profile

    for encoder in encoders:
        options = EvaluateOptions(
            paths.prepared, paths.runs, encoder.name, get_profile(profile_name), arch=encoder.arch
        )
        with reporter_factory(encoder.name) as reporter:
            evaluate_checkpoint(encoder.spec, list(TASKS), options, reporter)


def write_leaderboard(paths: DemoPaths, baselines: list[str]):
    from cxrbench.benchmark.report.build import build_leaderboard

    return build_leaderboard(
        [paths.runs],
        paths.leaderboard,
        baselines=baselines,
        include_published=True,
        title="cxrbench demo leaderboard (synthetic phantom data: not medical results)",
    )


DEMO_METHODS = ("convirt", "uniformity_prior")


def pretrain_baselines(
    paths: DemoPaths, methods=DEMO_METHODS, log: Callable[[str], None] = print
) -> dict[str, Path]:
    """Pre-train each method briefly on phantom MIMIC-CXR (demo profile); resume or reuse finished ones."""
    from cxrbench.baselines.training import CHECKPOINT, HISTORY, pretrain
    from cxrbench.io_utils import read_json

    encoders = {}
    for method in methods:
        out = paths.pretrained / method
        done = out / "encoder.safetensors"
        if (out / HISTORY).exists() and read_json(out / HISTORY).get("finished") and done.exists():
            log(f"{method}: reusing {done}")
        else:
            log(f"pre-training {method} (demo profile)")
            pretrain(method, paths.prepared / "mimic_cxr", out, "demo", resume=(out / CHECKPOINT).exists())
        encoders[method] = done
    return encoders


def demo_encoders(pretrained: dict[str, Path]) -> list[DemoEncoder]:
    """`random` (the floor every method must beat) plus the pre-trained baselines."""
    return [
        DemoEncoder("random", "random"),
        *(DemoEncoder(name, str(path), None) for name, path in pretrained.items()),
    ]
