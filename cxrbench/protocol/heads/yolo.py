"""YOLOv3 detection head on ResNet conv3/conv4/conv5, with its loss and box decoding (docs/protocol.md)."""

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

# Output order: coarse to fine, as in the classic YOLOv3 implementations.
SCALES = ("conv5", "conv4", "conv3")
# Anchors (width, height) in pixels of a 224-px image, per scale in SCALES order.
ANCHORS_224 = (
    ((64.64, 48.6), (84.24, 106.92), (201.42, 176.04)),
    ((16.2, 32.94), (33.48, 24.3), (31.86, 64.26)),
    ((5.4, 7.02), (8.64, 16.2), (17.82, 12.42)),
)
EMBED_WIDTHS = (512, 256, 128)
IGNORE_IOU = 0.5
LAMBDA_XY, LAMBDA_WH, LAMBDA_CONF, LAMBDA_CLS = 2.5, 2.5, 1.0, 1.0
# Initial objectness probability: keeps the ~3k no-object terms from swamping the first steps and
# keeps an untrained head from flooding NMS with boxes at the 0.2 confidence threshold.
OBJ_PRIOR = 0.01
MAX_LOG_WH = math.log(1e3)


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


class Assignment(NamedTuple):
    """Ground truths assigned to one scale: the responsible cell/anchor and the regression targets."""

    batch: Tensor  # n
    anchor: Tensor  # n, 0..2 within the scale
    gy: Tensor  # n
    gx: Tensor  # n
    txy: Tensor  # n x 2, centre offset within the cell (target of the sigmoid)
    twh: Tensor  # n x 2, log(size / anchor)
    label: Tensor  # n


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
        """`embed_widths` are the classic YOLOv3 widths of the three embedding blocks (smaller in tests)."""
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
        self.strides = tuple(feature_info.strides[s] for s in SCALES)
        anchors = torch.tensor(ANCHORS_224, dtype=torch.float32) * (image_size / 224)
        self.register_buffer("anchors", anchors, persistent=False)  # 3 scales x 3 anchors x (w, h)
        for branch in (self.branch5, self.branch4, self.branch3):
            bias = branch.predict[-1].bias.data.view(3, 5 + n_classes)
            bias[:, 4] = math.log(OBJ_PRIOR / (1 - OBJ_PRIOR))

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

    def pred_boxes(self, out: Tensor, scale: int) -> Tensor:
        """Decode one scale's raw map to xyxy pixel boxes, B x 3 x H x W x 4 (not clipped)."""
        _, _, h, w, _ = out.shape
        stride = self.strides[scale]
        gy, gx = torch.meshgrid(
            torch.arange(h, device=out.device, dtype=out.dtype),
            torch.arange(w, device=out.device, dtype=out.dtype),
            indexing="ij",
        )
        cx = (out[..., 0].sigmoid() + gx) * stride
        cy = (out[..., 1].sigmoid() + gy) * stride
        anchors = self.anchors[scale].to(out.dtype).view(1, 3, 1, 1, 2)
        wh = out[..., 2:4].clamp(max=MAX_LOG_WH).exp() * anchors
        return torch.stack(
            [cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1
        )

    def assign(
        self, targets: list[Tensor], labels: list[Tensor] | None, grid_sizes: list[tuple[int, int]]
    ) -> list[Assignment]:
        """Give each GT box to the best-shape-IoU anchor of all 9, at its centre's cell on that scale.

        Boxes with zero width or height are dropped; two GTs claiming the same cell and anchor keep
        the first.
        """
        device = self.anchors.device
        boxes = torch.cat([t.reshape(-1, 4) for t in targets]).to(device, torch.float32)
        batch = torch.cat([torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(targets)]).to(
            device
        )
        if labels is None:
            label = torch.zeros(len(boxes), dtype=torch.long, device=device)
        else:
            label = torch.cat([lab.reshape(-1) for lab in labels]).to(device, torch.long)
            if len(label) != len(boxes):
                raise ValueError(f"{len(label)} labels for {len(boxes)} boxes")
            if len(label) and (label.min() < 0 or label.max() >= self.n_classes):
                raise ValueError(f"labels must lie in [0, {self.n_classes}), got {label.unique().tolist()}")
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh > 0).all(1)
        boxes, batch, label, wh = boxes[keep], batch[keep], label[keep], wh[keep]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        all_anchors = self.anchors.view(9, 2)
        inter = torch.minimum(wh[:, None], all_anchors[None]).prod(-1)
        shape_iou = inter / (wh.prod(-1)[:, None] + all_anchors.prod(-1)[None] - inter)
        best = shape_iou.argmax(1) if len(boxes) else torch.zeros(0, dtype=torch.long, device=device)
        result = []
        for scale, (h, w) in enumerate(grid_sizes):
            sel = best // 3 == scale
            anchor = best[sel] % 3
            g = centre[sel] / self.strides[scale]
            gx = g[:, 0].long().clamp(0, w - 1)
            gy = g[:, 1].long().clamp(0, h - 1)
            b = batch[sel]
            cell = ((b * 3 + anchor) * h + gy) * w + gx
            first = _first_occurrence(cell)
            txy = (g - torch.stack([gx, gy], 1)).clamp(0, 1)
            twh = torch.log(wh[sel] / self.anchors[scale][anchor])
            result.append(
                Assignment(
                    b[first], anchor[first], gy[first], gx[first], txy[first], twh[first], label[sel][first]
                )
            )
        return result

    def loss(
        self, outputs: list[Tensor], targets: list[Tensor], labels: list[Tensor] | None = None
    ) -> dict[str, Tensor]:
        """YOLOv3 loss summed over cells and divided by the batch size; keys total, xy, wh, conf, cls.

        `targets[i]` is an M x 4 tensor of xyxy pixel boxes for image i (M may be 0); `labels[i]` its
        class indices (all 0 when None).
        """
        outputs = [o.float() for o in outputs]
        n_images = outputs[0].shape[0]
        gt, gt_valid = _pad_boxes(targets, outputs[0].device)
        assignments = self.assign(targets, labels, [tuple(o.shape[2:4]) for o in outputs])
        zero = outputs[0].new_zeros(())
        xy, wh, conf, cls = zero, zero, zero, zero
        for scale, (out, asg) in enumerate(zip(outputs, assignments)):
            obj = torch.zeros(out.shape[:4], dtype=torch.bool, device=out.device)
            obj[asg.batch, asg.anchor, asg.gy, asg.gx] = True
            with torch.no_grad():
                ious = _batched_iou(self.pred_boxes(out, scale).view(n_images, -1, 4), gt)
                ious = ious.masked_fill(~gt_valid[:, None, :], 0.0)
                best_iou = ious.amax(-1) if ious.shape[-1] else torch.zeros(ious.shape[:2], device=out.device)
            noobj = ~obj & ~(best_iou > IGNORE_IOU).view(obj.shape)
            pos = out[asg.batch, asg.anchor, asg.gy, asg.gx]
            xy = xy + ((pos[:, :2].sigmoid() - asg.txy) ** 2).sum()
            wh = wh + ((pos[:, 2:4] - asg.twh) ** 2).sum()
            conf = conf + F.binary_cross_entropy_with_logits(
                pos[:, 4], torch.ones_like(pos[:, 4]), reduction="sum"
            )
            neg = out[..., 4][noobj]
            conf = conf + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum")
            onehot = F.one_hot(asg.label, self.n_classes).to(pos.dtype)
            cls = cls + F.binary_cross_entropy_with_logits(pos[:, 5:], onehot, reduction="sum")
        terms = {"xy": xy, "wh": wh, "conf": conf, "cls": cls}
        terms = {k: v / n_images for k, v in terms.items()}
        total = LAMBDA_XY * terms["xy"] + LAMBDA_WH * terms["wh"] + LAMBDA_CONF * terms["conf"]
        total = total + LAMBDA_CLS * terms["cls"]
        return {"total": total, **terms}

    @torch.no_grad()
    def decode(
        self,
        outputs: list[Tensor],
        conf_threshold: float = 0.2,
        nms_iou: float = 0.4,
        max_detections: int | None = None,
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image (boxes N x 4 xyxy pixels clipped to the image, scores N, labels N), best first.

        score = objectness x class probability of the most likely class; boxes scoring below
        `conf_threshold` are dropped, then class-wise NMS at `nms_iou`.
        """
        boxes, scores, labels = [], [], []
        for scale, out in enumerate(outputs):
            out = out.float()
            n = out.shape[0]
            boxes.append(self.pred_boxes(out, scale).view(n, -1, 4))
            prob, label = out[..., 5:].sigmoid().max(-1)
            scores.append((out[..., 4].sigmoid() * prob).view(n, -1))
            labels.append(label.view(n, -1))
        boxes_b, scores_b, labels_b = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(labels, 1)
        results = []
        for b, s, lab in zip(boxes_b, scores_b, labels_b):
            keep = s >= conf_threshold
            b, s, lab = b[keep].clamp(0, self.image_size), s[keep], lab[keep]
            idx = batched_nms(b, s, lab, nms_iou)
            if max_detections is not None:
                idx = idx[:max_detections]
            results.append((b[idx], s[idx], lab[idx]))
        return results


def _first_occurrence(keys: Tensor) -> Tensor:
    """Indices of the first element of each distinct value in `keys`."""
    if keys.numel() == 0:
        return keys.new_zeros(0)
    _, inverse = torch.unique(keys, return_inverse=True)
    order = torch.arange(len(keys), device=keys.device)
    first = torch.full((int(inverse.max()) + 1,), len(keys), dtype=torch.long, device=keys.device)
    return first.scatter_reduce(0, inverse, order, reduce="amin")


def _pad_boxes(targets: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Stack ragged per-image boxes into B x M x 4 plus a B x M validity mask."""
    m = max((len(t) for t in targets), default=0)
    gt = torch.zeros(len(targets), m, 4, device=device)
    valid = torch.zeros(len(targets), m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        gt[i, : len(t)] = t.reshape(-1, 4).to(device, torch.float32)
        valid[i, : len(t)] = True
    return gt, valid


def _batched_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU between B x N x 4 and B x M x 4 xyxy boxes -> B x N x M."""
    lt = torch.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, :, None] + area_b[:, None, :] - inter).clamp(min=1e-9)
