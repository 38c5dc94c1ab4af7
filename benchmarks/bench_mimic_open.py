"""Opening a prepared MIMIC-CXR cache of 230,000 reports: wall time and peak memory (target < 1 s, < 300 MB).

Writes a phantom *prepared* MIMIC-CXR cache at full size, then opens it in a fresh process the way
pre-training does (`open_prepared` with its manifest checks, the train split, its `sentences` and
`report` and `chexpert` columns, and the 30% subset) and reads a few random images' text and codes. Prints the
open time, the time to read the samples, and the process's peak RSS (VmHWM, Linux) with the
part added after importing cxrbench.

Fast path, said plainly: decoding 230,000 images is not what this measures, so the raw download is
not written and `cxrbench prepare` is not run. The cache is written through prepare's own split
writer (`prepare.write_split`: text columns, meta.json, manifest file records) and subset writer
(`prepare.subset_records`), with reports, sentences and CheXpert labels made by the MIMIC phantom's
report generator (`phantom.mimic_cxr.describe`/`report_text`, parsed by `reports.parse_report`) and
a blank `--size 32` image array (opening memory-maps images, so their size does not matter here).
To keep writing quick, `--distinct` studies are generated and reused round-robin; every image still
gets its own ids. The reader check compares the reports read back with those given to the writer.

    python benchmarks/bench_mimic_open.py [--n-reports 230000] [--runs 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrbench.datasets.base import RawSample
from cxrbench.datasets.mimic_cxr import CHEXPERT_CODES, MimicCXRAdapter
from cxrbench.datasets.phantom.mimic_cxr import CHEXPERT, describe, draw_findings, report_text
from cxrbench.datasets.prepare import prepare_config, subset_records, write_split
from cxrbench.datasets.prepared import MARKER
from cxrbench.datasets.reports import parse_report
from cxrbench.datasets.split_scheme import OFFICIAL, SplitIdentity
from cxrbench.datasets.splits import DEFAULT_SEED, ids_hash
from cxrbench.io_utils import atomic_write_json

# MIMIC-CXR-JPG's official split of its ~243,000 frontal images is about 97.8/0.8/1.4 % (train/val/test).
FRACTIONS = {"train": 0.978, "val": 0.008, "test": 0.014}
SIZE = 32  # the smallest prepared side: the image array is memory-mapped, never read on open
READS = 20  # random images whose report and sentences are read after opening


def report_pool(n: int, seed: int) -> list[dict]:
    """`n` phantom studies: report text, sentences and raw CheXpert codes, as the adapter stores them."""
    rng = np.random.default_rng(seed)
    pool = []
    while len(pool) < n:
        findings, impression, labels = describe(draw_findings(rng), rng)
        parsed = parse_report(report_text(findings, impression, "CHEST (PA AND LAT)", "Chest PA", rng))
        chexpert = {c: CHEXPERT_CODES[labels[c]] for c in CHEXPERT}
        pool.append({"report": parsed.text, "sentences": parsed.sentences, "chexpert": chexpert})
    return pool


def samples(n: int, distinct: int, seed: int) -> dict[str, list[RawSample]]:
    """`n` frontal images with reports, per official split (ids unique; studies reused round-robin)."""
    pool = report_pool(min(distinct, n), seed)
    counts = {"val": max(1, round(n * FRACTIONS["val"])), "test": max(1, round(n * FRACTIONS["test"]))}
    counts = {"train": n - counts["val"] - counts["test"], **counts}
    out: dict[str, list[RawSample]] = {}
    k = 0
    for split, count in counts.items():
        out[split] = []
        for _ in range(count):
            study = pool[k % len(pool)]
            subject, study_id = str(10_000_000 + k // 3), str(50_000_000 + k)
            extra = {**study, "study_id": study_id, "view": "PA" if k % 3 else "AP"}
            out[split].append(
                RawSample(f"{k:08x}-phantom-{seed:04d}", subject, Path("/nonexistent.jpg"), extra=extra)
            )
            k += 1
    return out


def write_cache(root: Path, n: int, distinct: int, seed: int) -> dict[str, list[RawSample]]:
    """A prepared MIMIC-CXR cache at `root` through prepare's writers (see the module docstring)."""
    adapter = MimicCXRAdapter()
    per_split = samples(n, distinct, seed)
    root.mkdir(parents=True)
    manifest: dict = {"splits": {}, "subsets": {}, "source": {"dataset": adapter.name, "size": SIZE}}
    counts = {}
    for split, kept in per_split.items():
        images = np.zeros((len(kept), SIZE, SIZE), np.uint8)
        meta, files = write_split(adapter, root / split, {"images.npy": images}, kept)
        counts[split] = len(kept)
        ids = meta["image_ids"]
        manifest["splits"][split] = {"count": len(ids), "ids_sha256": ids_hash(ids), "files": files}
    train_ids = [s.image_id for s in per_split["train"]]
    subsets, manifest["subsets"] = subset_records(adapter, OFFICIAL, train_ids, DEFAULT_SEED)
    atomic_write_json(root / "manifest.json", manifest)
    identity = SplitIdentity(OFFICIAL, None, False, DEFAULT_SEED)
    marker = {
        "config": prepare_config(adapter, SIZE, DEFAULT_SEED, OFFICIAL),
        "dataset": adapter.name,
        "classes": [],
        "size": SIZE,
        "counts": counts,
        "subsets": {"train": subsets},
        "stats": {"mean": 0.5, "std": 0.25},
        "has_masks": False,
        "has_boxes": False,
        "split": {**identity.as_dict(), "description": identity.describe()},
        "note": "benchmarks/bench_mimic_open.py: phantom reports, blank images",
    }
    atomic_write_json(root / MARKER, marker)
    return per_split


OPEN_SCRIPT = r"""
import json, random, sys, time
from cxrbench.datasets import open_prepared

def peak_kb():  # VmHWM: this process's own peak RSS (ru_maxrss also counts the parent before exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = peak_kb()
start = time.perf_counter()
data = open_prepared(sys.argv[1])
train = data.split("train")
sentences, reports, codes = (train.field(k) for k in ("sentences", "report", "chexpert"))
subset = data.split("train", 30).field("sentences")
opened = time.perf_counter() - start
rng = random.Random(0)
picks = [rng.randrange(len(train)) for _ in range(int(sys.argv[2]))]
start = time.perf_counter()
read = {str(i): [reports[i], list(sentences[i]), codes[i]] for i in picks}
_ = [subset[i] for i in range(min(len(subset), 5))]
read_s = time.perf_counter() - start
peak = peak_kb()
print(json.dumps({"open_s": opened, "read_s": read_s, "peak_kb": peak, "import_kb": base,
                  "n_train": len(train), "read": read}))
"""


def measure(root: Path, reads: int) -> dict:
    """Open the cache in a fresh interpreter (nothing cached) and return its timings and peak RSS."""
    done = subprocess.run(
        [sys.executable, "-c", OPEN_SCRIPT, str(root), str(reads)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-reports", type=int, default=230_000, help="Frontal images with a report.")
    parser.add_argument("--distinct", type=int, default=5_000, help="Distinct phantom studies generated.")
    parser.add_argument("--runs", type=int, default=3, help="Fresh processes that open the cache.")
    parser.add_argument(
        "--out", type=Path, default=None, help="Write (and keep) the cache under DIR instead of a temp dir."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_mimic_open_") as tmp:
        root = (args.out or Path(tmp)) / "mimic_cxr"
        start = time.perf_counter()
        per_split = write_cache(root, args.n_reports, args.distinct, seed=0)
        print(f"wrote {args.n_reports} reports to {root} in {time.perf_counter() - start:.1f} s")
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.stat().st_size > 1_000_000:
                print(f"  {path.relative_to(root)}: {path.stat().st_size / 1e6:.1f} MB")
        results = [measure(root, READS) for _ in range(args.runs)]
        train = per_split["train"]
        for key, read in results[0]["read"].items():
            given = train[int(key)].extra
            if read != [given["report"], given["sentences"], given["chexpert"]]:
                raise SystemExit(f"image {key}: the report read back differs from the one written")
        print(
            f"read back {READS} random reports, sentence lists and CheXpert codes: identical to those written"
        )
        for r in results:
            print(
                f"  open {r['open_s']:.3f} s, read {READS} images' text {r['read_s'] * 1000:.1f} ms, "
                f"peak RSS {r['peak_kb'] / 1024:.0f} MB ({(r['peak_kb'] - r['import_kb']) / 1024:.0f} MB "
                f"after importing cxrbench), {r['n_train']} train images"
            )
        best = min(r["open_s"] for r in results)
        print(
            f"best open {best:.3f} s (target < 1 s); peak RSS {max(r['peak_kb'] for r in results) / 1024:.0f} MB"
        )


if __name__ == "__main__":
    main()
