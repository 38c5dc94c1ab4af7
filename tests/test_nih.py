"""NIH ChestX-ray8 boxes: phantom in the real layout -> verify -> prepare -> open_prepared, and bad inputs."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrbench.datasets import get_adapter, open_prepared
from cxrbench.datasets.geometry import boxes_to_masks
from cxrbench.datasets.nih import BBOX, CLASSES, DATA_ENTRY, TEST_LIST, select_no_finding
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare
from cxrbench.datasets.reference_splits import reference_split_ids
from cxrbench.datasets.split_scheme import patients_in_several_splits
from cxrbench.errors import DataError

SIZE = 224


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def find_image(raw: Path, name: str) -> Path:
    (path,) = raw.glob(f"images_*/images/{name}")
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_phantom("nih", tmp_path_factory.mktemp("raw") / "nih")


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "nih"
    summary = prepare(get_adapter("nih"), raw, out, size=SIZE)
    assert summary.skipped_rows == 0 and summary.skipped_images == 0 and not summary.problems
    return out


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    return write_phantom("nih", tmp_path_factory.mktemp("small") / "nih", n_images=16, seed=3)


@pytest.fixture
def small(small_raw, tmp_path) -> Path:
    """A private copy of the small phantom that a test may damage."""
    return Path(shutil.copytree(small_raw, tmp_path / "nih"))


def test_phantom_has_real_layout(raw):
    assert (raw / BBOX).read_text().splitlines()[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    assert (
        (raw / DATA_ENTRY)
        .read_text()
        .splitlines()[0]
        .startswith(
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        )
    )
    folders = sorted(p.parent.name for p in raw.glob("images_*/images"))
    assert folders[0] == "images_001" and len(folders) > 3
    box_rows = read_csv(raw / BBOX)[1:]
    counts = Counter(row[1] for row in box_rows)
    assert set(counts) == set(CLASSES) and min(counts.values()) >= 3
    assert all(len(row) == 9 for row in box_rows)  # x, y, w, h and three empty columns, like the header
    entries = read_csv(raw / DATA_ENTRY)[1:]
    follow_ups = Counter(row[3] for row in entries)
    assert max(follow_ups.values()) >= 2 and sum(v >= 2 for v in follow_ups.values()) >= 3
    assert any("Infiltration" in row[1] for row in entries)
    modes = Counter(Image.open(p).mode for p in raw.glob("images_*/images/*.png"))
    assert modes["RGBA"] >= 1 and modes["L"] > 50
    boxed = {row[0] for row in box_rows}
    neither = [r for r in entries if r[0] not in boxed and r[1] != "No Finding"]
    assert neither, "Data_Entry should also list images that are not samples"


def test_verify_clean(raw):
    report = get_adapter("nih").verify(raw)
    assert report.ok and not report.extra and not report.problems
    boxed = {row[0] for row in read_csv(raw / BBOX)[1:]}
    entries = {row[0]: row[1] for row in read_csv(raw / DATA_ENTRY)[1:]}
    test_list = (raw / TEST_LIST).read_text().split()
    normal = [n for n in test_list if entries[n] == "No Finding"]
    assert 0 < len(normal) < 100
    assert report.n_samples == len(boxed) + len(normal)


def test_prepared_counts_splits_and_shapes(raw, prepared):
    ds = open_prepared(prepared)
    assert ds.classes == CLASSES and ds.splits == ("train", "val", "test")
    counts = {s: len(ds.split(s)) for s in ds.splits}
    total = sum(counts.values())
    assert total == get_adapter("nih").verify(raw).n_samples
    assert abs(counts["train"] / total - 0.6) < 0.1 and counts["val"] > 0 and counts["test"] > 0
    # the reference lists decide the split (they name images without ".png")
    lists = reference_split_ids("nih")
    assert all({i.removesuffix(".png") for i in ds.split(s).image_ids} <= set(lists[s]) for s in ds.splits)
    several = patients_in_several_splits({s: ds.split(s).patient_ids for s in ds.splits})
    assert ds.meta["patients_in_several_splits"] == several
    entries = {row[0]: str(int(row[3])) for row in read_csv(raw / DATA_ENTRY)[1:]}
    sample = ds.split("train")[0]
    assert sample.image.shape == (SIZE, SIZE) and sample.image.dtype == np.uint8
    assert sample.masks.shape == (len(CLASSES), SIZE, SIZE) and sample.masks.dtype == bool
    for name in ds.splits:
        split = ds.split(name)
        assert [entries[i] for i in split.image_ids] == split.patient_ids


def test_patient_splits_keep_patients_apart(small, tmp_path):
    summary = prepare(get_adapter("nih"), small, tmp_path / "out", size=64, splits="patient")
    assert summary.patients_in_several_splits == 0
    ds = open_prepared(tmp_path / "out")
    owners: dict[str, str] = {}
    for name in ds.splits:
        for pid in ds.split(name).patient_ids:
            assert owners.setdefault(pid, name) == name, f"patient {pid} is in two splits"


def test_reference_splits_take_the_listed_no_finding_images(small):
    """With the lists, the No-Finding samples are those the lists name, not a seeded draw of them."""
    from cxrbench.datasets.base import Problems

    adapter = get_adapter("nih")
    drawn = {s.image_id for s in adapter.list_samples(small, Problems())}
    adapter.listed_ids = frozenset(i for ids in reference_split_ids("nih").values() for i in ids)
    listed = {s.image_id for s in adapter.list_samples(small, Problems())}
    assert listed == drawn  # every phantom No-Finding image is a listed id, and fewer than 100
    adapter.listed_ids = frozenset(sorted(adapter.listed_ids)[:5])
    names = {s.image_id for s in adapter.list_samples(small, Problems())}
    normals = {n for n in drawn if n.removesuffix(".png") in adapter.listed_ids} - boxed_images(small)
    assert names == boxed_images(small) | normals


def boxed_images(raw: Path) -> set[str]:
    return {row[0] for row in read_csv(raw / BBOX)[1:]}


def test_masks_agree_with_boxes(prepared):
    ds = open_prepared(prepared)
    n_normal = 0
    for name in ds.splits:
        for sample in ds.split(name):
            expected = boxes_to_masks(sample.boxes, sample.labels, len(CLASSES), (SIZE, SIZE))
            assert np.array_equal(sample.masks, expected)
            n_normal += len(sample.boxes) == 0
    assert n_normal > 0


def test_known_raw_box_transformed_by_hand(raw, prepared):
    ds = open_prepared(prepared)
    rows = read_csv(raw / BBOX)[1:]
    name, label, x, y, w, h = rows[0][:6]
    x, y, w, h = (float(v) for v in (x, y, w, h))
    scale = SIZE / 1024  # square 1024x1024 image: no padding
    expected = np.array([x, y, x + w, y + h], dtype=np.float32) * scale
    for split in ds.splits:
        data = ds.split(split)
        if name in data.image_ids:
            sample = data[data.image_ids.index(name)]
            break
    c = CLASSES.index(label)
    same_class = sample.boxes[sample.labels == c]
    assert np.abs(same_class - expected).max(axis=1).min() < 1e-3
    cx, cy = int((expected[0] + expected[2]) / 2), int((expected[1] + expected[3]) / 2)
    assert sample.masks[c, cy, cx]
    r1, r2 = int(np.ceil(expected[1] - 0.5)), int(np.ceil(expected[3] - 0.5))
    c1, c2 = int(np.ceil(expected[0] - 0.5)), int(np.ceil(expected[2] - 0.5))
    if len(same_class) == 1:
        assert sample.masks[c].sum() == (r2 - r1) * (c2 - c1)


def test_lesions_are_drawn_where_annotated(raw):
    """Masses/nodules are bright at the box centre, pneumothoraces dark, cardiomegaly boxes are wide."""
    for name, label, *values in read_csv(raw / BBOX)[1:]:
        x, y, w, h = (float(v) for v in values[:4])
        image = np.asarray(Image.open(find_image(raw, name)).convert("L"), dtype=np.float32)
        inside = image[int(y) : int(y + h), int(x) : int(x + w)]
        if label in ("Mass", "Nodule"):
            assert image[int(y + h / 2), int(x + w / 2)] > 170
        elif label == "Pneumothorax":
            assert np.percentile(inside, 25) < 40
        elif label == "Cardiomegaly":
            assert w > 0.3 * image.shape[1] and inside.mean() > 120


def test_no_finding_selection_is_seeded_and_order_free():
    ids = [f"{k:08d}_000.png" for k in range(300)]
    pick = select_no_finding(ids)
    assert len(pick) == 100 and pick == sorted(pick) and set(pick) <= set(ids)
    assert select_no_finding(list(reversed(ids))) == pick
    assert select_no_finding(ids, seed=1) != pick
    assert select_no_finding(ids[:7]) == ids[:7]


def test_missing_column_names_file_row_and_expected(small):
    rows = read_csv(small / BBOX)
    rows[0] = ["Image Index", "Finding Label", "Bbox [x", "y", "w"]
    write_csv(small / BBOX, [r[:5] for r in rows])
    with pytest.raises(DataError) as info:
        prepare(get_adapter("nih"), small, small.parent / "out")
    err = info.value
    assert err.file.endswith(BBOX) and err.row == 1 and "h]" in err.expected


def test_missing_patient_column_in_data_entry(small):
    rows = read_csv(small / DATA_ENTRY)
    write_csv(small / DATA_ENTRY, [r[:3] + r[4:] for r in rows])
    with pytest.raises(DataError) as info:
        get_adapter("nih").verify(small)
    assert info.value.file.endswith(DATA_ENTRY) and info.value.row == 1 and "Patient ID" in str(info.value)


def test_malformed_row_warns_and_counts_then_strict_raises(small, tmp_path):
    rows = read_csv(small / BBOX)
    rows[2][2] = "abc"
    rows[3][1] = "Fibrosis"
    write_csv(small / BBOX, rows)
    with pytest.warns(UserWarning) as caught:
        summary = prepare(get_adapter("nih"), small, tmp_path / "out")
    assert {str(w.message).split(": ")[0].rsplit("/", 1)[-1] for w in caught} == {
        f"{BBOX}, row 3",
        f"{BBOX}, row 4",
    }
    assert summary.skipped_rows == 2
    assert {(Path(p.file).name, p.row) for p in summary.problems} == {(BBOX, 3), (BBOX, 4)}
    report = get_adapter("nih").verify(small)
    assert not report.ok and len(report.problems) == 2
    with pytest.raises(DataError) as info:
        prepare(get_adapter("nih"), small, tmp_path / "strict", strict=True)
    assert info.value.file.endswith(BBOX) and info.value.row == 3


def test_image_listed_but_absent(small, tmp_path):
    name = read_csv(small / BBOX)[1][0]
    find_image(small, name).unlink()
    report = get_adapter("nih").verify(small)
    assert any(name in path for path in report.missing) and not report.ok
    full = get_adapter("nih").verify(small).n_samples
    with pytest.warns(UserWarning, match="listed but absent"):
        summary = prepare(get_adapter("nih"), small, tmp_path / "out")
    assert sum(summary.counts.values()) == full - 1
    (problem,) = summary.problems
    assert problem.file.endswith(BBOX) and problem.row == 2 and name in problem.message


def test_box_outside_image_is_skipped_with_its_row(small, tmp_path):
    rows = read_csv(small / BBOX)
    rows[1][2] = "2000.0"
    write_csv(small / BBOX, rows)
    with pytest.warns(UserWarning, match=rf"{BBOX}, row 2: box .* lies entirely outside"):
        summary = prepare(get_adapter("nih"), small, tmp_path / "out")
    (problem,) = summary.problems
    assert problem.file.endswith(BBOX) and problem.row == 2 and "outside" in problem.message
    assert summary.skipped_rows == 1
    with pytest.raises(DataError, match="outside"):
        prepare(get_adapter("nih"), small, tmp_path / "strict", strict=True)


def test_truncated_image_is_skipped_with_a_warning(small, tmp_path):
    path = find_image(small, read_csv(small / BBOX)[1][0])
    path.write_bytes(path.read_bytes()[:3000])
    full = get_adapter("nih").verify(small).n_samples
    with pytest.warns(UserWarning, match=rf"{path.name}: cannot decode image"):
        summary = prepare(get_adapter("nih"), small, tmp_path / "out")
    assert summary.skipped_images == 1 and sum(summary.counts.values()) == full - 1
    assert any(p.file == str(path) for p in summary.problems)


def test_extra_files_and_images_in_any_folder(small, tmp_path):
    ds_samples = get_adapter("nih").verify(small).n_samples
    name = read_csv(small / BBOX)[1][0]
    moved = small / "images_012" / "images" / name
    moved.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(find_image(small, name), moved)
    stray = small / "images_003" / "images" / "99999999_000.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8)).save(stray)
    report = get_adapter("nih").verify(small)
    assert report.extra == [str(stray)] and not report.missing and report.n_samples == ds_samples
    summary = prepare(get_adapter("nih"), small, tmp_path / "out")
    assert sum(summary.counts.values()) == ds_samples


def test_boxed_image_without_data_entry_row_is_skipped(small, tmp_path):
    name = read_csv(small / BBOX)[1][0]
    rows = [r for r in read_csv(small / DATA_ENTRY) if r[0] != name]
    write_csv(small / DATA_ENTRY, rows)
    with pytest.warns(UserWarning, match="not listed in"):
        summary = prepare(get_adapter("nih"), small, tmp_path / "out")
    named = {(Path(p.file).name, p.row) for p in summary.problems}
    box_rows = {(BBOX, r) for r in range(2, 5)}
    assert (BBOX, 2) in named and named <= box_rows | {(TEST_LIST, r) for r in range(1, 9)}
    assert summary.skipped_rows == len(summary.problems)
    ds = open_prepared(tmp_path / "out")
    assert all(name not in ds.split(split).image_ids for split in ds.splits)
