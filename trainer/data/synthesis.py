"""Masked-face synthesis: paint an occluder on a face from its 5 landmarks and return the exact occlusion map.

Used on the fly by the trainer's data loaders and, with fixed seeds, to build evaluation sets.
Why this size: ~950 lines on purpose for now -- the occluder painters share one canonical 3-D face, its pose fit and the
template warps below; split per occluder family once the real-mask work adding to this module has landed.

    >>> synth = MaskSynthesizer(SynthesisConfig(templates_dir=Path("/data/mask_templates")))
    >>> s = synth(image_bgr, landmarks, 1234)                  # random category, deterministic per seed
    >>> s.masked, s.mask, s.category, s.kind                    # (H,W,3) uint8, (H,W) uint8 0/1, str, str
    >>> s = synth(image_bgr, landmarks, 1234, category="block")  # ID-GAN protocol: m x m white square

Conventions:

* Images are (H, W, 3) uint8, **BGR** (as ``cv2.imread`` gives). The geometry is colour-order agnostic;
  only occluder colours (real templates are read as BGRA, palettes are written in BGR) assume BGR. Pass an
  RGB image and you get an RGB result whose occluder colours have red and blue swapped.
* Landmarks are (5, 2) float (x, y) in the image's pixels, MTCNN order: left eye, right eye, nose tip,
  left mouth corner, right mouth corner (image-left first). Any image size works: 112x112 aligned crops
  and full frames alike.
* Geometry is in face units: ``e`` = eye distance (px). A canonical 3-D face (x image-right, y down, z
  towards the camera, eye centre at the origin, unit = ``e``) is turned by the yaw estimated from the
  landmarks (nose offset from the eye-mouth midline) and fitted to the 5 landmarks by a least-squares
  affine map; occluder shapes and mask-template anchors are placed on that face.
* ``Synthesized.mask`` (M) is 1 on exactly the pixels that were painted: every changed pixel is in M,
  nothing outside M changes (a painted pixel may keep its value by chance; it still counts as painted).
  Semi-transparent template pixels with alpha <= ``alpha_threshold`` are left untouched and are not in M.

Categories (``CATEGORIES``), after the De-Occlusion Distillation paper (Li et al., MM 2020) plus the
ID-GAN block protocol (Ge et al., TCSVT 2020) and the AR database's real occlusions:

=============  ======================================================================  ==============
category       occluders                                                               region of M
=============  ======================================================================  ==============
simple         plain-colour surgical / cloth / N95-shaped masks (templates or drawn)   lower face
complex        patterned (stripes, checks, dots, camouflage) or printed (text, logo)  lower face
human_body     a hand over mouth and nose, or hair strands over the lower face         lower face
hybrid         two occluders: a mask plus sunglasses / a hand / hair, or scarf+glasses  both / union
block          one m x m white square, m = round(48/128 * min(H, W)) (ID-GAN)          anywhere
sunglasses     dark lenses over both eyes with a bridge and arms (AR "sunglasses")     upper face
scarf          fabric from below the nose down to the image bottom (AR "scarf")        lower face
=============  ======================================================================  ==============

"Lower face": every pixel of M is at least ``lower_face_top * e`` below the eye line. "Upper face": every
pixel of M is at most ``upper_face_bottom`` times the eye-to-mouth distance below the eye line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from sdk.occluders import _face_axes
from trainer.data.templates import MaskTemplate, family_category, load_templates, pick_view

CATEGORIES = ("simple", "complex", "human_body", "hybrid", "block", "sunglasses", "scarf")

#: The face region each category's M lies in: "lower", "upper", "both" (hybrid) or "any" (block).
CATEGORY_REGION = {"simple": "lower", "complex": "lower", "human_body": "lower", "hybrid": "both",
                   "block": "any", "sunglasses": "upper", "scarf": "lower"}

#: Default sampling weights when ``category`` is not given (the paper's four categories dominate).
DEFAULT_WEIGHTS = {"simple": 0.25, "complex": 0.25, "human_body": 0.15, "hybrid": 0.15,
                   "block": 0.10, "sunglasses": 0.05, "scarf": 0.05}

PATTERNS = ("stripes", "checks", "dots", "camo", "text", "logo")

# ---------------------------------------------------------------------------------------------------------
# canonical face model (unit: eye distance; x image-right, y down, z towards the camera; eye centre = 0)
# ---------------------------------------------------------------------------------------------------------
_LM3D = np.array([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.57, 0.6],
                  [-0.41, 1.16, 0.1], [0.41, 1.16, 0.1]], np.float64)
#: Where the six template anchors go on the canonical face (a, b, c, d, e, f), MaskTheFace-like:
#: a/c the cheek outline at nose-tip height, b the middle of the nose bridge, d/f the jaw outline at the
#: lower lip, e the chin.
FACE_ANCHORS_3D = np.array([[-0.97, 0.55, -0.30], [0.0, 0.27, 0.28], [0.97, 0.55, -0.30],
                            [-0.82, 1.30, -0.25], [0.0, 1.75, 0.05], [0.82, 1.30, -0.25]], np.float64)
_EARS = np.array([[-1.12, 0.12], [1.12, 0.12]])
_EAR_Z = -0.6


def _surface(x: np.ndarray) -> np.ndarray:
    """Depth of the canonical face at horizontal position ``x`` (a cylinder of radius 1.2; eyes at z=0)."""
    return np.sqrt(np.clip(1.0 - (np.asarray(x) / 1.2) ** 2, 0.0, None)) - 0.9096


def _nose_offset(lm: np.ndarray) -> float:
    """Signed offset of the nose tip from the eye-centre -> mouth-centre line, in eye distances (+: the
    nose is to the image-right of the line)."""
    eye_c, mouth_c = lm[:2].mean(0), lm[3:].mean(0)
    d = mouth_c - eye_c
    dn = float(np.hypot(*d)) or 1.0
    d = d / dn
    right = lm[1] - lm[0]
    e = float(np.hypot(*right)) or 1.0
    t = lm[2] - eye_c
    perp = t - np.dot(t, d) * d
    return float(np.dot(perp, right / e) / e)


def _project_model(pts3: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([pts3[:, 0] * c + pts3[:, 2] * s, pts3[:, 1]], 1)


_THETA_TABLE = np.deg2rad(np.linspace(-75.0, 75.0, 301))
_R_TABLE = np.array([_nose_offset(_project_model(_LM3D, t)) for t in _THETA_TABLE])


@dataclass(frozen=True, eq=False)
class FacePose:
    """The canonical face fitted to 5 landmarks.

    Attributes:
        yaw_deg: estimated head yaw in degrees (+: nose towards the image-right), unclamped.
        render_yaw: yaw (radians) used to turn the model (``yaw_deg`` clamped to +-``max_yaw_deg``).
        affine: (2, 3) float64, maps turned model coordinates (X, Y, 1) to image pixels.
        eye_c: (2,) eye centre (px); right, down: (2,) unit vectors along and across the eye line.
        eye_dist: eye distance ``e`` (px); mouth_dist: eye line to mouth centre along ``down`` (px).
    """

    yaw_deg: float
    render_yaw: float
    affine: np.ndarray
    eye_c: np.ndarray
    right: np.ndarray
    down: np.ndarray
    eye_dist: float
    mouth_dist: float

    def project(self, xy: np.ndarray, z: np.ndarray | float | None = None, lift: float = 0.0) -> np.ndarray:
        """Image pixels (N, 2) of canonical points ``xy`` (N, 2) at depth ``z`` (default: the face surface
        plus ``lift``)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        zz = _surface(xy[:, 0]) + lift if z is None else np.broadcast_to(np.asarray(z, np.float64), xy[:, 0].shape)
        c, s = math.cos(self.render_yaw), math.sin(self.render_yaw)
        X, Y = xy[:, 0] * c + zz * s, xy[:, 1]
        a = self.affine
        return np.stack([a[0, 0] * X + a[0, 1] * Y + a[0, 2], a[1, 0] * X + a[1, 1] * Y + a[1, 2]], 1)

    def model_grid(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Turned-model coordinates (X, Y) of every pixel of ``box = (x0, y0, x1, y1)``, float32 (h, w) each.
        Y is the canonical height (eye distances below the eyes); X the horizontal position as seen."""
        x0, y0, x1, y1 = box
        inv = cv2.invertAffineTransform(self.affine)
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        X = inv[0, 0] * xs + inv[0, 1] * ys + np.float32(inv[0, 2])
        Y = inv[1, 0] * xs + inv[1, 1] * ys + np.float32(inv[1, 2])
        return X.astype(np.float32), Y.astype(np.float32)

    def below_eyes(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Signed distance (px, float32 (h, w)) of each pixel of ``box`` below the eye line."""
        x0, y0, x1, y1 = box
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(self.eye_c[0])
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(self.eye_c[1])
        return xs * np.float32(self.down[0]) + ys * np.float32(self.down[1])


def estimate_yaw(landmarks: np.ndarray) -> float:
    """Head yaw in degrees from 5 landmarks (+: nose towards the image-right; 0: frontal), from the nose's
    offset off the eye-mouth midline under the canonical face model (about +-75 degrees at most)."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    return float(np.rad2deg(np.interp(_nose_offset(lm), _R_TABLE, _THETA_TABLE)))


def estimate_pose(landmarks: np.ndarray, max_yaw_deg: float = 45.0) -> FacePose:
    """Fit the canonical face to (5, 2) landmarks (image px). Raises ValueError on degenerate landmarks."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks must be finite")
    eye_c, mouth_c, right, down, e = _face_axes(lm)
    if float(np.hypot(*(lm[1] - lm[0]))) < 1.0:
        raise ValueError("degenerate landmarks: the eyes are less than 1 px apart")
    yaw = estimate_yaw(lm)
    theta = math.radians(float(np.clip(yaw, -max_yaw_deg, max_yaw_deg)))
    P = np.concatenate([_project_model(_LM3D, theta), np.ones((5, 1))], 1)
    A = np.linalg.lstsq(P, lm, rcond=None)[0].T
    m = float(np.dot(mouth_c - eye_c, down))
    return FacePose(yaw, theta, A, eye_c, right, down, e, m if m > 1.0 else e)


# ---------------------------------------------------------------------------------------------------------
# public types
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Synthesized:
    """One synthesized masked face.

    Attributes:
        masked: (H, W, 3) uint8, the face with the occluder, same colour order as the input.
        clean: (H, W, 3) uint8, an unchanged copy of the input.
        mask: (H, W) uint8, M: 1 on exactly the painted pixels (``masked != clean`` only inside M).
        category: one of ``CATEGORIES``.
        kind: the specific occluder, e.g. ``"template:surgical_blue"``, ``"procedural:cloth"``,
            ``"procedural:surgical+stripes"``, ``"hand"``, ``"hair"``, ``"block48"``, ``"sunglasses"``,
            ``"scarf:knit"``; hybrids join their parts with ``"|"`` (``"template:cloth|sunglasses"``).
        yaw_deg: the head yaw estimated from the landmarks (degrees, + = nose towards the image-right).
    """

    masked: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    category: str
    kind: str
    yaw_deg: float = 0.0


@dataclass(frozen=True)
class SynthesisConfig:
    """Knobs of ``MaskSynthesizer``. Lengths are in eye distances ``e`` unless noted.

    Attributes:
        templates_dir: folder (Path or str) with ``anchors.cfg`` and RGBA mask PNGs (MaskTheFace layout),
            or None for procedural masks only. Read at run time, never copied.
        weights: category -> sampling weight, used when ``__call__`` gets no ``category``; missing
            categories have weight 0.
        template_prob: probability that a simple/complex mask uses a real template (when any is loaded).
        recolor_prob: probability that a simple template is recoloured to a plain palette colour.
        side_view_deg: |yaw| above which the left/right template view is used (the side templates show
            strongly turned masks: on the canonical face they fit better than the front view from about
            30-45 degrees on; MTCNN landmarks of real turned faces tend to give large estimates).
        max_yaw_deg: the model is turned by at most this much (larger estimates are clamped).
        scale_jitter: relative random scale of masks and template anchors (+-).
        shift_jitter: random shift of masks and template anchors (+-, in e).
        anchor_jitter: independent random offset of each template anchor (+-, in e).
        brightness: range of the occluder brightness factor.
        channel_gain: per-channel colour gain jitter (+-).
        noise_sigma: fabric noise (grey levels, std).
        alpha_threshold: template pixels with warped alpha <= this are left untouched (not in M).
        soften_edges: blend the outermost pixel ring of drawn shapes 80/20 with the face.
        block_frac: block side as a fraction of min(H, W) (ID-GAN: 48/128).
        block_size: fixed block side in px (overrides ``block_frac``).
        block_region: "face" (block centre within the landmarks' face box) or "image" (anywhere).
        lower_face_top: lower-face occluders keep M at least this far below the eye line (in e).
        upper_face_bottom: upper-face occluders keep M at most this many eye-to-mouth distances below
            the eye line.
        grey_aware: if the input is grey (B == G == R everywhere), paint the occluder in grey too.
        template_families: use only these template families (None = all); ``exclude_template_families``
            drops families (e.g. ``trainer.data.occluders.registry.HELDOUT_TEMPLATE_FAMILIES`` for training).
    """

    templates_dir: Path | None = None
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    template_prob: float = 0.7
    recolor_prob: float = 0.25
    side_view_deg: float = 30.0
    max_yaw_deg: float = 45.0
    scale_jitter: float = 0.06
    shift_jitter: float = 0.04
    anchor_jitter: float = 0.02
    brightness: tuple[float, float] = (0.75, 1.15)
    channel_gain: float = 0.08
    noise_sigma: float = 3.0
    alpha_threshold: float = 0.5
    soften_edges: bool = True
    block_frac: float = 48.0 / 128.0
    block_size: int | None = None
    block_region: str = "face"
    lower_face_top: float = 0.05
    upper_face_bottom: float = 0.5
    grey_aware: bool = True
    template_families: tuple[str, ...] | None = None
    exclude_template_families: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------
# palettes (BGR)
# ---------------------------------------------------------------------------------------------------------
_PLAIN = np.array([(226, 196, 150), (238, 238, 236), (200, 214, 176), (205, 185, 240), (35, 35, 38),
                   (120, 120, 122), (95, 45, 25), (45, 45, 160), (170, 200, 220), (80, 200, 235),
                   (150, 110, 60), (70, 110, 70), (190, 160, 210)], np.float32)
_INK = np.array([(20, 20, 20), (40, 40, 190), (160, 60, 20), (30, 120, 30), (240, 240, 240),
                 (20, 170, 230), (130, 40, 120)], np.float32)
_SKIN = np.array([(165, 190, 230), (140, 170, 215), (110, 145, 195), (80, 115, 165), (55, 80, 125),
                  (40, 60, 95)], np.float32)
_HAIR = np.array([(22, 22, 26), (30, 42, 62), (40, 68, 105), (95, 150, 195), (150, 150, 152),
                  (35, 60, 140)], np.float32)
_LENS = np.array([(22, 22, 24), (30, 42, 55), (35, 48, 32), (60, 40, 25), (25, 25, 60)], np.float32)
_FRAME = np.array([(15, 15, 15), (40, 140, 190), (175, 175, 180), (30, 50, 80)], np.float32)
_WORDS = ("LT", "NO.1", "SAFE", "ABC", "KN95", "LOVE", "2020", "GO", "STAR", "XO")


class _Canvas:
    """The output image and M under construction; occluders composite into pixel boxes."""

    def __init__(self, image: np.ndarray, pose: FacePose, cfg: SynthesisConfig, grey: bool):
        self.out = image.copy()
        self.mask = np.zeros(image.shape[:2], np.uint8)
        self.pose, self.cfg, self.grey = pose, cfg, grey
        self.h, self.w = image.shape[:2]

    def box(self, pts: np.ndarray, pad: int = 2) -> tuple[int, int, int, int] | None:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        x0 = max(int(np.floor(pts[:, 0].min())) - pad, 0)
        y0 = max(int(np.floor(pts[:, 1].min())) - pad, 0)
        x1 = min(int(np.ceil(pts[:, 0].max())) + pad + 1, self.w)
        y1 = min(int(np.ceil(pts[:, 1].max())) + pad + 1, self.h)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def composite(self, box, colour: np.ndarray, alpha: np.ndarray, region: str) -> bool:
        """Alpha-blend ``colour`` (h, w, 3) float into ``box`` where ``alpha`` (h, w) float in [0, 1] exceeds
        the threshold and ``region`` ("lower", "upper" or "any") allows; those pixels join M."""
        cfg, pose = self.cfg, self.pose
        a = alpha.astype(np.float32, copy=True)
        a[a <= cfg.alpha_threshold] = 0.0
        if region != "any":
            v = pose.below_eyes(box)
            if region == "lower":
                a[v < cfg.lower_face_top * pose.eye_dist] = 0.0
            elif region == "upper":
                a[v > cfg.upper_face_bottom * pose.mouth_dist] = 0.0
        sel = a > 0
        if not sel.any():
            return False
        if self.grey:
            g = colour[..., 0] * 0.114 + colour[..., 1] * 0.587 + colour[..., 2] * 0.299
            colour = np.repeat(g[..., None], 3, axis=2)
        x0, y0, x1, y1 = box
        roi = self.out[y0:y1, x0:x1]
        a3 = a[..., None]
        blend = colour * a3 + roi.astype(np.float32) * (1.0 - a3)
        roi[sel] = np.clip(blend[sel] + 0.5, 0, 255).astype(np.uint8)
        self.mask[y0:y1, x0:x1][sel] = 1
        return True


# ---------------------------------------------------------------------------------------------------------
# drawing helpers
# ---------------------------------------------------------------------------------------------------------
def _fill(alpha_u8: np.ndarray, pts: np.ndarray, box, value: int = 1) -> None:
    p = np.round((np.asarray(pts) - (box[0], box[1])) * 16.0).astype(np.int32)
    cv2.fillPoly(alpha_u8, [p], value, lineType=cv2.LINE_8, shift=4)


def _line(img: np.ndarray, pts: np.ndarray, box, value, thickness: int) -> None:
    p = np.round((np.asarray(pts) - (box[0], box[1])) * 16.0).astype(np.int32)
    cv2.polylines(img, [p], False, value, thickness=max(1, int(thickness)), lineType=cv2.LINE_8, shift=4)


def _soft_alpha(alpha_u8: np.ndarray, soften: bool) -> np.ndarray:
    a = alpha_u8.astype(np.float32)
    if soften:
        inner = cv2.erode(alpha_u8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        a[(alpha_u8 > 0) & (inner == 0)] = 0.8
    return a


def _colour_jitter(rng: np.random.Generator, cfg: SynthesisConfig) -> np.ndarray:
    b = rng.uniform(*cfg.brightness)
    return (b * (1.0 + rng.uniform(-cfg.channel_gain, cfg.channel_gain, 3))).astype(np.float32)


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _jitter_points(pts: np.ndarray, rng: np.random.Generator, cfg: SynthesisConfig,
                   per_point: float = 0.0) -> np.ndarray:
    c = pts.mean(0)
    s = 1.0 + rng.uniform(-cfg.scale_jitter, cfg.scale_jitter)
    shift = rng.uniform(-cfg.shift_jitter, cfg.shift_jitter, 2)
    out = c + (pts - c) * s + shift
    if per_point > 0:
        out = out + rng.uniform(-per_point, per_point, out.shape)
    return out


def _shade(X: np.ndarray, Y: np.ndarray, pose: FacePose, rng: np.random.Generator) -> np.ndarray:
    """Soft cylinder shading of a mask surface plus a random side light; float32 (h, w) around 1."""
    x_c = np.float32(_surface(0.0) * math.sin(pose.render_yaw))
    u = (X - x_c) / np.float32(1.05)
    light = np.float32(rng.uniform(-0.12, 0.12))
    return (1.0 - 0.22 * np.minimum(u * u, 1.0) + light * u
            - 0.10 * np.clip((Y - 1.35) / 0.45, 0.0, 1.0)).astype(np.float32)


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    i, j = rng.choice(len(_PLAIN), 2, replace=False)
    return _PLAIN[i], _PLAIN[j]


def _pattern(name: str, X: np.ndarray, Y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (h, w, 3) float32 fabric pattern in model coordinates (stripes, checks, dots, camo; "text" and
    "logo" return a plain base that ``_print`` draws on)."""
    c1, c2 = _two_colours(rng)
    h, w = X.shape
    if name == "stripes":
        phi = rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-10, 10)
        p = rng.uniform(0.1, 0.28)
        t = (X * math.cos(math.radians(phi)) + Y * math.sin(math.radians(phi))) / p
        sel = (t - np.floor(t)) < rng.uniform(0.3, 0.6)
    elif name == "checks":
        p = rng.uniform(0.1, 0.22)
        sel = ((np.floor(X / p) + np.floor(Y / p)) % 2) == 0
    elif name == "dots":
        p = rng.uniform(0.12, 0.22)
        r = p * rng.uniform(0.18, 0.32)
        row = np.floor(Y / p)
        dx = X / p - np.floor(X / p + 0.5 * (row % 2)) - 0.5 * (row % 2)
        dy = Y / p - row - 0.5
        sel = (dx * dx + dy * dy) * (p * p) > r * r  # background where outside the dots
        c1, c2 = c2, c1
    elif name == "camo":
        field_ = rng.random((6, 6)).astype(np.float32)
        big = cv2.resize(field_, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_CUBIC)
        c3 = _PLAIN[rng.integers(len(_PLAIN))]
        out = np.empty((h, w, 3), np.float32)
        out[:] = c1
        out[big > 0.45] = c2
        out[big > 0.7] = c3
        return out
    else:  # text / logo: plain base
        out = np.empty((h, w, 3), np.float32)
        out[:] = c1
        return out
    out = np.empty((h, w, 3), np.float32)
    out[:] = c2
    out[sel] = c1
    return out


def _print(colour: np.ndarray, kind: str, pose: FacePose, box, rng: np.random.Generator,
           centre: tuple[float, float]) -> None:
    """Print a word (``kind == "text"``) or an emblem (``"logo"``) onto ``colour`` (in place), centred at the
    canonical point ``centre`` on the mask."""
    ink = _INK[rng.integers(len(_INK))]
    if np.abs(ink - colour[colour.shape[0] // 2, colour.shape[1] // 2]).sum() < 120:
        ink = 255.0 - ink
    cx, cy = centre
    if kind == "text":
        word = _WORDS[rng.integers(len(_WORDS))]
        font = cv2.FONT_HERSHEY_DUPLEX
        (tw, th), base = cv2.getTextSize(word, font, 1.0, 2)
        patch8 = np.zeros((th + base + 8, tw + 8), np.uint8)
        cv2.putText(patch8, word, (4, th + 4), font, 1.0, 255, 2, cv2.LINE_AA)
        patch = patch8.astype(np.float32) * np.float32(1.0 / 255.0)
        width = rng.uniform(0.55, 0.85)
        k = width / patch.shape[1]
        th_ = pose.render_yaw
        z0 = float(_surface(cx)) + 0.25
        C = np.array([[k * math.cos(th_), 0.0, (cx - width / 2) * math.cos(th_) + z0 * math.sin(th_)],
                      [0.0, k, cy - k * patch.shape[0] / 2], [0.0, 0.0, 1.0]])
        A = np.vstack([pose.affine, [0.0, 0.0, 1.0]])
        T = np.array([[1.0, 0.0, -box[0]], [0.0, 1.0, -box[1]], [0.0, 0.0, 1.0]])
        M = (T @ A @ C)[:2]
        a = cv2.warpAffine(patch, M, (colour.shape[1], colour.shape[0]), flags=cv2.INTER_LINEAR)
        a = np.clip(a, 0.0, 1.0)[..., None]
        colour *= 1.0 - a
        colour += a * ink
        return
    # emblem: a ring with a star inside
    r = rng.uniform(0.16, 0.24)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    inner = np.stack([cx + 0.8 * r * np.cos(t), cy + 0.8 * r * np.sin(t)], 1)
    k = np.arange(10)
    rad = np.where(k % 2 == 0, 0.7 * r, 0.3 * r)
    ang = -np.pi / 2 + k * np.pi / 5
    star = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    off = np.array([box[0], box[1]], np.float64)
    for poly, col in ((ring, ink), (inner, colour[colour.shape[0] // 2, colour.shape[1] // 2].copy()),
                      (star, ink)):
        p = pose.project(poly, lift=0.25) - off
        cv2.fillPoly(colour, [np.round(p * 16).astype(np.int32)], tuple(float(c) for c in col),
                     lineType=cv2.LINE_8, shift=4)


def _capsule(p0: np.ndarray, direction: np.ndarray, length: float, half_w: float, n: int = 6) -> np.ndarray:
    d = direction / (np.linalg.norm(direction) or 1.0)
    nrm = np.array([-d[1], d[0]])
    p1 = p0 + d * length
    t = np.linspace(-np.pi / 2, np.pi / 2, n)
    cap1 = p1 + half_w * (np.cos(t)[:, None] * d + np.sin(t)[:, None] * nrm)
    cap0 = p0 - half_w * (np.cos(t)[:, None] * d + np.sin(t)[:, None] * -nrm)
    return np.concatenate([cap1, cap0], 0)


def _sample_face_colour(image: np.ndarray, pose: FacePose) -> np.ndarray | None:
    pts = pose.project(np.array([[-0.55, 0.55], [0.55, 0.55], [0.0, 0.3]]))
    h, w = image.shape[:2]
    vals = []
    for x, y in np.round(pts).astype(int):
        if 1 <= x < w - 1 and 1 <= y < h - 1:
            vals.append(image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3))
    if not vals:
        return None
    return np.median(np.concatenate(vals, 0), axis=0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# the synthesizer
# ---------------------------------------------------------------------------------------------------------
class MaskSynthesizer:
    """Paints occluders on faces: ``synth(image, landmarks, seed, category=None) -> Synthesized``.

    Deterministic per seed: each call draws from ``np.random.default_rng(seed)`` (or from the Generator
    passed in). Real templates (if ``config.templates_dir`` is set) are read once per process and cached;
    the synthesizer pickles without them (for DataLoader workers) and reloads them lazily.
    """

    def __init__(self, config: SynthesisConfig | None = None):
        self.config = config or SynthesisConfig()
        unknown = set(self.config.weights) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories in weights: {sorted(unknown)}")
        if self.config.block_region not in ("face", "image"):
            raise ValueError("block_region must be 'face' or 'image'")
        self._templates: dict[str, dict[str, MaskTemplate]] | None = None

    # -- templates --------------------------------------------------------------------------------------
    @property
    def templates(self) -> dict[str, dict[str, MaskTemplate]]:
        """``{family: {view: MaskTemplate}}``; empty without ``templates_dir``."""
        if self._templates is None:
            d = self.config.templates_dir
            self._templates = load_templates(d) if d is not None else {}
            keep, drop = self.config.template_families, set(self.config.exclude_template_families)
            if keep is not None or drop:
                self._templates = {f: v for f, v in self._templates.items()
                                   if (keep is None or f in keep) and f not in drop}
        return self._templates

    def __getstate__(self):
        return {"config": self.config, "_templates": None}

    def fit_template(self, template: MaskTemplate, landmarks_or_pose, rng: np.random.Generator | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Homography placing ``template`` on the face.

        Returns:
            ``(H, face_anchors)``: (3, 3) float64 mapping level-0 template pixels to image pixels, and the
            (6, 2) image points (px) its anchors a..f were fitted to (least squares over the six).
        """
        pose = landmarks_or_pose if isinstance(landmarks_or_pose, FacePose) else \
            estimate_pose(landmarks_or_pose, self.config.max_yaw_deg)
        xy = FACE_ANCHORS_3D[:, :2]
        if rng is not None:
            xy = _jitter_points(xy, rng, self.config, self.config.anchor_jitter)
        dst = pose.project(xy, z=FACE_ANCHORS_3D[:, 2])
        w = [0, 1, 1, 2, 3, 4, 4, 5]  # least squares with the nose bridge (b) and the chin (e) counted twice
        H, _ = cv2.findHomography(template.anchors[w], dst[w], 0)
        if H is None or not np.all(np.isfinite(H)):
            A, _ = cv2.estimateAffine2D(template.anchors, dst, method=cv2.LMEDS)
            H = np.vstack([A, [0.0, 0.0, 1.0]])
        return H, dst

    # -- main entry ---------------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, landmarks: np.ndarray,
                 rng_or_seed: int | np.random.Generator | None = None, category: str | None = None) -> Synthesized:
        """Paint one occluder (or two, for "hybrid") on ``image``.

        Args:
            image: (H, W, 3) uint8, BGR; not modified.
            landmarks: (5, 2) float, MTCNN order, image pixels.
            rng_or_seed: int seed (or anything ``np.random.default_rng`` takes) or a ``np.random.Generator``
                (used as is, advancing its state); None draws fresh OS entropy (not reproducible).
            category: one of ``CATEGORIES``; None samples one by ``config.weights``.

        Returns:
            ``Synthesized``. If the face lies outside the image, M may be empty.
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
        cfg = self.config
        if category is None:
            cats = [c for c in CATEGORIES if cfg.weights.get(c, 0.0) > 0]
            if not cats:
                raise ValueError("all category weights are zero")
            p = np.array([cfg.weights[c] for c in cats], np.float64)
            category = cats[int(rng.choice(len(cats), p=p / p.sum()))]
        elif category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        pose = estimate_pose(landmarks, cfg.max_yaw_deg)
        grey = cfg.grey_aware and bool(np.array_equal(img[..., 0], img[..., 1])
                                       and np.array_equal(img[..., 1], img[..., 2]))
        canvas = _Canvas(img, pose, cfg, grey)
        kind = self._draw(category, canvas, img, rng)
        return Synthesized(masked=canvas.out, clean=img.copy(), mask=canvas.mask, category=category,
                           kind=kind, yaw_deg=pose.yaw_deg)

    # -- categories ----------------------------------------------------------------------------------------
    def _draw(self, category: str, cv: _Canvas, img: np.ndarray, rng: np.random.Generator) -> str:
        if category in ("simple", "complex"):
            return self._mask(cv, rng, category)
        if category == "human_body":
            return self._hand(cv, img, rng) if rng.random() < 0.6 else self._hair(cv, rng)
        if category == "block":
            return self._block(cv, rng)
        if category == "sunglasses":
            return self._sunglasses(cv, rng)
        if category == "scarf":
            return self._scarf(cv, rng)
        # hybrid: two occluders
        r = rng.random()
        if r < 0.2:
            parts = [self._scarf(cv, rng), self._sunglasses(cv, rng)]
        else:
            parts = [self._mask(cv, rng, "simple" if rng.random() < 0.5 else "complex")]
            if r < 0.6:
                parts.append(self._sunglasses(cv, rng))
            elif r < 0.8:
                parts.append(self._hand(cv, img, rng))
            else:
                parts.append(self._hair(cv, rng))
        return "|".join(parts)

    def _mask(self, cv: _Canvas, rng: np.random.Generator, category: str) -> str:
        cfg = self.config
        tpl = self.templates
        if tpl and rng.random() < cfg.template_prob:
            if category == "simple":
                fams = sorted(f for f in tpl if family_category(f) == "simple") or sorted(tpl)
                fam = fams[int(rng.integers(len(fams)))]
                mode = "recolor" if rng.random() < cfg.recolor_prob else None
            else:
                printed = sorted(f for f in tpl if family_category(f) == "complex")
                if printed and rng.random() < 0.35:
                    fam, mode = printed[int(rng.integers(len(printed)))], None
                else:
                    fams = sorted(tpl)
                    fam = fams[int(rng.integers(len(fams)))]
                    mode = PATTERNS[int(rng.integers(len(PATTERNS)))]
            return self._template_mask(cv, rng, tpl[fam], mode)
        style = ("surgical", "cloth", "n95")[int(rng.integers(3))]
        pattern = None if category == "simple" else PATTERNS[int(rng.integers(len(PATTERNS)))]
        return self._procedural_mask(cv, rng, style, pattern)

    def _template_mask(self, cv: _Canvas, rng: np.random.Generator, views: dict[str, MaskTemplate],
                       mode: str | None) -> str:
        cfg, pose = self.config, cv.pose
        t = pick_view(views, pose.yaw_deg, cfg.side_view_deg)
        H, dst = self.fit_template(t, pose, rng)
        w, h = t.size
        corners = cv2.perspectiveTransform(np.array([[[0, 0], [w, 0], [w, h], [0, h]]], np.float64), H)[0]
        box = cv.box(np.concatenate([corners, dst]), pad=1)
        # never paint outside the face's neighbourhood, whatever the homography does far from the anchors
        near = cv.box(pose.project(np.array([[-1.7, -0.3], [1.7, -0.3], [1.7, 2.6], [-1.7, 2.6]]), z=0.0))
        kind = f"template:{t.name}" + (f"+{mode}" if mode else "")
        if box is None or near is None:
            return kind
        box = (max(box[0], near[0]), max(box[1], near[1]), min(box[2], near[2]), min(box[3], near[3]))
        if box[2] <= box[0] or box[3] <= box[1]:
            return kind
        x0, y0, x1, y1 = box
        scale = float(np.hypot(*(dst[2] - dst[0])) / max(np.hypot(*(t.anchors[2] - t.anchors[0])), 1e-6))
        lvl = t.level_for_scale(scale)
        S = np.diag([2.0 ** lvl, 2.0 ** lvl, 1.0])
        T = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        warped = cv2.warpPerspective(t.levels[lvl], T @ H @ S, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
        alpha = warped[..., 3].astype(np.float32) * np.float32(1.0 / 255.0)
        inside = alpha > cfg.alpha_threshold
        if not inside.any():
            return kind
        colour = warped[..., :3].astype(np.float32) / np.maximum(alpha, 1e-3)[..., None]
        if mode is not None:
            lum = colour[..., 0] * 0.114 + colour[..., 1] * 0.587 + colour[..., 2] * 0.299
            ref = float(np.median(lum[inside])) or 1.0
            rel = np.clip(lum / ref, 0.0, 1.6) ** 0.8
            if mode == "recolor":
                base = np.empty_like(colour)
                base[:] = _PLAIN[rng.integers(len(_PLAIN))]
            else:
                X, Y = pose.model_grid(box)
                base = _pattern(mode, X, Y, rng)
                if mode in ("text", "logo"):
                    _print(base, mode, pose, box, rng, (rng.uniform(-0.25, 0.25), rng.uniform(0.95, 1.2)))
            colour = base * rel[..., None]
        colour = colour * _colour_jitter(rng, cfg) + _noise(rng, alpha.shape, cfg.noise_sigma * 0.5)[..., None]
        cv.composite(box, colour, alpha, "lower")
        return kind

    def _procedural_mask(self, cv: _Canvas, rng: np.random.Generator, style: str, pattern: str | None) -> str:
        cfg, pose = self.config, cv.pose
        if style == "surgical":
            top_c, top_s = 0.27 + rng.uniform(-0.03, 0.04), 0.5 + rng.uniform(-0.05, 0.05)
            hw, bot_s = 1.0 + rng.uniform(-0.05, 0.05), 1.35 + rng.uniform(-0.05, 0.05)
            chin = 1.8 + rng.uniform(-0.06, 0.06)
            xt = np.linspace(-hw, hw, 15)
            top = np.stack([xt, top_s - (top_s - top_c) * np.cos(xt / hw * np.pi / 2) ** 2], 1)
            xb = np.linspace(0.95 * hw, -0.95 * hw, 15)
            bot = np.stack([xb, bot_s + (chin - bot_s) * np.cos(xb / (0.95 * hw) * np.pi / 2)], 1)
            corners = np.array([[-hw, top_s + 0.02], [hw, top_s + 0.02],
                                [-0.95 * hw, bot_s - 0.05], [0.95 * hw, bot_s - 0.05]])
        elif style == "cloth":
            top_c, top_s = 0.22 + rng.uniform(-0.03, 0.04), 0.45 + rng.uniform(-0.05, 0.05)
            hw, bw = 1.0 + rng.uniform(-0.05, 0.05), 0.9 + rng.uniform(-0.05, 0.05)
            bot_s, chin = 1.25 + rng.uniform(-0.05, 0.05), 1.82 + rng.uniform(-0.06, 0.06)
            xt = np.linspace(-hw, hw, 17)
            top = np.stack([xt, top_s - (top_s - top_c) * (1 - np.abs(xt / hw)) ** 1.5], 1)
            xb = np.linspace(bw, -bw, 17)
            bot = np.stack([xb, bot_s + (chin - bot_s) * (1 - np.abs(xb / bw) ** 1.7)], 1)
            corners = np.array([[-hw, top_s + 0.02], [hw, top_s + 0.02]])
        else:  # n95 cup
            top_c, chin = 0.25 + rng.uniform(-0.03, 0.04), 1.78 + rng.uniform(-0.06, 0.06)
            hw = 0.9 + rng.uniform(-0.05, 0.05)
            cy, ry = (top_c + chin) / 2, (chin - top_c) / 2
            t = np.linspace(np.pi, 2 * np.pi, 16)
            top = np.stack([hw * np.cos(t), cy + ry * np.sin(t)], 1)
            t = np.linspace(0, np.pi, 16)[1:-1]
            bot = np.stack([hw * np.cos(t), cy + ry * np.sin(t)], 1)
            corners = np.array([[-0.85 * hw, cy - 0.3 * ry], [0.85 * hw, cy - 0.3 * ry]])
            top_s, bot_s = cy, cy
        outline = _jitter_points(np.concatenate([top, bot]), rng, cfg)
        shift = outline.mean(0) - np.concatenate([top, bot]).mean(0)
        corners = corners + shift
        lift = lambda pts: _surface(pts[:, 0]) + 0.05 + 0.3 * np.exp(-(pts[:, 0] / 0.35) ** 2)  # noqa: E731
        poly = pose.project(outline, z=lift(outline))
        # ear loops / straps, only on the visible side(s)
        loops = []
        for i, side in enumerate((-1.0, 1.0)):
            if abs(pose.yaw_deg) > 15 and np.sign(pose.yaw_deg) == side:
                continue  # far side hidden behind the face
            ear = pose.project(_EARS[i:i + 1], z=_EAR_Z)
            for c in corners[corners[:, 0] * side > 0]:
                loops.append(np.concatenate([pose.project(c[None], z=lift(c[None])), ear]))
        e = pose.eye_dist
        thick = max(1, int(round(0.03 * e)))
        box = cv.box(np.concatenate([poly] + loops), pad=thick + 1)
        kind = f"procedural:{style}" + (f"+{pattern}" if pattern else "")
        if box is None:
            return kind
        x0, y0, x1, y1 = box
        a8 = np.zeros((y1 - y0, x1 - x0), np.uint8)
        _fill(a8, poly, box)
        X, Y = pose.model_grid(box)
        if pattern is None:
            colour = np.empty(a8.shape + (3,), np.float32)
            colour[:] = _PLAIN[rng.integers(len(_PLAIN))]
        else:
            colour = _pattern(pattern, X, Y, rng)
            if pattern in ("text", "logo"):
                _print(colour, pattern, pose, box, rng, (rng.uniform(-0.3, 0.3), rng.uniform(0.95, 1.2)))
        shade = _shade(X, Y, pose, rng)
        if style == "surgical":  # three pleats: a shadow line with a lit band above
            per = (bot_s - top_s) / 4
            ph = (Y - top_s) / per
            frac = ph - np.floor(ph)
            band = (ph > 0.5) & (ph < 3.5)
            shade = shade - 0.12 * (band & (frac > 0.82)) + 0.05 * (band & (frac < 0.25))
        elif style == "cloth":  # centre seam
            x_c = float(_surface(0.0)) * math.sin(pose.render_yaw)
            shade = shade - 0.15 * (np.abs(X - x_c) < max(0.012, 0.6 / e))
        else:  # rim
            rim = np.zeros_like(a8)
            _line(rim, np.concatenate([poly, poly[:1]]), box, 1, max(1, int(round(0.05 * e))))
            shade = shade + 0.08 * rim
        colour = (colour * shade[..., None] * _colour_jitter(rng, cfg)
                  + _noise(rng, a8.shape, cfg.noise_sigma)[..., None])
        alpha = _soft_alpha(a8, cfg.soften_edges)
        if loops:
            l8 = np.zeros_like(a8)
            for ln in loops:
                _line(l8, ln, box, 1, thick)
            lc = np.float32(rng.uniform(200, 245))
            colour[(l8 > 0) & (a8 == 0)] = lc
            alpha = np.maximum(alpha, l8.astype(np.float32))
        cv.composite(box, colour, alpha, "lower")
        return kind

    def _hand(self, cv: _Canvas, img: np.ndarray, rng: np.random.Generator) -> str:
        cfg, pose = self.config, cv.pose
        s = 1.0 if rng.random() < 0.5 else -1.0  # fingers point towards image side s
        pc = np.array([-s * rng.uniform(0.05, 0.3), rng.uniform(1.0, 1.2)])
        hl, hh = rng.uniform(0.32, 0.4), rng.uniform(0.38, 0.46)
        t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        palm = pc + np.stack([hl * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.6,
                              hh * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.6], 1)
        d = np.array([s, 0.0])
        fingers = []
        lengths = np.array([0.62, 0.72, 0.68, 0.55]) * rng.uniform(0.9, 1.15)
        offs = np.linspace(-0.33, 0.33, 4) * hh / 0.42 + rng.uniform(-0.015, 0.015, 4)
        for off, ln in zip(offs, lengths):
            base = pc + np.array([s * (hl - 0.1), off])
            fingers.append(_capsule(base, d + np.array([0.0, off * 0.25]), ln, 0.11))
        thumb = _capsule(pc + np.array([-s * 0.05, -hh + 0.05]), np.array([s * 0.55, -0.85]), 0.45, 0.11)
        arm = np.array([[pc[0] - s * 0.2, pc[1] - hh * 0.7], [pc[0] - s * 0.25, pc[1] + hh * 0.9],
                        [pc[0] - s * 0.9, pc[1] + 2.2], [pc[0] - s * 1.6, pc[1] + 1.9]])
        parts = [arm, palm, thumb] + fingers
        phi = math.radians(rng.uniform(-25, 25))
        R = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        parts = [(p - pc) @ R.T + pc for p in parts]
        proj = [pose.project(p, lift=0.45) for p in parts]
        box = cv.box(np.concatenate(proj))
        if box is None:
            return "hand"
        x0, y0, x1, y1 = box
        a8 = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for p in proj:
            _fill(a8, p, box)
        face = _sample_face_colour(img, pose)
        tone = _SKIN[rng.integers(len(_SKIN))]
        if face is not None and not cv.grey:
            tone = face * (w := rng.uniform(0.5, 0.9)) + tone * (1 - w)
        elif face is not None:
            tone = tone * (float(face.mean()) / max(float(tone.mean()), 1.0))
        X, Y = pose.model_grid(box)
        x_c = float(pc[0]) * math.cos(pose.render_yaw)
        r2 = ((X - x_c) ** 2 + (Y - pc[1]) ** 2) / 1.2
        shade = (1.05 - 0.25 * np.minimum(r2, 1.0) + rng.uniform(-0.1, 0.1) * (X - x_c)).astype(np.float32)
        colour = tone[None, None, :] * shade[..., None] * _colour_jitter(rng, cfg)
        crease = np.zeros_like(a8)  # finger outlines, darker
        for p in proj[2:]:
            _line(crease, np.concatenate([p, p[:1]]), box, 1, max(1, int(round(0.02 * pose.eye_dist))))
        colour[crease > 0] *= 0.86
        colour += _noise(rng, a8.shape, cfg.noise_sigma * 0.7)[..., None]
        cv.composite(box, colour, _soft_alpha(a8, cfg.soften_edges), "lower")
        return "hand"

    def _hair(self, cv: _Canvas, rng: np.random.Generator) -> str:
        cfg, pose = self.config, cv.pose
        e = pose.eye_dist
        s = 1.0 if rng.random() < 0.5 else -1.0
        n = int(rng.integers(30, 70))
        t = np.linspace(0.0, 1.0, 12)[None, :]
        # one lock: strands share a path (drift + slow wave) and fan out a little towards their tips
        xc, yc, width = s * rng.uniform(0.2, 0.95), rng.uniform(0.1, 0.4), rng.uniform(0.25, 0.6)
        drift = s * rng.uniform(-0.45, 0.2)
        amp, fr, ph = rng.uniform(0.0, 0.12), rng.uniform(0.4, 1.4), rng.uniform(0, 6.3)
        off = rng.uniform(-width / 2, width / 2, (n, 1))
        y0 = yc + rng.uniform(-0.05, 0.05, (n, 1))
        y1 = rng.uniform(1.3, 2.1, (n, 1))
        own = rng.uniform(0.0, 0.03, (n, 1)) * np.sin(2 * np.pi * rng.uniform(1, 3, (n, 1)) * t
                                                     + rng.uniform(0, 6.3, (n, 1)))
        xs = xc + off * (1.0 + 0.5 * t) + drift * t ** 1.3 + amp * np.sin(2 * np.pi * fr * t + ph) + own
        ys = y0 + (y1 - y0) * t
        strands = [pose.project(np.stack([xs[i], ys[i]], 1), lift=0.15) for i in range(n)]
        thick = np.maximum(1, np.round(e * rng.uniform(0.02, 0.05, n))).astype(int)
        box = cv.box(np.concatenate(strands), pad=int(thick.max()) + 1)
        if box is None:
            return "hair"
        x0b, y0b, x1b, y1b = box
        a8 = np.zeros((y1b - y0b, x1b - x0b), np.uint8)
        base = _HAIR[rng.integers(len(_HAIR))] * _colour_jitter(rng, cfg)
        colour = np.empty(a8.shape + (3,), np.float32)
        colour[:] = base
        for st, th, g in zip(strands, thick, rng.uniform(0.8, 1.25, n)):
            _line(a8, st, box, 1, th)
            _line(colour, st, box, tuple(float(v) for v in np.clip(base * g, 0, 255)), th)
        cv.composite(box, colour, a8.astype(np.float32), "lower")
        return "hair"

    def _sunglasses(self, cv: _Canvas, rng: np.random.Generator) -> str:
        cfg, pose = self.config, cv.pose
        e = pose.eye_dist
        w, h = rng.uniform(0.34, 0.43), rng.uniform(0.2, 0.29)
        cy, cx, n = rng.uniform(-0.05, 0.04), rng.uniform(0.48, 0.54), rng.uniform(2.2, 4.0)
        t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        ct, st = np.cos(t), np.sin(t)
        ux = np.sign(ct) * np.abs(ct) ** (2 / n)
        uy = np.sign(st) * np.abs(st) ** (2 / n)
        lenses = []
        for side in (-1.0, 1.0):
            taper = 1.0 - 0.15 * np.clip(uy, 0, 1) * (ux * side < 0)  # aviator-ish: narrower at the inner bottom
            lenses.append(np.stack([side * cx + w * ux * taper, cy + h * uy], 1))
        bridge = np.array([[-cx + w * 0.9, cy - 0.55 * h], [cx - w * 0.9, cy - 0.55 * h],
                           [cx - w * 0.9, cy - 0.35 * h], [-cx + w * 0.9, cy - 0.35 * h]])
        arms = [np.array([[side * (cx + w * 0.95), cy - 0.5 * h], [side * 1.15, cy - 0.3 * h]]) for side in (-1.0, 1.0)]
        lift = 0.22
        p_lens = [pose.project(ln, lift=lift) for ln in lenses]
        p_bridge = pose.project(bridge, lift=lift + 0.1)
        p_arms = []
        for i, arm in enumerate(arms):
            side = -1.0 if i == 0 else 1.0
            if abs(pose.yaw_deg) > 15 and np.sign(pose.yaw_deg) == side:
                continue
            p_arms.append(pose.project(arm, z=np.array([float(_surface(arm[0, 0])) + lift, _EAR_Z])))
        fthick = max(1, int(round(0.04 * e)))
        box = cv.box(np.concatenate(p_lens + [p_bridge] + p_arms), pad=fthick + 1)
        if box is None:
            return "sunglasses"
        x0, y0, x1, y1 = box
        a8 = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for p in p_lens + [p_bridge]:
            _fill(a8, p, box)
        frame = np.zeros_like(a8)
        for p in p_lens:
            _line(frame, np.concatenate([p, p[:1]]), box, 1, fthick)
        _fill(frame, p_bridge, box)
        for p in p_arms:
            _line(frame, p, box, 1, fthick)
        X, Y = pose.model_grid(box)
        lens_c = _LENS[rng.integers(len(_LENS))]
        grad = (0.75 + 0.6 * np.clip((Y - (cy - h)) / (2 * h), 0, 1)).astype(np.float32)  # darker on top
        gl = rng.uniform(0.3, 0.8)
        spec = np.exp(-(((X + Y * gl) % (2 * cx)) - cx * 0.6) ** 2 / 0.004).astype(np.float32) * rng.uniform(20, 50)
        colour = lens_c[None, None, :] * grad[..., None] + spec[..., None]
        fc = _FRAME[rng.integers(len(_FRAME))]
        colour[frame > 0] = fc
        colour = colour * _colour_jitter(rng, cfg) + _noise(rng, a8.shape, cfg.noise_sigma * 0.5)[..., None]
        alpha = np.maximum(_soft_alpha(a8, cfg.soften_edges), frame.astype(np.float32))
        cv.composite(box, colour, alpha, "upper")
        return "sunglasses"

    def _scarf(self, cv: _Canvas, rng: np.random.Generator) -> str:
        cfg, pose = self.config, cv.pose
        e = pose.eye_dist
        y_top = rng.uniform(0.45, 0.72)
        xt = np.linspace(-1.35, 1.35, 21)
        wav = rng.uniform(0.01, 0.05) * np.sin(xt * rng.uniform(3, 7) + rng.uniform(0, 6.3))
        top = np.stack([xt, y_top + wav - 0.1 * np.exp(-(xt / 0.35) ** 2) + 0.08 * (xt / 1.35) ** 2], 1)
        # the bottom must pass the image's lower edge: go as far as the image diagonal
        y_far = y_top + (cv.h + cv.w) / max(e, 1.0) + 2.0
        bottom = np.array([[1.35 + 0.15 * (y_far - y_top), y_far], [-1.35 - 0.15 * (y_far - y_top), y_far]])
        outline = _jitter_points(top, rng, cfg)
        outline = np.concatenate([outline, bottom])
        poly = pose.project(outline, lift=0.3)
        box = cv.box(poly)
        texture = ("knit", "plaid", "stripes", "plain")[int(rng.integers(4))]
        kind = f"scarf:{texture}"
        if box is None:
            return kind
        x0, y0, x1, y1 = box
        a8 = np.zeros((y1 - y0, x1 - x0), np.uint8)
        _fill(a8, poly, box)
        X, Y = pose.model_grid(box)
        c1, c2 = _two_colours(rng)
        colour = np.empty(a8.shape + (3,), np.float32)
        colour[:] = c1
        if texture == "knit":
            rib = (0.5 + 0.5 * np.cos(2 * np.pi * X / rng.uniform(0.06, 0.1))).astype(np.float32)
            colour *= (0.82 + 0.18 * rib)[..., None]
        elif texture == "plaid":
            p1, p2 = rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.4)
            bx = ((X / p1) % 1.0) < 0.3
            by = ((Y / p2) % 1.0) < 0.3
            colour[bx | by] = c1 * 0.5 + c2 * 0.5
            colour[bx & by] = c2
        elif texture == "stripes":
            colour[((Y / rng.uniform(0.15, 0.35)) % 1.0) < 0.5] = c2
        fold = (1.0 - 0.14 * (0.5 + 0.5 * np.sin(2 * np.pi * (X * 0.8 + Y * 0.35) / rng.uniform(0.35, 0.6)
                                                  + rng.uniform(0, 6.3)))).astype(np.float32)
        fold -= 0.12 * np.clip(1.0 - (Y - y_top) / 0.12, 0, 1)  # shadow under the top hem
        colour = colour * fold[..., None] * _colour_jitter(rng, cfg) + _noise(rng, a8.shape, cfg.noise_sigma)[..., None]
        cv.composite(box, colour, _soft_alpha(a8, cfg.soften_edges), "lower")
        return kind

    def _block(self, cv: _Canvas, rng: np.random.Generator) -> str:
        cfg, pose = self.config, cv.pose
        H, W = cv.h, cv.w
        m = cfg.block_size if cfg.block_size is not None else int(round(cfg.block_frac * min(H, W)))
        m = int(np.clip(m, 1, min(H, W)))
        if cfg.block_region == "image":
            x0, y0 = int(rng.integers(0, W - m + 1)), int(rng.integers(0, H - m + 1))
        else:
            pts = pose.project(np.array([[-0.9, -0.3], [0.9, -0.3], [0.9, 1.75], [-0.9, 1.75]]))
            lo = np.clip(pts.min(0), 0, [W - 1, H - 1])
            hi = np.clip(pts.max(0), 0, [W - 1, H - 1])
            cx, cy = rng.uniform(lo[0], hi[0] + 1e-9), rng.uniform(lo[1], hi[1] + 1e-9)
            x0 = int(np.clip(round(cx - m / 2), 0, W - m))
            y0 = int(np.clip(round(cy - m / 2), 0, H - m))
        cv.out[y0:y0 + m, x0:x0 + m] = 255
        cv.mask[y0:y0 + m, x0:x0 + m] = 1
        return f"block{m}"
