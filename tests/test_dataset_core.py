"""Core dataset machinery: geometry, splits, prepare atomicity/resume, manifest, RSNA adapter."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.geometry import SquareResize, boxes_to_masks, check_box, clip_boxes, overhangs
from cxrbench.datasets.imaging import equalize_histogram
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.datasets.splits import nested_subsets, split_by_patient
from cxrbench.errors import CxrbenchError, DataError


def test_square_resize_maps_boxes_like_pixels():
    # A 100 (rows) x 50 (cols) image, pad left/right by 25, scale 224/100.
    geo = SquareResize(height=100, width=50, size=224)
    assert (geo.pad_top, geo.pad_left, geo.scale) == (0, 25, 2.24)
    box = np.array([[10, 20, 30, 60]], np.float32)
    expected = np.array([[(10 + 25) * 2.24, 20 * 2.24, (30 + 25) * 2.24, 60 * 2.24]], np.float32)
    np.testing.assert_allclose(geo.boxes(box), expected, rtol=1e-6)
    # The rasterised transformed box and the resized raw mask agree (up to resampling at edges).
    raw_mask = boxes_to_masks(box, np.array([0]), 1, (100, 50))
    resized = geo.masks(raw_mask)
    direct = boxes_to_masks(geo.boxes(box), np.array([0]), 1, (224, 224))
    assert abs(int(resized.sum()) - int(direct.sum())) < 0.05 * direct.sum()
    assert (resized & direct).sum() > 0.9 * direct.sum()


def test_square_resize_wide_image_pads_top_and_bottom():
    geo = SquareResize(height=40, width=80, size=80)
    image = np.ones((40, 80), np.float32)
    out = geo.image(image)
    assert out.shape == (80, 80)
    assert out[:20].sum() == 0 and out[60:].sum() == 0 and out[20:60].min() == 1.0


def test_check_box_keeps_overhanging_and_reports_outside_and_degenerate():
    assert check_box(np.array([0, 0, 10, 10]), 20, 20) is None
    assert check_box(np.array([-5, 0, 30, 10]), 20, 20) is None  # overhangs: usable, clipped later
    assert overhangs(np.array([-5, 0, 30, 10]), 20, 20) and not overhangs(np.array([0, 0, 20, 20]), 20, 20)
    np.testing.assert_array_equal(clip_boxes(np.array([[-5, 0, 30, 10]]), 20, 20), [[0, 0, 20, 10]])
    assert "entirely outside" in check_box(np.array([25, 0, 30, 10]), 20, 20)
    assert "entirely outside" in check_box(np.array([0, -9, 10, 0]), 20, 20)
    assert "non-positive" in check_box(np.array([5, 5, 5, 9]), 20, 20)


def test_histogram_equalisation_flattens_histogram():
    rng = np.random.default_rng(0)
    image = (rng.beta(2, 8, size=(64, 64))).astype(np.float32)
    eq = equalize_histogram(image)
    assert eq.max() == 1.0 and eq.min() < 0.01
    assert abs(float(np.median(eq)) - 0.5) < 0.05


def _chest_pixels(seed: int, height: int = 320, width: int = 256) -> np.ndarray:
    from cxrbench.datasets.phantom.anatomy import chest

    return chest(np.random.default_rng(seed), height, width).render(np.random.default_rng(seed))


def _as_prepare_sees(kind: str, tmp_path: Path) -> np.ndarray:
    """A phantom chest written in one raw format and decoded by the reader prepare uses for it."""
    from PIL import Image

    from cxrbench.datasets.dicom_io import read_dicom_image, write_dicom
    from cxrbench.datasets.imaging import read_raster
    from cxrbench.datasets.phantom.anatomy import to_uint8, to_uint16

    pixels = _chest_pixels(7)
    if kind == "png8":
        Image.fromarray(to_uint8(pixels), mode="L").save(tmp_path / "a.png")
        return read_raster(tmp_path / "a.png")
    if kind == "jpeg_rgb":
        Image.fromarray(to_uint8(pixels), mode="L").convert("RGB").save(tmp_path / "a.jpg", quality=90)
        return read_raster(tmp_path / "a.jpg")
    if kind == "png16":
        Image.fromarray(to_uint16(pixels, 16).astype(np.uint16)).save(tmp_path / "a.png")
        return read_raster(tmp_path / "a.png")
    if kind == "dicom8":
        write_dicom(tmp_path / "a.dcm", to_uint8(pixels), patient_id="p", jpeg_baseline=True)
        return read_dicom_image(tmp_path / "a.dcm")
    assert kind == "dicom12"
    write_dicom(
        tmp_path / "a.dcm", to_uint16(pixels, 12), patient_id="p", jpeg_baseline=False, bits_stored=12
    )
    return read_dicom_image(tmp_path / "a.dcm")


@pytest.mark.parametrize("kind", ["png8", "jpeg_rgb", "png16", "dicom8", "dicom12"])
def test_histogram_equalisation_equals_skimage_within_one_grey_level(kind, tmp_path):
    exposure = pytest.importorskip("skimage.exposure")
    image = _as_prepare_sees(kind, tmp_path)
    assert image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1
    ours = np.round(equalize_histogram(image) * 255).astype(int)
    theirs = np.round(exposure.equalize_hist(image) * 255).astype(int)
    assert np.abs(ours - theirs).max() <= 1
    assert (ours != theirs).mean() < 0.01


def test_histogram_equalisation_of_flat_and_padded_images_equals_skimage():
    exposure = pytest.importorskip("skimage.exposure")
    flat = np.full((20, 30), 0.4, np.float32)
    padded = np.zeros((300, 300), np.float32)  # a large black border, like pad-to-square
    padded[:, 40:260] = _chest_pixels(3, 300, 220)
    for image in (flat, padded):
        ours = np.round(equalize_histogram(image) * 255)
        theirs = np.round(exposure.equalize_hist(image) * 255)
        assert np.abs(ours - theirs).max() <= 1


def test_split_by_patient_is_seeded_disjoint_and_proportional():
    pids = [f"p{i // 3}" for i in range(300)]
    a = split_by_patient(pids, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    b = split_by_patient(pids, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    c = split_by_patient(pids, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    patients = {k: {pids[i] for i in v} for k, v in a.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert sum(len(v) for v in a.values()) == 300
    assert abs(len(a["train"]) - 180) <= 3


def test_rsna_counts_match_protocol_split():
    pids = [f"p{i}" for i in range(26684)]
    counts = {k: len(v) for k, v in split_by_patient(pids, {"train": 0.6, "val": 0.2, "test": 0.2}).items()}
    assert counts == {"train": 16010, "val": 5337, "test": 5337}
    subsets = nested_subsets(16010, [1, 10])
    assert len(subsets["1"]) == 160 and len(subsets["10"]) == 1601
    assert set(subsets["1"]) <= set(subsets["10"])


@pytest.fixture(scope="module")
def rsna_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rsna_raw") / "rsna"
    write_phantom("rsna", root, n_images=30, seed=3)
    return root


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "rsna"
    shutil.copytree(src, dst)
    return dst


def test_rsna_phantom_verify_prepare_open(rsna_raw, tmp_path):
    adapter = get_adapter("rsna")
    report = adapter.verify(rsna_raw)
    assert report.ok and report.n_samples == 30 and not report.extra
    summary = prepare(adapter, rsna_raw, tmp_path / "p")
    ds = open_prepared(tmp_path / "p")
    assert ds.splits == ("train", "val", "test") and ds.classes == ("opacity",)
    assert sum(summary.counts.values()) == 30
    assert 0 < ds.stats["mean"] < 1 and ds.stats["std"] > 0
    train = ds.split("train")
    assert set(ds.split("train", 10).image_ids) <= set(train.image_ids)
    # boxes agree with the raw CSV under pad+resize (1024 -> 224, square: scale only).
    rows = list(csv.DictReader(open(rsna_raw / "stage_2_train_labels.csv")))
    by_id = {}
    for r in rows:
        if r["Target"] == "1":
            x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
            by_id.setdefault(r["patientId"], []).append([x, y, x + w, y + h])
    checked = 0
    for split in ds.splits:
        s = ds.split(split)
        for i in range(len(s)):
            sample = s[i]
            expected = np.array(by_id.get(sample.image_id, []), np.float32).reshape(-1, 4) * 224 / 1024
            np.testing.assert_allclose(sample.boxes, expected, rtol=1e-5, atol=1e-3)
            assert sample.masks.shape == (1, 224, 224)
            assert sample.masks.any() == (len(expected) > 0)
            checked += 1
    assert checked == 30


def test_monochrome1_is_inverted(rsna_raw, tmp_path):
    """The phantom stores image #1 as MONOCHROME1 (inverted pixels): it must decode like the others."""
    from cxrbench.datasets.dicom_io import read_dicom_header, read_dicom_image

    files = sorted((rsna_raw / "stage_2_train_images").glob("*.dcm"))
    mono1 = [f for f in files if read_dicom_header(f).PhotometricInterpretation == "MONOCHROME1"]
    assert len(mono1) == 1
    img = read_dicom_image(mono1[0])
    # Background (corners) is dark and the body centre bright, as in MONOCHROME2 images.
    assert img[:20, :20].mean() < 0.2 and img[400:600, 480:540].mean() > 0.4


def test_prepare_is_idempotent_and_refuses_other_settings(rsna_raw, tmp_path):
    adapter = get_adapter("rsna")
    prepare(adapter, rsna_raw, tmp_path / "p", size=64)
    assert prepare(adapter, rsna_raw, tmp_path / "p", size=64).reused
    with pytest.raises(CxrbenchError, match="other settings"):
        prepare(adapter, rsna_raw, tmp_path / "p", size=96)
    assert prepare(adapter, rsna_raw, tmp_path / "p", size=96, force=True).counts
    assert open_prepared(tmp_path / "p").size == 96


def _prepare_in_child(raw: str, out: str) -> None:
    prepare(get_adapter("rsna"), raw, out, size=64)


def test_interrupted_prepare_never_looks_complete_and_resumes(rsna_raw, tmp_path, monkeypatch):
    import cxrbench.datasets.prepare as prep

    monkeypatch.setattr(prep, "CHUNK_SIZE", 4)
    out = tmp_path / "p"
    ctx = mp.get_context("fork")
    child = ctx.Process(target=_prepare_in_child, args=(str(rsna_raw), str(out)))
    child.start()
    partial = tmp_path / "p.partial" / "chunks"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(partial.glob("*.npz"))) < 2:
        time.sleep(0.01)
    child.kill()
    child.join()
    assert not (out / "prepared.json").exists()
    with pytest.raises(CxrbenchError, match="not a prepared dataset"):
        open_prepared(out)
    done_before = {p.name for p in partial.glob("*.npz")}
    assert done_before
    calls = []
    original = prep._process_chunk
    monkeypatch.setattr(prep, "_process_chunk", lambda *a: calls.append(a) or original(*a))
    summary = prepare(get_adapter("rsna"), rsna_raw, out, size=64)
    assert sum(summary.counts.values()) == 30
    assert open_prepared(out).size == 64
    assert not (tmp_path / "p.partial").exists()
    n_chunks = sum(-(-n // 4) for n in summary.counts.values())
    assert len(calls) == n_chunks - len(done_before)  # finished chunks were reused, not recomputed


def test_manifest_mismatch_is_detected(rsna_raw, tmp_path):
    prepare(get_adapter("rsna"), rsna_raw, tmp_path / "p", size=64)
    meta_path = tmp_path / "p" / "val" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["image_ids"][0] = "tampered"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CxrbenchError, match="manifest"):
        open_prepared(tmp_path / "p")


def _rewrite_labels(raw: Path, mutate) -> None:
    path = raw / "stage_2_train_labels.csv"
    rows = list(csv.reader(open(path)))
    rows = mutate(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_csv_missing_column_names_file_row_and_expectation(rsna_raw, tmp_path):
    raw = _copy(rsna_raw, tmp_path)
    _rewrite_labels(raw, lambda rows: [r[:5] for r in rows])
    with pytest.raises(DataError) as err:
        prepare(get_adapter("rsna"), raw, tmp_path / "p")
    assert (
        "stage_2_train_labels.csv" in str(err.value)
        and "row 1" in str(err.value)
        and "Target" in str(err.value)
    )


def test_malformed_row_is_counted_or_strict_error(rsna_raw, tmp_path):
    raw = _copy(rsna_raw, tmp_path)

    def corrupt(rows):
        rows.append([rows[1][0], "abc", "1", "2", "3", "1"])
        return rows

    _rewrite_labels(raw, corrupt)
    bad_row = len(list(csv.reader(open(raw / "stage_2_train_labels.csv"))))
    with pytest.warns(UserWarning, match=f"row {bad_row}"):
        summary = prepare(get_adapter("rsna"), raw, tmp_path / "p")
    assert summary.skipped_rows == 1 and any(p.row == bad_row for p in summary.problems)
    with pytest.raises(DataError, match=f"row {bad_row}"):
        prepare(get_adapter("rsna"), raw, tmp_path / "p2", strict=True)


def test_overhanging_box_is_clipped_and_counted_outside_box_reported_with_row(rsna_raw, tmp_path):
    raw = _copy(rsna_raw, tmp_path)
    pid = None

    def outside(rows):
        nonlocal pid
        pid = rows[1][0]
        rows.append([pid, "900", "-50", "400", "400", "1"])  # overhangs right and top: clipped, kept
        rows.append([pid, "1100", "900", "50", "50", "1"])  # entirely outside: reported, skipped
        return rows

    _rewrite_labels(raw, outside)
    n_rows = len(list(csv.reader(open(raw / "stage_2_train_labels.csv"))))
    with pytest.warns(UserWarning, match="entirely outside"):
        summary = prepare(get_adapter("rsna"), raw, tmp_path / "p", size=64)
    assert [p.row for p in summary.problems] == [n_rows]
    assert summary.clipped_boxes == 1 and summary.skipped_rows == 1
    data = open_prepared(tmp_path / "p")
    assert data.meta["clipped_boxes"] == 1
    sample = next(s[i] for s in map(data.split, data.splits) for i in range(len(s)) if s[i].image_id == pid)
    np.testing.assert_allclose(sample.boxes[-1], np.array([900, 0, 1024, 350]) * 64 / 1024, atol=1e-4)
    assert sample.masks[0, 0, 60] and sample.masks[0, 20, 63]  # the clipped box reaches the image edges
    with pytest.raises(DataError, match=f"row {n_rows}"):
        prepare(get_adapter("rsna"), raw, tmp_path / "p2", strict=True)


def test_listed_but_absent_image_and_truncated_dicom(rsna_raw, tmp_path):
    raw = _copy(rsna_raw, tmp_path)
    files = sorted((raw / "stage_2_train_images").glob("*.dcm"))
    files[0].unlink()
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    report = get_adapter("rsna").verify(raw)
    assert str(files[0]) in report.missing
    with pytest.warns(UserWarning):
        summary = prepare(get_adapter("rsna"), raw, tmp_path / "p")
    messages = [str(p) for p in summary.problems]
    assert any("listed but absent" in m and files[0].name in m for m in messages)
    assert any(files[2].name in m and "DICOM" in m for m in messages)
    assert summary.skipped_images == 1 and sum(summary.counts.values()) == 28
    with pytest.raises(DataError):
        prepare(get_adapter("rsna"), raw, tmp_path / "p2", strict=True)


def test_verify_reports_extra_and_missing_annotation(rsna_raw, tmp_path):
    raw = _copy(rsna_raw, tmp_path)
    shutil.copy(
        next((raw / "stage_2_train_images").glob("*.dcm")), raw / "stage_2_train_images" / "stray.dcm"
    )
    report = get_adapter("rsna").verify(raw)
    assert any(p.endswith("stray.dcm") for p in report.extra)
    (raw / "stage_2_train_labels.csv").unlink()
    report = get_adapter("rsna").verify(raw)
    assert not report.ok and any("stage_2_train_labels.csv" in m for m in report.missing)
    with pytest.raises(CxrbenchError, match="expected layout"):
        prepare(get_adapter("rsna"), raw, tmp_path / "p")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(CxrbenchError, match="valid names: rsna"):
        get_adapter("chexpert")


def test_an_id_that_leaves_the_raw_folder_is_a_skipped_row_never_read(rsna_raw, tmp_path, monkeypatch):
    """A patientId like `../../outside` would name a file outside the download: prepare and verify
    report its row and never open that file (a valid DICOM is waiting there)."""
    import cxrbench.datasets.rsna as rsna_module

    raw = _copy(rsna_raw, tmp_path)
    first = sorted((raw / "stage_2_train_images").glob("*.dcm"))[0]
    shutil.copy(first, raw.parent / "outside.dcm")  # where ../../outside.dcm points from the images folder

    def escape(rows):
        rows.append(["../../outside", "", "", "", "", "0"])
        return rows

    _rewrite_labels(raw, escape)
    bad_row = len(list(csv.reader(open(raw / "stage_2_train_labels.csv"))))
    opened = []
    original = rsna_module.read_dicom_scaled
    monkeypatch.setattr(rsna_module, "read_dicom_scaled", lambda p: opened.append(Path(p)) or original(p))
    with pytest.warns(UserWarning, match=f"row {bad_row}.*leaves the raw folder"):
        summary = prepare(get_adapter("rsna"), raw, tmp_path / "p", splits="patient")
    assert sum(summary.counts.values()) == 30 and opened
    assert not any("outside" in str(p) for p in opened)
    report = get_adapter("rsna").verify(raw)
    assert any(p.row == bad_row and "leaves the raw folder" in p.message for p in report.problems)
    assert report.n_samples == 30
