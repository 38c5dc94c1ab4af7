"""Raw download -> prepared cache: generic, idempotent, atomic, resumable and never destructive.

Work happens in `<out>.partial/` (marked by `prepare-in-progress.json`, which records the settings):
each chunk of images is written as its own file as soon as it is done, so a killed run resumes
where it stopped, but only under identical settings. The workers write a chunk's pixels straight
into one array file per split (`chunks/<split>_images.npy`, in sample order, see `npy_rows`) and
then its small file (boxes, masks, problems), which marks the chunk done; the split's pixels thus
never pass through the main process, which keeps assembly short and its memory flat at any size.
The final arrays, manifest (with checksums) and, last of all, `prepared.json` (the completion marker) are assembled there and the folder is
renamed onto `<out>` in one step, so a cache that loads as complete is always complete.

Output folders are claimed with `cxrbench.output_dirs.claim_output_dir`: OUT must be new, empty
or a cxrbench prepared cache, and must not overlap RAW. The cache records everything that changes
its content (settings, split rule, a fingerprint of the raw files) and what was skipped, so a
re-run never silently reuses a cache made from other data or one that `--strict` would refuse.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrbench.datasets.base import DatasetAdapter, Problem, Problems, RawSample, report_sample
from cxrbench.datasets.code_columns import code_file, write_codes
from cxrbench.datasets.geometry import SquareResize, boxes_to_masks, check_box, clip_boxes, overhangs
from cxrbench.datasets.imaging import equalize_histogram
from cxrbench.datasets.npy_rows import copy_kept_rows, create_rows_file, is_rows_file, write_rows
from cxrbench.datasets.prepared import (
    FORMAT_VERSION,
    IN_PROGRESS,
    MARKER,
    array_record,
    file_record,
    read_marker,
    rebuild_command,
)
from cxrbench.datasets.raw_listing import raw_listing
from cxrbench.datasets.split_scheme import (
    REFERENCE,
    Assignment,
    SplitIdentity,
    assign_splits,
    empty_split_requirement,
    listed_ids,
    patients_in_several_splits,
    resolve_scheme,
    split_config,
    train_subsets,
)
from cxrbench.datasets.splits import DEFAULT_SEED, ids_hash
from cxrbench.datasets.text_columns import column_files, write_column
from cxrbench.errors import CxrbenchError, DataError
from cxrbench.io_utils import atomic_link, atomic_path, atomic_save_npy, atomic_write_json, read_json
from cxrbench.output_dirs import OURS, claim_output_dir
from cxrbench.provenance import provenance

CHUNK_SIZE = 64
# How chunks hold their results; a partial prepare of another layout starts afresh. 2: pixels in one
# array file per split (`npy_rows`), grey-level counts per chunk (1, unnamed: pixels in each chunk).
CHUNK_LAYOUT = 2
MIN_SIZE, MAX_SIZE = 32, 4096  # prepared side in pixels: below 32 the encoders' strides leave no map
MAX_PROBLEMS_KEPT = 100  # problems stored in prepared.json (all are counted)


@dataclass(frozen=True)
class ChunkJob:
    """One chunk of a split: its samples, its done-marking file, and where its pixels go."""

    split: str
    samples: list[RawSample]
    path: Path  # the chunk's .npz: written last, so its presence means the chunk is done
    images_path: Path  # the split's uint8 N x size x size array file (`npy_rows`)
    start: int  # position of the chunk's first sample in the split


@dataclass
class ProcessedImage:
    image: np.ndarray  # uint8 size x size
    masks: np.ndarray | None  # packed bits C x size x ceil(size/8)
    boxes: np.ndarray  # float32 K x 4 in prepared pixels
    labels: np.ndarray  # int64 K
    n_clipped: int = 0  # boxes that overhung the image and were clipped to it


@dataclass
class PrepareSummary:
    dataset: str
    out_root: Path
    counts: dict[str, int]
    skipped_rows: int = 0
    skipped_images: int = 0
    reused: bool = False
    info: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    clipped_boxes: int = 0  # boxes overhanging their image, clipped to it (never dropped)
    patients_in_several_splits: int = 0
    split: SplitIdentity | None = None


def check_prepare_options(size: int, workers: int) -> None:
    """Refuse settings that cannot give a usable cache, before any work."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise CxrbenchError(
            f"--size {size} is out of range: choose a side from {MIN_SIZE} to {MAX_SIZE} pixels"
        )
    if workers < 1:
        raise CxrbenchError(f"--workers {workers} is out of range: use 1 (no worker processes) or more")


def prepare_config(adapter: DatasetAdapter, size: int, seed: int, scheme: str = REFERENCE) -> dict:
    """The settings that change a cache's content (the raw files' fingerprint is recorded beside them)."""
    return {
        "dataset": adapter.name,
        "size": size,
        "seed": seed,
        "format_version": FORMAT_VERSION,
        "equalize": adapter.equalize,
        "classes": list(adapter.classes),
        "split": split_config(adapter, scheme),
    }


def process_sample(
    adapter: DatasetAdapter, sample: RawSample, size: int, problems: Problems
) -> ProcessedImage:
    """Decode, equalise, pad+resize one sample; validate and transform its boxes."""
    loaded = adapter.load_for_prepare(sample)
    image = loaded.image
    if isinstance(image, Image.Image):  # float32 values as a Pillow "F" image (see load_for_prepare)
        width, height = image.size
        if adapter.equalize:
            image = np.array(image, dtype=np.float32)
    else:
        height, width = image.shape
    if adapter.equalize:
        image = equalize_histogram(image)
    geometry = SquareResize(height, width, size)
    keep = []
    for k, box in enumerate(sample.boxes):
        reason = check_box(box, height, width)
        if reason is None:
            keep.append(k)
        else:
            file, row = sample.box_rows[k] if k < len(sample.box_rows) else (str(sample.path), None)
            problems.add(file, f"{reason}; row skipped", row=row, expected="a box overlapping the image")
    n_clipped = sum(overhangs(sample.boxes[k], height, width) for k in keep)
    boxes = geometry.boxes(clip_boxes(sample.boxes[keep], height, width))
    labels = np.asarray(sample.labels, dtype=np.int64)[keep]
    masks = loaded.masks
    if masks is not None:
        masks = geometry.masks(masks)
    elif adapter.masks_from_boxes:
        masks = boxes_to_masks(boxes, labels, len(adapter.classes), (size, size))
    return ProcessedImage(
        image=np.clip(np.round(geometry.image(image) * 255), 0, 255).astype(np.uint8),
        masks=None if masks is None else np.packbits(masks, axis=-1),
        boxes=boxes,
        labels=labels,
        n_clipped=int(n_clipped),
    )


def _process_chunk(adapter: DatasetAdapter, job: ChunkJob, size: int, strict: bool) -> list[Problem]:
    """Process one chunk: its pixels into the split's array, the rest as one .npz (atomically, last).

    A skipped image leaves its row of the split's array zero; assembly drops it by the `ok` flags.
    Returns the problems met.
    """
    problems = Problems(strict=strict)
    samples = job.samples
    results: list[ProcessedImage | None] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sample in samples:
            try:
                results.append(process_sample(adapter, sample, size, problems))
            except DataError as exc:
                if strict:
                    raise
                problems.add(exc.file, f"{exc.detail}; image skipped", row=exc.row, expected=exc.expected)
                results.append(None)
    ok = [r is not None for r in results]
    done = [r for r in results if r is not None]
    arrays = {
        "ok": np.array(ok, dtype=bool),
        "boxes": np.concatenate([r.boxes for r in done]) if done else np.zeros((0, 4), np.float32),
        "labels": np.concatenate([r.labels for r in done]) if done else np.zeros((0,), np.int64),
        "n_boxes": np.array([len(r.boxes) for r in done], dtype=np.int64),
        "n_clipped": np.array(sum(r.n_clipped for r in done), dtype=np.int64),
        "level_counts": level_counts(r.image for r in done),
        "problems": np.array([_encode_problem(p) for p in problems.items], dtype=object).astype(str),
    }
    if adapter.has_masks:
        packed = (len(adapter.classes), size, (size + 7) // 8)
        arrays["masks"] = np.stack([r.masks for r in done]) if done else np.zeros((0, *packed), np.uint8)
    pixels = np.zeros((len(samples), size, size), np.uint8)  # a skipped image's row stays zero
    for row, result in zip(pixels, results):
        if result is not None:
            row[...] = result.image
    write_rows(job.images_path, job.start, pixels)
    with atomic_path(job.path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return problems.items


_worker_adapter: DatasetAdapter | None = None  # set in each worker process by its pool's initializer


def _set_worker_adapter(adapter: DatasetAdapter) -> None:
    global _worker_adapter
    _worker_adapter = adapter


def _process_chunk_in_worker(job: ChunkJob, size: int, strict: bool) -> list[Problem]:
    assert _worker_adapter is not None, "the pool's initializer sets the adapter"
    return _process_chunk(_worker_adapter, job, size, strict)


def _split_arrays(jobs: list[ChunkJob], size: int) -> None:
    """Make sure each split's pixel array exists with its shape; a new one means redoing its chunks.

    Resuming keeps an existing array (its finished chunks' pixels are in it). A missing or
    mis-shaped one is created afresh (atomically, zero-filled, its disk space reserved), and the
    chunk files of that split are removed, since the pixels they vouch for are gone.
    """
    for split in dict.fromkeys(job.split for job in jobs):
        mine = [job for job in jobs if job.split == split]
        path, shape = mine[0].images_path, (sum(len(job.samples) for job in mine), size, size)
        if is_rows_file(path, shape):
            continue
        for job in mine:
            job.path.unlink(missing_ok=True)
        create_rows_file(path, shape)


def level_counts(images: Iterable[np.ndarray]) -> np.ndarray:
    """How many pixels of `images` (uint8) have each of the 256 grey levels: int64 x 256."""
    counts = np.zeros(256, dtype=np.int64)
    for image in images:
        counts += np.bincount(np.asarray(image, dtype=np.uint8).ravel(), minlength=256)
    return counts


def pixel_stats(counts: np.ndarray) -> tuple[float, float]:
    """Mean and std of the [0, 1] pixel values (level / 255) counted in `counts`; (0.5, 0.25) if none.

    Exact integer sums: the mean is correctly rounded and the std is the square root of the exact
    variance, independent of pixel order and chunking, with no float copy of the train images
    (8 bytes a pixel, 6.4 GB for RSNA).
    """
    levels = np.arange(256, dtype=np.int64)
    n, s1, s2 = int(counts.sum()), int(counts @ levels), int(counts @ (levels * levels))
    if n == 0:
        return 0.5, 0.25
    variance = (n * s2 - s1 * s1) / (255 * 255 * n * n)
    return s1 / (255 * n), float(np.sqrt(max(variance, 1e-12)))


def _encode_problem(p: Problem) -> str:
    return "\x1f".join([p.file, "" if p.row is None else str(p.row), p.message, p.expected or ""])


def _decode_problem(text: str) -> Problem:
    file, row, message, expected = text.split("\x1f")
    return Problem(file, message, int(row) if row else None, expected or None)


def prepare(
    adapter: DatasetAdapter,
    raw_root: str | Path,
    out_root: str | Path,
    size: int = 224,
    seed: int = DEFAULT_SEED,
    strict: bool = False,
    force: bool = False,
    workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    splits: str = REFERENCE,
) -> PrepareSummary:
    """Convert a raw download into the prepared cache read by every task (see module docstring).

    `splits`: "reference" (the shipped reference split lists; MIMIC-CXR: its official split) or
    "patient" (seeded by-patient splits); see `split_scheme`.
    """
    raw_root, out_root = Path(raw_root), Path(out_root)
    check_prepare_options(size, workers)
    scheme = resolve_scheme(adapter, splits)
    claimed = claim_output_dir(out_root, marker=MARKER, kind="prepared cache", inputs=[raw_root])
    partial = out_root.with_name(out_root.name + ".partial")
    claimed_partial = claim_output_dir(
        partial, marker=(IN_PROGRESS, MARKER), kind="partial prepared cache", inputs=[raw_root]
    )
    missing = adapter.check_required(raw_root)
    if missing:
        raise CxrbenchError(
            f"{adapter.name}: missing under {raw_root}: {', '.join(missing)}\nexpected layout:\n{adapter.layout}"
        )
    config = prepare_config(adapter, size, seed, scheme)
    settings = {
        "config": config,
        "raw": raw_listing(raw_root),
        "strict": strict,
        "chunk_size": CHUNK_SIZE,
        "chunk_layout": CHUNK_LAYOUT,
    }
    if claimed.state == OURS and not force:
        return _reuse(adapter, out_root, raw_root, settings)

    problems = Problems(strict=strict)
    adapter.listed_ids = listed_ids(adapter, scheme)
    samples = adapter.listed_samples(raw_root, problems)
    present = []
    for s in samples:
        if s.path.exists():
            present.append(s)
        else:
            report_sample(
                problems, s, f"image {s.path} is listed but absent; image skipped", "the file to exist"
            )
    if not present:
        raise CxrbenchError(f"{adapter.name}: no usable images found under {raw_root}")
    skipped_rows = len(problems)
    assignment = assign_splits(adapter, present, scheme, seed, raw_root)
    _check_splits_filled(adapter, present, assignment)

    _start_partial(partial, claimed_partial.state == OURS, settings)
    chunk_dir = partial / "chunks"
    jobs = []
    for split, indices in assignment.splits.items():
        for c, start in enumerate(range(0, len(indices), CHUNK_SIZE)):
            chunk = [present[i] for i in indices[start : start + CHUNK_SIZE]]
            path, pixels = chunk_dir / f"{split}_{c:05d}.npz", chunk_dir / f"{split}_images.npy"
            jobs.append(ChunkJob(split, chunk, path, pixels, start))
    if (partial / MARKER).is_file():  # killed after assembling, before the final rename
        summary = _summary_from_marker(adapter, partial, read_json(partial / MARKER))
    else:
        chunk_dir.mkdir(parents=True, exist_ok=True)
        _split_arrays(jobs, size)
        _run_chunks(adapter, jobs, size, strict, workers, on_progress)
        summary = _assemble(
            adapter, present, assignment, jobs, partial, settings, raw_root, out_root, problems
        )
    for problem in summary.problems:  # met while decoding (possibly in worker processes)
        warnings.warn(str(problem), stacklevel=2)
    summary.skipped_rows += skipped_rows
    summary.info = {**adapter.info, **assignment.info}
    summary.problems = problems.items + summary.problems
    _swap_into_place(partial, out_root)
    summary.out_root = out_root
    return summary


def _check_splits_filled(adapter: DatasetAdapter, samples: list[RawSample], assignment: Assignment) -> None:
    empty = [name for name, indices in assignment.splits.items() if len(indices) == 0]
    if empty:
        patients = len({s.patient_id for s in samples})
        raise CxrbenchError(
            f"{adapter.name}: {len(samples)} usable images from {patients} patients leave the "
            f"{', '.join(empty)} split(s) empty; {empty_split_requirement(adapter, assignment.scheme)}"
        )


def _run_chunks(adapter, jobs: list[ChunkJob], size: int, strict: bool, workers: int, on_progress) -> None:
    total = sum(len(j.samples) for j in jobs)
    done = sum(len(j.samples) for j in jobs if j.path.exists())
    if on_progress:
        on_progress(done, total)
    todo = [j for j in jobs if not j.path.exists()]
    if workers > 1 and len(todo) > 1:
        # The adapter (with its reference id lists, ~1 MB pickled for RSNA) goes to each worker
        # once, not with every chunk: per chunk it cost ~15 ms of pickling and a second core's share.
        # Never more processes than chunks to do: `--workers 500` on a small dataset would fork 500
        # idle interpreters (the fork start method launches all of them up front).
        n_processes = min(workers, len(todo))
        with ProcessPoolExecutor(n_processes, initializer=_set_worker_adapter, initargs=(adapter,)) as pool:
            futures = [pool.submit(_process_chunk_in_worker, job, size, strict) for job in todo]
            try:
                for job, future in zip(todo, futures):
                    future.result()
                    done += len(job.samples)
                    if on_progress:
                        on_progress(done, total)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    else:
        for job in todo:
            _process_chunk(adapter, job, size, strict)
            done += len(job.samples)
            if on_progress:
                on_progress(done, total)


def _reuse(adapter: DatasetAdapter, out_root: Path, raw_root: Path, settings: dict) -> PrepareSummary:
    """An existing cache is reused only when it is what this call would write; otherwise say why."""
    meta = read_marker(out_root)
    rebuild = rebuild_command(out_root, meta, raw_root)
    recorded = meta.get("config")
    if recorded != settings["config"]:
        if not isinstance(recorded, dict) or recorded.get("format_version") != FORMAT_VERSION:
            version = recorded.get("format_version") if isinstance(recorded, dict) else None
            reason = f"was written by another cxrbench version (cache format {version}, this one writes {FORMAT_VERSION})"
        else:
            diffs = [
                f"{k} {recorded.get(k)!r} there, {v!r} here"
                for k, v in settings["config"].items()
                if recorded.get(k) != v
            ]
            reason = f"was made with other settings ({'; '.join(diffs)})"
        raise CxrbenchError(
            f"{out_root} {reason}; nothing was changed. Replace it with `{rebuild}` or choose another output folder"
        )
    if meta.get("raw") != settings["raw"]:
        then, now = meta.get("raw") or {}, settings["raw"]
        raise CxrbenchError(
            f"the files under {raw_root} changed since {out_root} was prepared ({then.get('files')} files, "
            f"{then.get('bytes')} bytes then; {now['files']} files, {now['bytes']} bytes now); nothing was "
            f"changed. Rebuild the cache from the current files with `{rebuild}`"
        )
    skipped = meta.get("skipped", {})
    if settings["strict"] and (skipped.get("rows") or skipped.get("images")):
        first = (meta.get("problems") or ["(not recorded)"])[0]
        raise CxrbenchError(
            f"{out_root} was prepared skipping {skipped.get('rows', 0)} rows and {skipped.get('images', 0)} "
            f"images, which --strict refuses (first: {first}); fix the raw data, then run `{rebuild} --strict`"
        )
    return _with_split_facts(PrepareSummary(adapter.name, out_root, meta["counts"], reused=True), meta)


def _start_partial(partial: Path, ours: bool, settings: dict) -> None:
    """Resume an interrupted run's chunks only when it used identical settings; else start afresh."""
    marker = partial / IN_PROGRESS
    if ours:
        try:
            same = read_json(marker) == settings
        except (OSError, ValueError):
            same = False
        if same:
            return
        shutil.rmtree(partial)  # claimed by its marker: an interrupted cxrbench prepare, other settings
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, settings)


def _summary_from_marker(adapter: DatasetAdapter, partial: Path, meta: dict) -> PrepareSummary:
    skipped = meta.get("skipped", {})
    summary = PrepareSummary(
        adapter.name,
        partial,
        meta["counts"],
        skipped_rows=int(skipped.get("chunk_rows", 0)),
        skipped_images=int(skipped.get("images", 0)),
    )
    return _with_split_facts(summary, meta)


def _with_split_facts(summary: PrepareSummary, meta: dict) -> PrepareSummary:
    """Copy what prepared.json records of the split and the clipped boxes into a summary."""
    summary.split = SplitIdentity.from_dict(meta.get("split"))
    summary.clipped_boxes = int(meta.get("clipped_boxes", 0))
    summary.patients_in_several_splits = int(meta.get("patients_in_several_splits", 0))
    return summary


def _assemble(
    adapter,
    samples,
    assignment: Assignment,
    jobs: list[ChunkJob],
    partial: Path,
    settings: dict,
    raw_root: Path,
    out_root: Path,
    listed,
) -> PrepareSummary:
    """Gather the chunks into per-split arrays, compute stats, write manifest and marker."""
    config = settings["config"]
    source = {"dataset": adapter.name, "size": config["size"], "raw_dir": str(raw_root.resolve())}
    counts, split_meta, problems = {}, {}, []
    manifest: dict = {"splits": {}, "subsets": {}, "source": source}
    skipped_images = clipped = 0
    train_levels = np.zeros(256, dtype=np.int64)
    for split, indices in assignment.splits.items():
        chunk_jobs = [j for j in jobs if j.split == split]
        parts = [np.load(j.path, allow_pickle=False) for j in chunk_jobs]
        ok = np.concatenate([p["ok"] for p in parts]) if parts else np.zeros(0, bool)
        for p in parts:
            problems += [_decode_problem(t) for t in p["problems"]]
        skipped_images += int((~ok).sum())
        clipped += sum(int(p["n_clipped"]) for p in parts)
        kept = [samples[i] for i, good in zip(indices, ok) if good]
        n_boxes = np.concatenate([p["n_boxes"] for p in parts]) if parts else np.zeros(0, np.int64)
        arrays, pixels = {}, chunk_jobs[0].images_path
        if not ok.all():  # skipped images left zero rows: the kept ones are copied out, in order
            kept_pixels = pixels.with_name(f"{split}_images_kept.npy")
            copy_kept_rows(pixels, kept_pixels, ok)
            pixels = kept_pixels
        placed = {"images.npy": pixels}  # the split's array is the file: linked into place, not copied
        if adapter.has_masks:
            arrays["masks.npy"] = np.concatenate([p["masks"] for p in parts])
        if adapter.has_boxes:
            arrays["boxes.npy"] = np.concatenate([p["boxes"] for p in parts]).astype(np.float32)
            arrays["box_labels.npy"] = np.concatenate([p["labels"] for p in parts])
            arrays["box_offsets.npy"] = np.concatenate([[0], np.cumsum(n_boxes)]).astype(np.int64)
        meta, files = write_split(adapter, partial / split, arrays, kept, placed)
        ids = meta["image_ids"]
        split_meta[split] = meta
        counts[split] = len(ids)
        manifest["splits"][split] = {"count": len(ids), "ids_sha256": ids_hash(ids), "files": files}
        if split == "train":  # the workers counted each chunk's grey levels
            train_levels = sum((p["level_counts"] for p in parts), train_levels)
    subsets = {}
    if "train" in counts:
        train_ids = split_meta["train"]["image_ids"]
        subsets, manifest["subsets"] = subset_records(adapter, assignment.scheme, train_ids, config["seed"])
    split_record = _split_record(adapter, assignment, counts, skipped_images, config["seed"])
    several = patients_in_several_splits({k: v["patient_ids"] for k, v in split_meta.items()})
    manifest["split"] = {**split_record, "patients_in_several_splits": several}
    mean, std = pixel_stats(train_levels)
    atomic_write_json(partial / "manifest.json", manifest)
    summary = PrepareSummary(adapter.name, partial, counts, skipped_images=skipped_images, problems=problems)
    summary.skipped_rows = len([p for p in problems if "row skipped" in p.message])
    all_problems = listed.items + problems
    marker = {
        "config": config,
        "raw": settings["raw"],
        "strict": settings["strict"],
        "raw_dir": source["raw_dir"],
        "rebuild": rebuild_command(out_root, source),
        "dataset": adapter.name,
        "classes": list(adapter.classes),
        "size": config["size"],
        "counts": counts,
        "subsets": {"train": subsets},
        "stats": {"mean": float(mean), "std": float(std)},
        "has_masks": adapter.has_masks,
        "has_boxes": adapter.has_boxes,
        "split": split_record,
        "patients_in_several_splits": several,
        "clipped_boxes": clipped,
        "skipped": {
            "rows": len(listed) + summary.skipped_rows,
            "images": skipped_images,
            "chunk_rows": summary.skipped_rows,
        },
        "problems": [str(p) for p in all_problems[:MAX_PROBLEMS_KEPT]],
        "expected_counts": adapter.expected_counts,
        "excluded_by_design": dict(adapter.info),
        "provenance": provenance(),
    }
    shutil.rmtree(partial / "chunks", ignore_errors=True)
    atomic_write_json(partial / MARKER, marker)
    return _with_split_facts(summary, marker)


def write_split(
    adapter: DatasetAdapter,
    split_dir: Path,
    arrays: dict[str, np.ndarray],
    kept: list[RawSample],
    placed: dict[str, Path] | None = None,
) -> tuple[dict, dict]:
    """Write one split's arrays, text columns and meta.json; return (meta, the manifest's file records).

    `placed`: arrays already written as .npy files elsewhere (name -> file), linked into place.
    Public so that `benchmarks/bench_mimic_open.py` writes a full-size cache through this writer.
    """
    split_dir.mkdir(exist_ok=True)
    for stray in split_dir.glob(".*.tmp"):  # an atomic write's temporary file, left by a killed run
        stray.unlink()
    files = {}
    for name, source in (placed or {}).items():
        atomic_link(source, split_dir / name)
        files[name] = array_record(split_dir / name, np.load(split_dir / name, mmap_mode="r"))
    for name, array in arrays.items():
        atomic_save_npy(split_dir / name, array)
        files[name] = array_record(split_dir / name, array)
    meta: dict = {"image_ids": [s.image_id for s in kept], "patient_ids": [s.patient_id for s in kept]}
    if adapter.text_fields:
        meta["text_fields"] = {}
    if adapter.code_fields:
        meta["code_fields"] = {}
    for name in adapter.extra_fields:
        values = [s.extra.get(name) for s in kept]
        if name in adapter.code_fields:
            labels = adapter.code_fields[name]
            meta["code_fields"][name] = list(labels)
            codes = write_codes(split_dir, name, labels, values)
            files[code_file(name)] = array_record(split_dir / code_file(name), codes)
        elif name in adapter.text_fields:
            meta["text_fields"][name] = write_column(split_dir, name, values)
            for file in column_files(name, meta["text_fields"][name]):
                files[file] = file_record(split_dir / file)
        else:
            meta[name] = values
    atomic_write_json(split_dir / "meta.json", meta)
    files["meta.json"] = file_record(split_dir / "meta.json")
    return meta, files


def subset_records(
    adapter: DatasetAdapter, scheme: str, train_ids: list[str], seed: int
) -> tuple[dict[str, list[int]], dict[str, dict]]:
    """The nested train subsets: (positions per percent for prepared.json, entries for manifest.json)."""
    subsets, manifest = {}, {}
    for key, idx in train_subsets(adapter, scheme, train_ids, seed).items():
        subsets[key] = idx.tolist()
        ids = [train_ids[i] for i in idx]
        manifest[f"train_{key}pct"] = {"count": len(ids), "ids_sha256": ids_hash(ids), "image_ids": ids}
    return subsets, manifest


def _split_record(
    adapter: DatasetAdapter, assignment: Assignment, counts: dict[str, int], skipped_images: int, seed: int
) -> dict:
    """What prepared.json and manifest.json say of the split: the identity runs carry, and more.

    A reference split is a subset when the download was a phantom, or when listed ids were missing
    or skipped (so the test images are not exactly the published ones)."""
    from cxrbench.datasets.reference_splits import all_reference_lists_sha256, reference_lists_sha256

    if assignment.scheme != REFERENCE:
        identity = SplitIdentity(assignment.scheme, None, False, seed)
        return {**identity.as_dict(), "description": identity.describe()}
    subset = assignment.phantom or assignment.missing > 0 or skipped_images > 0
    identity = SplitIdentity(REFERENCE, all_reference_lists_sha256(), subset, seed)
    return {
        **identity.as_dict(),
        "description": identity.describe(),
        "dataset_lists_sha256": reference_lists_sha256(adapter.name),
        "phantom": assignment.phantom,
        "listed_ids_missing": assignment.missing,
        "counts": dict(counts),
        "subsets_rule": "nested prefixes of one permutation of the reference train list, seeded with "
        f"seed + 1 = {seed + 1}",
    }


def _swap_into_place(partial: Path, out_root: Path) -> None:
    """Replace `out_root` (absent, empty, or a cxrbench cache) by the finished `partial` with renames.

    The old cache is first renamed to a fresh hidden name that no user file can have, so nothing
    but cxrbench's own output is ever deleted.
    """
    for leftover in out_root.parent.glob(f".{out_root.name}.replaced-*"):
        if (leftover / MARKER).is_file():  # an old cache whose removal a killed run did not finish
            shutil.rmtree(leftover)
    old = None
    if out_root.is_dir() and not any(out_root.iterdir()):
        out_root.rmdir()
    elif out_root.exists():
        old = out_root.with_name(f".{out_root.name}.replaced-{uuid.uuid4().hex[:12]}")
        os.rename(out_root, old)
    os.rename(partial, out_root)
    (out_root / IN_PROGRESS).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old)
