"""Face alignment: 5-point similarity warp of a frame into a canonical crop.

Templates are the positions, in crop pixels (x right, y down, pixel centres at integers), of the five
MTCNN landmarks (left eye, right eye, nose, left mouth corner, right mouth corner; image-left first).
The warp itself (and the least-squares similarity fit) runs in the C++ core (``sdk._core``); the golden
references are in ``kernels/align/reference.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdk import _native

#: ArcFace / insightface 112x112 template (the student's and inpainter's input).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

#: Where MTCNN landmarks fall in dlib's 150x150 chip (``get_face_chip(size=150, padding=0.25)``): median
#: over 300 LFW faces, derived by ``tools/derive_dlib_chip_template.py``. Per-point spread (median abs
#: deviation) is ~1 px for the eyes and 3-4 px for nose and mouth.
DLIB_150 = np.array(
    [[47.0589, 45.7443], [102.239, 45.5367], [74.2487, 78.0014], [50.8907, 106.2478], [98.5587, 106.3687]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class CropSpec:
    """A canonical crop: output size in pixels and the 5-point template in crop pixels."""

    width: int
    height: int
    template: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


ARCFACE_CROP = CropSpec(112, 112, ARCFACE_112)
DLIB_CROP = CropSpec(150, 150, DLIB_150)

TEMPLATES: dict[str, CropSpec] = {"arcface112": ARCFACE_CROP, "dlib150": DLIB_CROP}


def similarity_to_template(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``landmarks`` onto ``template``.

    Args:
        landmarks: (5, 2) float, frame pixels.
        template: (5, 2) float, crop pixels.

    Returns:
        (2, 3) float64 matrix ``M`` with ``crop_xy = M @ [x, y, 1]``.
    """
    return _native.estimate_similarity(np.asarray(landmarks, np.float64), np.asarray(template, np.float64))


def weighted_similarity_to_template(landmarks: np.ndarray, template: np.ndarray,
                                    repeats: tuple[int, ...]) -> np.ndarray:
    """:func:`similarity_to_template` with integer point weights: weighted least squares is the plain fit of the
    points repeated ``repeats[i]`` times (0 drops a point). Returns the (2, 3) float64 frame -> crop matrix."""
    rep = np.asarray(repeats, np.intp)
    return similarity_to_template(np.repeat(np.asarray(landmarks, np.float64), rep, axis=0),
                                  np.repeat(np.asarray(template, np.float64), rep, axis=0))


def warp(frame: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``frame`` (uint8, HxWxC) by the 2x3 frame->crop ``matrix`` into a crop of ``size = (w, h)``."""
    return _native.warp_affine(frame, matrix, size)


def warp_to_template(frame: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cut an aligned crop of ``size = (w, h)`` pixels from ``frame`` so that ``landmarks`` land on ``template``.

    Colour order is kept (BGR in, BGR out). Pixels outside the frame are black.
    """
    return warp(frame, similarity_to_template(landmarks, template), size)


def align(frame: np.ndarray, landmarks: np.ndarray, spec: CropSpec = ARCFACE_CROP) -> np.ndarray:
    """Aligned crop (uint8, ``spec.height x spec.width x C``, same colour order as ``frame``)."""
    return warp_to_template(frame, landmarks, spec.template, spec.size)
