"""MIMIC-CXR phantom: the MIMIC-CXR-JPG tree, its three .csv.gz tables and MIMIC-CXR report files.

Every study draws a set of findings - focal opacities in a named lung zone (right/left x
upper/mid/lower), pleural effusions (basal brightening), cardiomegaly (an enlarged heart),
pneumothorax - paints them into each of its frontal images and describes them, by location, in
the FINDINGS and IMPRESSION sections of its report; the CheXpert table agrees with the text. So
image-report pre-training on the phantom has something real to learn. Subjects have several
studies, studies have PA/AP frontal and LATERAL images (the adapter must drop the laterals), and a
few studies have reports too short for the protocol's 3-token filter.
"""

from __future__ import annotations

import csv
import gzip
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from cxrbench.datasets.phantom.anatomy import (
    Canvas,
    chest,
    paint_opacity,
    paint_pneumothorax,
    random_box_in,
    smooth_noise,
    to_uint8,
)

DEFAULT_N = 150
SHAPES = ((615, 512), (615, 512), (615, 512), (512, 512), (512, 615))  # (rows, columns); real: 3056x2544
CHEXPERT = (
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
SIDES = ("right", "left")  # lung 0 is the patient's right lung (image left)
ZONES = ("upper", "mid", "lower")
LOBES = {
    (0, 0): "right upper lobe",
    (0, 1): "right middle lobe",
    (0, 2): "right lower lobe",
    (1, 0): "left upper lobe",
    (1, 1): "lingula",
    (1, 2): "left lower lobe",
}
VIEW_MEANING = {
    "PA": "postero-anterior",
    "AP": "antero-posterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
}
SHORT_REPORTS = (
    "FINDINGS:  ___\n \n IMPRESSION:  No change.",
    "IMPRESSION:  Normal.",
    "WET READ: ___ ___ ___ 9:15 AM\n  No acute process.\n \n INDICATION:  ___ with chest pain",
)


@dataclass
class StudyFindings:
    """What one study shows; painted into its frontal images and written into its report."""

    opacities: list[tuple[int, int]] = field(default_factory=list)  # (lung, zone)
    effusions: list[int] = field(default_factory=list)  # lungs
    cardiomegaly: bool = False
    pneumothorax: int | None = None
    short_report: bool = False


def draw_findings(rng: np.random.Generator) -> StudyFindings:
    found = StudyFindings()
    if rng.random() < 0.45:
        n = 1 if rng.random() < 0.75 else 2
        cells = rng.choice(6, size=n, replace=False)
        found.opacities = [(int(c) // 3, int(c) % 3) for c in cells]
    if rng.random() < 0.22:
        found.effusions = [0, 1] if rng.random() < 0.3 else [int(rng.integers(2))]
    found.cardiomegaly = bool(rng.random() < 0.22)
    if rng.random() < 0.1:
        found.pneumothorax = int(rng.integers(2))
    return found


def zone_mask(lung: np.ndarray, zone: int) -> np.ndarray:
    """Rows of the lung's upper, middle or lower third."""
    ys = np.nonzero(lung.any(1))[0]
    top, bottom = ys.min(), ys.max() + 1
    cut = np.linspace(top, bottom, 4)
    rows = np.zeros_like(lung)
    rows[int(cut[zone]) : int(np.ceil(cut[zone + 1]))] = True
    return lung & rows


def paint_effusion(canvas: Canvas, rng: np.random.Generator, lung: int) -> None:
    """A basal pleural effusion: the lung base turns soft-tissue bright under a lateral meniscus."""
    mask = canvas.lungs[lung]
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    top, bottom = ys.min(), ys.max()
    yy, xx = np.mgrid[0:h, 0:w]
    medial, lateral = (xs.max(), xs.min()) if lung == 0 else (xs.min(), xs.max())
    towards_lateral = np.clip((xx - medial) / (lateral - medial), 0, 1)
    level = bottom - rng.uniform(0.2, 0.3) * (bottom - top) - 0.12 * (bottom - top) * towards_lateral
    fluid = gaussian_filter((mask & (yy >= level)).astype(np.float32), 1.5)
    target = 0.58 + 0.02 * smooth_noise(rng, (h, w), 3)
    canvas.image = np.clip(canvas.image * (1 - fluid) + target * fluid, 0, 1).astype(np.float32)


def paint_cardiomegaly(canvas: Canvas, rng: np.random.Generator) -> None:
    """An enlarged cardiac silhouette (cardiothoracic ratio well above 0.5)."""
    h, w = canvas.image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = h * rng.uniform(0.17, 0.19), w * rng.uniform(0.24, 0.27)
    heart = ((yy + 0.5 - h * 0.63) / ry) ** 2 + ((xx + 0.5 - w * 0.53) / rx) ** 2 <= 1
    soft = gaussian_filter(heart.astype(np.float32), 1.0)
    canvas.image = np.maximum(canvas.image, 0.6 * soft).astype(np.float32)


def frontal_image(
    anatomy_seed: int, lesion_seed: int, found: StudyFindings, shape: tuple[int, int]
) -> np.ndarray:
    """One frontal view: the subject's anatomy (fixed per subject) with the study's findings."""
    canvas = chest(np.random.default_rng(anatomy_seed), *shape)
    rng = np.random.default_rng(lesion_seed)
    if found.cardiomegaly:
        paint_cardiomegaly(canvas, rng)
    for lung in found.effusions:
        paint_effusion(canvas, rng, lung)
    for lung, zone in found.opacities:
        box = random_box_in(rng, zone_mask(canvas.lungs[lung], zone), 22, 36)
        paint_opacity(canvas, rng, box, strength=float(rng.uniform(0.3, 0.4)))
    if found.pneumothorax is not None:
        paint_pneumothorax(canvas, rng, found.pneumothorax)
    return to_uint8(canvas.render(rng))


def lateral_image(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A lateral view (filtered out by the adapter): one lung field, spine behind, heart in front."""
    out_h, out_w = shape
    h, w = round(256 * out_h / max(shape)), round(256 * out_w / max(shape))
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w), 0.04, np.float32)
    image[((yy - h * 0.55) / (h * 0.5)) ** 2 + ((xx - w * 0.5) / (w * 0.4)) ** 2 <= 1] = 0.55
    lung = ((yy - h * 0.47) / (h * 0.32)) ** 2 + ((xx - w * 0.5) / (w * 0.27)) ** 2 <= 1
    image[lung] = 0.25 + 0.04 * smooth_noise(rng, (h, w), 2)[lung]
    image[(np.abs(xx - w * 0.74) < w * 0.05) & (yy > h * 0.15)] = 0.65
    image[((yy - h * 0.62) / (h * 0.15)) ** 2 + ((xx - w * 0.4) / (w * 0.14)) ** 2 <= 1] = 0.5
    canvas = Canvas(gaussian_filter(image, 1.0), np.zeros((2, h, w), bool), np.zeros((h, w), bool), *shape)
    return to_uint8(canvas.render(rng))


def describe(found: StudyFindings, rng: np.random.Generator) -> tuple[list[str], list[str], dict[str, str]]:
    """FINDINGS sentences, IMPRESSION items and the CheXpert labels of one study."""
    labels = dict.fromkeys(CHEXPERT, "")
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    findings: list[str] = []
    impression: list[str] = []
    if rng.random() < 0.2:
        findings.append("Comparison is made to the prior radiograph from ___.")
    if found.cardiomegaly:
        labels["Cardiomegaly"] = "1.0"
        findings.append(pick(["Mild cardiomegaly.", "The heart is mildly enlarged."]))
        impression.append("Mild cardiomegaly.")
    else:
        if rng.random() < 0.6:
            labels["Cardiomegaly"] = "0.0"
        findings.append(
            pick(["Heart size is normal.", "The cardiomediastinal silhouette is within normal limits."])
            if labels["Cardiomegaly"]
            else "The mediastinal contours are unremarkable."
        )
    for lung, zone in found.opacities:
        side, level, lobe = SIDES[lung], ZONES[zone], LOBES[(lung, zone)]
        labels["Lung Opacity"] = "1.0"
        style = int(rng.integers(3))
        if style == 0:
            findings.append(f"There is a focal opacity in the {side} {level} lung zone.")
            impression.append(f"Focal opacity in the {side} {level} lung.")
        elif style == 1:
            findings.append(f"Patchy opacity in the {lobe}, concerning for pneumonia.")
            impression.append(f"{lobe[0].upper()}{lobe[1:]} opacity, concerning for pneumonia.")
            labels["Pneumonia"] = "-1.0"
        else:
            size = rng.uniform(2.5, 4.5)
            findings.append(f"Focal consolidation in the {lobe} measuring approx. {size:.1f} cm.")
            impression.append(f"{lobe[0].upper()}{lobe[1:]} consolidation.")
            labels["Consolidation"] = "1.0"
    if not found.opacities:
        findings.append(pick(["The lungs are clear.", "No focal consolidation."]))
        if findings[-1] == "No focal consolidation.":
            labels["Consolidation"] = "0.0"
    if len(found.effusions) == 2:
        findings.append("Small bilateral pleural effusions.")
        impression.append("Small bilateral pleural effusions.")
    elif found.effusions:
        side = SIDES[found.effusions[0]]
        findings.append(
            pick([f"Small {side} pleural effusion.", f"There is a small {side} pleural effusion."])
        )
        impression.append(f"Small {side} pleural effusion.")
    if found.pneumothorax is not None:
        side = SIDES[found.pneumothorax]
        findings.append(f"There is a small {side} pneumothorax.")
        impression.append(f"Small {side} pneumothorax.")
        labels["Pneumothorax"] = "1.0"
    labels["Pleural Effusion"] = "1.0" if found.effusions else "0.0"
    if found.pneumothorax is None:
        labels["Pneumothorax"] = "0.0"
    if not found.effusions and found.pneumothorax is None:
        findings.append(
            pick(["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax."])
        )
    elif not found.effusions:
        findings.append("No pleural effusion.")
    elif found.pneumothorax is None:
        findings.append("No pneumothorax.")
    if not impression:
        impression.append(pick(["No acute cardiopulmonary process.", "No acute intrathoracic abnormality."]))
        labels["No Finding"] = "1.0"
    elif found.pneumothorax is not None and rng.random() < 0.5:
        impression.append("Findings were discussed with Dr. ___ by ___ at 10:30 a.m. on ___.")
    return findings, impression, labels


def report_text(
    findings: list[str], impression: list[str], description: str, technique: str, rng: np.random.Generator
) -> str:
    """A report laid out like MIMIC-CXR's: centred title, upper-case headers, hard-wrapped lines."""
    wrap = lambda text: "\n".join(textwrap.wrap(text, 76, initial_indent=" ", subsequent_indent=" "))  # noqa: E731
    reason = ["cough", "shortness of breath", "fever", "chest pain"][int(rng.integers(4))]
    body = "  ".join(findings)
    if rng.random() < 0.1:
        body += "\n \n ___."
    if len(impression) > 1:
        items = "\n \n".join(wrap(f"{k}.  {item}") for k, item in enumerate(impression, start=1))
    else:
        items = wrap(impression[0])
    return (
        f"{'FINAL REPORT':>45}\n"
        f" EXAMINATION:  {description}\n \n"
        f" INDICATION:  ___ year old with {reason}  // ? pneumonia\n \n"
        f" TECHNIQUE:  {technique}\n \n"
        f" COMPARISON:  ___\n \n"
        f" FINDINGS: \n \n{wrap(body)}\n \n"
        f" IMPRESSION: \n \n{items}\n"
    )


def unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> list[str]:
    return [str(low + int(v)) for v in rng.choice(high - low, size=n, replace=False)]


def dicom_id(rng: np.random.Generator) -> str:
    """Like the real ids: five dash-separated groups of 8 hex digits."""
    return "-".join(rng.bytes(4).hex() for _ in range(5))


def write_study(
    out_dir: Path,
    subject: str,
    study: str,
    views: list[str],
    found: StudyFindings,
    anatomy_seed: int,
    portable: bool,
    rng: np.random.Generator,
) -> tuple[list[tuple[str, int, int]], dict[str, str]]:
    """Write one study's images and report; return [(dicom_id, rows, columns)] and CheXpert labels."""
    folder = out_dir / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
    folder.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    lesion_seed = int(rng.integers(2**31))
    images = []
    for view in views:
        dicom = dicom_id(rng)
        if view in ("PA", "AP"):
            pixels = frontal_image(anatomy_seed, lesion_seed, found, shape)
        else:
            pixels = lateral_image(rng, shape)
        Image.fromarray(pixels, mode="L").save(folder / f"{dicom}.jpg", quality=95)
        images.append((dicom, *shape))
    if found.short_report:
        text = f"{'FINAL REPORT':>45}\n {SHORT_REPORTS[int(rng.integers(len(SHORT_REPORTS)))]}\n"
        labels = dict.fromkeys(CHEXPERT, "")
        labels["No Finding"] = "1.0"
    else:
        findings, impression, labels = describe(found, rng)
        text = report_text(
            findings,
            impression,
            "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)",
            "Portable AP chest" if portable else "Chest PA and lateral",
            rng,
        )
    folder.with_name(folder.name + ".txt").write_text(text)
    return images, labels


def study_datetime(rng: np.random.Generator) -> tuple[str, str]:
    """StudyDate (shifted into 2110-2210, as in MIMIC) and StudyTime (HHMMSS.fff), shared by a study."""
    date = f"{int(rng.integers(2110, 2210))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    time = f"{int(rng.integers(24)):02d}{int(rng.integers(60)):02d}{int(rng.integers(60)):02d}.{int(rng.integers(1000)):03d}"
    return date, time


def metadata_row(
    dicom: str,
    subject: str,
    study: str,
    view: str,
    shape: tuple[int, int],
    portable: bool,
    when: tuple[str, str],
) -> list[object]:
    description = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
    orientation = "Recumbent" if portable else "Erect"
    return [
        dicom,
        subject,
        study,
        description,
        view,
        *shape,
        *when,
        description,
        VIEW_MEANING[view],
        orientation,
    ]


def write_csv_gz(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


METADATA_COLUMNS = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]


def write(out_dir: Path, n_images: int = DEFAULT_N, seed: int = 0) -> None:
    """Write `n_images` JPEGs (frontal and lateral views) with reports and the three tables.

    Subjects have 1-3 studies; ~15% of subjects each go to the official validate and test splits.
    Every 17th study (from the 4th) gets a report too short for the protocol and shows nothing.
    """
    rng = np.random.default_rng(seed)
    n_subjects = max(3, round(n_images / 3.4))
    subjects = unique_ids(rng, n_subjects, 10_000_000, 20_000_000)
    study_ids = iter(unique_ids(rng, n_images, 50_000_000, 60_000_000))
    order = rng.permutation(n_subjects)
    n_held = max(1, round(0.15 * n_subjects))
    split_of = {subjects[i]: "validate" for i in order[:n_held]}
    split_of.update({subjects[i]: "test" for i in order[n_held : 2 * n_held]})
    metadata: list[list[object]] = []
    split_rows: list[list[object]] = []
    chexpert_rows: list[list[object]] = []
    written = n_studies = 0
    anatomy = {subject: int(rng.integers(2**31)) for subject in subjects}
    while written < n_images:
        subject = subjects[n_studies] if n_studies < n_subjects else str(rng.choice(subjects))
        study = next(study_ids)
        found = StudyFindings(short_report=True) if n_studies % 17 == 3 else draw_findings(rng)
        portable = rng.random() < 0.35
        views = ["AP"] if portable else ["PA"]
        if rng.random() < 0.1:
            views.append("AP")
        if not portable and (n_studies == 0 or rng.random() < 0.5):
            views.append("LATERAL" if rng.random() < 0.9 else "LL")
        views = views[: n_images - written]
        images, labels = write_study(out_dir, subject, study, views, found, anatomy[subject], portable, rng)
        when = study_datetime(rng)
        for view, (dicom, rows, cols) in zip(views, images):
            metadata.append(metadata_row(dicom, subject, study, view, (rows, cols), portable, when))
            split_rows.append([dicom, study, subject, split_of.get(subject, "train")])
        chexpert_rows.append([subject, study, *(labels[c] for c in CHEXPERT)])
        written += len(views)
        n_studies += 1
    write_csv_gz(out_dir / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_COLUMNS, metadata)
    write_csv_gz(
        out_dir / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows
    )
    write_csv_gz(
        out_dir / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT], chexpert_rows
    )
