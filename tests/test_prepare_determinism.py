"""Prepare's output does not depend on how it is computed: worker count, or the DICOM decoding path."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrbench.datasets import get_adapter
from cxrbench.datasets.dicom_io import _baseline_greyscale, read_dicom_image, read_dicom_scaled
from cxrbench.datasets.geometry import SquareResize
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import CHUNK_SIZE, level_counts, pixel_stats, prepare

# prepared.json entries that name the run, not the content: when, by what, and the output path.
RUN_KEYS = ("provenance", "rebuild")


@pytest.fixture(scope="module")
def rsna(tmp_path_factory) -> Path:
    return write_phantom("rsna", tmp_path_factory.mktemp("raw") / "rsna", n_images=CHUNK_SIZE + 30, seed=5)


def cache_contents(root: Path) -> dict[str, bytes]:
    """Every file's bytes, prepared.json without its run entries."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "prepared.json":
            meta = json.loads(data)
            assert set(RUN_KEYS) <= set(meta)
            data = json.dumps({k: v for k, v in meta.items() if k not in RUN_KEYS}, sort_keys=True).encode()
        out[str(path.relative_to(root))] = data
    return out


def test_one_and_two_workers_write_identical_caches(rsna, tmp_path):
    caches = {}
    for workers in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = prepare(get_adapter("rsna"), rsna, tmp_path / f"w{workers}", size=64, workers=workers)
        caches[workers] = cache_contents(summary.out_root)
    assert sum(json.loads(caches[1]["prepared.json"])["counts"].values()) == CHUNK_SIZE + 30
    assert caches[1].keys() == caches[2].keys() and "train/images.npy" in caches[1]
    assert [name for name in caches[1] if caches[1][name] != caches[2][name]] == []


def test_pillow_paths_give_pydicoms_pixels_and_the_same_prepared_image(rsna):
    """The direct Pillow decode equals pydicom's pixel_array; the "F" image prepare resizes holds the
    values of the float formula on them; resizing it equals resizing that array."""
    checked = 0
    geometry = SquareResize(1024, 1024, 224)
    for path in sorted((rsna / "stage_2_train_images").glob("*.dcm"))[:6]:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        expected = np.clip((pixels.astype(np.float32) - 0.0) / 255.0, 0.0, 1.0)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            expected = 1.0 - expected
        scaled, image = read_dicom_scaled(path), read_dicom_image(path)
        np.testing.assert_array_equal(image, expected)
        assert image.dtype == np.float32 and image.flags.c_contiguous and image.flags.writeable
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit:
            np.testing.assert_array_equal(np.asarray(_baseline_greyscale(ds)), pixels)
            assert isinstance(scaled, Image.Image) and scaled.mode == "F"
            np.testing.assert_array_equal(np.asarray(scaled), expected)
            np.testing.assert_array_equal(geometry.image(scaled), geometry.image(expected))
            checked += 1
        else:  # the phantom's uncompressed MONOCHROME1 image: pydicom decodes it
            assert _baseline_greyscale(ds) is None and isinstance(scaled, np.ndarray)
    assert checked >= 4


def test_pixel_stats_are_the_exact_mean_and_std_of_the_train_pixels(rng=np.random.default_rng(3)):
    images = rng.integers(0, 256, (7, 33, 29), dtype=np.uint8)
    images[0] = 255  # a skewed histogram, not only uniform noise
    mean, std = pixel_stats(level_counts(images))
    values = images.astype(np.float64) / 255.0
    assert mean == pytest.approx(values.mean(), rel=1e-14) and std == pytest.approx(values.std(), rel=1e-12)
    # Counting is order- and chunk-free: any split of the images sums to the same counts, and stats.
    assert pixel_stats(level_counts(images[:3]) + level_counts(images[3:][::-1])) == (mean, std)
    assert pixel_stats(level_counts([])) == (0.5, 0.25)
    assert pixel_stats(level_counts([np.full((4, 4), 9, np.uint8)])) == (9 / 255, pytest.approx(1e-6))


def _prepare(raw: Path, out: Path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(get_adapter("rsna"), raw, out, size=64, **options)


def test_prepared_stats_come_from_the_train_images(rsna, tmp_path):
    root = _prepare(rsna, tmp_path / "p").out_root
    stats = json.loads((root / "prepared.json").read_text())["stats"]
    train = np.load(root / "train" / "images.npy")
    assert (stats["mean"], stats["std"]) == pixel_stats(level_counts(train))


def test_split_arrays_are_the_files_np_save_writes_and_skipped_images_leave_no_rows(rsna, tmp_path):
    """The workers' memory-mapped split array, linked into place, has np.save's exact bytes; with
    images skipped, the kept rows are copied out in order and equal those of a clean prepare."""
    clean = _prepare(rsna, tmp_path / "clean").out_root
    for split in ("train", "val", "test"):
        path = clean / split / "images.npy"
        buffer = io.BytesIO()
        np.save(buffer, np.load(path), allow_pickle=False)
        assert path.read_bytes() == buffer.getvalue()
    raw = tmp_path / "raw"
    shutil.copytree(rsna, raw)
    broken = sorted((raw / "stage_2_train_images").glob("*.dcm"))[::9]
    for path in broken:
        path.write_bytes(path.read_bytes()[:300])
    damaged = _prepare(raw, tmp_path / "damaged").out_root
    skipped = 0
    for split in ("train", "val", "test"):
        rows = {
            i: k for k, i in enumerate(json.loads((clean / split / "meta.json").read_text())["image_ids"])
        }
        ids = json.loads((damaged / split / "meta.json").read_text())["image_ids"]
        images, reference = np.load(damaged / split / "images.npy"), np.load(clean / split / "images.npy")
        assert len(images) == len(ids) and images.any(axis=(1, 2)).all()
        np.testing.assert_array_equal(images, reference[[rows[i] for i in ids]])
        skipped += len(rows) - len(ids)
    assert skipped == len(broken)


def test_a_damaged_split_array_redoes_that_splits_chunks(rsna, tmp_path, monkeypatch):
    """Resuming with a split's pixel array gone or cut short recomputes that split's chunks (whose
    pixels were in it) and only those; a killed atomic write's temporary file is not carried into
    the cache; the result equals an uninterrupted prepare."""
    import cxrbench.datasets.prepare as prep

    whole = _prepare(rsna, tmp_path / "whole").out_root
    done = []
    original = prep._process_chunk
    monkeypatch.setattr(prep, "_process_chunk", lambda *a: done.append(a[1]) or original(*a))
    monkeypatch.setattr(prep, "_assemble", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _prepare(rsna, tmp_path / "resumed")
    chunks = tmp_path / "resumed.partial" / "chunks"
    with open(chunks / "val_images.npy", "r+b") as fh:
        fh.truncate(200)
    stray = tmp_path / "resumed.partial" / "train" / ".images.npy.k1ll3d.npy.tmp"  # a killed atomic write's
    stray.parent.mkdir()
    stray.write_bytes(b"half")
    monkeypatch.undo()
    redone = []
    monkeypatch.setattr(prep, "_process_chunk", lambda *a: redone.append(a[1].split) or original(*a))
    resumed = _prepare(rsna, tmp_path / "resumed").out_root
    assert redone and set(redone) == {"val"} and len(redone) == sum(j.split == "val" for j in done)
    assert cache_contents(resumed) == cache_contents(whole)
