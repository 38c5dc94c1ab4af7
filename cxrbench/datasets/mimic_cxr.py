"""MIMIC-CXR (JPG images + free-text reports) adapter: image-report pairs for pre-training only.

Citation: Johnson A.E.W. et al., "MIMIC-CXR, a de-identified publicly available database of chest
radiographs with free-text reports", Scientific Data 6:317, 2019; and Johnson A.E.W. et al.,
"MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs",
arXiv:1901.07042, 2019.
Download: https://physionet.org/content/mimic-cxr-jpg/2.0.0/ (images and the split, metadata and
CheXpert CSVs) and https://physionet.org/content/mimic-cxr/2.0.0/ (mimic-cxr-reports.zip: unzip it
into the same folder, it adds `files/p1x/p<subject>/s<study>.txt` next to the study folders).
Licence: PhysioNet Credentialed Health Data License 1.5.0 (credentialed access, CITI training and
a signed data use agreement; no redistribution).

Protocol (docs/protocol.md): frontal views only (ViewPosition PA or AP), the official split
(train/validate/test -> train/val/test), the report is the FINDINGS + IMPRESSION text split into
sentences (`reports.py`, no model download), studies whose findings + impression have fewer than 3
word tokens are dropped, and "30%" runs use a fixed, seeded 30% of the train images. Lateral views
and short reports are *excluded by protocol* (counted in `info`, not errors); a malformed row or
a missing report is a problem (skipped with a warning and counted, an error with --strict).
The CheXpert label CSV is optional: when present, each image gets its study's 14 raw label codes
(field "chexpert": label -> 1 positive, 0 negative, -1 uncertain, None blank; None for a study the
table lacks) for the CheXpert-supervised baseline, which applies its own uncertain-label policy
(`cxrbench.baselines.chexpert`). The cache keeps the raw codes so the policy stays a training choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from cxrbench.datasets.base import DatasetAdapter, LoadedSample, Problems, RawSample
from cxrbench.datasets.csv_rows import read_rows
from cxrbench.datasets.imaging import read_raster
from cxrbench.datasets.reports import ReportText, parse_report

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
FILES = "files"
FRONTAL_VIEWS = ("PA", "AP")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
MIN_TOKENS = 3
CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
CHEXPERT_CODES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}
NON_FRONTAL = "dropped_as_lateral_or_other_view"  # `info` keys: excluded by protocol, not errors
SHORT_REPORT = "dropped_with_report_under_3_tokens"


def study_dir(raw_root: Path, subject_id: str, study_id: str) -> Path:
    """files/p<first two digits>/p<subject>/s<study> (the image folder of one study)."""
    return raw_root / FILES / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def report_path(raw_root: Path, subject_id: str, study_id: str) -> Path:
    """files/p1x/p<subject>/s<study>.txt: the MIMIC-CXR report, a sibling of the study folder."""
    folder = study_dir(raw_root, subject_id, study_id)
    return folder.with_name(folder.name + ".txt")


def table_path(raw_root: Path, name: str) -> Path:
    """The .csv.gz as distributed, or the unzipped .csv when only that one is present."""
    path = raw_root / name
    plain = path.with_suffix("")
    return plain if not path.exists() and plain.exists() else path


def read_table(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a (gzip-compressed) MIMIC-CXR table; see `csv_rows.read_rows`."""
    return read_rows(
        path, required, expected_file="a complete gzip-compressed CSV as downloaded from PhysioNet"
    )


def read_report(path: Path) -> ReportText | str:
    """The parsed report, or why it cannot be read (a short phrase for the problem message)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return f"is unreadable ({exc})"
    return parse_report(text)


def read_chexpert(path: Path, problems: Problems) -> dict[tuple[str, str], dict[str, int | None]]:
    """(subject_id, study_id) -> {label: 1 | 0 | -1 | None} from mimic-cxr-2.0.0-chexpert.csv.gz.

    The raw codes as distributed: 1.0 positive, 0.0 negative, -1.0 uncertain, blank = not mentioned
    (None). A value outside these, or a duplicate study, is a problem (row skipped).
    """
    labels: dict[tuple[str, str], dict[str, int | None]] = {}
    for number, row in read_table(path, ["subject_id", "study_id", *CHEXPERT_LABELS]):
        key = (row["subject_id"], row["study_id"])
        bad = [c for c in CHEXPERT_LABELS if row[c].strip() not in CHEXPERT_CODES]
        if bad or not key[0].isdigit() or not key[1].isdigit():
            what = f"{bad[0]}={row[bad[0]]!r}" if bad else f"subject_id={key[0]!r}, study_id={key[1]!r}"
            problems.add(
                path,
                f"malformed label row ({what}); row skipped",
                row=number,
                expected="numeric subject_id and study_id and labels 1.0, 0.0, -1.0 or blank",
            )
            continue
        if key in labels:
            problems.add(path, f"duplicate study {key[1]} (subject {key[0]}); row skipped", row=number)
            continue
        labels[key] = {c: CHEXPERT_CODES[row[c].strip()] for c in CHEXPERT_LABELS}
    return labels


class MimicCXRAdapter(DatasetAdapter):
    name = "mimic_cxr"
    classes = ()
    has_masks = False
    has_boxes = False
    equalize = False
    subset_percents = (30,)
    extra_fields = ("report", "sentences", "study_id", "view", "chexpert")
    text_fields = ("report", "sentences")  # ~230,000 reports: memory-mapped, not in meta.json
    code_fields = {"chexpert": CHEXPERT_LABELS}  # 14 codes per image: an int8 matrix, not in meta.json
    layout = (
        "RAW_DIR/\n"
        f"  {SPLIT_CSV}      dicom_id,study_id,subject_id,split (train/validate/test)\n"
        f"  {METADATA_CSV}   dicom_id,subject_id,study_id,...,ViewPosition,Rows,Columns,...\n"
        f"  {CHEXPERT_CSV}   (optional) subject_id,study_id,<14 CheXpert labels: 1.0/0.0/-1.0/blank>\n"
        f"  {FILES}/p1x/p<subject_id>/s<study_id>/<dicom_id>.jpg   MIMIC-CXR-JPG images\n"
        f"  {FILES}/p1x/p<subject_id>/s<study_id>.txt              MIMIC-CXR reports (mimic-cxr-reports.zip)\n"
        "  (p1x = 'p' + the first two digits of the subject id; uncompressed .csv files are accepted too)"
    )

    def __init__(self) -> None:
        super().__init__()
        # Filled by list_samples, with `info` (images dropped by the protocol): the images the
        # metadata knows but that are not samples, so that `verify` does not call them extra.
        self._known_unlisted: set[Path] = set()

    def required_files(self, raw_root: Path) -> list[Path]:
        return [table_path(raw_root, SPLIT_CSV), table_path(raw_root, METADATA_CSV), raw_root / FILES]

    def image_files(self, raw_root: Path) -> Iterable[Path]:
        known = {p.resolve() for p in self._known_unlisted}
        return (p for p in (raw_root / FILES).glob("p*/p*/s*/*.jpg") if p.resolve() not in known)

    def list_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        self.info = {NON_FRONTAL: 0, SHORT_REPORT: 0}
        self._known_unlisted = set()
        splits = self._read_split(table_path(raw_root, SPLIT_CSV), problems)
        meta_path = table_path(raw_root, METADATA_CSV)
        chexpert_path = table_path(raw_root, CHEXPERT_CSV)
        chexpert = read_chexpert(chexpert_path, problems) if chexpert_path.exists() else {}
        reports: dict[tuple[str, str], ReportText | str] = {}
        samples: list[RawSample] = []
        seen: set[str] = set()
        required = ["dicom_id", "subject_id", "study_id", "ViewPosition"]
        for number, row in read_table(meta_path, required):
            dicom, subject, study, view = (row[c] for c in required)
            if not dicom or not subject.isdigit() or not study.isdigit():
                problems.add(
                    meta_path,
                    f"malformed ids (dicom_id={dicom!r}, subject_id={subject!r}, study_id={study!r}); row skipped",
                    row=number,
                    expected="a dicom_id and numeric subject_id and study_id",
                )
                continue
            path = study_dir(raw_root, subject, study) / f"{dicom}.jpg"
            if dicom in seen:
                problems.add(meta_path, f"duplicate dicom_id {dicom}; row skipped", row=number)
                continue
            seen.add(dicom)
            split_row = splits.pop(dicom, None)
            if view not in FRONTAL_VIEWS:
                self._drop(path, NON_FRONTAL)
                continue
            if split_row is None:
                self._known_unlisted.add(path)
                problems.add(
                    meta_path,
                    f"image {dicom} has no row in {SPLIT_CSV}; row skipped",
                    row=number,
                    expected="every metadata dicom_id in the split file",
                )
                continue
            split, split_subject, split_study = split_row
            if (split_subject, split_study) != (subject, study):
                self._known_unlisted.add(path)
                problems.add(
                    meta_path,
                    f"image {dicom} is subject {subject} study {study} here but subject {split_subject} "
                    f"study {split_study} in {SPLIT_CSV}; row skipped",
                    row=number,
                    expected="the same subject and study ids in both files",
                )
                continue
            key = (subject, study)
            if key not in reports:
                reports[key] = read_report(report_path(raw_root, subject, study))
            report = reports[key]
            if isinstance(report, str):
                self._known_unlisted.add(path)
                problems.add(
                    meta_path,
                    f"image {dicom}: report {report_path(raw_root, subject, study)} {report}; row skipped",
                    row=number,
                    expected="the study's report from mimic-cxr-reports.zip unzipped into RAW_DIR",
                )
                continue
            if report.n_tokens < MIN_TOKENS:
                self._drop(path, SHORT_REPORT)
                continue
            samples.append(
                RawSample(
                    image_id=dicom,
                    patient_id=subject,
                    path=path,
                    split_hint=split,
                    source=(str(meta_path), number),
                    extra={
                        "report": report.text,
                        "sentences": report.sentences,
                        "study_id": study,
                        "view": view,
                        "chexpert": chexpert.get(key),
                    },
                )
            )
        split_path = table_path(raw_root, SPLIT_CSV)
        for dicom, (_, subject, study) in splits.items():
            problems.add(
                split_path,
                f"image {dicom} (subject {subject}, study {study}) has no row in {METADATA_CSV}; skipped",
                expected="every split dicom_id in the metadata file (its view is unknown otherwise)",
            )
        return samples

    def _drop(self, path: Path, reason: str) -> None:
        self.info[reason] += 1
        self._known_unlisted.add(path)

    @staticmethod
    def _read_split(path: Path, problems: Problems) -> dict[str, tuple[str, str, str]]:
        """dicom_id -> (our split name, subject_id, study_id)."""
        splits: dict[str, tuple[str, str, str]] = {}
        for number, row in read_table(path, ["dicom_id", "study_id", "subject_id", "split"]):
            dicom, split = row["dicom_id"], row["split"]
            if not dicom or split not in SPLIT_NAMES:
                problems.add(
                    path,
                    f"malformed row (dicom_id={dicom!r}, split={split!r}); row skipped",
                    row=number,
                    expected=f"a dicom_id and split in {', '.join(SPLIT_NAMES)}",
                )
                continue
            if dicom in splits:
                problems.add(path, f"duplicate dicom_id {dicom}; row skipped", row=number)
                continue
            splits[dicom] = (SPLIT_NAMES[split], row["subject_id"], row["study_id"])
        return splits

    def split_requirement(self) -> str:
        return (
            "the official split needs at least 1 frontal image with a report in each of train, "
            f"validate and test ({SPLIT_CSV})"
        )

    def assign_splits(self, samples: list[RawSample], seed: int) -> dict[str, np.ndarray]:
        """The official split (by patient in MIMIC-CXR), not a seeded one."""
        hints = np.array([s.split_hint for s in samples], dtype=object)
        return {name: np.flatnonzero(hints == name) for name in ("train", "val", "test")}

    def load(self, sample: RawSample) -> LoadedSample:
        return LoadedSample(read_raster(sample.path))
