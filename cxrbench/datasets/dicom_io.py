"""DICOM reading (MONOCHROME1/2, bit depth, rescale, JPEG Baseline) and writing (for phantoms).

JPEG Baseline (1.2.840.10008.1.2.4.50) pixel data, as in the RSNA and SIIM downloads, is decoded
by pydicom's Pillow handler; uncompressed 8/16-bit data needs nothing else. Other compressed
syntaxes (JPEG 2000, JPEG-LS) need the optional pylibjpeg plugins and fail with a clear message.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from cxrbench.errors import DataError


def read_dicom_header(path: str | Path) -> pydicom.Dataset:
    """Read tags only (fast): used to get PatientID etc. without decoding pixels."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise DataError(path, f"not a readable DICOM file: {exc}", expected="a DICOM Part 10 file") from exc


def _baseline_greyscale(ds: pydicom.Dataset) -> Image.Image | None:
    """One 8-bit greyscale JPEG Baseline frame decoded by Pillow directly (an "L" image), else None.

    The pixels pydicom's Pillow decoder returns for such a frame (the same `Image.open(...)` decode)
    without its per-call machinery or copies: a few ms of the ~10 ms per RSNA image in `prepare`.
    Anything else (or a frame that does not match its header) goes through `ds.pixel_array`.
    """
    if (
        ds.file_meta.get("TransferSyntaxUID") != JPEGBaseline8Bit
        or int(ds.get("SamplesPerPixel", 1)) != 1
        or int(ds.get("NumberOfFrames", 1) or 1) != 1
        or int(ds.get("BitsAllocated", 8)) != 8
        or int(ds.get("BitsStored", 8)) != 8
        or int(ds.get("PixelRepresentation", 0)) != 0
        or "PixelData" not in ds
    ):
        return None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    image = Image.open(io.BytesIO(frame), formats=("JPEG",))
    if image.mode != "L" or image.size != (int(ds.Columns), int(ds.Rows)):
        return None
    image.load()
    return image


def _scaled(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality-LUT float32 `values` (a new array) -> [0, 1] in place, MONOCHROME1 inverted."""
    bits = int(ds.get("BitsStored", 8))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    lo = intercept + min(0.0, slope * (2**bits - 1))
    hi = intercept + max(0.0, slope * (2**bits - 1))
    values -= lo  # in place, float32 throughout: the same values as out of place, without temporaries
    values /= max(hi - lo, 1e-6)
    np.clip(values, 0.0, 1.0, out=values)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        np.subtract(1.0, values, out=values)
    return values


def read_dicom_scaled(path: str | Path) -> np.ndarray | Image.Image:
    """`read_dicom_image`'s values, as a Pillow "F" image for an 8-bit greyscale JPEG Baseline frame.

    That frame's 256 possible values are scaled once (a table through the same float32 steps) and
    mapped by Pillow, so `prepare` resizes it with no numpy copies between; every value equals
    `read_dicom_image`'s. Other images come back as that float32 array.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        image = _baseline_greyscale(ds)
        if image is not None:
            levels = apply_modality_lut(np.arange(256, dtype=np.uint8), ds).astype(np.float32)
            return image.point(_scaled(levels, ds).tolist(), "F")
        pixels = ds.pixel_array
    except Exception as exc:
        raise DataError(
            path,
            f"cannot decode DICOM pixel data: {exc}",
            expected="a complete DICOM image (file truncated?)",
        ) from exc
    if pixels.ndim == 3 and ds.get("SamplesPerPixel", 1) == 3:
        pixels = pixels.astype(np.float32).mean(axis=-1)
    if pixels.ndim != 2:
        raise DataError(
            path, f"pixel array has shape {pixels.shape}", expected="a single 2-D greyscale frame"
        )
    return _scaled(apply_modality_lut(pixels, ds).astype(np.float32), ds)


def read_dicom_image(path: str | Path) -> np.ndarray:
    """Decode a DICOM image to float32 HxW in [0, 1], bright = dense (MONOCHROME2 convention)."""
    image = read_dicom_scaled(path)
    return image if isinstance(image, np.ndarray) else np.array(image, dtype=np.float32)


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    sop_instance_uid: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    view_position: str = "PA",
    photometric: str = "MONOCHROME2",
    jpeg_baseline: bool = True,
    bits_stored: int | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """Write a greyscale DICOM (8-bit JPEG Baseline, or uncompressed 8/16-bit); return its SOP UID.

    `pixels` are stored as given (uint8 or uint16); MONOCHROME1 callers pass already-inverted data.
    """
    pixels = np.ascontiguousarray(pixels)
    sop_uid = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg_baseline else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if jpeg_baseline:
        if pixels.dtype != np.uint8:
            raise ValueError("JPEG Baseline DICOM needs uint8 pixels")
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.PixelData = pixels.tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop_uid
