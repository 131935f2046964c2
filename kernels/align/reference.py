"""Golden references for the alignment kernels (used by tests only, never by the SDK).

Pure NumPy / OpenCV, written for clarity rather than speed:

* :func:`estimate_similarity` follows Umeyama (1991), "Least-squares estimation of transformation
  parameters between two point patterns", eqs. (38)-(42), with an SVD and the reflection fix.
* :func:`warp_affine` is ``cv2.warpAffine`` with ``INTER_LINEAR`` and a constant-0 border.

Coordinates are pixels, ``(x, y)`` = (column, row), pixel centres at integers.
"""
from __future__ import annotations

import cv2
import numpy as np


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity mapping ``src`` onto ``dst``.

    Args:
        src: (N, 2) points, N >= 2.
        dst: (N, 2) points.

    Returns:
        (2, 3) float64 ``[c*R | t]`` with ``dst ~= c * R @ src + t`` and ``det(R) = +1``.
    """
    x = np.asarray(src, dtype=np.float64)
    y = np.asarray(dst, dtype=np.float64)
    n = x.shape[0]
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mu_x, y - mu_y
    var_x = (xc ** 2).sum() / n
    cov = yc.T @ xc / n  # Sigma_xy, 2x2
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[1, 1] = -1.0
    r = u @ s @ vt
    c = np.trace(np.diag(d) @ s) / var_x
    t = mu_y - c * r @ mu_x
    return np.hstack([c * r, t[:, None]])


def warp_affine(image: np.ndarray, m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``cv2.warpAffine`` bilinear warp, constant-0 border, keeping a trailing channel axis.

    Args:
        image: uint8 (H, W) or (H, W, C), C in {1, 3, 4}; channel order is untouched.
        m: (2, 3) matrix mapping source -> destination pixel coordinates.
        out_h, out_w: output size in pixels.

    Returns:
        uint8 (out_h, out_w) or (out_h, out_w, C), same layout as ``image``.
    """
    out = cv2.warpAffine(np.ascontiguousarray(image), np.asarray(m, dtype=np.float64),
                         (int(out_w), int(out_h)), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out
