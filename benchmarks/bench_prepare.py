"""`cxrbench prepare rsna` throughput at the real RSNA size: images/s per run and per worker.

Writes N (default 26,684, the whole RSNA stage-2 training set) 1024x1024 JPEG Baseline DICOMs in the
RSNA raw layout (`stage_2_train_images/<patientId>.dcm` + `stage_2_train_labels.csv`), then runs
`cxrbench prepare rsna RAW OUT` with the default options (224 px, `--splits reference`) once per
`--workers` value, timed from outside as a user would see it, and prints images/s per run and per
worker with the load average around each run (the figures mean little on a busy machine).

The stand-ins come from the RSNA phantom (`cxrbench.datasets.phantom.rsna.write`, real reference
ids, JPEG Baseline via Pillow like the real download): `--distinct` studies are rendered, and every
one of the N patients gets a copy of one of the JPEG ones (round-robin) with its own PatientID and
SOPInstanceUID, so each file is decoded on its own while writing stays quick. Below the full size
the folder is marked as a phantom (`cxrbench-phantom.json`), so the reference lists are restricted
to the ids present, exactly as for `cxrbench phantom rsna --n-images N`. `--content flat` replaces
every frame by one flat-grey JPEG (the kind of stand-in the issue's outside figure used): the phantom's
noisy texture makes its frames larger and slower to decode than a real radiograph's, the flat frame
faster, so the two bracket the real files.

`--per-image K` times `process_sample` (one image's decode, scaling and resize) on K stand-ins in
this process, in CPU and wall ms. `--profile K` runs prepare in this process on one worker under
cProfile on K more stand-ins and prints where the time goes, by stage and by function. At the full
size the phantom stand-ins take about 9 GB of disk (340 KiB each) and a few minutes to write; where
that is more than the page cache keeps, later runs read them from disk and measure the disk (the CPU
figure printed with each run shows it: cores busy well below the worker count). Flat-grey ones take
350 MB.

    python benchmarks/bench_prepare.py [--n-images 26684] [--workers 1 2] [--profile 256] [--per-image 200]
                                       [--content phantom|flat] [--out DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from cxrbench.datasets.phantom import rsna as phantom_rsna
from cxrbench.datasets.phantom.ids import sample_reference_ids
from cxrbench.datasets.reference_splits import reference_split_ids
from cxrbench.datasets.rsna import IMAGES, LABELS
from cxrbench.datasets.split_scheme import PHANTOM_MARKER
from cxrbench.io_utils import atomic_write_json

COLUMNS = ["patientId", "x", "y", "width", "height", "Target"]
# (label, file the function is in ("~": a builtin), its name[@caller's name], own time only?): where
# prepare's time goes. Pillow's decoder objects also copy arrays into images (called by `frombytes`),
# so the JPEG decode is the part called by `load`.
STAGES = (
    ("process_sample (one image, all of it)", "prepare.py", "process_sample", False),
    ("  read_dicom_scaled (parse + decode + scale)", "dicom_io.py", "read_dicom_scaled", False),
    ("    pydicom.dcmread (header and bytes)", "filereader.py", "dcmread", False),
    ("    JPEG decode (Pillow)", "~", "<method 'decode' of 'ImagingDecoder' objects>@load", True),
    (
        "    scale to [0, 1] (Pillow point)",
        "~",
        "<method 'point' of 'ImagingCore' objects>",
        True,
    ),
    ("  SquareResize.image (pad + resize)", "geometry.py", "image", False),
    ("    resize (Pillow, antialiased bilinear)", "~", "<method 'resize' of 'ImagingCore' objects>", True),
    ("    float array into Pillow (other paths)", "~", "<built-in method PIL._imaging.fill>", True),
    ("  boxes_to_masks", "geometry.py", "boxes_to_masks", False),
    ("chunk .npz writes (np.savez)", "_npyio_impl.py", "savez", False),
    ("_assemble (concatenate, hash, stats, json)", "prepare.py", "_assemble", False),
    ("list_samples (labels CSV)", "rsna.py", "list_samples", False),
    ("raw_listing (stat of every raw file)", "raw_listing.py", "raw_listing", False),
)


def cxrbench_command() -> list[str]:
    script = Path(sys.executable).with_name("cxrbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cxrbench"]


def flat_grey_frame(side: int = 1024, level: int = 128) -> bytes:
    """One flat-grey JPEG Baseline frame (quality 95, as the phantom writes): the cheapest to decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), level, np.uint8), mode="L").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_standins(raw: Path, n: int, distinct: int, seed: int = 0, content: str = "phantom") -> int:
    """The RSNA raw layout with `n` patients (see the module docstring); returns the image count."""
    pool = raw.with_name(raw.name + ".pool")
    phantom_rsna.write(pool, min(distinct, n), seed)
    with open(pool / LABELS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    sources: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        sources.setdefault(row["patientId"], []).append(row)
    jpeg = [
        pid
        for pid in sources
        if pydicom.dcmread(pool / IMAGES / f"{pid}.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID
        == JPEGBaseline8Bit
    ]
    ids = [i for split_ids in sample_reference_ids("rsna", n, seed).values() for i in split_ids]
    (raw / IMAGES).mkdir(parents=True)
    labels = []
    flat = encapsulate([flat_grey_frame()]) if content == "flat" else None
    for k, pid in enumerate(ids):
        source = jpeg[k % len(jpeg)]
        ds = pydicom.dcmread(pool / IMAGES / f"{source}.dcm")
        if flat is not None:
            if (ds.Rows, ds.Columns) != (1024, 1024):
                raise SystemExit(f"phantom study {source} is {ds.Rows}x{ds.Columns}, not 1024x1024")
            ds.PixelData = flat
        ds.PatientID = ds.PatientName = pid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(raw / IMAGES / f"{pid}.dcm", enforce_file_format=True)
        labels += [[pid, *(row[c] for c in COLUMNS[1:])] for row in sources[source]]
    with open(raw / LABELS, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(labels)
    if len(ids) < sum(len(v) for v in reference_split_ids("rsna").values()):
        atomic_write_json(raw / PHANTOM_MARKER, {"dataset": "rsna", "n_images": len(ids), "seed": seed})
    shutil.rmtree(pool)
    return len(ids)


def run_prepare(raw: Path, out: Path, workers: int) -> tuple[float, float, tuple[float, float]]:
    """Wall and CPU seconds (the command and its workers) of one `cxrbench prepare rsna`, and the
    1-minute load average before and after. CPU well below workers x wall means the run waited on
    the disk (stand-ins that do not fit the page cache), and the figure measures the disk."""
    before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [*cxrbench_command(), "prepare", "rsna", str(raw), str(out), "--workers", str(workers)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return wall, cpu, (before, os.getloadavg()[0])


def profile_prepare(raw: Path, out: Path, top: int = 25) -> None:
    """prepare() in this process on one worker under cProfile; prints the largest own-time entries."""
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.prepare import prepare

    profiler = cProfile.Profile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        profiler.enable()
        summary = prepare(get_adapter("rsna"), raw, out, workers=1)
        profiler.disable()
        wall = time.perf_counter() - start
    n = sum(summary.counts.values())
    print(f"profile: {n} images on one worker in {wall:.2f} s ({n / wall:.1f} images/s under cProfile)")
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)
    print("  stage (cumulative time; stages nest)            s   ms/image  share")
    for label, where, name, own in STAGES:
        name, _, caller = name.partition("@")
        seconds = 0.0
        for (file, _, func), (_, _, tt, ct, callers) in stats.stats.items():
            if func == name and file.endswith(where):
                if caller:
                    parts = [v for (_, _, by), v in callers.items() if by == caller]
                    tt, ct = sum(v[2] for v in parts), sum(v[3] for v in parts)
                seconds += tt if own else ct
        print(f"  {label:<44} {seconds:6.2f} {seconds / n * 1000:8.2f}  {seconds / total:5.1%}")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-6000:])


def time_per_image(raw: Path, k: int) -> tuple[float, float]:
    """CPU and wall ms per image of `process_sample` (decode, scale, resize, boxes) on `k` stand-ins.

    CPU time is what a busy machine disturbs least: it tells code changes apart where images/s cannot.
    """
    from cxrbench.datasets import get_adapter
    from cxrbench.datasets.base import Problems
    from cxrbench.datasets.prepare import process_sample

    adapter = get_adapter("rsna")
    samples = adapter.list_samples(raw, Problems())[:k]
    for sample in samples[:3]:  # warm up: imports, first allocations
        process_sample(adapter, sample, 224, Problems())
    cpu, wall = time.process_time(), time.perf_counter()
    for sample in samples:
        process_sample(adapter, sample, 224, Problems())
    return (time.process_time() - cpu) / len(samples) * 1000, (time.perf_counter() - wall) / len(
        samples
    ) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=26_684, help="Patients (one DICOM each).")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2], help="Worker counts to time (none: skip)."
    )
    parser.add_argument("--distinct", type=int, default=64, help="Phantom studies rendered (then copied).")
    parser.add_argument(
        "--content",
        choices=("phantom", "flat"),
        default="phantom",
        help="Pixels of the stand-ins: the phantom's (textured, ~340 KiB, slow to decode) or flat grey.",
    )
    parser.add_argument("--profile", type=int, default=0, help="Also profile prepare on this many images.")
    parser.add_argument("--per-image", type=int, default=0, help="Also time one image's work on this many.")
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temp dir, removed).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = args.out or Path(tmp)
        raw = work / "rsna_raw"
        start = time.perf_counter()
        n = write_standins(raw, args.n_images, args.distinct, content=args.content)
        files = list((raw / IMAGES).iterdir())
        mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        print(
            f"wrote {n} 1024x1024 {args.content} JPEG DICOMs ({mean_kb:.0f} KiB each on average) in "
            f"{time.perf_counter() - start:.0f} s; {os.cpu_count()} CPUs"
        )
        if args.per_image:
            cpu, wall = time_per_image(raw, args.per_image)
            print(
                f"process_sample on {args.per_image} images, one process: {cpu:.2f} ms CPU, {wall:.2f} ms wall per image"
            )
        if args.profile:
            sub = work / "rsna_profile_raw"
            write_standins(sub, min(args.profile, n), args.distinct, content=args.content)
            profile_prepare(sub, work / "rsna_profile_prepared")
        for workers in args.workers:
            out = work / f"rsna_prepared_w{workers}"
            wall, cpu, (before, after) = run_prepare(raw, out, workers)
            counts = json.loads((out / "prepared.json").read_text())["counts"]
            done = sum(counts.values())
            print(
                f"--workers {workers}: {done} images in {wall:.1f} s = {done / wall:.1f} images/s, "
                f"{done / wall / workers:.1f} per worker; CPU {cpu:.0f} s = {cpu / wall:.2f} cores busy "
                f"(load average {before:.2f} before, {after:.2f} after)"
            )
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
