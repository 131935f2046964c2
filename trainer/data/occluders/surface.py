"""A 3-D-ish head for occluder synthesis: pose (yaw + pitch) from 5 landmarks, occluder surfaces, surface warps.

Canonical face coordinates (the same as :mod:`trainer.data.synthesis`): unit = eye distance ``e``, origin at the
eye centre, x to the image-right, y down, z towards the camera. A point is turned by the head's **pitch** (about the
x axis, + = chin down) and then its **yaw** (about the y axis, + = nose towards the image-right), and the turned
(X, Y) are mapped to image pixels by the least-squares affine map of the 5 landmarks (which absorbs roll, scale
and translation). Yaw and pitch are the pair whose affine fit of the canonical landmarks has the smallest residual
(a grid search with a weak prior towards frontal: the nose tip is the only landmark off the face plane, so this is
what the nose's offset from the eyes and mouth says).

An occluder is drawn in **texture space**: a raster over canonical (x, y) (``TextureGrid``), then warped onto the
image through a *surface* ``z = f(x, y)`` (a cylinder-like face with a nose tent, a chin that rolls under, a cup
for respirators...). The warp is per pixel (each image pixel is traced back to the surface point it sees by
Newton's method on the projection equations), so a printed pattern bends round the cheeks and over the nose the
way fabric does; it is not one homography. Pixels where the surface turns away from the camera (its projected
Jacobian is <= 0) are not drawn.

Images are (H, W, 3) uint8 BGR; landmarks (5, 2) float image pixels in MTCNN order. No torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from sdk.occluders import _face_axes

#: canonical 3-D landmarks (eye distance units): left eye, right eye, nose tip, mouth corners.
LM3D = np.array([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.57, 0.6],
                 [-0.41, 1.16, 0.1], [0.41, 1.16, 0.1]], np.float64)
EARS3D = np.array([[-1.12, 0.15, -0.6], [1.12, 0.15, -0.6]], np.float64)

SurfaceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

_YAWS = np.deg2rad(np.arange(-60.0, 60.01, 2.5))
_PITCHES = np.deg2rad(np.arange(-35.0, 35.01, 2.5))


def _rotate(xyz: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """(N, 3) canonical points -> (N, 3) turned (X, Y, Z): pitch about x, then yaw about y."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    cp, sp, cy, sy = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    y1 = y * cp + z * sp
    z1 = -y * sp + z * cp
    return np.stack([x * cy + z1 * sy, y1, -x * sy + z1 * cy], 1)


def _pose_table() -> np.ndarray:
    """(G, 5, 3) design matrices [X, Y, 1] of the canonical landmarks for every (yaw, pitch) of the grid."""
    rows = []
    for yaw in _YAWS:
        for pitch in _PITCHES:
            t = _rotate(LM3D, float(yaw), float(pitch))
            rows.append(np.concatenate([t[:, :2], np.ones((5, 1))], 1))
    return np.stack(rows)


_TABLE = _pose_table()
_PINV = np.linalg.pinv(_TABLE)  # (G, 3, 5): least-squares affine of every grid pose in one product
_GRID = np.array([(y, p) for y in _YAWS for p in _PITCHES])


@dataclass(frozen=True, eq=False)
class HeadPose:
    """The canonical head fitted to one face.

    Attributes:
        yaw, pitch: radians (yaw + = nose towards the image-right, pitch + = chin down).
        affine: (2, 3) float64, turned model (X, Y, 1) -> image pixels.
        eye_dist: eye distance in pixels; residual: RMS fit error of the 5 landmarks in eye distances.
    """

    yaw: float
    pitch: float
    affine: np.ndarray
    eye_dist: float
    residual: float

    @property
    def yaw_deg(self) -> float:
        return math.degrees(self.yaw)

    @property
    def pitch_deg(self) -> float:
        return math.degrees(self.pitch)

    def turn(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) canonical -> (N, 3) turned (X, Y, Z), Z towards the camera."""
        return _rotate(np.asarray(xyz, np.float64).reshape(-1, 3), self.yaw, self.pitch)

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) canonical points -> (N, 2) image pixels."""
        t = self.turn(xyz)
        a = self.affine
        return np.stack([a[0, 0] * t[:, 0] + a[0, 1] * t[:, 1] + a[0, 2],
                         a[1, 0] * t[:, 0] + a[1, 1] * t[:, 1] + a[1, 2]], 1)

    def project_surface(self, xy: np.ndarray, surface: SurfaceFn, lift: float = 0.0) -> np.ndarray:
        """(N, 2) canonical (x, y) on ``surface`` (raised by ``lift``) -> (N, 2) image pixels."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        z = surface(xy[:, 0], xy[:, 1]) + lift
        return self.project(np.concatenate([xy, z[:, None]], 1))

    def light_normal(self, n: np.ndarray) -> np.ndarray:
        """Turn canonical normals (..., 3) into camera space (rotation only)."""
        sh = n.shape
        return self.turn(n.reshape(-1, 3)).reshape(sh)


def estimate_head_pose(landmarks: np.ndarray, prior: float = 0.002) -> HeadPose:
    """Fit yaw, pitch and the affine map to (5, 2) landmarks (image px).

    ``prior`` weighs ``yaw**2 + pitch**2`` (radians) against the squared residual in eye distances, so that a
    flat residual (ambiguous landmarks) resolves towards a frontal head. Raises ValueError on degenerate input.
    """
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks must be finite")
    e = float(np.hypot(*(lm[1] - lm[0])))
    if e < 1.0:
        raise ValueError("degenerate landmarks: the eyes are less than 1 px apart")
    A = _PINV @ lm  # (G, 3, 2)
    res = _TABLE @ A - lm[None]
    cost = (res ** 2).sum((1, 2)) / (5 * e * e) + prior * (_GRID ** 2).sum(1)
    g = int(np.argmin(cost))
    return HeadPose(float(_GRID[g, 0]), float(_GRID[g, 1]), A[g].T.copy(), e,
                    float(math.sqrt((res[g] ** 2).sum() / 5) / e))


# ------------------------------------------------------------------------------------------------ surfaces
def face_cylinder(x: np.ndarray) -> np.ndarray:
    """Depth of the canonical face across x: an ellipse of half-width 1.2 and depth 1 (eyes at z = 0)."""
    return np.sqrt(np.clip(1.0 - (np.asarray(x) / 1.2) ** 2, 0.0, None)) - 0.9096


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def skin_surface(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The face itself (for hands, hair, lighting normals): cylinder + nose + chin rolling under."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    nose = 0.5 * np.exp(-(x / 0.18) ** 2) * np.exp(-((y - 0.5) / 0.28) ** 2)
    chin = -0.9 * _smoothstep((y - 1.55) / 0.7) ** 2
    brow = -0.15 * _smoothstep((-y - 0.3) / 0.8)
    return face_cylinder(x) + nose + chin + brow


def mask_surface(ridge: float = 0.42, width: float = 0.55, chin_roll: float = 0.75, top: float = 0.3) -> SurfaceFn:
    """A fabric mask stretched from the nose over the cheeks: a tent ``ridge`` high over the nose line (half-width
    ``width``) that flattens towards the mouth, on the face cylinder, rolling under the chin by ``chin_roll``."""

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        prof = ridge * (0.55 + 0.45 * np.exp(-((y - 0.6) / 0.45) ** 2)) * _smoothstep((y - top + 0.35) / 0.35)
        tent = prof / (1.0 + (x / width) ** 2)
        chin = -chin_roll * _smoothstep((y - 1.5) / 0.75) ** 2
        return face_cylinder(x) + 0.06 + tent + chin

    return f


def cup_surface(height: float = 0.55, cx: float = 0.0, cy: float = 1.05, rx: float = 0.95, ry: float = 0.9) -> SurfaceFn:
    """A respirator cup: a half-ellipsoid bulge of ``height`` over the face cylinder."""

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        return face_cylinder(x) + 0.05 + height * np.sqrt(np.clip(1.0 - r2, 0.0, None)) - 0.25 * _smoothstep(
            (y - 1.75) / 0.5)

    return f


def glasses_surface(lift: float = 0.22) -> SurfaceFn:
    """Sunglasses / a visor: the face cylinder raised by ``lift`` (flat across the eyes)."""

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return face_cylinder(np.asarray(x, np.float64) * 0.8) + lift + 0.0 * np.asarray(y)

    return f


def shield_surface() -> SurfaceFn:
    """A face shield: a wide cylinder 0.9 e in front of the face, from the forehead to below the chin."""

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return 0.75 * (np.sqrt(np.clip(1.0 - (x / 1.9) ** 2, 0.0, None)) - 1.0) + 0.8 + 0.0 * np.asarray(y)

    return f


def surface_normals(surface: SurfaceFn, x: np.ndarray, y: np.ndarray, height: np.ndarray | None = None,
                    h: float = 1e-3) -> np.ndarray:
    """Unit normals (..., 3) of ``z = surface(x, y) (+ height)`` (canonical space; finite differences)."""
    zx = (surface(x + h, y) - surface(x - h, y)) / (2 * h)
    zy = (surface(x, y + h) - surface(x, y - h)) / (2 * h)
    if height is not None:
        gy, gx = np.gradient(height)
        zx = zx + gx
        zy = zy + gy
    n = np.stack([-zx, -zy, np.ones_like(zx)], -1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ texture space
@dataclass(frozen=True)
class TextureGrid:
    """A raster over canonical (x, y): pixel (i, j) is at ``x = x0 + (j + 0.5) / res``, ``y = y0 + (i + 0.5) / res``.

    Attributes:
        x0, y0, x1, y1: the covered rectangle (eye distances); res: pixels per eye distance.
    """

    x0: float = -1.7
    y0: float = -0.9
    x1: float = 1.7
    y1: float = 2.6
    res: float = 64.0

    @property
    def shape(self) -> tuple[int, int]:
        return int(round((self.y1 - self.y0) * self.res)), int(round((self.x1 - self.x0) * self.res))

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) float32 (h, w) canonical coordinates of every texture pixel centre."""
        h, w = self.shape
        xs = self.x0 + (np.arange(w, dtype=np.float32) + 0.5) / self.res
        ys = self.y0 + (np.arange(h, dtype=np.float32) + 0.5) / self.res
        return np.meshgrid(xs, ys)

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        """Canonical (N, 2) -> texture pixel coordinates (N, 2) (continuous, pixel centres at +0.5)."""
        xy = np.asarray(xy, np.float64)
        return np.stack([(xy[..., 0] - self.x0) * self.res, (xy[..., 1] - self.y0) * self.res], -1)

    @staticmethod
    def for_face(eye_dist_px: float, lo: float = 24.0, hi: float = 128.0) -> "TextureGrid":
        """A grid fine enough for a face of this size (about 1.5 texture pixels per image pixel)."""
        return TextureGrid(res=float(np.clip(1.5 * eye_dist_px, lo, hi)))


def _newton(fwd, X: np.ndarray, Y: np.ndarray, x: np.ndarray, y: np.ndarray, iters: int, h: float = 1e-3):
    """``iters`` Newton steps of ``fwd(x, y) = (X, Y)``; returns (x, y, residual, Jacobian determinant)."""
    for _ in range(iters):
        fx, fy = fwd(x, y)
        ax, ay = fwd(x + h, y)
        bx, by = fwd(x, y + h)
        j11, j21, j12, j22 = (ax - fx) / h, (ay - fy) / h, (bx - fx) / h, (by - fy) / h
        det = j11 * j22 - j12 * j21
        safe = np.where(np.abs(det) < 1e-6, 1e-6, det)
        rx, ry = fx - X, fy - Y
        x = x - np.clip((j22 * rx - j12 * ry) / safe, -0.5, 0.5)
        y = y - np.clip((-j21 * rx + j11 * ry) / safe, -0.5, 0.5)
    fx, fy = fwd(x, y)
    ax, ay = fwd(x + h, y)
    bx, by = fwd(x, y + h)
    det = ((ax - fx) * (by - fy) - (bx - fx) * (ay - fy)) / (h * h)
    return x, y, np.hypot(fx - X, fy - Y), det


def inverse_surface_map(pose: HeadPose, surface: SurfaceFn, lift: float, box: tuple[int, int, int, int],
                        iters: int = 7, max_nodes: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pixel of ``box = (x0, y0, x1, y1)``: the canonical (x, y) of the surface point it sees.

    Solves ``A . turn(x, y, surface(x, y) + lift) = pixel`` by Newton's method (finite-difference Jacobian): first
    on a grid of at most ``max_nodes`` x ``max_nodes`` nodes spanning the box, then, from that solution
    interpolated to every pixel, one more step per pixel. A pixel is visible where the result reprojects to within
    1e-3 eye distances and the projected surface patch faces the camera (Jacobian > 0.08).

    Returns:
        ``(x, y, visible)``: float32 (h, w) each; ``visible`` is 1 where the solve converged on a surface patch
        that faces the camera, else 0.
    """
    bx0, by0, bx1, by1 = box
    bw, bh = bx1 - bx0, by1 - by0
    inv = cv2.invertAffineTransform(pose.affine)
    cy, sy, cp, sp = math.cos(pose.yaw), math.sin(pose.yaw), math.cos(pose.pitch), math.sin(pose.pitch)

    def fwd(x, y):
        z = surface(x, y) + lift
        return x * cy + (-y * sp + z * cp) * sy, y * cp + z * sp

    def targets(us, vs):
        return inv[0, 0] * us + inv[0, 1] * vs + inv[0, 2], inv[1, 0] * us + inv[1, 1] * vs + inv[1, 2]

    nw, nh = min(bw, max_nodes), min(bh, max_nodes)
    X, Y = targets(np.linspace(bx0 + 0.5, bx1 - 0.5, nw)[None, :], np.linspace(by0 + 0.5, by1 - 0.5, nh)[:, None])
    x, y, err, det = _newton(fwd, X, Y, X / max(cy, 0.3), Y * np.ones_like(X), iters)
    if (nw, nh) != (bw, bh):  # node solution -> every pixel (align-corners resize), then one step per pixel
        gx = (np.arange(bw, dtype=np.float32) * ((nw - 1) / max(bw - 1, 1)))[None, :].repeat(bh, 0)
        gy = (np.arange(bh, dtype=np.float32) * ((nh - 1) / max(bh - 1, 1)))[:, None].repeat(bw, 1)
        x0 = cv2.remap(x.astype(np.float32), gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        y0 = cv2.remap(y.astype(np.float32), gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        X, Y = targets(np.arange(bx0, bx1, dtype=np.float64)[None, :] + 0.5,
                       np.arange(by0, by1, dtype=np.float64)[:, None] + 0.5)
        x, y, err, det = _newton(fwd, X, Y, x0.astype(np.float64), y0.astype(np.float64), 1)
    visible = ((err < 1e-3) & (det > 0.08)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.float32), visible


def warp_texture_to_image(texture: np.ndarray, grid: TextureGrid, pose: HeadPose, surface: SurfaceFn, lift: float,
                          box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sample a texture-space raster ``texture`` (h, w, C) float32 at the surface point each pixel of ``box`` sees.

    Returns:
        ``(sampled (bh, bw, C) float32, canonical xy (bh, bw, 2) float32)``; texels outside the texture read 0 and
        pixels that do not see the surface are 0 (callers keep one channel as coverage).
    """
    x, y, vis = inverse_surface_map(pose, surface, lift, box)
    mx = ((x - grid.x0) * grid.res - 0.5).astype(np.float32)
    my = ((y - grid.y0) * grid.res - 0.5).astype(np.float32)
    tex = np.ascontiguousarray(texture, np.float32)
    out = cv2.remap(tex, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if out.ndim == 2:
        out = out[..., None]
    out *= vis[..., None]
    return out, np.stack([x, y], -1)


def sample_image_to_texture(image: np.ndarray, grid: TextureGrid, pose: HeadPose, surface: SurfaceFn,
                            lift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The reverse warp (for harvesting): the image colour at every texel's surface point.

    Returns:
        ``(texture (h, w, C) float32, visible (h, w) float32)``: ``visible`` is 1 where the texel projects inside
        the image on a patch facing the camera.
    """
    gx, gy = grid.coords()
    xy = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)
    z = surface(xy[:, 0], xy[:, 1]) + lift
    pts = pose.project(np.concatenate([xy, z[:, None]], 1)).reshape(gx.shape + (2,)).astype(np.float32)
    img = np.asarray(image, np.float32)
    tex = cv2.remap(img, pts[..., 0] - 0.5, pts[..., 1] - 0.5, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    H, W = image.shape[:2]
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= W) & (pts[..., 1] >= 0) & (pts[..., 1] <= H)
    # facing the camera: the turned normal has a positive Z component
    n = surface_normals(surface, gx.astype(np.float64), gy.astype(np.float64))
    nz = pose.light_normal(n)[..., 2]
    return tex if tex.ndim == 3 else tex[..., None], (inside & (nz > 0.15)).astype(np.float32)


def face_box(pose: HeadPose, shape: tuple[int, ...], x_range=(-1.8, 1.8), y_range=(-1.0, 2.6),
             z: float = 0.0, pad: int = 2) -> tuple[int, int, int, int] | None:
    """Pixel box ``(x0, y0, x1, y1)`` (clipped to the image) around a canonical rectangle of the face."""
    c = np.array([[x_range[0], y_range[0], z], [x_range[1], y_range[0], z], [x_range[1], y_range[1], z],
                  [x_range[0], y_range[1], z], [0.0, 0.5, 0.9], [0.0, 1.8, 0.9]])
    p = pose.project(c)
    H, W = shape[:2]
    x0 = max(int(np.floor(p[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(p[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(p[:, 0].max())) + pad + 1, W)
    y1 = min(int(np.ceil(p[:, 1].max())) + pad + 1, H)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def eye_line_distance(landmarks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Signed distance (px, float32 (h, w)) of each pixel of ``box`` below the eye line."""
    eye_c, _, _, down, _ = _face_axes(landmarks)
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - np.float32(eye_c[0])
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - np.float32(eye_c[1])
    return xs * np.float32(down[0]) + ys * np.float32(down[1])
