"""The predictions file beside each ok run record (``run-<key>.npz``): written here, read here.

It keeps a run's test predictions and ground truth so metrics can be recomputed without retraining
(`cxrbench rescore`) and a few test images with their masks/boxes for the leaderboard's overlays.
Arrays (numpy ``.npz``, compressed, no pickled objects):

- ``format_version`` (int, absent in files written before it existed: read as 1);
- ``image_ids`` (N strings) and ``kind`` (the metric: "dice", "map" or "froc");
- segmentation ("dice"): ``pred_masks``/``gt_masks`` (N x C x H x ceil(W/8) uint8, bits packed along
  the width) and ``mask_shape`` ((N, C, H, W) int64);
- detection: ``pred_boxes`` (P x 4 float32, xyxy pixels), ``pred_scores`` (P), ``pred_offsets``
  (N + 1 int64: image i owns rows offsets[i]:offsets[i+1]), ``gt_boxes`` and ``gt_offsets`` alike;
- ``overlay_index`` (K int64, positions in the test split) and ``overlay_images`` (K x H x W uint8).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.io_utils import atomic_path
from cxrbench.protocol.metrics import MASKS, get_metric

FORMAT_VERSION = 1
N_OVERLAYS = 4
OVERLAY_KEYS = ("overlay_index", "overlay_images")


class PredictionsError(CxrbenchError):
    """A predictions file that cannot be read (missing, corrupt, another metric or format)."""


def is_segmentation(kind: str) -> bool:
    """Whether the metric `kind` scores masks (else boxes): its registered target decides."""
    return get_metric(kind).target is MASKS


def overlay_positions(n: int) -> np.ndarray:
    """The test-split positions whose images are kept for overlays: N_OVERLAYS spread evenly."""
    if not n:
        return np.zeros(0, np.int64)
    return np.linspace(0, n - 1, num=min(N_OVERLAYS, n)).round().astype(np.int64)


def encode_predictions(
    kind: str,
    image_ids: Sequence[str],
    batches: Sequence[tuple[object, object]],
    images_at: Callable[[np.ndarray], np.ndarray],
) -> dict[str, np.ndarray]:
    """The file's arrays from per-batch (predictions, targets) in the metrics API form (bool masks
    N x C x H x W, or lists of (boxes, scores) and of gt boxes); `images_at(positions)` returns the
    uint8 test images at those positions (for the overlays)."""
    out: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, np.int64),
        "image_ids": np.array(list(image_ids)),
        "kind": np.array(kind),
    }
    if is_segmentation(kind):
        pred = np.concatenate([np.asarray(p) for p, _ in batches])
        gt = np.concatenate([np.asarray(g) for _, g in batches])
        out["pred_masks"] = np.packbits(pred, axis=-1)
        out["gt_masks"] = np.packbits(gt, axis=-1)
        out["mask_shape"] = np.array(pred.shape, dtype=np.int64)
    else:
        preds = [p for batch, _ in batches for p in batch]  # type: ignore[attr-defined]
        gts = [g for _, batch in batches for g in batch]  # type: ignore[attr-defined]
        out["pred_boxes"] = _stack_boxes([b for b, _ in preds])
        out["pred_scores"] = (
            np.concatenate([s for _, s in preds]).astype(np.float32) if preds else np.zeros(0, np.float32)
        )
        out["pred_offsets"] = _offsets([len(s) for _, s in preds])
        out["gt_boxes"] = _stack_boxes(gts)
        out["gt_offsets"] = _offsets([len(g) for g in gts])
    overlay = overlay_positions(len(image_ids))
    out["overlay_index"] = overlay
    out["overlay_images"] = np.asarray(images_at(overlay))
    return out


def _stack_boxes(boxes: Sequence[np.ndarray]) -> np.ndarray:
    if not boxes:
        return np.zeros((0, 4), np.float32)
    return np.concatenate(boxes).astype(np.float32).reshape(-1, 4)


def _offsets(counts: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def write_predictions(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays atomically as a compressed .npz."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


@dataclass
class Predictions:
    """A predictions file as read back: every array decompressed once."""

    path: Path
    kind: str
    image_ids: list[str]
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.image_ids)

    def chunks(self, size: int) -> Iterator[tuple[object, object]]:
        """(predictions, targets) in the metrics API form, `size` images at a time (so a large
        segmentation split never sits in memory as unpacked bools)."""
        a = self.arrays
        for start in range(0, len(self), size):
            rows = np.arange(start, min(start + size, len(self)))
            if is_segmentation(self.kind):
                yield (
                    _unpack(a["pred_masks"], a["mask_shape"], rows),
                    _unpack(a["gt_masks"], a["mask_shape"], rows),
                )
            else:
                yield (
                    [(self.boxes("pred", i), self.scores(i)) for i in rows],
                    [self.boxes("gt", i) for i in rows],
                )

    def boxes(self, which: str, i: int) -> np.ndarray:
        """Image i's boxes (k x 4 float32), `which` = "pred" or "gt"."""
        off = self.arrays[f"{which}_offsets"]
        return self.arrays[f"{which}_boxes"].reshape(-1, 4)[off[i] : off[i + 1]]

    def scores(self, i: int) -> np.ndarray:
        off = self.arrays["pred_offsets"]
        return self.arrays["pred_scores"][off[i] : off[i + 1]]

    def masks(self, which: str, rows: np.ndarray) -> np.ndarray:
        """Bool masks (len(rows) x C x H x W) of the chosen images, `which` = "pred" or "gt"."""
        return _unpack(self.arrays[f"{which}_masks"], self.arrays["mask_shape"], rows)

    @property
    def has_overlays(self) -> bool:
        return all(k in self.arrays for k in OVERLAY_KEYS)


def _unpack(packed: np.ndarray, shape: np.ndarray, rows: np.ndarray) -> np.ndarray:
    _, c, h, w = (int(v) for v in shape)
    return np.unpackbits(packed[rows], axis=-1, count=w).astype(bool).reshape(-1, c, h, w)


def read_predictions(path: Path, kind: str | None = None) -> Predictions:
    """Read and check a predictions file (of metric `kind` when given); PredictionsError otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:  # closed even when damaged
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise PredictionsError(f"predictions file {path} is missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise PredictionsError(f"cannot read predictions file {path}: {exc}") from None
    version = int(arrays.pop("format_version", FORMAT_VERSION))
    if version != FORMAT_VERSION:
        raise PredictionsError(
            f"{path}: predictions format_version {version}, this cxrbench reads {FORMAT_VERSION}"
        )
    if "kind" not in arrays or "image_ids" not in arrays:
        raise PredictionsError(f"{path}: predictions file lacks kind/image_ids")
    stored = str(arrays.pop("kind"))
    if kind is not None and stored != kind:
        raise PredictionsError(
            f"{path}: predictions are for metric {stored!r}, the record's metric is {kind!r}"
        )
    try:
        keys = get_metric(stored).target.prediction_keys
    except CxrbenchError as exc:
        raise PredictionsError(f"{path}: {exc}") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise PredictionsError(f"{path}: predictions file lacks {', '.join(missing)}")
    ids = [str(i) for i in arrays.pop("image_ids")]
    return Predictions(path, stored, ids, arrays)
