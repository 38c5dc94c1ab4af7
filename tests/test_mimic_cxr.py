"""MIMIC-CXR adapter, report text helpers and phantom: frontal filter, official split, sentences."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrbench.datasets import open_prepared
from cxrbench.datasets.base import RawSample
from cxrbench.datasets.code_columns import CodeColumn, write_codes
from cxrbench.datasets.geometry import SquareResize
from cxrbench.datasets.imaging import read_raster
from cxrbench.datasets.mimic_cxr import (
    CHEXPERT_LABELS,
    METADATA_CSV,
    NON_FRONTAL,
    SHORT_REPORT,
    SPLIT_CSV,
    MimicCXRAdapter,
    report_path,
)
from cxrbench.datasets.phantom import write_phantom
from cxrbench.datasets.prepare import prepare, write_split
from cxrbench.datasets.prepared import PreparedSplit
from cxrbench.datasets.reports import (
    count_tokens,
    extract_sections,
    findings_and_impression,
    parse_report,
    split_sentences,
)
from cxrbench.datasets.splits import nested_subsets
from cxrbench.datasets.text_columns import TextColumn, write_column
from cxrbench.errors import CxrbenchError, DamagedCacheError, DataError

SPLIT_NAME = {"train": "train", "validate": "val", "test": "test"}


def read_gz(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def write_gz(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0])
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def quiet_prepare(adapter, raw, out, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(adapter, raw, out, **kwargs)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_phantom("mimic_cxr", tmp_path_factory.mktemp("phantom") / "mimic_cxr")


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    adapter = MimicCXRAdapter()
    out = tmp_path_factory.mktemp("prepared") / "mimic_cxr"
    summary = prepare(adapter, raw, out)
    return adapter, summary, open_prepared(out)


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory) -> Path:
    return write_phantom("mimic_cxr", tmp_path_factory.mktemp("small") / "mimic_cxr", n_images=40, seed=3)


@pytest.fixture
def raw_copy(small_raw, tmp_path) -> Path:
    return Path(shutil.copytree(small_raw, tmp_path / "raw"))


def usable_frontal(raw: Path) -> dict[str, dict[str, str]]:
    """Frontal metadata rows whose report has >= 3 tokens, straight from the raw files."""
    rows = {}
    for row in read_gz(raw / METADATA_CSV):
        if row["ViewPosition"] in ("PA", "AP"):
            text = report_path(raw, row["subject_id"], row["study_id"]).read_text()
            if parse_report(text).n_tokens >= 3:
                rows[row["dicom_id"]] = row
    return rows


def image_path(raw: Path, row: dict[str, str]) -> Path:
    """files/p1x/p<subject>/s<study>/<dicom_id>.jpg, spelled out independently of the adapter."""
    subject, study = row["subject_id"], row["study_id"]
    return raw / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{row['dicom_id']}.jpg"


# ---------------------------------------------------------------- adapter on the phantom


def test_verify_clean(raw):
    report = MimicCXRAdapter().verify(raw)
    assert report.ok, report.problems
    assert report.missing == [] and report.extra == []  # laterals and short reports are not "extra"
    assert report.n_samples == len(usable_frontal(raw))
    assert report.info[NON_FRONTAL] > 0 and report.info[SHORT_REPORT] > 0


def test_frontal_views_only_and_official_split(raw, prepared):
    adapter, summary, data = prepared
    frontal = usable_frontal(raw)
    official = {r["dicom_id"]: SPLIT_NAME[r["split"]] for r in read_gz(raw / SPLIT_CSV)}
    metadata = read_gz(raw / METADATA_CSV)
    assert summary.problems == [] and summary.skipped_rows == 0 and summary.skipped_images == 0
    assert data.splits == ("train", "val", "test") and data.classes == ()
    seen, patients = set(), {}
    for name in data.splits:
        split = data.split(name)
        assert len(split) > 0
        assert set(split.field("view")) <= {"PA", "AP"}
        for image_id, patient in zip(split.image_ids, split.patient_ids):
            assert official[image_id] == name
            assert frontal[image_id]["subject_id"] == patient
            patients.setdefault(patient, set()).add(name)
        seen |= set(split.image_ids)
    assert seen == set(frontal)
    assert all(len(names) == 1 for names in patients.values())  # the official split is by patient
    # laterals (LATERAL, LL) and short reports are filtered by protocol, not reported as problems
    n_lateral = sum(r["ViewPosition"] not in ("PA", "AP") for r in metadata)
    assert n_lateral > 0 and adapter.info[NON_FRONTAL] == n_lateral
    assert adapter.info[SHORT_REPORT] > 0
    assert summary.info == adapter.info and data.meta["excluded_by_design"] == adapter.info
    assert len(metadata) == len(seen) + n_lateral + adapter.info[SHORT_REPORT]


def test_samples_pair_the_right_image_and_report(raw, prepared):
    _, _, data = prepared
    split = data.split("val")
    frontal = usable_frontal(raw)
    study_ids = split.field("study_id")
    for i in range(min(4, len(split))):
        sample = split[i]
        row = frontal[sample.image_id]
        assert study_ids[i] == row["study_id"]
        assert sample.image.shape == (224, 224) and sample.image.dtype == np.uint8
        assert sample.masks is None and sample.boxes is None
        text = report_path(raw, row["subject_id"], row["study_id"]).read_text()
        parsed = parse_report(text)
        assert sample.report == parsed.text and sample.sentences == parsed.sentences
        assert "INDICATION" not in sample.report and "___ year old" not in sample.report
        assert all(s.strip() and s.strip("_. ") for s in sample.sentences)
        pixels = read_raster(image_path(raw, row))
        assert pixels.shape == (int(row["Rows"]), int(row["Columns"]))
        expected = np.round(SquareResize(*pixels.shape, 224).image(pixels) * 255)
        assert np.abs(sample.image.astype(float) - expected).max() <= 1


def test_reports_describe_what_the_images_show(prepared):
    """Right-sided findings brighten the image-left lung, left-sided the image-right one."""
    _, _, data = prepared
    right, left, heart_big, heart_normal = [], [], [], []
    for name in data.splits:
        split = data.split(name)
        for i in range(len(split)):
            sample = split[i]
            text = " ".join(sample.sentences).lower()
            image = sample.image.astype(float) / 255
            balance = image[40:190, 30:105].mean() - image[40:190, 119:194].mean()
            lesion = any(w in text for w in ("opacity", "consolidation", "pleural effusion."))
            has_right, has_left = "right" in text, "left" in text or "lingula" in text
            if lesion and has_right and not has_left:
                right.append(balance)
            elif lesion and has_left and not has_right:
                left.append(balance)
            cardio = "cardiomegaly" in text or "enlarged" in text
            (heart_big if cardio else heart_normal).append(image[120:180, 80:150].mean())
    assert len(right) >= 5 and len(left) >= 5 and len(heart_big) >= 5
    assert np.mean(right) > np.mean(left) + 0.01
    assert np.mean(heart_big) > np.mean(heart_normal) + 0.03


def test_30_percent_subset_is_fixed_and_inside_train(raw, prepared, tmp_path):
    _, _, data = prepared
    train = data.split("train")
    subset = data.split("train", 30)
    assert len(subset) == round(0.3 * len(train))
    assert set(subset.image_ids) < set(train.image_ids)
    assert len(set(subset.image_ids)) == len(subset)
    again = open_prepared(quiet_prepare(MimicCXRAdapter(), raw, tmp_path / "again").out_root)
    assert again.split("train", 30).image_ids == subset.image_ids
    assert again.split("train", 30)[0].report == subset[0].report
    nested = nested_subsets(len(train), (10, 30))
    assert set(nested["10"]) < set(nested["30"])
    assert np.array_equal(nested["30"], data.subsets["train"]["30"])


def test_uncompressed_tables_are_accepted(raw_copy, tmp_path):
    for name in (SPLIT_CSV, METADATA_CSV):
        gz = raw_copy / name
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    report = MimicCXRAdapter().verify(raw_copy)
    assert report.ok and report.n_samples > 0


# ---------------------------------------------------------------- report text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The lungs are clear.  No effusion.", ["The lungs are clear.", "No effusion."]),
        ("Nodule measures 1.5 cm. Stable.", ["Nodule measures 1.5 cm.", "Stable."]),
        ("Discussed with Dr. ___ at 9:30. Improved.", ["Discussed with Dr. ___ at 9:30.", "Improved."]),
        ("Findings e.g. CT may help. Next.", ["Findings e.g. CT may help.", "Next."]),
        ("Seen at 10 a.m. on ___. Stable.", ["Seen at 10 a.m. on ___.", "Stable."]),
        ("1. Small effusion. 2. No pneumothorax.", ["Small effusion.", "No pneumothorax."]),
        ("1.  Small\n effusion.\n 2.  Clear lungs", ["Small effusion.", "Clear lungs"]),
        ("Heart is\n normal.\n \n No edema", ["Heart is normal.", "No edema"]),
        ("Compared to ___. ___.  Clear.", ["Compared to ___.", "Clear."]),
        ("___.\n \n ___", []),
        ("Is this pneumonia? Possibly.", ["Is this pneumonia?", "Possibly."]),
        ("No. 2 tube in place. Clear.", ["No. 2 tube in place.", "Clear."]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // ? pneumonia
 TIME: 10:30
 COMPARISON:  None.

 FINDINGS:

 Patchy opacity in the right lower
 lobe. No effusion.

 IMPRESSION: Right lower lobe pneumonia.

 RECOMMENDATION(S):  Follow-up in ___ weeks.
"""


def test_extract_sections():
    sections = extract_sections(REPORT)
    assert list(sections) == [
        "",
        "EXAMINATION",
        "INDICATION",
        "TIME",
        "COMPARISON",
        "FINDINGS",
        "IMPRESSION",
        "RECOMMENDATION(S)",
    ]
    assert sections[""] == "FINAL REPORT" and sections["TIME"] == "10:30"
    findings, impression = findings_and_impression(REPORT)
    assert findings == "Patchy opacity in the right lower\n lobe. No effusion."
    assert impression == "Right lower lobe pneumonia."
    parsed = parse_report(REPORT)
    assert parsed.text == "Patchy opacity in the right lower lobe. No effusion. Right lower lobe pneumonia."
    assert parsed.sentences == [
        "Patchy opacity in the right lower lobe.",
        "No effusion.",
        "Right lower lobe pneumonia.",
    ]
    assert parsed.n_tokens == 13
    combined = parse_report("FINDINGS AND IMPRESSION:  Clear lungs.\nIMPRESSIONS: None.\nIMPRESSION: Normal.")
    assert combined.findings == "Clear lungs." and combined.impression == "None. Normal."
    assert parse_report("INDICATION: cough. The lungs are clear.").n_tokens == 0  # no findings/impression
    structured = parse_report(
        "FINDINGS:\n LUNGS: Clear.\n HEART: Normal size.\nIMPRESSION: Normal.\nNOTIFICATION: ___"
    )
    assert structured.sentences == ["LUNGS: Clear.", "HEART: Normal size.", "Normal."]


def test_count_tokens():
    assert count_tokens("No change.") == 2
    assert count_tokens("___ ___. Normal.") == 1
    assert count_tokens("A 1.5 cm x-ray finding") == 5


# ---------------------------------------------------------------- filters and bad input


def study_of(raw: Path, view: str = "PA") -> dict[str, str]:
    frontal = usable_frontal(raw)
    return next(r for r in frontal.values() if r["ViewPosition"] == view)


def test_token_filter_drops_short_reports_as_protocol_not_error(raw_copy, tmp_path):
    rows = list(usable_frontal(raw_copy).values())
    short = rows[0]
    kept = next(r for r in rows if r["study_id"] != short["study_id"])
    report_path(raw_copy, short["subject_id"], short["study_id"]).write_text(
        "FINAL REPORT\n INDICATION: long text here about the patient\n FINDINGS: ___\n IMPRESSION: No change.\n"
    )
    report_path(raw_copy, kept["subject_id"], kept["study_id"]).write_text(
        " IMPRESSION:  No acute process.\n"
    )
    adapter = MimicCXRAdapter()
    summary = quiet_prepare(adapter, raw_copy, tmp_path / "out")
    assert summary.problems == [] and summary.skipped_rows == 0
    ids = {i for name in summary.counts for i in open_prepared(summary.out_root).split(name).image_ids}
    assert short["dicom_id"] not in ids and kept["dicom_id"] in ids
    assert adapter.info[SHORT_REPORT] > 0
    assert MimicCXRAdapter().verify(raw_copy).extra == []


def test_missing_report_is_skipped_and_counted(raw_copy, tmp_path):
    row = study_of(raw_copy)
    path = report_path(raw_copy, row["subject_id"], row["study_id"])
    path.unlink()
    with pytest.warns(UserWarning, match="is missing"):
        summary = prepare(MimicCXRAdapter(), raw_copy, tmp_path / "out")
    assert summary.skipped_rows >= 1
    assert any(str(path) in p.message and p.file.endswith(METADATA_CSV) and p.row for p in summary.problems)
    ids = {i for name in summary.counts for i in open_prepared(summary.out_root).split(name).image_ids}
    assert row["dicom_id"] not in ids
    with pytest.raises(DataError, match=str(path)):
        prepare(MimicCXRAdapter(), raw_copy, tmp_path / "strict", strict=True)
    assert not MimicCXRAdapter().verify(raw_copy).ok


def test_missing_column_names_file_and_expectation(raw_copy, tmp_path):
    rows = read_gz(raw_copy / METADATA_CSV)
    write_gz(raw_copy / METADATA_CSV, rows, [c for c in rows[0] if c != "ViewPosition"])
    with pytest.raises(DataError) as info:
        prepare(MimicCXRAdapter(), raw_copy, tmp_path / "out")
    err = info.value
    assert err.file.endswith(METADATA_CSV) and err.row == 1 and "ViewPosition" in str(err)
    assert "dicom_id" in err.expected


def test_corrupt_gzip_names_the_file(raw_copy, tmp_path):
    data = (raw_copy / SPLIT_CSV).read_bytes()
    (raw_copy / SPLIT_CSV).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=SPLIT_CSV):
        prepare(MimicCXRAdapter(), raw_copy, tmp_path / "out")
    (raw_copy / SPLIT_CSV).write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=SPLIT_CSV):
        MimicCXRAdapter().verify(raw_copy)


def test_malformed_rows_warn_count_and_fail_in_strict_mode(raw_copy, tmp_path):
    split_rows = read_gz(raw_copy / SPLIT_CSV)
    target = study_of(raw_copy)["dicom_id"]
    k = next(k for k, r in enumerate(split_rows) if r["dicom_id"] == target)
    split_rows[k]["split"] = "dev"
    write_gz(raw_copy / SPLIT_CSV, split_rows)
    meta_rows = read_gz(raw_copy / METADATA_CSV)
    j = next(j for j, r in enumerate(meta_rows) if r["dicom_id"] != target and r["ViewPosition"] == "AP")
    meta_rows[j]["subject_id"] = "p1x"
    write_gz(raw_copy / METADATA_CSV, meta_rows)
    summary = quiet_prepare(MimicCXRAdapter(), raw_copy, tmp_path / "out")
    messages = {(Path(p.file).name, p.row): p.message for p in summary.problems}
    assert "'dev'" in messages[(SPLIT_CSV, k + 2)]
    assert "malformed ids" in messages[(METADATA_CSV, j + 2)]
    assert any(p.file.endswith(METADATA_CSV) and target in p.message for p in summary.problems)
    assert summary.skipped_rows == len(summary.problems) >= 3
    with pytest.raises(DataError) as info:
        prepare(MimicCXRAdapter(), raw_copy, tmp_path / "strict", strict=True)
    assert info.value.file.endswith(SPLIT_CSV) and info.value.row == k + 2


def test_listed_but_absent_and_truncated_images(raw_copy, tmp_path):
    frontal = list(usable_frontal(raw_copy).values())
    absent, truncated = image_path(raw_copy, frontal[0]), image_path(raw_copy, frontal[1])
    absent.unlink()
    truncated.write_bytes(truncated.read_bytes()[:600])
    stray = absent.parent / "0000aaaa-1111bbbb-2222cccc-3333dddd-4444eeee.jpg"
    shutil.copy(truncated, stray)
    report = MimicCXRAdapter().verify(raw_copy)
    assert report.missing == [str(absent)] and report.extra == [str(stray)]
    summary = quiet_prepare(MimicCXRAdapter(), raw_copy, tmp_path / "out")
    assert summary.skipped_images == 1
    assert any(str(absent) in p.message for p in summary.problems)
    assert any(p.file == str(truncated) for p in summary.problems)
    ids = {i for name in summary.counts for i in open_prepared(summary.out_root).split(name).image_ids}
    assert frontal[0]["dicom_id"] not in ids and frontal[1]["dicom_id"] not in ids


def test_reports_are_memory_mapped_text_columns_not_json(prepared):
    """meta.json stays small (ids only); the text lives in text_columns files, read lazily per image."""
    _, _, data = prepared
    split = data.split("train")
    meta = json.loads((data.root / "train" / "meta.json").read_text())
    assert "report" not in meta and "sentences" not in meta
    assert meta["text_fields"] == {"report": "text", "sentences": "text_list"}
    for file in ("report.utf8", "report_offsets.npy", "sentences.utf8", "sentences_rows.npy"):
        assert (data.root / "train" / file).is_file()
    sentences = split.field("sentences")
    assert isinstance(sentences, TextColumn) and len(sentences) == len(split)
    assert [split[i].sentences for i in range(3)] == sentences[:3]
    subset = data.split("train", 30)
    picked = [int(i) for i in data.subsets["train"]["30"][:5]]
    assert subset.field("report")[:5] == [split[i].report for i in picked]
    assert list(subset.field("sentences")[1]) == split[picked[1]].sentences


def test_text_column_round_trip_with_unicode_and_empty_rows(tmp_path):
    lists = [["Größe 1.5 cm.", "No effusion."], [], ["___ ok."]]
    assert write_column(tmp_path, "s", lists) == "text_list"
    assert write_column(tmp_path, "r", ["é", "", "x y"]) == "text"
    column = TextColumn(tmp_path, "s", "text_list")
    assert [column[i] for i in range(3)] == lists and column.take([2, 0])[:] == [lists[2], lists[0]]
    assert TextColumn(tmp_path, "r", "text")[:] == ["é", "", "x y"]


def test_old_cache_with_inline_reports_names_prepare(prepared, tmp_path):
    _, _, data = prepared
    old = Path(shutil.copytree(data.root, tmp_path / "old"))
    meta_path = old / "val" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["report"] = ["a report"] * len(meta["image_ids"])
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CxrbenchError, match=r"older cxrbench.*cxrbench prepare mimic_cxr .*--force"):
        open_prepared(old, verify=False).split("val")


def test_missing_text_column_is_damage(prepared, tmp_path):
    _, _, data = prepared
    copy = Path(shutil.copytree(data.root, tmp_path / "copy"))
    (copy / "test" / "sentences_rows.npy").unlink()
    with pytest.raises(DamagedCacheError, match=r"sentences_rows\.npy: is missing"):
        open_prepared(copy)


def test_code_column_round_trip_blank_absent_and_refusals(tmp_path):
    labels = ("A", "B")
    values = [{"A": 1, "B": None}, None, {"A": -1, "B": 0}]
    codes = write_codes(tmp_path, "c", labels, values)
    assert codes.dtype == np.int8 and codes.shape == (3, 2)
    column = CodeColumn(tmp_path, "c", labels)
    assert column[:] == values and list(column) == values and column.take([2, 1])[:] == values[:0:-1]
    with pytest.raises(ValueError, match=r"not in -127\.\.126"):
        write_codes(tmp_path, "d", labels, [{"A": 127, "B": 0}])
    with pytest.raises(ValueError, match="are not"):
        write_codes(tmp_path, "d", labels, [{"A": 1}])


def test_split_writer_round_trip_reads_back_what_it_was_given(tmp_path):
    """The writer `bench_mimic_open.py` uses: every report, sentence list and code dict reads back equal."""
    adapter = MimicCXRAdapter()
    blank = dict.fromkeys(CHEXPERT_LABELS)
    given = [
        ("Größe 1.5 cm. No effusion.", ["Größe 1.5 cm.", "No effusion."], {**blank, "Edema": 1}),
        ("", [], None),
        ("Heart normal.", ["Heart normal."], {**blank, "No Finding": 1, "Pneumonia": -1, "Edema": 0}),
    ]
    kept = [
        RawSample(
            f"d{k}",
            f"p{k}",
            tmp_path / f"{k}.jpg",
            extra={"report": r, "sentences": s, "chexpert": c, "study_id": str(k), "view": "PA"},
        )
        for k, (r, s, c) in enumerate(given)
    ]
    meta, files = write_split(
        adapter, tmp_path / "train", {"images.npy": np.zeros((3, 32, 32), np.uint8)}, kept
    )
    assert "chexpert" not in meta and meta["code_fields"] == {"chexpert": list(CHEXPERT_LABELS)}
    assert set(files) >= {"chexpert_codes.npy", "report.utf8", "sentences_rows.npy", "meta.json"}
    split = PreparedSplit(tmp_path, "train", 32)
    assert split.field("report")[:] == [g[0] for g in given]
    assert split.field("sentences")[:] == [g[1] for g in given]
    assert split.field("chexpert")[:] == [g[2] for g in given]
    assert split.field("study_id") == ["0", "1", "2"]
    assert split.subset([2, 0]).field("chexpert")[:] == [given[2][2], given[0][2]]
