"""Plain data records that flow through the pipeline: frame -> faces -> crops -> embeddings -> matches.

Coordinates are pixels in the *input frame* (x right, y down, origin at the top-left pixel's corner),
as float32. Landmark order is the MTCNN / ArcFace order:
``left eye, right eye, nose tip, left mouth corner, right mouth corner`` where "left" means the
left side **of the image** (the subject's right eye).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
        box: ``(x1, y1, x2, y2)`` float32 array, shape (4,), pixels in the frame.
        landmarks: float32 array, shape (5, 2), ``(x, y)`` pixels, MTCNN order (see module doc).
        score: detector confidence in [0, 1].
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass(frozen=True)
class Match:
    """The answer for one face in a frame.

    Attributes:
        box: ``(x1, y1, x2, y2)`` pixels in the frame, float32, shape (4,).
        landmarks: (5, 2) float32 pixels, MTCNN order.
        det_score: detector confidence in [0, 1].
        occlusion: probability in [0, 1] that the face is occluded (mask, scarf, hand), or ``None``
            when the bundle has no ``segment`` stage (baseline mode).
        identity: enrolled name, or ``None`` when the best gallery similarity is below the threshold
            (or the gallery is empty).
        similarity: cosine similarity in [-1, 1] to the best gallery entry (``nan`` for an empty gallery).
        candidates: up to k ``(name, similarity)`` pairs, best first.
        completed: the bundle's ``complete`` stage filled the occluded pixels of this face before it was
            embedded (only with a ``complete`` stage and ``occlusion`` at or above its ``min_occlusion``).
        operating_point: which threshold decided ``identity``: ``"clean"`` or ``"probe_occluded"`` (the face
            counts as occluded at the segmenter's threshold; gallery templates count as clean), or ``"config"``
            (``RecognizerConfig.threshold`` overrides the bundle's per-state thresholds).
        threshold: that threshold (cosine).
    """

    box: np.ndarray
    landmarks: np.ndarray
    det_score: float
    occlusion: float | None
    identity: str | None
    similarity: float
    candidates: list[tuple[str, float]] = field(default_factory=list)
    completed: bool = False
    operating_point: str = "clean"
    threshold: float = float("nan")

    def to_dict(self) -> dict:
        """JSON-friendly view (lists and floats)."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "det_score": round(float(self.det_score), 4),
            "occlusion": None if self.occlusion is None else round(float(self.occlusion), 4),
            "identity": self.identity,
            "similarity": round(float(self.similarity), 4),
            "candidates": [(n, round(float(s), 4)) for n, s in self.candidates],
            "completed": bool(self.completed),
            "operating_point": self.operating_point,
            "threshold": round(float(self.threshold), 4),
        }


def check_faces(faces: object, frame_shape: tuple[int, ...] | None = None) -> list[Face]:
    """Validate faces handed in from outside (a tracker, another detector) before any work is done on them.

    Returns them as a list. Raises ``TypeError`` when ``faces`` is not a sequence of :class:`Face`, and
    ``ValueError`` (naming the face) when a box is not 4 finite numbers with ``x2 > x1`` and ``y2 > y1``,
    landmarks are not (5, 2) finite numbers, or a coordinate lies absurdly far outside the frame
    (more than 8 frame sizes).
    """
    if isinstance(faces, (Face, str, bytes, np.ndarray)) or not hasattr(faces, "__iter__"):
        raise TypeError(f"faces must be a sequence of sdk.Face, got {type(faces).__name__}")
    out = list(faces)
    limit = 8.0 * max(frame_shape[:2]) if frame_shape else 1e6
    for i, f in enumerate(out):
        if not isinstance(f, Face):
            raise TypeError(f"faces[{i}] must be an sdk.Face, got {type(f).__name__}")
        try:
            box = np.asarray(f.box, np.float64)
            lms = np.asarray(f.landmarks, np.float64)
            score = float(f.score)
        except (TypeError, ValueError) as e:
            raise ValueError(f"faces[{i}]: box, landmarks and score must be numbers ({e})") from None
        if box.shape != (4,) or lms.shape != (5, 2):
            raise ValueError(f"faces[{i}]: box must have shape (4,) and landmarks (5, 2), got {box.shape} and {lms.shape}")
        if not (np.all(np.isfinite(box)) and np.all(np.isfinite(lms)) and np.isfinite(score)):
            raise ValueError(f"faces[{i}]: box, landmarks and score must be finite")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"faces[{i}]: box {box.tolist()} is empty (needs x2 > x1 and y2 > y1)")
        if np.abs(box).max() > limit or np.abs(lms).max() > limit:
            raise ValueError(f"faces[{i}]: coordinates lie more than {limit:.0f} px outside the frame")
    return out
