"""Aligned 112x112 faces in memory (:class:`FaceArrays`), where they come from, and how they are split and flipped.

Shared by the segmenter and inpainter trainers and by face packs (:mod:`trainer.data.pack`); they are made by
:func:`trainer.data.faces.load_faces` (a folder-per-identity tree, detected + aligned once, or a face pack).

* :func:`split_by_identity` -- identity-disjoint train / val.
* :func:`flip_face` -- horizontal flip of a crop with its landmarks (left/right points swapped).

Crops are uint8 BGR ``(N, 112, 112, 3)``; landmarks ``(N, 5, 2)`` float32 crop pixels (MTCNN order).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["FaceArrays", "split_by_identity", "flip_face", "FLIP_ORDER", "UnreadableImageError"]

#: landmark order after a horizontal flip (left eye <-> right eye, left mouth corner <-> right)
FLIP_ORDER = [1, 0, 2, 4, 3]


class UnreadableImageError(ValueError):
    """An image file that OpenCV cannot read (missing, truncated, not an image); the message names it."""


@dataclass
class FaceArrays:
    """Aligned faces: ``crops`` (N, 112, 112, 3) uint8 BGR, ``landmarks`` (N, 5, 2) crop px, ``identities``;
    ``counts``: what the alignment pass found (images, detected, fallback_no_face, unreadable), ``{}`` for packs."""

    crops: np.ndarray
    landmarks: np.ndarray
    identities: list[str]
    counts: dict = field(default_factory=dict)

    def subset(self, idx: Sequence[int]) -> "FaceArrays":
        idx = list(idx)
        return FaceArrays(self.crops[idx], self.landmarks[idx], [self.identities[i] for i in idx], dict(self.counts))


def split_by_identity(faces: FaceArrays, val_fraction: float, seed: int) -> tuple[FaceArrays, FaceArrays]:
    """Identity-disjoint ``(train, val)``: ``round(n_ids * val_fraction)`` identities (at least 1 when there are
    two or more) held out, chosen by ``seed``."""
    ids = sorted(set(faces.identities))
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n_val = max(1, int(round(len(ids) * val_fraction))) if len(ids) > 1 else 0
    val_ids = set(ids[:n_val])
    tr = [i for i, d in enumerate(faces.identities) if d not in val_ids]
    va = [i for i, d in enumerate(faces.identities) if d in val_ids]
    return faces.subset(tr), faces.subset(va)


def flip_face(img: np.ndarray, lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontally flipped crop (H, W, 3) and its (5, 2) landmarks (x mirrored, left/right points swapped)."""
    img = np.ascontiguousarray(img[:, ::-1])
    lm = lm.copy()
    lm[:, 0] = img.shape[1] - 1 - lm[:, 0]
    return img, lm[FLIP_ORDER]

