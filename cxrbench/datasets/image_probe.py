"""Cheap checks of raw image files: readable header, expected format, size, not cut short.

`verify` uses these to find, without decoding pixels, the files that `prepare` would skip: empty
files, foreign files (a PNG where a DICOM is expected, an HTML error page saved as .jpg) and
downloads cut short (PNG without its IEND chunk, JPEG without its end-of-image marker, DICOM
shorter than its pixel data). `verify --deep` decodes every image instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cxrbench.datasets.dicom_io import read_dicom_header
from cxrbench.errors import DataError

DICOM, RASTER = "dicom", "raster"
PNG_END = b"IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # ends encapsulated (compressed) DICOM pixel data
ENCAPSULATED_PREFIX = "1.2.840.10008.1.2.4"  # JPEG family transfer syntaxes


def _tail(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - n))
        return fh.read()


def probe_image(path: str | Path, kind: str) -> tuple[int, int]:
    """(height, width) of an image file of `kind` ('dicom' or 'raster'); DataError naming the file if unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(
            path, f"cannot be read ({exc.strerror or exc})", expected="a readable image file"
        ) from exc
    if size == 0:
        raise DataError(path, "file is empty (0 bytes)", expected="a complete image file")
    return _probe_dicom(path, size) if kind == DICOM else _probe_raster(path)


def _probe_dicom(path: Path, size: int) -> tuple[int, int]:
    header = read_dicom_header(path)
    rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise DataError(path, "DICOM header has no image size (Rows/Columns)", expected="a DICOM image")
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax.startswith(ENCAPSULATED_PREFIX):
        if _tail(path, len(SEQUENCE_DELIMITER)) != SEQUENCE_DELIMITER:
            raise DataError(
                path,
                "DICOM file is cut short (compressed pixel data does not end)",
                expected="a complete DICOM image",
            )
    else:
        bits = int(header.get("BitsAllocated", 8) or 8)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        need = rows * columns * samples * frames * bits // 8
        if size < need:
            raise DataError(
                path,
                f"DICOM file is cut short ({size} bytes, its {rows}x{columns} pixel data needs {need})",
                expected="a complete DICOM image",
            )
    return rows, columns


def _probe_raster(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            width, height, fmt = img.width, img.height, img.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"not a readable image ({exc})", expected="a PNG or JPEG file") from exc
    end = {"PNG": PNG_END, "JPEG": JPEG_END, "MPO": JPEG_END}.get(fmt or "")
    if end is None:
        raise DataError(path, f"is a {fmt} image", expected="a PNG or JPEG file")
    tail = _tail(path, 64)
    if end not in tail:
        raise DataError(path, f"{fmt} file is cut short (no end marker)", expected=f"a complete {fmt} file")
    return height, width
