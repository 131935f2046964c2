"""Procedural occluders drawn from 5 face landmarks (no image assets needed).

Used by the demo and the tests to put a surgical-style mask on a real face; the trainer's data synthesis
(real mask templates, more categories) builds on the same geometry. All functions take and return
BGR uint8 frames and never modify their input.
"""
from __future__ import annotations

import cv2
import numpy as np


def _face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Eye centre, mouth centre, unit 'right' and 'down' vectors in the image, and the eye distance (px)."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    eye_c, mouth_c = lm[:2].mean(0), lm[3:].mean(0)
    right = lm[1] - lm[0]
    eye_dist = float(np.linalg.norm(right)) or 1.0
    right /= eye_dist
    down = np.array([-right[1], right[0]])
    if np.dot(down, mouth_c - eye_c) < 0:
        down = -down
    return eye_c, mouth_c, right, down, eye_dist


def surgical_mask_polygon(landmarks: np.ndarray, n: int = 40) -> np.ndarray:
    """Outline of a surgical mask covering nose (below the bridge), mouth and chin; (n, 2) float32 pixels.

    Geometry in face units (eye distance ``e``, eye-to-mouth distance ``m``): top edge 0.45 m below the eye
    line, bottom edge ~0.8 m below the mouth (the chin), half width 1.05 e at the cheeks.
    """
    eye_c, mouth_c, right, down, e = _face_axes(landmarks)
    m = float(np.dot(mouth_c - eye_c, down)) or e
    centre = eye_c + down * (0.45 * m) + right * float(np.dot(mouth_c - eye_c, right))
    t = np.linspace(0.0, 1.0, n // 2)
    # top edge: a gentle arch over the nose; bottom edge: a U under the chin
    xs_top = (t * 2 - 1) * 1.05 * e
    ys_top = -0.12 * m * np.cos((t * 2 - 1) * np.pi / 2)
    xs_bot = (1 - t * 2) * 1.0 * e
    ys_bot = m * (0.35 + 1.0 * np.cos((1 - t * 2) * np.pi / 2) ** 0.6)
    xs, ys = np.concatenate([xs_top, xs_bot]), np.concatenate([ys_top, ys_bot])
    pts = centre[None] + xs[:, None] * right[None] + ys[:, None] * down[None]
    return pts.astype(np.float32)


def draw_surgical_mask(frame: np.ndarray, landmarks: np.ndarray, colour_bgr: tuple[int, int, int] = (226, 196, 150),
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paint a light-blue pleated surgical mask on the face with ``landmarks``.

    Args:
        frame: (H, W, 3) BGR uint8.
        landmarks: (5, 2) MTCNN-order landmarks in frame pixels.
        colour_bgr: base colour, BGR.
        seed: seed of the fabric noise (the output is deterministic per seed).

    Returns:
        ``(masked, occlusion)``: the new BGR frame and an (H, W) uint8 mask, 1 where pixels were painted.
    """
    h, w = frame.shape[:2]
    poly = surgical_mask_polygon(landmarks)
    occ = np.zeros((h, w), np.uint8)
    cv2.fillPoly(occ, [np.round(poly).astype(np.int32)], 1, lineType=cv2.LINE_8)
    eye_c, mouth_c, right, down, e = _face_axes(landmarks)
    # fabric: base colour, soft vertical shading, three horizontal pleats, fine noise
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    v = (xx - eye_c[0]) * down[0] + (yy - eye_c[1]) * down[1]
    u = (xx - eye_c[0]) * right[0] + (yy - eye_c[1]) * right[1]
    m = max(float(np.dot(mouth_c - eye_c, down)), 1.0)
    shade = 1.0 - 0.18 * np.clip(np.abs(u) / (1.1 * e), 0, 1) ** 2
    pleat = 1.0 - 0.10 * (np.cos((v / m) * np.pi * 3.0) > 0.85)
    noise = np.random.default_rng(seed).normal(0.0, 4.0, (h, w)).astype(np.float32)
    fabric = np.asarray(colour_bgr, np.float32)[None, None, :] * (shade * pleat)[..., None] + noise[..., None]
    fabric = np.clip(fabric, 0, 255).astype(np.uint8)
    out = frame.copy()
    sel = occ.astype(bool)
    out[sel] = fabric[sel]
    # ear loops (thin lines from the mask's upper corners towards the ears): part of the occlusion too
    for side in (-1.0, 1.0):
        a = eye_c + down * (0.33 * m) + right * (side * 1.05 * e)
        b = eye_c + right * (side * 1.25 * e) + down * (0.05 * m)
        loop = np.zeros_like(occ)
        cv2.line(loop, tuple(int(round(c)) for c in a), tuple(int(round(c)) for c in b), 1, max(1, int(e / 30)))
        out[loop.astype(bool)] = (235, 235, 235)
        occ |= loop
    return out, occ
