"""Face quality for video: how much a new look at a face is worth for recognition, in [0, 1].

Four factors, each in [0, 1], multiplied (:func:`face_quality`):

* **size**: the face box's shorter side, 0 at ``min_side`` px, 1 from ``full_side`` px (the embedder's chip is
  150 px; dlib's ResNet gains little from more than ~100 px of face);
* **pose**: frontal from the 5 landmarks: yaw from how far the nose sits off the eyes' midline (relative to
  the eye distance), pitch from where the nose falls between the eye line and the mouth line, roll from
  the eye line's angle; a full profile keeps 0.3 (it can still be recognised, worse than a frontal look);
* **detection score**: the detector's confidence mapped from ``[0.7, 1]`` to ``[0, 1]`` (0.7 is MTCNN's last
  threshold), kept at 0.5 minimum so that a well-seen face is never zeroed by a cautious detector;
* **occlusion**: ``1 - 0.5 * p_occluded`` when the segmenter's probability is known (a masked face is still
  worth recognising, but a clear look is worth more).

The stream re-recognises a track when its quality rises clearly above the quality of its best look so far.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdk.types import Face

__all__ = ["QualityConfig", "face_quality", "pose_scores"]


@dataclass(frozen=True)
class QualityConfig:
    """Scales of :func:`face_quality` (pixels of the frame)."""

    min_side: float = 20.0
    full_side: float = 100.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_side < self.full_side:
            raise ValueError(f"need 0 <= min_side < full_side, got {self.min_side}, {self.full_side}")


def pose_scores(landmarks: np.ndarray) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` deviations from frontal, each in [0, 1] (0 = frontal), from 5 MTCNN landmarks.

    Args:
        landmarks: (5, 2) pixels: left eye, right eye, nose, left and right mouth corner (image-left first).
    """
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    le, re, nose = lm[0], lm[1], lm[2]
    mouth = (lm[3] + lm[4]) / 2
    eye_c = (le + re) / 2
    ev = re - le
    ed = float(np.hypot(*ev))
    if ed < 1e-6:
        return 1.0, 1.0, 1.0
    right = ev / ed
    down = np.array([-right[1], right[0]])
    # yaw: nose offset from the eyes' midline, across; 0.5 eye distances ~ a profile view
    yaw = min(1.0, abs(float(np.dot(nose - eye_c, right))) / (0.5 * ed))
    # pitch: the nose sits ~55% of the way from the eye line to the mouth line on a frontal face
    em = float(np.dot(mouth - eye_c, down))
    en = float(np.dot(nose - eye_c, down))
    pitch = 1.0 if em <= 1e-6 else min(1.0, abs(en / em - 0.55) / 0.35)
    roll = min(1.0, abs(float(np.arctan2(ev[1], ev[0]))) / (np.pi / 2))
    return yaw, pitch, roll


def face_quality(face: Face, occlusion: float | None = None, config: QualityConfig = QualityConfig()) -> float:
    """Quality in [0, 1] of one observation of a face (see the module docstring for the factors).

    Args:
        face: box (frame pixels), 5 landmarks and detector score.
        occlusion: the segmenter's probability that the face is covered, or ``None`` when unknown.
    """
    side = min(face.width, face.height)
    size = float(np.clip((side - config.min_side) / (config.full_side - config.min_side), 0.0, 1.0))
    yaw, pitch, roll = pose_scores(face.landmarks)
    pose = (1.0 - 0.7 * yaw) * (1.0 - 0.4 * pitch) * (1.0 - 0.6 * roll)
    det = 0.5 + 0.5 * float(np.clip((face.score - 0.7) / 0.3, 0.0, 1.0))
    occ = 1.0 if occlusion is None else 1.0 - 0.5 * float(np.clip(occlusion, 0.0, 1.0))
    return float(np.sqrt(size) * pose * det * occ)
