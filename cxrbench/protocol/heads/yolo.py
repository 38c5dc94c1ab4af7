"""YOLOv3 detection head on ResNet conv3/conv4/conv5, as the reference evaluation (LoVT) trained it.

The reference's variant differs from textbook YOLOv3 (docs/protocol.md, "Heads"): every scale has
its own loss with its own three anchors, so a box is a positive once per scale; each term is a mean
over all cells x anchors of the scale and the batch; centre offsets use binary cross-entropy; and
with one class the score of a box is its objectness alone. The numbers measured here are compared
with the published ones, so this module follows the reference rather than a "better" YOLO.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from cxrbench.encoders import FeatureInfo
from cxrbench.protocol.heads.base import Head
from cxrbench.protocol.metrics.targets import BOXES

# Output order: coarse to fine, as in the reference.
SCALES = ("conv5", "conv4", "conv3")
# Anchors (width, height) in pixels of a 224-px image, per scale in SCALES order.
ANCHORS_224 = (
    ((64.64, 48.6), (84.24, 106.92), (201.42, 176.04)),
    ((16.2, 32.94), (33.48, 24.3), (31.86, 64.26)),
    ((5.4, 7.02), (8.64, 16.2), (17.82, 12.42)),
)
EMBED_WIDTHS = (512, 256, 128)
IGNORE_IOU = 0.5
NOOBJ_WEIGHT = 0.5
LAMBDA_XY, LAMBDA_WH, LAMBDA_CONF, LAMBDA_CLS = 2.5, 2.5, 1.0, 1.0
CONF_THRESHOLD, NMS_IOU = 0.2, 0.4
# Only guards exp() against overflow (a box 1000x its anchor); never reached by a sane prediction.
MAX_LOG_WH = math.log(1e3)
LOSS_TERMS = ("xy", "wh", "conf", "cls")


def _cbl(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)
    )


class _Branch(nn.Module):
    """The 5-conv embedding block (1x1/3x3 alternating); its output feeds both the prediction and the route."""

    def __init__(self, c_in: int, width: int, n_out: int):
        super().__init__()
        self.embed = nn.Sequential(
            _cbl(c_in, width, 1),
            _cbl(width, 2 * width, 3),
            _cbl(2 * width, width, 1),
            _cbl(width, 2 * width, 3),
            _cbl(2 * width, width, 1),
        )
        self.predict = nn.Sequential(_cbl(width, 2 * width, 3), nn.Conv2d(2 * width, n_out, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        route = self.embed(x)
        return route, self.predict(route)


class ScaleTargets(NamedTuple):
    """Dense targets of one scale, each B x 3 x H x W (the reference's masks and target maps)."""

    obj: Tensor  # bool: the responsible cell/anchor of some box
    noobj: Tensor  # bool: cells/anchors whose objectness is pushed towards 0
    txy: Tensor  # B x 3 x H x W x 2: centre offset within the cell (target of the sigmoid)
    twh: Tensor  # B x 3 x H x W x 2: log(box size / anchor size)
    label: Tensor  # long: class of the responsible box (0 elsewhere)


def shape_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """IoU of box shapes (N x 2) with anchor shapes (A x 2), both placed at the origin -> N x A.

    Sizes are in grid cells and use the reference's "+1" convention (a box spans w + 1 by h + 1),
    which it inherited from pixel-inclusive box IoU code.
    """
    inter = (torch.minimum(wh[:, None, 0], anchors[None, :, 0]) + 1) * (
        torch.minimum(wh[:, None, 1], anchors[None, :, 1]) + 1
    )
    area_box = ((wh[:, 0] + 1) * (wh[:, 1] + 1))[:, None]
    area_anchor = ((anchors[:, 0] + 1) * (anchors[:, 1] + 1))[None, :]
    return inter / (area_box + area_anchor - inter)


def build_targets(
    targets: list[Tensor],
    anchors_px: Tensor,
    grid: tuple[int, int],
    image_size: int,
    labels: list[Tensor] | None = None,
) -> ScaleTargets:
    """The targets of one scale for xyxy pixel boxes per image, as the reference builds them.

    Every box goes to the cell holding its centre and to the best of the scale's 3 anchors by
    `shape_iou`; at that cell, anchors whose shape IoU exceeds IGNORE_IOU leave the no-object mask
    (the responsible anchor stays in it when its own IoU does not exceed the threshold, as in the
    reference). Boxes are visited in order, so a later box claiming the same cell and anchor
    replaces an earlier one. Boxes without area are skipped.
    """
    h, w = grid
    device = anchors_px.device
    n_images = len(targets)
    stride = torch.tensor([image_size / w, image_size / h], device=device)
    anchors = anchors_px / stride  # grid units
    obj = torch.zeros(n_images, 3, h, w, dtype=torch.bool, device=device)
    noobj = torch.ones_like(obj)
    txy = torch.zeros(n_images, 3, h, w, 2, device=device)
    twh = torch.zeros_like(txy)
    label = torch.zeros(n_images, 3, h, w, dtype=torch.long, device=device)
    for b, boxes in enumerate(targets):
        boxes = boxes.reshape(-1, 4).to(device, torch.float32)
        classes = (
            torch.zeros(len(boxes), dtype=torch.long, device=device)
            if labels is None
            else labels[b].reshape(-1).to(device, torch.long)
        )
        size = (boxes[:, 2:] - boxes[:, :2]) / stride
        keep = (size > 0).all(1)
        boxes, classes, size = boxes[keep], classes[keep], size[keep]
        if not len(boxes):
            continue
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
        gx = centre[:, 0].long().clamp(0, w - 1)
        gy = centre[:, 1].long().clamp(0, h - 1)
        ious = shape_iou(size, anchors)
        ignore_box, ignore_anchor = torch.nonzero(ious > IGNORE_IOU, as_tuple=True)
        noobj[b, ignore_anchor, gy[ignore_box], gx[ignore_box]] = False
        best = ious.argmax(1)
        offset = (centre - torch.stack([gx, gy], 1)).clamp(0, 1)
        log_size = torch.log(size / anchors[best])
        for k in range(len(boxes)):  # in order: the last box at a cell/anchor wins
            a, y, x = best[k], gy[k], gx[k]
            obj[b, a, y, x] = True
            txy[b, a, y, x] = offset[k]
            twh[b, a, y, x] = log_size[k]
            label[b, a, y, x] = classes[k]
    return ScaleTargets(obj, noobj, txy, twh, label)


def scale_loss(out: Tensor, tgt: ScaleTargets, n_classes: int) -> dict[str, Tensor]:
    """Unweighted loss terms of one scale; each a sum over the masked cells divided by all B*3*H*W.

    `xy` is BCE of the sigmoid offsets (x plus y), `wh` the squared error of the log-sizes (w plus
    h), `conf` BCE towards 1 on positives plus NOOBJ_WEIGHT x BCE towards 0 on the no-object mask,
    `cls` BCE of the class logits on positives, averaged over classes too (zero with one class).
    """
    n_cells = out[..., 0].numel()
    pos = tgt.obj
    pred = out[pos]
    xy = F.binary_cross_entropy_with_logits(pred[:, :2], tgt.txy[pos], reduction="sum") / n_cells
    wh = ((pred[:, 2:4] - tgt.twh[pos]) ** 2).sum() / n_cells
    obj_logit = out[..., 4]
    conf = F.binary_cross_entropy_with_logits(pred[:, 4], torch.ones_like(pred[:, 4]), reduction="sum")
    neg = obj_logit[tgt.noobj]
    conf = conf + NOOBJ_WEIGHT * F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg), reduction="sum"
    )
    conf = conf / n_cells
    if n_classes == 1:
        cls = out.new_zeros(())
    else:
        onehot = F.one_hot(tgt.label[pos], n_classes).to(out.dtype)
        cls = F.binary_cross_entropy_with_logits(pred[:, 5:], onehot, reduction="sum") / (n_cells * n_classes)
    return {"xy": xy, "wh": wh, "conf": conf, "cls": cls}


class YoloV3Head(Head):
    """Three-scale YOLOv3 head; `forward` returns raw B x 3 x H x W x (5 + C) maps in SCALES order.

    The last dimension is (tx, ty, tw, th, objectness, class logits...). Box coordinates everywhere are
    xyxy pixels of the (square) `image_size` input.
    """

    name = "yolo"
    target = BOXES
    required_stages = ("conv3", "conv4", "conv5")

    def __init__(
        self,
        feature_info: FeatureInfo,
        n_classes: int = 1,
        image_size: int = 224,
        embed_widths: tuple[int, int, int] = EMBED_WIDTHS,
    ):
        """`embed_widths` are the reference's widths of the three embedding blocks (smaller in tests)."""
        super().__init__()
        self.n_classes = n_classes
        self.image_size = image_size
        n_out = 3 * (5 + n_classes)
        ch = feature_info.channels
        w5, w4, w3 = embed_widths
        self.branch5 = _Branch(ch["conv5"], w5, n_out)
        self.reduce5 = _cbl(w5, w5 // 2, 1)
        self.branch4 = _Branch(ch["conv4"] + w5 // 2, w4, n_out)
        self.reduce4 = _cbl(w4, w4 // 2, 1)
        self.branch3 = _Branch(ch["conv3"] + w4 // 2, w3, n_out)
        anchors = torch.tensor(ANCHORS_224, dtype=torch.float32) * (image_size / 224)
        self.register_buffer("anchors", anchors, persistent=False)  # 3 scales x 3 anchors x (w, h)

    @classmethod
    def build(cls, feature_info: FeatureInfo, n_classes: int, image_size: int) -> YoloV3Head:
        return cls(feature_info, n_classes, image_size)

    def training_loss(self, output: list[Tensor], targets: list[Tensor]) -> Tensor:
        """The weighted sum of the loss terms (see `loss`); single-class tasks pass no labels."""
        return self.loss(output, targets)["total"]

    def to_predictions(self, output: list[Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(boxes, scores) per image after the confidence threshold and NMS of `decode`."""
        return [(b.float().cpu().numpy(), s.float().cpu().numpy()) for b, s, _ in self.decode(output)]

    def forward(self, features: dict[str, Tensor], out_size: tuple[int, int] | None = None) -> list[Tensor]:
        """Raw predictions per scale (`out_size` is accepted for a uniform head interface and unused)."""
        c3, c4, c5 = features["conv3"], features["conv4"], features["conv5"]
        route5, out5 = self.branch5(c5)
        up5 = F.interpolate(self.reduce5(route5), size=c4.shape[-2:], mode="nearest")
        route4, out4 = self.branch4(torch.cat([up5, c4], 1))
        up4 = F.interpolate(self.reduce4(route4), size=c3.shape[-2:], mode="nearest")
        _, out3 = self.branch3(torch.cat([up4, c3], 1))
        return [self._split_anchors(o) for o in (out5, out4, out3)]

    def _split_anchors(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return x.view(b, 3, 5 + self.n_classes, h, w).permute(0, 1, 3, 4, 2).contiguous()

    def targets(
        self, targets: list[Tensor], grids: list[tuple[int, int]], labels: list[Tensor] | None = None
    ) -> list[ScaleTargets]:
        """`build_targets` for each scale (grids in SCALES order)."""
        if labels is not None:
            for boxes, lab in zip(targets, labels, strict=True):
                if lab.numel() != len(boxes.reshape(-1, 4)):
                    raise ValueError(f"{lab.numel()} labels for {len(boxes.reshape(-1, 4))} boxes")
                if lab.numel() and (lab.min() < 0 or lab.max() >= self.n_classes):
                    raise ValueError(f"labels must lie in [0, {self.n_classes}), got {lab.unique().tolist()}")
        return [
            build_targets(targets, self.anchors[s], grid, self.image_size, labels)
            for s, grid in enumerate(grids)
        ]

    def loss(
        self, outputs: list[Tensor], targets: list[Tensor], labels: list[Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The reference's loss: per scale, `scale_loss` weighted by the lambdas, summed over scales.

        Returns keys total, xy, wh, conf, cls (each term summed over scales). `targets[i]` is an
        M x 4 tensor of xyxy pixel boxes for image i (M may be 0); `labels[i]` its class indices
        (all 0 when None). Computed in float32 even under autocast, as the reference does.
        """
        device_type = outputs[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            outputs = [o.float() for o in outputs]
            grids = [tuple(o.shape[2:4]) for o in outputs]
            scale_targets = self.targets([t.to(outputs[0].device) for t in targets], grids, labels)
            terms = {k: outputs[0].new_zeros(()) for k in LOSS_TERMS}
            for out, tgt in zip(outputs, scale_targets):
                for k, v in scale_loss(out, tgt, self.n_classes).items():
                    terms[k] = terms[k] + v
            total = (
                LAMBDA_XY * terms["xy"]
                + LAMBDA_WH * terms["wh"]
                + LAMBDA_CONF * terms["conf"]
                + LAMBDA_CLS * terms["cls"]
            )
        return {"total": total, **terms}

    def pred_boxes(self, out: Tensor, scale: int) -> Tensor:
        """Decode one scale's raw map to xyxy pixel boxes, B x 3 x H x W x 4 (not clipped, as the reference)."""
        _, _, h, w, _ = out.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, device=out.device, dtype=out.dtype),
            torch.arange(w, device=out.device, dtype=out.dtype),
            indexing="ij",
        )
        cx = (out[..., 0].sigmoid() + gx) * (self.image_size / w)
        cy = (out[..., 1].sigmoid() + gy) * (self.image_size / h)
        anchors = self.anchors[scale].to(out.dtype).view(1, 3, 1, 1, 2)
        wh = out[..., 2:4].clamp(max=MAX_LOG_WH).exp() * anchors
        return torch.stack(
            [cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1
        )

    @torch.no_grad()
    def decode(
        self,
        outputs: list[Tensor],
        conf_threshold: float = CONF_THRESHOLD,
        nms_iou: float = NMS_IOU,
        max_detections: int | None = None,
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image (boxes N x 4 xyxy pixels, scores N, labels N), best first.

        score = objectness (the reference's `conf`, whatever the number of classes); the label is the
        most likely class. Boxes scoring below `conf_threshold` are dropped, then class-wise
        `nms` at `nms_iou`. Boxes are not clipped to the image (the reference does not clip).
        """
        boxes, scores, labels = [], [], []
        for scale, out in enumerate(outputs):
            out = out.float()
            n = out.shape[0]
            boxes.append(self.pred_boxes(out, scale).view(n, -1, 4))
            scores.append(out[..., 4].sigmoid().view(n, -1))
            labels.append(out[..., 5:].argmax(-1).view(n, -1))
        boxes_b, scores_b, labels_b = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(labels, 1)
        results = []
        for b, s, lab in zip(boxes_b, scores_b, labels_b):
            keep = s >= conf_threshold
            b, s, lab = b[keep], s[keep], lab[keep]
            idx = nms(b, s, lab, nms_iou)
            if max_detections is not None:
                idx = idx[:max_detections]
            results.append((b[idx], s[idx], lab[idx]))
        return results


def nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """Class-wise greedy NMS as the reference's: a box is removed when its IoU with a kept,
    higher-scoring box is >= `iou`, IoU computed with the "+1" pixel convention; indices, best first.

    The +1 IoU of two boxes equals the ordinary IoU of the boxes grown by one pixel to the right and
    bottom, and torchvision removes IoU > t; the largest float32 below `iou` turns that into >= iou.
    """
    grown = torch.cat([boxes[:, :2], boxes[:, 2:] + 1], 1)
    below = float(np.nextafter(np.float32(iou), np.float32(0)))
    return batched_nms(grown, scores, labels, below)
