"""COVID Rural adapter: TCIA COVID-19-AR chest radiographs with opacity segmentation masks.

Citation (images): Desai S. et al., "Chest imaging representing a COVID-19 positive rural U.S.
population", Scientific Data 7, 414 (2020); The Cancer Imaging Archive collection COVID-19-AR,
https://doi.org/10.7937/tcia.2020.py71-5978. Citation (masks): Tang H. et al., "Deep learning
segmentation model for automated detection of the opacity regions in the chest X-rays of the
Covid-19 positive patients and the application for disease severity", medRxiv 2020,
https://doi.org/10.1101/2020.10.19.20215483; the jpgs/ and pngs_masks/ folders as distributed
with that work (https://github.com/haimingt/opacity_segmentation_covid_chest_X_ray).
Licence: TCIA data usage policy for the COVID-19-AR collection (CC BY 4.0 at the time of
writing; check the collection page) and the mask repository's terms.

Raw layout: jpgs/COVID-19-AR-<patient>_<...>.jpg and pngs_masks/<same stem>.png (0/1 opacity
mask). Images without a mask were not annotated and are dropped by design (221 images keep a
mask); they are counted, not reported as errors or as extra files. Split 60/20/20 by patient
(133/44/44). Histogram-equalised at preparation (docs/protocol.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from cxrbench.datasets.base import DatasetAdapter, LoadedSample, Problems, RawSample
from cxrbench.datasets.imaging import read_binary_mask, read_raster
from cxrbench.errors import DataError

IMAGES = "jpgs"
MASKS = "pngs_masks"
PATIENT = re.compile(r"^COVID-19-AR-(\d+)")


def _images(raw_root: Path) -> list[Path]:
    return sorted(p for p in (raw_root / IMAGES).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def mask_path(raw_root: Path, image: Path) -> Path:
    return raw_root / MASKS / f"{image.stem}.png"


class CovidRuralAdapter(DatasetAdapter):
    name = "covid_rural"
    classes = ("opacity",)
    has_masks = True
    equalize = True
    expected_counts = {"train": 133, "val": 44, "test": 44}
    layout = (
        "RAW_DIR/\n"
        f"  {IMAGES}/COVID-19-AR-<patient>_<...>.jpg   radiographs (patient id = the number after COVID-19-AR-)\n"
        f"  {MASKS}/<same stem>.png                opacity mask, 0/1, same size as its image;\n"
        "                                          images without a mask are not annotated and are dropped"
    )

    def required_files(self, raw_root: Path) -> list[Path]:
        return [raw_root / IMAGES, raw_root / MASKS]

    def dropped_without_mask(self, raw_root: Path) -> list[Path]:
        """Images that have no mask: not annotated, so left out by design (not an error)."""
        return [p for p in _images(raw_root) if not mask_path(raw_root, p).exists()]

    def image_files(self, raw_root: Path) -> Iterable[Path]:
        """Annotated images and every mask file, so orphan masks show up as 'extra'.

        Masks of listed images are matched to their image in `verify` via the listing below;
        images without a mask are expected and therefore not 'extra'.
        """
        images = {p.stem for p in _images(raw_root)}
        yield from (p for p in _images(raw_root) if mask_path(raw_root, p).exists())
        yield from sorted(p for p in (raw_root / MASKS).glob("*.png") if p.stem not in images)

    def list_samples(self, raw_root: Path, problems: Problems) -> list[RawSample]:
        samples = []
        dropped = 0
        for path in _images(raw_root):
            match = PATIENT.match(path.name)
            if match is None:
                problems.add(
                    path,
                    "cannot derive the patient id from the file name; image skipped",
                    expected="a name like COVID-19-AR-16406491_XR_CHEST_AP_PORTABLE_1.jpg",
                )
                continue
            mask = mask_path(raw_root, path)
            if not mask.exists():
                dropped += 1
                continue
            samples.append(
                RawSample(
                    image_id=path.stem,
                    patient_id=match.group(1),
                    path=path,
                    source=(str(path), None),
                    annotation=mask,
                )
            )
        self.info = {"dropped_without_mask": dropped}
        return samples

    def check_annotation(self, sample: RawSample, height: int, width: int) -> None:
        from cxrbench.datasets.image_probe import RASTER, probe_image

        mask_height, mask_width = probe_image(sample.annotation, RASTER)
        if (mask_height, mask_width) != (height, width):
            raise DataError(
                sample.annotation,
                f"mask is {mask_width}x{mask_height} but its image {sample.path.name} is {width}x{height}",
                expected="a mask of the same size as its image",
            )

    def load(self, sample: RawSample) -> LoadedSample:
        image = read_raster(sample.path)
        mask = read_binary_mask(sample.annotation)
        if mask.shape != image.shape:
            raise DataError(
                sample.annotation,
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {sample.path.name} is "
                f"{image.shape[1]}x{image.shape[0]}",
                expected="a mask of the same size as its image",
            )
        return LoadedSample(image, mask[None])
