"""One occluder layer (drawn in texture space) and how it lands on the image.

A family renderer (``masks.py``, ``accessories.py``, ``body.py``) returns :class:`Layer` objects: colour, coverage,
opacity and a fold height field over a :class:`~trainer.data.occluders.surface.TextureGrid`, the surface they lie
on, and optional straps (3-D polylines: ear loops, head straps, glasses arms). :func:`render_layer` shades the layer
with the face's own light (Lambert on the surface + folds, times the face's low-pass luminance), warps it onto the
image through the surface, draws the straps, and composites with the face's blur / noise / JPEG
(:func:`~trainer.data.occluders.appearance.composite`), updating the exact occlusion map M.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from trainer.data.occluders.appearance import FaceLook, composite, lambert
from trainer.data.occluders.surface import (EARS3D, HeadPose, SurfaceFn, TextureGrid, eye_line_distance,
                                            surface_normals, warp_texture_to_image)


@dataclass
class Strap:
    """A band drawn as a 3-D polyline (canonical x, y, z; eye distances): ear loop, head strap, glasses arm.

    ``hidden_side``: -1 / +1 for a strap on the image-left / -right side of the head (skipped when the head turns
    that side away, |yaw| > 15 degrees), 0 for always drawn.
    """

    points: np.ndarray
    colour: np.ndarray
    width: float  #: eye distances
    hidden_side: int = 0


@dataclass
class Layer:
    """An occluder in texture space.

    Attributes:
        colour: (h, w, 3) float32 BGR albedo; coverage: (h, w) float32 in [0, 1]; opacity: scalar or (h, w).
        height: (h, w) float32 fold height field (eye distances) added to the surface for shading, or None.
        surface, lift: the surface the layer lies on and its offset (eye distances).
        region: "lower" (kept below ``lower_top`` e under the eye line), "upper" (above ``upper_bottom`` e) or
            "any".
        light: how strongly the face's light shades the layer (0 = emissive / flat, 1 = full).
        straps: bands drawn after the layer.
    """

    colour: np.ndarray
    coverage: np.ndarray
    surface: SurfaceFn
    lift: float = 0.0
    opacity: float | np.ndarray = 1.0
    height: np.ndarray | None = None
    region: str = "any"
    light: float = 1.0
    straps: list[Strap] = field(default_factory=list)
    lower_top: float = 0.05
    upper_bottom: float = 0.6


def poly_coverage(grid: TextureGrid, pts: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (h, w) float32 of a canonical polygon (N, 2) on ``grid``."""
    h, w = grid.shape
    cov = np.zeros((h, w), np.uint8)
    p = np.round((grid.to_px(pts) - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(cov, [p], 255, lineType=cv2.LINE_AA, shift=4)
    return cov.astype(np.float32) / 255.0


def ear_loop(corner_top: np.ndarray, corner_bottom: np.ndarray, surface: SurfaceFn, lift: float, side: int,
             colour: np.ndarray, width: float) -> list[Strap]:
    """Two elastic bands from a mask's upper and lower corners (canonical x, y) to the ear on ``side``."""
    ear = EARS3D[0 if side < 0 else 1]
    out = []
    for c in (corner_top, corner_bottom):
        z0 = float(surface(np.array([c[0]]), np.array([c[1]]))[0]) + lift
        t = np.linspace(0, 1, 8)[:, None]
        p0 = np.array([c[0], c[1], z0])
        mid = 0.5 * (p0 + ear) + np.array([side * 0.08, 0.0, 0.05])
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * mid + t ** 2 * ear
        out.append(Strap(pts, colour, width, side))
    return out


def _strap_box(pts2: list[np.ndarray], pad: int, shape) -> tuple[int, int, int, int] | None:
    allp = np.concatenate(pts2)
    H, W = shape[:2]
    x0, y0 = max(int(np.floor(allp[:, 0].min())) - pad, 0), max(int(np.floor(allp[:, 1].min())) - pad, 0)
    x1, y1 = min(int(np.ceil(allp[:, 0].max())) + pad + 1, W), min(int(np.ceil(allp[:, 1].max())) + pad + 1, H)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _allowed(layer: Layer, landmarks: np.ndarray, pose: HeadPose, box) -> np.ndarray | None:
    if layer.region == "any":
        return None
    d = eye_line_distance(landmarks, box)
    if layer.region == "lower":
        return d > layer.lower_top * pose.eye_dist
    return d < layer.upper_bottom * pose.eye_dist


def render_layer(image: np.ndarray, out: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, pose: HeadPose,
                 look: FaceLook, layer: Layer, grid: TextureGrid, rng: np.random.Generator, match: bool = True) -> bool:
    """Shade, warp and composite ``layer`` (and its straps) into ``out`` / ``mask`` (in place). Returns True if any
    pixel was painted."""
    painted = False
    ys, xs = np.nonzero(layer.coverage > 0.02)
    if len(xs):
        gx, gy = grid.coords()
        # light: Lambert on the (folded) surface, applied in texture space
        colour = layer.colour
        if layer.light > 0:
            n = surface_normals(layer.surface, gx.astype(np.float64), gy.astype(np.float64),
                                None if layer.height is None else layer.height.astype(np.float64) * grid.res)
            s = lambert(look, pose, n)
            colour = colour * (1.0 + layer.light * (s - 1.0))[..., None]
        # the image box the layer can reach: project its texels' bounding rectangle
        sel = np.linspace(0, len(xs) - 1, min(len(xs), 400)).astype(int)
        cxy = np.stack([gx[ys[sel], xs[sel]], gy[ys[sel], xs[sel]]], 1).astype(np.float64)
        p = pose.project_surface(cxy, layer.surface, layer.lift)
        H, W = image.shape[:2]
        pad = int(2 + 0.05 * pose.eye_dist)
        x0, y0 = max(int(np.floor(p[:, 0].min())) - pad, 0), max(int(np.floor(p[:, 1].min())) - pad, 0)
        x1, y1 = min(int(np.ceil(p[:, 0].max())) + pad + 1, W), min(int(np.ceil(p[:, 1].max())) + pad + 1, H)
        if x1 > x0 and y1 > y0:
            box = (x0, y0, x1, y1)
            op = np.broadcast_to(np.asarray(layer.opacity, np.float32), layer.coverage.shape)
            stack = np.concatenate([colour, layer.coverage[..., None], op[..., None]], -1).astype(np.float32)
            warped, _ = warp_texture_to_image(stack, grid, pose, layer.surface, layer.lift, box)
            cov = warped[..., 3]
            col = warped[..., :3] / np.maximum(cov, 1e-4)[..., None] * (cov > 1e-4)[..., None]
            opacity = np.where(cov > 1e-4, warped[..., 4] / np.maximum(cov, 1e-4), 0.0)
            if layer.light > 0:  # the face's own low-frequency light (shadows, gradients), softened
                sh = look.shading[y0:y1, x0:x1]
                col = col * (sh ** (0.5 * layer.light))[..., None]
            painted |= composite(image, box, col, cov, np.clip(opacity, 0, 1), look, rng, out, mask,
                                 _allowed(layer, landmarks, pose, box), match)
    painted |= _render_straps(image, out, mask, landmarks, pose, look, layer, rng, match)
    return painted


def _render_straps(image, out, mask, landmarks, pose: HeadPose, look: FaceLook, layer: Layer,
                   rng: np.random.Generator, match: bool) -> bool:
    straps = [s for s in layer.straps if not (s.hidden_side and abs(pose.yaw_deg) > 15
                                              and np.sign(pose.yaw_deg) == s.hidden_side)]
    if not straps:
        return False
    pts2 = [pose.project(s.points) for s in straps]
    thick = [max(1, int(round(s.width * pose.eye_dist))) for s in straps]
    box = _strap_box(pts2, max(thick) + 2, image.shape)
    if box is None:
        return False
    x0, y0, x1, y1 = box
    cov = np.zeros((y1 - y0, x1 - x0), np.uint8)
    col = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
    for s, p, t in zip(straps, pts2, thick):
        q = np.round((p - (x0, y0)) * 16).astype(np.int32)
        cv2.polylines(cov, [q], False, 255, t, cv2.LINE_AA, shift=4)
        cv2.polylines(col, [q], False, tuple(float(c) for c in s.colour), t, cv2.LINE_AA, shift=4)
    c = cov.astype(np.float32) / 255.0
    colour = col / np.maximum(c, 1e-3)[..., None]
    colour = colour * (look.shading[y0:y1, x0:x1] ** 0.5)[..., None]
    return composite(image, box, colour, c, 1.0, look, rng, out, mask, None, match)
