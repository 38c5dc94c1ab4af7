"""SIIM-ACR Pneumothorax: RLE codec, phantom layout, adapter verify/prepare and bad inputs."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.base import Problems
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.datasets.reference_splits import reference_split_ids
from cxrbench.datasets.rle import RLEError, rle_decode, rle_encode
from cxrbench.datasets.split_scheme import patients_in_several_splits
from cxrbench.errors import DataError

N_IMAGES = 30
SIZE = 64
CSV_NAME = "train-rle.csv"


def reference_decode(rle: str, height: int, width: int) -> np.ndarray:
    """An independent, deliberately plain decoder of SIIM's relative column-major RLE."""
    flat = np.zeros(height * width, dtype=bool)
    if rle.strip() != "-1":
        values = [int(v) for v in rle.split()]
        position = 0
        for gap, length in zip(values[0::2], values[1::2]):
            position += gap
            flat[position : position + length] = True
            position += length
    return flat.reshape(width, height).T


def pad_resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """The protocol's geometry by hand: centred zero pad to a square, nearest-neighbour resize."""
    height, width = mask.shape
    side = max(height, width)
    padded = np.zeros((side, side), dtype=bool)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top : top + height, left : left + width] = mask
    source = np.floor((np.arange(size) + 0.5) * side / size).astype(int)
    return padded[source][:, source]


def read_csv_rows(raw: Path) -> list[tuple[int, str, str]]:
    with open(raw / CSV_NAME, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        return [(k, r[0].strip(), r[1].strip()) for k, r in enumerate(reader, start=2)]


def write_csv(raw: Path, rows: list[tuple[str, str]], header: str = "ImageId, EncodedPixels") -> None:
    with open(raw / CSV_NAME, "w", newline="") as fh:
        fh.write(header + "\n")
        fh.writelines(f"{image_id}, {rle}\n" for image_id, rle in rows)


def dicom_paths(raw: Path) -> dict[str, Path]:
    return {p.stem: p for p in (raw / "dicom-images-train").rglob("*.dcm")}


def headers(raw: Path) -> dict[str, pydicom.Dataset]:
    return {k: pydicom.dcmread(p, stop_before_pixels=True) for k, p in dicom_paths(raw).items()}


# ----------------------------------------------------------------------------------------- RLE


def test_rle_hand_built_4x4_is_column_major_and_relative() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 0] = mask[2, 0] = True  # column 0, rows 1-2: flat (column-major) indices 1, 2
    mask[0, 2] = True  # column 2, row 0: index 8
    mask[3, 3] = True  # last pixel: index 15
    # Runs start at 1 (len 2), 8 (len 1), 15 (len 1); gaps count from the previous run's end.
    assert rle_encode(mask) == "1 2 5 1 6 1"
    np.testing.assert_array_equal(rle_decode("1 2 5 1 6 1", 4, 4), mask)
    # Row-major/absolute readings of the same string would paint other pixels.
    assert not rle_decode("1 2 5 1 6 1", 4, 4)[0, 1]
    # A non-square case: H=2, W=3, column-major index = column * H + row.
    wide = np.zeros((2, 3), dtype=bool)
    wide[1, 2] = True  # index 2 * 2 + 1 = 5
    assert rle_encode(wide) == "5 1"
    np.testing.assert_array_equal(rle_decode("5 1", 2, 3), wide)


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (7, 5), (5, 13), (64, 48)])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.7])
def test_rle_round_trip_random_masks(shape: tuple[int, int], density: float) -> None:
    rng = np.random.default_rng([*shape, round(density * 100)])
    for _ in range(5):
        mask = rng.random(shape) < density
        rle = rle_encode(mask)
        np.testing.assert_array_equal(rle_decode(rle, *shape), mask)
        np.testing.assert_array_equal(reference_decode(rle, *shape), mask)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_rle_round_trip_edge_pixels_and_multi_runs(shape: tuple[int, int]) -> None:
    h, w = shape
    cases = []
    for r, c in [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0)]:
        single = np.zeros(shape, dtype=bool)
        single[r, c] = True
        cases.append(single)
    frame = np.zeros(shape, dtype=bool)
    frame[0, :] = frame[-1, :] = frame[:, 0] = frame[:, -1] = True  # many runs, touching both ends
    cases += [frame, np.ones(shape, dtype=bool), ~frame]
    for mask in cases:
        rle = rle_encode(mask)
        np.testing.assert_array_equal(rle_decode(rle, h, w), mask)
    assert rle_encode(np.ones(shape, bool)) == f"0 {h * w}"
    assert len(rle_encode(frame).split()) > 4


def test_rle_empty() -> None:
    assert rle_encode(np.zeros((5, 3), dtype=bool)) == "-1"
    decoded = rle_decode("-1", 5, 3)
    assert decoded.shape == (5, 3) and not decoded.any()
    assert not rle_decode(" -1 ", 5, 3).any()


def test_rle_may_end_exactly_at_the_last_pixel() -> None:
    assert rle_decode("10 6", 4, 4)[:, 3].all()


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ("3 2 1", "odd number"),
        ("-2 3", "negative gap"),
        ("1 -3", "non-positive run length"),
        ("1 0", "non-positive run length"),
        ("1 x", "non-integer"),
        ("10 7", "runs past the end"),
        ("0 4 10 3", "runs past the end"),
    ],
)
def test_rle_malformed(rle: str, match: str) -> None:
    with pytest.raises(RLEError, match=match):
        rle_decode(rle, 4, 4)


# ------------------------------------------------------------------------------------- phantom


@pytest.fixture(scope="module")
def raw_siim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom("siim", tmp_path_factory.mktemp("raw") / "siim", N_IMAGES, seed=0)


@pytest.fixture(scope="module")
def prepared_siim(raw_siim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "siim"
    summary = prepare(get_adapter("siim"), raw_siim, out, size=SIZE, strict=True)
    assert summary.skipped_rows == 0 and summary.skipped_images == 0 and not summary.problems
    return out


@pytest.fixture
def raw_copy(raw_siim: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw_siim, tmp_path / "siim"))


def test_phantom_has_the_real_layout(raw_siim: Path) -> None:
    assert (raw_siim / CSV_NAME).read_text().splitlines()[0] == "ImageId, EncodedPixels"
    paths = dicom_paths(raw_siim)
    assert len(paths) == N_IMAGES
    for image_id, path in paths.items():
        series, study = path.parent, path.parent.parent
        assert study.parent == raw_siim / "dicom-images-train"
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == image_id
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study.name, series.name)
    infos = headers(raw_siim)
    odd = [k for k, ds in infos.items() if (ds.Rows, ds.Columns) != (1024, 1024)]
    assert len(odd) == 1
    ds = infos[odd[0]]
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored) == (1024, 880, 16, 12)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    others = [ds for k, ds in infos.items() if k != odd[0]]
    assert all(ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit for ds in others)
    assert all(ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8 for ds in others)

    rows = read_csv_rows(raw_siim)
    assert {r[1] for r in rows} == set(paths)
    per_image: dict[str, list[str]] = {}
    for _, image_id, rle in rows:
        per_image.setdefault(image_id, []).append(rle)
    positive = [k for k, rles in per_image.items() if rles != ["-1"]]
    assert any(len(rles) > 1 for rles in per_image.values())  # multi-row images to OR
    assert odd[0] in positive
    assert 0.2 <= len(positive) / N_IMAGES <= 0.6
    patients = [ds.PatientID for ds in infos.values()]
    assert len(set(patients)) < len(patients)  # some patients have several images


def test_verify_phantom_is_clean(raw_siim: Path) -> None:
    report = get_adapter("siim").verify(raw_siim)
    assert report.ok, report.problems
    assert report.n_samples == N_IMAGES and not report.extra and not report.missing


def test_header_without_space_is_accepted(raw_copy: Path) -> None:
    text = (raw_copy / CSV_NAME).read_text().replace("ImageId, EncodedPixels", "ImageId,EncodedPixels", 1)
    (raw_copy / CSV_NAME).write_text(text)
    report = get_adapter("siim").verify(raw_copy)
    assert report.ok and report.n_samples == N_IMAGES


def test_prepare_uses_the_reference_split_by_image(raw_siim: Path, prepared_siim: Path) -> None:
    """The reference siim split is by image: a patient may have images in two splits (counted)."""
    ds = open_prepared(prepared_siim)
    lists = reference_split_ids("siim")
    assert all(set(ds.split(s).image_ids) <= set(lists[s]) for s in ds.splits)
    assert sum(len(ds.split(s)) for s in ds.splits) == N_IMAGES
    several = patients_in_several_splits({s: ds.split(s).patient_ids for s in ds.splits})
    assert several > 0  # the phantom's patients have 1-3 images in a seeded order
    assert ds.meta["patients_in_several_splits"] == several


def test_prepare_splits_by_patient(raw_siim: Path, tmp_path: Path) -> None:
    summary = prepare(get_adapter("siim"), raw_siim, tmp_path / "p", size=SIZE, splits="patient")
    assert summary.patients_in_several_splits == 0 and summary.split.scheme == "patient"
    ds = open_prepared(tmp_path / "p")
    assert ds.splits == ("train", "val", "test") and ds.classes == ("pneumothorax",)
    infos = headers(raw_siim)
    seen: dict[str, str] = {}
    patients_of: dict[str, set[str]] = {}
    for name in ds.splits:
        split = ds.split(name)
        assert split.images().shape == (len(split), SIZE, SIZE) and split.images().dtype == np.uint8
        assert not split.has_boxes
        for image_id, patient_id in zip(split.image_ids, split.patient_ids):
            assert patient_id == infos[image_id].PatientID  # from the DICOM header
            assert image_id not in seen
            seen[image_id] = name
        patients_of[name] = set(split.patient_ids)
    assert set(seen) == set(infos)
    assert not patients_of["train"] & patients_of["val"]
    assert not patients_of["train"] & patients_of["test"]
    assert not patients_of["val"] & patients_of["test"]
    counts = ds.meta["counts"]
    assert abs(counts["train"] - 0.6 * N_IMAGES) <= 3 and abs(counts["val"] - 0.2 * N_IMAGES) <= 3
    assert ds.meta["expected_counts"] == {}
    assert 0 < ds.stats["mean"] < 1 and ds.stats["std"] > 0


def test_prepared_masks_match_the_raw_rle(raw_siim: Path, prepared_siim: Path) -> None:
    infos = headers(raw_siim)
    raw_masks: dict[str, np.ndarray] = {}
    for _, image_id, rle in read_csv_rows(raw_siim):
        shape = (int(infos[image_id].Rows), int(infos[image_id].Columns))
        raw_masks[image_id] = raw_masks.get(image_id, np.zeros(shape, bool)) | reference_decode(rle, *shape)
    ds = open_prepared(prepared_siim)
    checked_odd = False
    for name in ds.splits:
        split = ds.split(name)
        for i in range(len(split)):
            sample = split[i]
            assert sample.masks is not None and sample.masks.shape == (1, SIZE, SIZE)
            expected = pad_resize_nearest(raw_masks[sample.image_id], SIZE)
            np.testing.assert_array_equal(sample.masks[0], expected, err_msg=sample.image_id)
            if infos[sample.image_id].Columns == 880:
                checked_odd = True
                assert expected.any()
                pad = (1024 - 880) // 2 * SIZE // 1024  # zero padding columns left and right
                assert not sample.masks[0][:, :pad].any() and not sample.masks[0][:, SIZE - pad :].any()
                assert (sample.image[:, : pad // 2] == 0).all()
    assert checked_odd


def test_pneumothorax_is_visible_in_prepared_images(prepared_siim: Path) -> None:
    ds = open_prepared(prepared_siim)
    inside, elsewhere = [], []
    for name in ds.splits:
        split = ds.split(name)
        for i in range(len(split)):
            sample = split[i]
            mask = sample.masks[0]
            if mask.sum() > 4:
                inside.append(sample.image[mask].mean())
                elsewhere.append(sample.image[~mask].mean())
    assert len(inside) >= 5
    assert all(a < b - 25 for a, b in zip(inside, elsewhere))  # dark air, on the 0-255 scale


# ---------------------------------------------------------------------------------- bad inputs


def test_csv_missing_column(raw_copy: Path, tmp_path: Path) -> None:
    rows = [(image_id, rle) for _, image_id, rle in read_csv_rows(raw_copy)]
    write_csv(raw_copy, rows, header="ImageId, Pixels")
    with pytest.raises(DataError) as info:
        prepare(get_adapter("siim"), raw_copy, tmp_path / "out", size=SIZE)
    error = info.value
    assert error.file.endswith(CSV_NAME) and error.row == 1 and "EncodedPixels" in error.expected
    with pytest.raises(DataError):
        get_adapter("siim").verify(raw_copy)


def corrupt_rows(raw: Path) -> tuple[dict[int, str], set[str]]:
    """Rewrite the CSV with one bad row of each kind; return {row: expected text} and bad image ids."""
    infos = headers(raw)
    odd = next(k for k, ds in infos.items() if ds.Columns == 880)
    rows = [(image_id, rle) for _, image_id, rle in read_csv_rows(raw)]
    normal = [k for k in dict.fromkeys(i for i, _ in rows) if k != odd]
    odd_length, empty_rle = normal[0], normal[1]
    # Valid for 1024x1024 but past the end of the 1024x880 image (901120 pixels).
    rows.append((odd, "901000 200"))
    rows.append((odd_length, "5 10 3"))
    rows.append((empty_rle, ""))
    rows.append(("", "-1"))
    n = len(rows) + 1
    bad_rows = {
        n - 3: "runs past the end",
        n - 2: "odd number",
        n - 1: "empty EncodedPixels",
        n: "empty ImageId",
    }
    write_csv(raw, rows)
    return bad_rows, {odd, odd_length, empty_rle}


def test_malformed_rle_rows_are_reported_skipped_and_strict(raw_copy: Path, tmp_path: Path) -> None:
    bad_rows, bad_ids = corrupt_rows(raw_copy)
    report = get_adapter("siim").verify(raw_copy)
    assert not report.ok and not report.extra and not report.missing
    assert {p.row: p.file for p in report.problems} == {r: str(raw_copy / CSV_NAME) for r in bad_rows}
    for problem in report.problems:
        assert bad_rows[problem.row] in problem.message and problem.expected

    with pytest.warns(UserWarning, match="row"):
        summary = prepare(get_adapter("siim"), raw_copy, tmp_path / "out", size=SIZE)
    assert summary.skipped_rows == len(bad_rows)
    assert sum(summary.counts.values()) == N_IMAGES - len(bad_ids)
    ds = open_prepared(tmp_path / "out")
    kept = {i for name in ds.splits for i in ds.split(name).image_ids}
    assert not kept & bad_ids

    problems = Problems(strict=True)
    with pytest.raises(DataError) as info:
        get_adapter("siim").list_samples(raw_copy, problems)
    assert info.value.file == str(raw_copy / CSV_NAME) and info.value.row in bad_rows
    with pytest.raises(DataError, match=CSV_NAME):
        prepare(get_adapter("siim"), raw_copy, tmp_path / "strict", size=SIZE, strict=True)


def test_image_listed_but_absent(raw_copy: Path, tmp_path: Path) -> None:
    rows = read_csv_rows(raw_copy)
    image_id = rows[3][1]
    row = min(number for number, other, _ in rows if other == image_id)  # the image's first row
    dicom_paths(raw_copy)[image_id].unlink()
    report = get_adapter("siim").verify(raw_copy)
    assert not report.ok and len(report.missing) == 1 and image_id in report.missing[0]
    with pytest.warns(UserWarning, match="absent"):
        summary = prepare(get_adapter("siim"), raw_copy, tmp_path / "out", size=SIZE)
    assert sum(summary.counts.values()) == N_IMAGES - 1
    assert any(image_id in p.message and p.row == row for p in summary.problems)
    with pytest.raises(DataError) as info:
        prepare(get_adapter("siim"), raw_copy, tmp_path / "strict", size=SIZE, strict=True)
    assert info.value.file == str(raw_copy / CSV_NAME) and info.value.row == row


def test_verify_reports_extra_dicoms(raw_copy: Path) -> None:
    source = next(iter(dicom_paths(raw_copy).values()))
    extra = raw_copy / "dicom-images-train" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    extra.parent.mkdir(parents=True)
    shutil.copy(source, extra)
    report = get_adapter("siim").verify(raw_copy)
    assert report.extra == [str(extra)]
    assert report.ok  # an unannotated image is reported, not an error


def test_unreadable_dicom_header(raw_copy: Path, tmp_path: Path) -> None:
    path = sorted(dicom_paths(raw_copy).values())[0]
    path.write_bytes(b"this is not a DICOM file")
    report = get_adapter("siim").verify(raw_copy)
    assert [p.file for p in report.problems] == [str(path)] and not report.extra
    with pytest.warns(UserWarning, match="not a readable DICOM"):
        summary = prepare(get_adapter("siim"), raw_copy, tmp_path / "out", size=SIZE)
    assert sum(summary.counts.values()) == N_IMAGES - 1
    with pytest.raises(DataError) as info:
        prepare(get_adapter("siim"), raw_copy, tmp_path / "strict", size=SIZE, strict=True)
    assert info.value.file == str(path)


def test_truncated_dicom_is_skipped_with_a_warning(raw_copy: Path, tmp_path: Path) -> None:
    path = sorted(dicom_paths(raw_copy).values())[1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own end-of-file warning
        summary = prepare(get_adapter("siim"), raw_copy, tmp_path / "out", size=SIZE)
    assert summary.skipped_images == 1 and sum(summary.counts.values()) == N_IMAGES - 1
    assert [p.file for p in summary.problems] == [str(path)]
    with pytest.raises(DataError) as info:
        prepare(get_adapter("siim"), raw_copy, tmp_path / "strict", size=SIZE, strict=True)
    assert info.value.file == str(path)
