"""Training targets and losses of the detector: SSD-style anchor matching, focal loss, scaled L1 regression.

Anchors are the cell centres of each stride with their nominal sizes (:data:`trainer.detector.model.ANCHOR_SIZES`);
a face (its MTCNN box) matches an anchor square when their IoU is >= ``pos_iou`` (and every face keeps its best
anchor); anchors with IoU < ``neg_iou`` to every face and outside every ignore box are background; the rest are
ignored. Regression targets are BlazeFace's parametrisation in input pixels (box centre offset from the anchor,
box width/height, landmark offsets from the anchor); their losses divide by the anchor size, so small and large
faces weigh alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.detector.model import ANCHOR_SIZES, anchor_grid

__all__ = ["Anchors", "LossWeights", "detector_loss", "make_anchors", "match"]


@dataclass
class Anchors:
    """All anchors of an input size, in head-output order: centres (A, 2) px, sizes (A,) px."""

    centres: np.ndarray
    sizes: np.ndarray


def make_anchors(h: int, w: int, strides: list[int], per_cell: list[int]) -> Anchors:
    cs, ss = [], []
    for s, a in zip(strides, per_cell):
        c = anchor_grid(h // s, w // s, s, a)
        sizes = np.tile(np.asarray(ANCHOR_SIZES[s][:a], np.float32), len(c) // a)
        cs.append(c)
        ss.append(sizes)
    return Anchors(np.concatenate(cs), np.concatenate(ss))


def _iou(anc: Anchors, boxes: np.ndarray) -> np.ndarray:
    """IoU (A, K) of anchor squares with boxes (K, 4)."""
    half = anc.sizes[:, None] / 2
    ax0, ay0 = anc.centres[:, :1] - half, anc.centres[:, 1:] - half
    ax1, ay1 = anc.centres[:, :1] + half, anc.centres[:, 1:] + half
    bx0, by0, bx1, by1 = (boxes[None, :, i] for i in range(4))
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    area_a = anc.sizes[:, None] ** 2
    area_b = (bx1 - bx0) * (by1 - by0)
    return inter / np.maximum(area_a + area_b - inter, 1e-6)


def match(anc: Anchors, boxes: np.ndarray, landmarks: np.ndarray, ignore: np.ndarray,
          pos_iou: float = 0.45, neg_iou: float = 0.3) -> dict[str, np.ndarray]:
    """Targets of one image.

    Returns ``label`` (A,) int8: 1 face, 0 background, -1 ignored; ``box`` (A, 4) cx-offset, cy-offset, w, h
    px; ``lmk`` (A, 5, 2) px offsets from the anchor centre (valid where ``label == 1``).
    """
    A = len(anc.sizes)
    label = np.zeros(A, np.int8)
    box_t = np.zeros((A, 4), np.float32)
    lmk_t = np.zeros((A, 5, 2), np.float32)
    if len(ignore):
        c = anc.centres
        inside = ((c[:, None, 0] >= ignore[None, :, 0]) & (c[:, None, 0] <= ignore[None, :, 2])
                  & (c[:, None, 1] >= ignore[None, :, 1]) & (c[:, None, 1] <= ignore[None, :, 3]))
        ig_iou = _iou(anc, ignore)
        label[(inside & (ig_iou > 0.1)).any(1)] = -1
    if len(boxes) == 0:
        return {"label": label, "box": box_t, "lmk": lmk_t}
    iou = _iou(anc, boxes)  # (A, K)
    best_k = iou.argmax(1)
    best = iou[np.arange(A), best_k]
    label[(best >= neg_iou) & (best < pos_iou)] = -1
    pos = best >= pos_iou
    forced = iou.argmax(0)  # each face keeps its best anchor
    ok = iou[forced, np.arange(len(boxes))] > 0.1
    best_k[forced[ok]] = np.arange(len(boxes))[ok]
    pos[forced[ok]] = True
    label[pos] = 1
    k = best_k[pos]
    b = boxes[k]
    cxy = (b[:, :2] + b[:, 2:]) / 2
    box_t[pos, :2] = cxy - anc.centres[pos]
    box_t[pos, 2:] = b[:, 2:] - b[:, :2]
    lmk_t[pos] = landmarks[k] - anc.centres[pos][:, None]
    return {"label": label, "box": box_t, "lmk": lmk_t}


@dataclass
class LossWeights:
    """Loss term weights (``cls`` focal, ``box`` and ``lmk`` L1 in anchor-size units)."""

    cls: float = 1.0
    box: float = 1.0
    lmk: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def detector_loss(raw, targets: dict[str, torch.Tensor], sizes: torch.Tensor, w: LossWeights
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts. ``raw``: :meth:`DetectorNet.forward` output; ``targets``: batched
    :func:`match` results (``label`` (N, A), ``box`` (N, A, 4), ``lmk`` (N, A, 5, 2)); ``sizes`` (A,) anchors."""
    logits = torch.cat([r[0] for r in raw], 1)
    box = torch.cat([r[1] for r in raw], 1)
    lmk = torch.cat([r[2] for r in raw], 1)
    label = targets["label"]
    valid = label >= 0
    y = (label == 1).float()
    npos = y.sum().clamp(min=1.0)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    pt = p * y + (1 - p) * (1 - y)
    at = w.focal_alpha * y + (1 - w.focal_alpha) * (1 - y)
    l_cls = (at * (1 - pt) ** w.focal_gamma * ce * valid).sum() / npos
    pos = label == 1
    s = sizes[None].expand_as(label)[pos][:, None]
    if pos.any():
        bt = targets["box"][pos]
        bp = box[pos]
        l_box = (F.smooth_l1_loss(bp[:, :2] / s, bt[:, :2] / s, beta=0.05, reduction="sum")
                 + F.smooth_l1_loss(bp[:, 2:].abs() / s, bt[:, 2:] / s, beta=0.05, reduction="sum")) / npos
        l_lmk = F.smooth_l1_loss(lmk[pos] / s[..., None], targets["lmk"][pos] / s[..., None], beta=0.05,
                                 reduction="sum") / npos / 2.5
    else:
        l_box = l_lmk = logits.sum() * 0.0
    total = w.cls * l_cls + w.box * l_box + w.lmk * l_lmk
    return total, {"loss": total.item(), "cls": l_cls.item(), "box": l_box.item(), "lmk": l_lmk.item(),
                   "npos": float(npos)}
