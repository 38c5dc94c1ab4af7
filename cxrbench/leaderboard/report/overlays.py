"""Qualitative overlays: predicted vs ground-truth masks/boxes on the few test images evaluate stored.

One PNG per task: a row per encoder (its best final run by test metric), a column per stored overlay
image; ground truth in green, prediction in red. Records without a predictions file, or files
without overlay images, are skipped with a warning instead of failing the leaderboard. Like the other
plots, a PNG is redrawn only when what it shows changed (its encoders, their predictions files'
identity, the drawing code): rebuilding a leaderboard otherwise redrew every task's mosaic.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cxrbench.io_utils import atomic_path
from cxrbench.leaderboard.report.plots import PNG_KEY, digest, up_to_date
from cxrbench.protocol.predictions import PredictionsError, is_segmentation, read_predictions
from cxrbench.protocol.record_schema import primary_value, usable_runs
from cxrbench.protocol.records import predictions_file

GT_COLOR = np.array([0, 200, 0], dtype=np.float64)
PRED_COLOR = np.array([230, 30, 30], dtype=np.float64)
ALPHA = 0.4
GAP = 4
MIN_TILE = 160


def best_runs(records: Sequence[dict]) -> dict[tuple[str, str], dict]:
    """The ok final run with the highest finite primary test value per (encoder, task)."""
    best: dict[tuple[str, str], tuple[float, dict]] = {}
    for rec in usable_runs(records):
        value = primary_value(rec)
        key = (str(rec["encoder"]), str(rec["task_id"]))
        if key not in best or value > best[key][0]:
            best[key] = (value, rec)
    return {k: v[1] for k, v in best.items()}


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
    cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
    return mask[rows][:, cols]


def _edge(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _draw_box(rgb: np.ndarray, box: np.ndarray, color: np.ndarray, width: int = 2) -> None:
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = np.clip([x1, x2], 0, w - 1)
    y1, y2 = np.clip([y1, y2], 0, h - 1)
    rgb[y1 : min(y1 + width, h), x1 : x2 + 1] = color
    rgb[max(y2 - width + 1, 0) : y2 + 1, x1 : x2 + 1] = color
    rgb[y1 : y2 + 1, x1 : min(x1 + width, w)] = color
    rgb[y1 : y2 + 1, max(x2 - width + 1, 0) : x2 + 1] = color


def overlay_tiles(npz_path: Path) -> list[np.ndarray]:
    """RGB uint8 tiles (one per stored overlay image) with GT and prediction drawn on them."""
    predictions = read_predictions(npz_path)
    if not predictions.has_overlays:
        return []
    images = np.asarray(predictions.arrays["overlay_images"])
    if images.ndim == 4:  # k x 1 x H x W
        images = images[:, 0]
    index = np.asarray(predictions.arrays["overlay_index"], dtype=np.int64)
    seg = is_segmentation(predictions.kind)
    if seg:  # union over classes
        pred = predictions.masks("pred", index).any(axis=1)
        gt = predictions.masks("gt", index).any(axis=1)
    tiles = []
    for k, (img, i) in enumerate(zip(images, index, strict=True)):
        rgb = np.repeat(img[..., None].astype(np.float64), 3, axis=2)
        if seg:
            p = _resize_nearest(pred[k], img.shape)
            rgb[p] = (1 - ALPHA) * rgb[p] + ALPHA * PRED_COLOR
            rgb[_edge(_resize_nearest(gt[k], img.shape))] = GT_COLOR
        else:
            for box in predictions.boxes("gt", i):
                _draw_box(rgb, box, GT_COLOR)
            for box in predictions.boxes("pred", i):
                _draw_box(rgb, box, PRED_COLOR, width=1)
        tiles.append(rgb.astype(np.uint8))
    return tiles


def _mosaic(rows: list[list[np.ndarray]]) -> np.ndarray:
    h = max(t.shape[0] for r in rows for t in r)
    w = max(t.shape[1] for r in rows for t in r)
    k = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + GAP), k * (w + GAP), 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = i * (h + GAP), j * (w + GAP)
            out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return out


def plot_overlays(records: Sequence[dict], out_dir: Path, encoder_order: Sequence[str] = ()) -> list[Path]:
    """Write overlays/<task_id>.png for every task with at least one readable predictions file."""
    by_task: dict[str, list[tuple[str, list[np.ndarray]]]] = defaultdict(list)
    rank = {e: i for i, e in enumerate(encoder_order)}
    chosen: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for (encoder, task), rec in sorted(
        best_runs(records).items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0])
    ):
        path = predictions_file(rec)
        if path is not None:
            chosen[task].append((encoder, path))
    keys = {task: _key(task, files) for task, files in chosen.items()}
    written = []
    for task, files in chosen.items():
        target = out_dir / "overlays" / f"{task}.png"
        if up_to_date(target, keys[task]):
            written.append(target)
            continue
        for encoder, path in files:
            _add_tiles(by_task, task, encoder, path)
    for task, rows in by_task.items():
        path = out_dir / "overlays" / f"{task}.png"
        _save_mosaic(task, rows, path, keys[task])
        written.append(path)
    return written


def _key(task: str, files: list[tuple[str, Path]]) -> str:
    """What a task's mosaic shows: its encoders in order and their predictions files (path, size, mtime)."""
    stamps = []
    for encoder, path in files:
        try:
            stat = path.stat()
            stamps.append((encoder, str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            stamps.append((encoder, str(path), None, None))
    return digest("overlays", task, MIN_TILE, GAP, ALPHA, stamps)


def _add_tiles(by_task: dict, task: str, encoder: str, path: Path) -> None:
    """Append one encoder's tiles to its task's rows (a warning instead when its file is unreadable)."""
    try:
        tiles = overlay_tiles(path)
    except (PredictionsError, KeyError, ValueError, IndexError) as exc:
        warnings.warn(f"no overlays for {encoder}/{task}: {exc}", stacklevel=3)
        return
    if tiles:
        by_task[task].append((encoder, tiles))


def _upscale(tile: np.ndarray, min_size: int = MIN_TILE) -> np.ndarray:
    """Nearest-neighbour enlargement of small tiles (demo-profile images) so they stay visible."""
    k = max(1, math.ceil(min_size / max(tile.shape[:2])))
    return tile if k == 1 else np.repeat(np.repeat(tile, k, axis=0), k, axis=1)


def _save_mosaic(
    task: str, rows: list[tuple[str, list[np.ndarray]]], path: Path, key: str, dpi: int = 100
) -> None:
    """The mosaic at one image pixel per figure pixel, encoder names as row labels."""
    mosaic = _mosaic([[_upscale(t) for t in tiles] for _, tiles in rows])
    title = f"{task}: ground truth green, prediction red (best run per encoder)"
    label_in = 0.2 + 0.07 * max(len(e) for e, _ in rows)
    title_in = 0.35
    width = max(mosaic.shape[1] / dpi + label_in, 0.06 * len(title) + label_in)
    height = mosaic.shape[0] / dpi + title_in
    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_axes((label_in / width, 0.0, mosaic.shape[1] / dpi / width, 1 - title_in / height))
    ax.imshow(mosaic, interpolation="nearest")
    row_h = mosaic.shape[0] / len(rows)
    ax.set_xticks([])
    ax.set_yticks([row_h * (i + 0.5) for i in range(len(rows))], [e for e, _ in rows], fontsize=8)
    ax.set_title(title, fontsize=8, loc="left")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={PNG_KEY: key})
