"""Time `cxrbench leaderboard` on synthetic records: 20 encoders x 18 tasks x 5 runs by default.

Per-image statistics are synthesised directly in their JSON form (scores, TP masks, pixel counts...)
at the protocol's test-split sizes (RSNA 5337, SIIM 2409, Object-CXR 1000, NIH 196, COVID 44 images;
``--scale`` shrinks them) and written as `cxrbench evaluate` writes records: the statistics in a binary
sidecar beside each record, with the run's default bootstrap replicates (``--legacy``: version-3
records with the statistics inline, as before the sidecar). Prints the time of each phase and the
machine's load average; nothing is asserted (timings are measured here, never in tests).

    python benchmarks/bench_leaderboard.py [--encoders 20] [--runs 5] [--scale 1.0] [--legacy]

The default replicate counts are the ones stored in the sidecars; other counts (``--n-boot``) make
every build resample every run (the cost the stored replicates spare).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cxrbench.io_utils import atomic_write_json
from cxrbench.leaderboard.aggregate import summarize_records
from cxrbench.leaderboard.compare import add_ranks, count_wins
from cxrbench.leaderboard.report import build_leaderboard
from cxrbench.protocol import metrics
from cxrbench.protocol.record_schema import SCHEMA_VERSION
from cxrbench.protocol.records import scan_records, write_record
from cxrbench.protocol.tasks import METRICS_VERSION, TASKS

TEST_IMAGES = {"rsna": 5337, "siim": 2409, "object_cxr": 1000, "nih": 196, "covid_rural": 44}
CLASSES = {"nih": 8}


def _dice_stats(rng, n: int, classes: int, skill: float) -> dict:
    gt = np.where(rng.random((n, classes)) < 0.4, rng.integers(200, 4000, (n, classes)), 0)
    pred = np.maximum(
        0, (gt * rng.uniform(0.6, 1.4, gt.shape)).astype(np.int64) + rng.integers(0, 300, gt.shape)
    )
    inter = (np.minimum(gt, pred) * np.clip(skill + rng.normal(0, 0.1, gt.shape), 0, 1)).astype(np.int64)
    stats = {"intersection": inter.tolist(), "pred_sum": pred.tolist(), "gt_sum": gt.tolist()}
    stats["dice"] = metrics.dice.per_image_dice(stats).tolist()
    return stats


def _map_stats(rng, n: int, skill: float) -> dict:
    n_gt = np.where(rng.random(n) < 0.3, rng.integers(1, 4, n), 0)
    k = rng.poisson(1.5, n)
    scores, masks = [], []
    for g, m in zip(n_gt, k, strict=True):
        s = np.sort(rng.uniform(0.2, 1.0, m))[::-1]
        hits = [(1 << int(rng.binomial(8, skill))) - 1 if j < g else 0 for j in range(m)]
        scores.append(s.tolist())
        masks.append(hits)
    kaggle = [float(rng.random()) if g or m else None for g, m in zip(n_gt, k, strict=True)]
    coco = [[b >> 1 for b in m] for m in masks]
    return {"scores": scores, "tp_mask": masks, "coco_tp_mask": coco, "n_gt": n_gt.tolist(), "map": kaggle}


def _froc_stats(rng, n: int, skill: float) -> dict:
    n_gt = rng.integers(0, 4, n)
    scores, codes = [], []
    for g in n_gt:
        hit = [float(rng.uniform(0.2, 1.0)) for _ in range(g) if rng.random() < skill]
        fp = rng.uniform(0.0, 1.0, rng.poisson(1.5)).tolist()
        pairs = sorted([(s, 1) for s in hit] + [(s, -1) for s in fp], key=lambda p: -p[0])
        scores.append([s for s, _ in pairs])
        codes.append([c for _, c in pairs])
    return {"scores": scores, "codes": codes, "n_gt": n_gt.tolist(), "froc": [None] * n}


def write_records(runs_dir: Path, n_encoders: int, n_runs: int, scale: float, legacy: bool = False) -> int:
    """One record per (encoder, task, seed) in the docs/formats.md layout; returns how many."""
    count = 0
    for e in range(n_encoders):
        encoder = f"encoder{e:02d}"
        skill = 0.3 + 0.5 * e / max(n_encoders - 1, 1)
        for task in TASKS:
            n = max(8, round(TEST_IMAGES[task.dataset] * scale))
            ids = [f"{task.dataset}-{i:05d}" for i in range(n)]
            for seed in range(n_runs):
                rng = np.random.default_rng([e, seed, len(task.task_id)])
                if task.metric == "dice":
                    per_image = _dice_stats(rng, n, CLASSES.get(task.dataset, 1), skill)
                elif task.metric == "map":
                    per_image = _map_stats(rng, n, skill)
                else:
                    per_image = _froc_stats(rng, n, skill)
                test = metrics.aggregate(task.metric, per_image)
                run_id = uuid.uuid4().hex
                record = {
                    "schema_version": 3 if legacy else SCHEMA_VERSION,  # 3: statistics inline
                    "metrics_version": METRICS_VERSION,
                    "run_id": run_id,
                    "run_key": run_id[:24],
                    "encoder": encoder,
                    "checkpoint": {"path": f"{encoder}.pt", "identity": f"sha-{encoder}", "sha256": None},
                    "task_id": task.task_id,
                    "dataset": task.dataset,
                    "metric": task.metric,
                    "phase": "final",
                    "status": "ok",
                    "error": None,
                    "seed": seed,
                    "lr": task.default_lr,
                    "val": {task.metric: test[task.metric]},
                    "test": test,
                    "test_per_image": {"image_ids": ids, **per_image},
                    "history": [],
                    "best_epoch": 0,
                    "wall_time_s": 1.0,
                    "protocol_hash": "bench",
                    "profile": "full",
                    "versions": {},
                    "git_commit": "bench",
                    "created": "2024-01-01T00:00:00+00:00",
                    "device": "cpu",
                    "predictions": None,
                }
                path = runs_dir / encoder / task.task_id / f"{run_id}.json"
                if legacy:
                    atomic_write_json(path, record)
                else:
                    write_record(path, record)
                count += 1
    return count


@contextmanager
def timed(label: str, timings: dict):
    start = time.perf_counter()
    yield
    timings[label] = time.perf_counter() - start
    print(f"{label:<46s} {timings[label]:8.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real test-split sizes")
    parser.add_argument("--n-boot", type=int, default=1000, help="replicates for Dice tasks")
    parser.add_argument("--n-boot-detection", type=int, default=200, help="replicates for mAP/FROC tasks")
    parser.add_argument("--baselines", type=int, default=3, help="the first k encoders form the baseline set")
    parser.add_argument("--legacy", action="store_true", help="version-3 records, statistics inline")
    parser.add_argument("--runs-dir", type=Path, help="reuse (or write once) the records here")
    args = parser.parse_args()
    boot = {"n_boot": args.n_boot, "n_boot_detection": args.n_boot_detection}
    timings: dict[str, float] = {}
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir, out = args.runs_dir or Path(tmp) / "runs", Path(tmp) / "out"
        if not runs_dir.is_dir():
            with timed("write synthetic records (setup, not timed below)", timings):
                write_records(runs_dir, args.encoders, args.runs, args.scale, args.legacy)
        n = sum(1 for _ in runs_dir.rglob("*.json"))
        size = sum(p.stat().st_size for p in runs_dir.rglob("*.json")) / 2**20
        sidecars = sum(p.stat().st_size for p in runs_dir.rglob("*.stats.npz")) / 2**20
        print(f"{n} records, {size:.1f} MiB of JSON, {sidecars:.0f} MiB of sidecars; replicates: {boot}")
        with timed("read records", timings):
            records = scan_records(runs_dir).records
        for kind in ("dice", "froc", "map"):
            subset = [r for r in records if r["metric"] == kind]
            with timed(f"statistics + bootstrap: {kind} ({len(subset)} runs)", timings):
                summarize_records(subset, **boot)
        baselines = [f"encoder{e:02d}" for e in range(min(args.baselines, args.encoders))]
        with timed("statistics + bootstrap: all tasks", timings):
            summary = summarize_records(records, **boot)
        with timed("ranks + wins (paired tests)", timings):
            add_ranks(summary.table)
            count_wins(summary, baselines)
        with timed("build_leaderboard, cold cache (all outputs)", timings):
            build_leaderboard(runs_dir, out, baselines=baselines, **boot)
        with timed("build_leaderboard, warm cache (all outputs)", timings):
            build_leaderboard(runs_dir, out, baselines=baselines, **boot)
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
