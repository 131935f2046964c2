"""Input validation and colour conversion, in one place.

The SDK's frame convention is OpenCV's: ``uint8`` array of shape ``(H, W, 3)`` in **BGR** order.
Also accepted and converted: grey ``(H, W)`` or ``(H, W, 1)``, and BGRA ``(H, W, 4)`` (alpha dropped).
Everything else raises ``TypeError`` (not an array / wrong dtype) or ``ValueError`` (wrong shape,
empty, too large), with a message that names the problem.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: Largest frame accepted, in pixels per side. 8K UHD is 7680 x 4320; anything larger is almost always
#: a mistake (a mosaic, a raw scan) and would make detection take seconds.
MAX_SIDE = 8192
#: Smallest frame accepted, in pixels per side (MTCNN's smallest window is 12 px).
MIN_SIDE = 12


def as_bgr(frame: object, *, name: str = "frame") -> np.ndarray:
    """Validate ``frame`` and return it as a C-contiguous ``(H, W, 3)`` uint8 BGR array.

    Args:
        frame: ``numpy.ndarray``; uint8; ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA.
        name: what to call the argument in error messages.

    Raises:
        TypeError: ``frame`` is ``None``, not a numpy array, or not ``uint8``.
        ValueError: wrong number of dimensions or channels, a side of zero / below :data:`MIN_SIDE`,
            or a side above :data:`MAX_SIDE`.
    """
    if frame is None:
        raise TypeError(f"{name} is None (a failed cv2.imread returns None: check the path)")
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        hint = " (scale floats in [0,1] by 255 and cast with .astype(np.uint8))" if frame.dtype.kind == "f" else ""
        raise TypeError(f"{name} must have dtype uint8, got {frame.dtype}{hint}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W), (H, W, 3) or (H, W, 4); got shape {frame.shape}")
    h, w = frame.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"{name} is empty: shape {frame.shape}")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"{name} is {w}x{h} px; each side must be at least {MIN_SIDE} px")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(
            f"{name} is {w}x{h} px; the largest side accepted is {MAX_SIDE} px (sdk.frame.MAX_SIDE). "
            "Downscale it first (cv2.resize)."
        )
    if frame.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_GRAY2BGR)
    c = frame.shape[2]
    if c == 3:
        return np.ascontiguousarray(frame)
    if c == 4:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGRA2BGR)
    raise ValueError(f"{name} has {c} channels; expected 1 (grey), 3 (BGR) or 4 (BGRA)")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a BGR uint8 frame (any format OpenCV reads; grey files are converted).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file exists but is not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"not a readable image: {p}")
    return as_bgr(img, name=str(p))
