"""Mask-aware matching: compare an occluded face on what is visible (issue #9, item 4).

A mask hides the lower face, so a full-face embedding of a masked probe carries the mask's appearance (and an
embedder trained on our own mask templates learns *those* masks). A bundle with ``match.mask_aware`` therefore
stores two views of every enrolled face and picks, per probe, what to compare:

* **full** -- the embedder's usual chip;
* **upper** -- the same chip with every row below a line between the eyes and the nose tip painted a flat grey
  (:func:`upper_view`), so that a surgical mask, a KN95, a scarf or a bare chin all look the same to the embedder.
  The same embedder (the bundle's ``embed`` stage) embeds both views: no second network.

Gallery **templates** hold both views side by side, ``t = [f, u] / sqrt(2)`` (width ``2 * dim``, unit norm).
A **query** weights the views by the probe's occlusion state (:func:`queries`):
clean probe ``q = sqrt(2) * [f, 0]``, so ``q . t = f . f'`` (plain full-face cosine, unmasked accuracy unchanged);
occluded probe ``q = sqrt(2) * [(1 - w) f, w u]``, so ``q . t = (1 - w) f . f' + w u . u'`` (``w`` =
:attr:`MaskAwareConfig.occluded_weight`). The gallery's inner-product search (exact or HNSW) computes these scores
unchanged; thresholds per occlusion state are calibrated on the same scores (``python -m trainer.calibrate``).

All chips are uint8 BGR ``(h, w, 3)`` as the embedder cuts them; landmarks are ``(5, 2)`` chip pixels in MTCNN order
(eye, eye, nose, mouth corner, mouth corner).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["MaskAwareConfig", "upper_view", "chip_landmarks", "templates", "queries", "pair_scores", "split"]

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class MaskAwareConfig:
    """The manifest's ``match.mask_aware`` block.

    Attributes:
        upper_cut: where the upper view ends: ``eyes_y + upper_cut * (nose_y - eyes_y)`` in chip pixels (0: at the
            eyes, 1: at the nose tip). Rows from there down are painted ``fill``.
        fill: grey level (0-255, all three channels) of the painted rows.
        occluded_weight: weight ``w`` of the upper view in an occluded probe's score (the full view gets
            ``1 - w``); 1.0 compares occluded probes on the upper view only.
    """

    upper_cut: float = 0.8
    fill: int = 128
    occluded_weight: float = 0.75

    def __post_init__(self) -> None:
        if isinstance(self.upper_cut, bool) or not 0.0 <= float(self.upper_cut) <= 1.5:
            raise ValueError(f"mask_aware.upper_cut must be in [0, 1.5], got {self.upper_cut!r}")
        if isinstance(self.fill, bool) or not isinstance(self.fill, int) or not 0 <= self.fill <= 255:
            raise ValueError(f"mask_aware.fill must be an int in [0, 255], got {self.fill!r}")
        if isinstance(self.occluded_weight, bool) or not 0.0 <= float(self.occluded_weight) <= 1.0:
            raise ValueError(f"mask_aware.occluded_weight must be in [0, 1], got {self.occluded_weight!r}")

    @classmethod
    def from_match(cls, match: Mapping[str, Any]) -> "MaskAwareConfig | None":
        """The config of a manifest ``match`` block (``None`` when it has no ``mask_aware``).

        Raises:
            ValueError: ``mask_aware`` is not an object, has unknown keys or bad values.
        """
        block = match.get("mask_aware")
        if block is None:
            return None
        if not isinstance(block, dict):
            raise ValueError(f"match.mask_aware must be an object, got {type(block).__name__}")
        known = {"upper_cut", "fill", "occluded_weight"}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ValueError(f"match.mask_aware: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**block)

    @property
    def id_suffix(self) -> str:
        """Appended to the embedder's ``model_id`` in galleries: templates of another layout are refused."""
        return f"+upper{self.upper_cut:g}/fill{self.fill}"

    def to_dict(self) -> dict:
        return asdict(self)


def chip_landmarks(landmarks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(5, 2)`` frame-pixel landmarks mapped into a chip by its ``(2, 3)`` frame -> chip matrix."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    m = np.asarray(matrix, np.float64).reshape(2, 3)
    return (lm @ m[:, :2].T + m[:, 2]).astype(np.float32)


def upper_view(chips: np.ndarray | Sequence[np.ndarray], landmarks: np.ndarray, config: MaskAwareConfig
               ) -> np.ndarray:
    """The upper-face view: copies of ``chips`` ``(N, h, w, 3)`` uint8 with the rows below the cut painted grey.

    Args:
        chips: uint8 crops (any colour order: the fill is grey).
        landmarks: ``(N, 5, 2)`` chip-pixel landmarks (:func:`chip_landmarks`).
    """
    x = np.array(chips, dtype=np.uint8, copy=True)
    lm = np.asarray(landmarks, np.float32).reshape(len(x), 5, 2)
    if not len(x):
        return x
    h = x.shape[1]
    eyes = lm[:, :2, 1].mean(axis=1)
    cut = eyes + float(config.upper_cut) * (lm[:, 2, 1] - eyes)
    for i, y in enumerate(cut):
        y0 = int(np.clip(round(float(y)), 0, h)) if np.isfinite(y) else h
        x[i, y0:] = config.fill
    return x


def templates(full: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Gallery templates ``(N, 2 * dim)`` from unit full and upper embeddings ``(N, dim)`` each (unit rows)."""
    full, upper = np.asarray(full, np.float32), np.asarray(upper, np.float32)
    if full.shape != upper.shape or full.ndim != 2:
        raise ValueError(f"full {full.shape} and upper {upper.shape} embeddings must both be (N, dim)")
    return np.concatenate([full, upper], axis=1) / np.float32(_SQRT2)


def split(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(full, upper)`` unit embeddings of templates ``(N, 2 * dim)`` (the inverse of :func:`templates`)."""
    t = np.asarray(t, np.float32)
    d = t.shape[-1] // 2
    return t[..., :d] * np.float32(_SQRT2), t[..., d:] * np.float32(_SQRT2)


def queries(t: np.ndarray, occluded: Sequence[bool] | np.ndarray, config: MaskAwareConfig) -> np.ndarray:
    """Search vectors ``(N, 2 * dim)`` for templates ``t`` of probes with the given occlusion flags: ``q . t'`` is the
    full-face cosine for a clean probe and ``(1 - w) f . f' + w u . u'`` for an occluded one (module doc). The upper
    half of a clean probe's template is ignored (it may be zeros: :meth:`Recognizer.identify` embeds the upper view
    of occluded faces only)."""
    t = np.asarray(t, np.float32)
    occ = np.asarray(occluded, bool).reshape(-1)
    if t.ndim != 2 or len(occ) != len(t) or t.shape[1] % 2:
        raise ValueError(f"templates {t.shape} and {len(occ)} occlusion flags disagree")
    d = t.shape[1] // 2
    w = np.where(occ, float(config.occluded_weight), 0.0).astype(np.float32)[:, None]
    q = np.empty_like(t)
    q[:, :d] = 2.0 * (1.0 - w) * t[:, :d]
    q[:, d:] = 2.0 * w * t[:, d:]
    return q


def pair_scores(ta: np.ndarray, tb: np.ndarray, occluded_a: Sequence[bool] | np.ndarray,
                occluded_b: Sequence[bool] | np.ndarray, config: MaskAwareConfig) -> np.ndarray:
    """Score of each pair ``(ta[i], tb[i])``: the full-face cosine when both faces are clean, the weighted two-view
    score when either is occluded (what :meth:`Recognizer.verify` reports)."""
    ta, tb = np.asarray(ta, np.float32), np.asarray(tb, np.float32)
    occ = np.asarray(occluded_a, bool).reshape(-1) | np.asarray(occluded_b, bool).reshape(-1)
    return np.einsum("nd,nd->n", queries(ta, occ, config), tb)
