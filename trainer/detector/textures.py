"""Procedural pictures for the detector's scenes: plain textures (:func:`render_texture`: noise, stripes, shapes,
gradients) and hard negatives (:func:`render_hard_negative`: text and star fields, what LTDet mistook for faces).
Everything is drawn from the given random generator, so a scene stays a pure function of its seed."""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["render_hard_negative", "render_texture"]


def render_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A procedural BGR uint8 texture: blurred multi-scale noise, stripes, shapes or a gradient."""
    kind = int(rng.integers(4))
    base = rng.uniform(0, 255, 3)
    if kind == 0:  # multi-scale noise
        img = np.zeros((h, w, 3), np.float32)
        for s in (4, 16, 64):
            n = rng.normal(0, 1, (max(2, h // s), max(2, w // s), 3)).astype(np.float32)
            img += cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 50)
        img += base
    elif kind == 1:  # stripes / checks at an angle
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, math.pi)
        p = rng.uniform(4, 60)
        u = (xx * math.cos(a) + yy * math.sin(a)) / p
        v = (-xx * math.sin(a) + yy * math.cos(a)) / p
        m = (np.floor(u) % 2) if rng.random() < 0.5 else ((np.floor(u) + np.floor(v)) % 2)
        c2 = rng.uniform(0, 255, 3)
        img = base * (1 - m[..., None]) + c2 * m[..., None]
    elif kind == 2:  # random shapes
        img = np.empty((h, w, 3), np.float32)
        img[:] = base
        for _ in range(int(rng.integers(5, 40))):
            c = tuple(float(v) for v in rng.uniform(0, 255, 3))
            p = (int(rng.integers(w)), int(rng.integers(h)))
            r = int(rng.integers(3, max(4, min(h, w) // 4)))
            if rng.random() < 0.5:
                cv2.circle(img, p, r, c, -1 if rng.random() < 0.7 else int(rng.integers(1, 5)))
            else:
                q = (p[0] + int(rng.integers(-2 * r, 2 * r)), p[1] + int(rng.integers(-2 * r, 2 * r)))
                cv2.rectangle(img, p, q, c, -1 if rng.random() < 0.7 else int(rng.integers(1, 5)))
    else:  # gradient
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx / max(w, 1) * rng.uniform(-1, 1) + yy / max(h, 1) * rng.uniform(-1, 1))[..., None]
        img = base + t * rng.uniform(-200, 200, 3) + rng.normal(0, 3, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
_GLYPHS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789oOo0@&%$.,:;!?()-"


def render_hard_negative(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A BGR uint8 ``(h, w, 3)`` picture of the things LTDet took for faces: lines of random text in OpenCV's
    Hershey fonts (dark on light or light on dark, 6-70 px letters, slanted or tilted a little), or a star field
    (dark sky, points and blurred discs of many sizes). Rendered here, so no evaluation picture is reused."""
    if rng.random() < 0.65:  # text
        paper, ink = (rng.uniform(170, 255, 3), rng.uniform(0, 90, 3))
        if rng.random() < 0.3:
            paper, ink = ink, paper
        img = np.empty((h, w, 3), np.uint8)  # putText draws on 8-bit images only
        img[:] = np.round(paper).astype(np.uint8)
        font = _FONTS[int(rng.integers(len(_FONTS)))] | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
        px = float(math.exp(rng.uniform(math.log(6), math.log(70))))  # letter height
        scale = px / 22.0
        thick = max(1, int(round(px / rng.uniform(8, 20))))
        y = rng.uniform(0, px)
        while y < h + px:
            n = int(rng.integers(10, 60))
            line = "".join(_GLYPHS[int(k)] if rng.random() > 0.18 else " " for k in rng.integers(len(_GLYPHS), size=n))
            cv2.putText(img, line, (int(rng.uniform(-3 * px, px)), int(y)), font, scale,
                        tuple(int(v) for v in ink), thick, cv2.LINE_AA)
            y += px * rng.uniform(1.3, 2.2)
        if rng.random() < 0.5:  # a tilted page
            M = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-20, 20)), float(rng.uniform(1.0, 1.3)))
            img = cv2.warpAffine(img, M, (w, h), borderMode=cv2.BORDER_REFLECT)
    else:  # stars
        img = np.zeros((h, w, 3), np.float32)
        img[:] = rng.uniform(0, 45, 3)
        for _ in range(int(rng.integers(20, 400))):
            c = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
            col = np.clip(rng.uniform(70, 255) * (1 + rng.uniform(-0.35, 0.35, 3)), 0, 255)  # whitish, tinted
            r = min(0.6 / float(rng.uniform(0.01, 1.0)) ** 0.7, max(1.0, min(h, w) / 10))  # mostly points, few discs
            ax = (max(1, int(r)), max(1, int(r * rng.uniform(0.4, 1.0))))
            cv2.ellipse(img, (int(c[0]), int(c[1])), ax, float(rng.uniform(0, 180)), 0, 360,
                        tuple(float(v) for v in col), -1, cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.5)))
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5)))
    return np.clip(img, 0, 255).astype(np.uint8)
