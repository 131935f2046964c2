"""Classification heads (ArcFace, normalised softmax, plain softmax) and the capstone's pairwise
masked/clean distillation (Liu & Shao, "Mask-aware Face Recognition: An Implicit Approach", NYU Shanghai
capstone 2022, sec. 3.4-3.5 and 4.2.1).

Capstone total loss, eq. 5, for a pair (clean image, the same image with a synthetic mask) fed through the
*same* network (features ``gamma_r`` clean, ``gamma_m`` masked)::

    L = ArcFace(gamma_r) + ArcFace(gamma_m) + beta * L_dist(gamma_r, gamma_m)

    ArcFace(z) = CE(head(z, y), y)                      head = ArcFaceHead, eq. 1
    L_dist = pairwise_distill(gamma_m, gamma_r, kind, correct_mask=...)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ArcFaceHead",
    "NormSoftmaxHead",
    "SoftmaxHead",
    "HEADS",
    "build_head",
    "pairwise_distill",
    "correctly_classified",
]

_SIN_EPS = 1e-12  # clamp on 1 - cos^2 before the sqrt: finite gradient at cos = +-1


def _cosines(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos(theta_j) between each row of ``x`` (B, D) and each class weight (C, D): (B, C), in [-1, 1]."""
    return F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1)).clamp(-1.0, 1.0)


class ArcFaceHead(nn.Module):
    """Additive angular margin logits (Deng et al. 2019; capstone eq. 1)::

        logit_j = s * cos(theta_j)                 j != y
        logit_y = s * cos(theta_y + m)             (target class)

    with the standard insightface / ``ArcMarginProduct`` handling of ``theta_y + m > pi`` (where
    ``cos(theta + m)`` stops decreasing): with ``th = cos(pi - m)``, ``mm = sin(pi - m) * m``, the target logit
    is ``s * (cos theta_y - mm)`` when ``cos theta_y <= th``.  ``easy_margin=True`` instead applies the margin
    only where ``cos theta_y > 0`` (else ``s * cos theta_y``).  ``cos(theta + m)`` is evaluated as
    ``cos theta cos m - sin theta sin m`` with ``sin theta = sqrt(clamp(1 - cos^2, 1e-12))`` (no ``acos``).

    ``forward(x, labels)`` -> (B, C) logits for ``F.cross_entropy``; ``labels=None`` gives the margin-free
    ``s * cos theta`` (inference / accuracy).  Defaults s = 64, m = 0.5 (ArcFace paper).
    """

    def __init__(self, dim: int, n_classes: int, s: float = 64.0, m: float = 0.5, easy_margin: bool = False):
        super().__init__()
        self.dim, self.n_classes, self.s, self.m, self.easy_margin = dim, n_classes, s, m, easy_margin
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.normal_(self.weight, std=0.01)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        cos = _cosines(x, self.weight)
        if labels is None:
            return self.s * cos
        labels = labels.long().view(-1, 1)
        c = cos.gather(1, labels)
        sin = (1.0 - c * c).clamp(min=_SIN_EPS).sqrt()
        phi = c * self.cos_m - sin * self.sin_m
        if self.easy_margin:
            phi = torch.where(c > 0, phi, c)
        else:
            phi = torch.where(c > self.th, phi, c - self.mm)
        return self.s * cos.scatter(1, labels, phi)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_classes={self.n_classes}, s={self.s}, m={self.m}, easy_margin={self.easy_margin}"


class NormSoftmaxHead(nn.Module):
    """Normalised softmax (NormFace, Wang et al. 2017): ``logits = s * cos(theta_j)``, no margin.  ``labels``
    is accepted and ignored so that every head has the same call signature.  Default s = 30."""

    def __init__(self, dim: int, n_classes: int, s: float = 30.0):
        super().__init__()
        self.dim, self.n_classes, self.s = dim, n_classes, s
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.s * _cosines(x, self.weight)


class SoftmaxHead(nn.Module):
    """Plain softmax classifier: ``logits = W x + b`` (``labels`` ignored)."""

    def __init__(self, dim: int, n_classes: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(dim, n_classes, bias=bias)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fc(x)


HEADS = {"arcface": ArcFaceHead, "normsoftmax": NormSoftmaxHead, "softmax": SoftmaxHead}


def build_head(name: str, dim: int, n_classes: int, **kw) -> nn.Module:
    """``HEADS[name](dim, n_classes, **kw)``; names: arcface | normsoftmax | softmax."""
    try:
        return HEADS[name](dim, n_classes, **kw)
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose from {sorted(HEADS)}") from None


def correctly_classified(labels: torch.Tensor, *logits: torch.Tensor) -> torch.Tensor:
    """Bool (B,): rows whose ``argmax`` equals the label in *every* given logits tensor (e.g. both the
    clean and the masked image).  Use margin-free logits (``head(x)`` without labels) for a plain accuracy
    criterion; the capstone's code took the argmax of the margin logits, which is stricter."""
    if not logits:
        raise ValueError("pass at least one logits tensor")
    ok = torch.ones_like(labels, dtype=torch.bool)
    for z in logits:
        ok = ok & (z.argmax(dim=1) == labels)
    return ok.detach()


def pairwise_distill(
    masked: torch.Tensor,
    clean: torch.Tensor,
    kind: str = "mse",
    margin: float = 0.5,
    correct_mask: Optional[torch.Tensor] = None,
    normalize: str = "batch",
    detach_clean: bool = False,
) -> torch.Tensor:
    """Capstone distillation between the masked (``gamma_m``) and clean (``gamma_r``) embeddings, (B, D) each.

    Per row (capstone eq. 2-4)::

        mse            ||gamma_r - gamma_m||_2^2                          (eq. 2; sum over D -- F.mse_loss
                                                                            would be this / D)
        cosine         1 - cos(gamma_r, gamma_m)                          (eq. 3)
        margin_cosine  1 - cos(arccos(cos(gamma_r, gamma_m)) + m)         (eq. 4, ``margin`` = m)

    ``margin_cosine`` is taken literally, i.e. without ArcFace's ``th/mm`` fix: with theta the angle between
    the two embeddings it is ``1 - cos(theta + m)`` for theta in [0, pi], which is >= ``1 - cos m`` (never 0:
    even identical embeddings pay ``1 - cos m``, with zero gradient there), increases up to theta = pi - m
    (value 2) and then *decreases* again -- the capstone found this variant "too bad" and dropped it.
    theta is computed as ``2 atan2(|a - b|, |a + b|)`` on the unit vectors a, b (accurate near 0 and pi,
    where ``arccos`` of a float32 cosine is off by ~3e-4 rad and has an infinite derivative), with clamped
    (safe) norms so the gradient is finite -- zero -- at theta = 0.  ``cosine`` uses
    ``F.cosine_similarity`` (eps 1e-8).

    ``correct_mask`` (B,) bool: distil only those rows (capstone 4.2.1, "only adding the distillation loss
    of the correctly classified samples", e.g. :func:`correctly_classified`).  ``normalize="batch"``
    (default) divides the masked sum by the full batch size B, so the effective weight of the term grows
    with the training accuracy -- the "dynamic balancing" the capstone describes; ``"selected"`` divides by
    the number of selected rows (a plain mean over them).  No selected row -> 0 (still in the graph).
    Without a mask the result is the batch mean.  ``detach_clean=True`` stops the gradient into the clean
    branch (the capstone back-propagates into both).
    """
    if masked.shape != clean.shape or masked.dim() != 2:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(masked.shape)}, {tuple(clean.shape)}")
    if detach_clean:
        clean = clean.detach()
    if kind == "mse":
        per_row = (clean - masked).pow(2).sum(dim=1)
    elif kind == "cosine":
        per_row = 1.0 - F.cosine_similarity(clean, masked, dim=1).clamp(-1.0, 1.0)
    elif kind == "margin_cosine":
        a, b = F.normalize(clean, dim=1), F.normalize(masked, dim=1)
        half_chord = (a - b).pow(2).sum(1).clamp(min=_SIN_EPS).sqrt()   # 2 sin(theta / 2)
        half_sum = (a + b).pow(2).sum(1).clamp(min=_SIN_EPS).sqrt()     # 2 cos(theta / 2)
        theta = 2.0 * torch.atan2(half_chord, half_sum)
        per_row = 1.0 - torch.cos(theta + margin)
    else:
        raise ValueError(f"unknown kind {kind!r} (mse | cosine | margin_cosine)")

    if correct_mask is None:
        return per_row.mean()
    sel = correct_mask.to(device=per_row.device, dtype=torch.bool).view(-1)
    if sel.shape[0] != per_row.shape[0]:
        raise ValueError(f"correct_mask has {sel.shape[0]} rows, embeddings have {per_row.shape[0]}")
    total = torch.where(sel, per_row, torch.zeros_like(per_row)).sum()
    if normalize == "batch":
        return total / per_row.shape[0]
    if normalize == "selected":
        return total / sel.sum().clamp(min=1).to(per_row.dtype)
    raise ValueError(f"normalize must be batch | selected, got {normalize!r}")
