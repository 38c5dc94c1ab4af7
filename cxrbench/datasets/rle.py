"""SIIM-ACR run-length encoding.

The SIIM train-rle.csv format: space-separated pairs "gap length" where each gap is counted from
the end of the previous run (relative offsets, not absolute starts), over the image flattened in
column-major order (i.e. the transposed image flattened row-major). "-1" means an empty mask.
"""

from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """A malformed or out-of-bounds RLE string."""


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one SIIM RLE string into a bool HxW mask."""
    rle = rle.strip()
    flat = np.zeros(height * width, dtype=bool)
    if rle in ("-1", ""):
        return flat.reshape(width, height).T
    try:
        values = np.array([int(v) for v in rle.split()], dtype=np.int64)
    except ValueError as exc:
        raise RLEError(f"non-integer token in RLE: {exc}") from exc
    if len(values) % 2:
        raise RLEError(f"RLE has an odd number of values ({len(values)}): expected gap/length pairs")
    gaps, lengths = values[0::2], values[1::2]
    if (gaps < 0).any() or (lengths <= 0).any():
        raise RLEError("RLE has a negative gap or a non-positive run length")
    ends_before = np.cumsum(gaps + lengths)
    starts = ends_before - lengths
    if len(ends_before) and ends_before[-1] > flat.size:
        raise RLEError(
            f"RLE runs past the end of the {width}x{height} image ({ends_before[-1]} > {flat.size} pixels)"
        )
    for start, length in zip(starts, lengths):
        flat[start : start + length] = True
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Encode a bool HxW mask in SIIM's relative, column-major RLE ("-1" when empty)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    if not flat.any():
        return "-1"
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    lengths = ends - starts
    previous_end = np.concatenate([[0], ends[:-1]])
    gaps = starts - previous_end
    return " ".join(f"{g} {n}" for g, n in zip(gaps, lengths))
