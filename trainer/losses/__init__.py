"""Training losses.

``distill``: relational de-occlusion distillation (Look Through Masks, MM 2020): instance (hard / soft),
pair-wise and triplet-wise relational terms and :class:`RelationalDistillLoss` (eq. 16).
``margin``: ArcFace / normalised-softmax / softmax heads and the capstone's pairwise masked-clean
distillation (:func:`pairwise_distill`).
"""
from __future__ import annotations

from .distill import (
    CentreBank,
    RelationalDistillLoss,
    batch_centres,
    identity_centres,
    instance_hard,
    instance_soft,
    pair_loss,
    triplet_loss,
)
from .margin import HEADS, ArcFaceHead, NormSoftmaxHead, SoftmaxHead, build_head, correctly_classified, pairwise_distill

__all__ = [
    "CentreBank",
    "RelationalDistillLoss",
    "batch_centres",
    "identity_centres",
    "instance_hard",
    "instance_soft",
    "pair_loss",
    "triplet_loss",
    "HEADS",
    "ArcFaceHead",
    "NormSoftmaxHead",
    "SoftmaxHead",
    "build_head",
    "correctly_classified",
    "pairwise_distill",
]
