"""Hands and hair in texture space (training families ``hand`` and ``hair``).

The hand takes the face's own skin colour (measured on the cheeks, mixed with a random skin tone) and is shaded as
rounded fingers (a height field from each finger's distance transform) under the face's light. Hair is drawn as
locks of thin strands, over the forehead and eyes (bangs) or across one side of the face.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from trainer.data.occluders.appearance import HAIR, SKIN
from trainer.data.occluders.layer import Layer, poly_coverage
from trainer.data.occluders.surface import TextureGrid, skin_surface
from trainer.data.synthesis import _capsule


def hand(grid: TextureGrid, rng: np.random.Generator, skin: np.ndarray | None = None) -> tuple[list[Layer], str]:
    """A hand over the mouth / chin / cheek: palm, four fingers (spread or together), thumb, wrist leaving the
    frame; skin from the face (``skin``, BGR) when given."""
    gx, gy = grid.coords()
    pose = ("mouth", "chin", "cheek")[int(rng.integers(3))]
    s = 1.0 if rng.random() < 0.5 else -1.0  # fingers point towards image side s
    if pose == "mouth":
        pc, ang = np.array([-s * rng.uniform(0.1, 0.35), rng.uniform(1.0, 1.25)]), rng.uniform(-20, 20)
    elif pose == "chin":
        pc, ang = np.array([-s * rng.uniform(0.0, 0.3), rng.uniform(1.6, 1.9)]), rng.uniform(-35, -5) * s
    else:
        pc, ang = np.array([-s * rng.uniform(0.6, 0.9), rng.uniform(0.7, 1.1)]), s * rng.uniform(40, 80)
    hl, hh = rng.uniform(0.3, 0.38), rng.uniform(0.36, 0.45)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    parts = [pc + np.stack([hl * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.6,
                            hh * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.6], 1)]
    spread = rng.uniform(0.0, 0.25)
    lengths = np.array([0.6, 0.7, 0.66, 0.52]) * rng.uniform(0.9, 1.15)
    offs = np.linspace(-0.32, 0.32, 4) * hh / 0.42
    fingers = []
    for off, ln in zip(offs, lengths):
        d = np.array([s, off * spread * 2.0])
        fingers.append(_capsule(pc + np.array([s * (hl - 0.08), off]), d, ln, rng.uniform(0.09, 0.115), n=8))
    thumb = _capsule(pc + np.array([-s * 0.05, -hh + 0.06]), np.array([s * 0.55, -0.8]), 0.42, 0.105, n=8)
    wrist = np.array([[pc[0] - s * 0.15, pc[1] - hh * 0.8], [pc[0] - s * 0.15, pc[1] + hh * 0.8],
                      [pc[0] - s * 2.5, pc[1] + hh * 0.9 + 0.8], [pc[0] - s * 2.5, pc[1] - hh * 0.9 + 0.8]])
    c, sn = math.cos(math.radians(ang)), math.sin(math.radians(ang))
    R = np.array([[c, -sn], [sn, c]])
    shapes = [(p - pc) @ R.T + pc for p in parts + [wrist, thumb] + fingers]
    h, w = grid.shape
    cov = np.zeros((h, w), np.float32)
    height = np.zeros((h, w), np.float32)
    crease = np.zeros((h, w), np.float32)
    for i, p in enumerate(shapes):
        c1 = poly_coverage(grid, p)
        cov = np.maximum(cov, c1)
        dist = cv2.distanceTransform((c1 > 0.5).astype(np.uint8), cv2.DIST_L2, 3) / grid.res
        rr = 0.11 if i >= 2 else 0.3
        height = np.maximum(height, (np.sqrt(np.clip(1 - (1 - np.clip(dist / rr, 0, 1)) ** 2, 0, 1)) * rr * 0.6
                                     ).astype(np.float32))
        if i >= 2:
            edge = (c1 > 0.5) & (dist * grid.res < 1.5)
            crease[edge] = 1.0
    tone = SKIN[rng.integers(len(SKIN))]
    if skin is not None:
        wgt = rng.uniform(0.5, 0.9)
        tone = skin * wgt + tone * (1 - wgt)
    colour = np.empty((h, w, 3), np.float32)
    colour[:] = tone * np.float32(rng.uniform(0.92, 1.08))
    colour *= (1.0 - 0.15 * crease)[..., None]
    colour *= (1.0 + 0.02 * rng.standard_normal((h, w)).astype(np.float32))[..., None]
    return [Layer(colour, cov, skin_surface, 0.35, height=height, region="any")], f"hand:{pose}"


def hair(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """Locks of hair: bangs over the forehead and eyes, or a side lock across the cheek and mouth."""
    gx, gy = grid.coords()
    h, w = grid.shape
    style = "bangs" if rng.random() < 0.5 else "side"
    n = int(rng.integers(50, 120))
    t = np.linspace(0.0, 1.0, 16)[None, :]
    y0 = grid.y0 + rng.uniform(0.0, 0.15, (n, 1))
    if style == "bangs":  # a fringe: strands spread over the forehead, ending at uneven lengths over the eyes
        x0 = rng.normal(rng.uniform(-0.3, 0.3), 0.45, (n, 1))
        y1 = rng.normal(rng.uniform(-0.05, 0.25), 0.12, (n, 1))
        drift = rng.uniform(-0.25, 0.25) + rng.normal(0.0, 0.05, (n, 1))
    else:  # a lock: strands bundled round one path (soft-edged), tips fanning out
        s = 1.0 if rng.random() < 0.5 else -1.0
        x0 = s * rng.uniform(0.3, 1.0) + rng.normal(0.0, rng.uniform(0.06, 0.15), (n, 1))
        y1 = rng.normal(rng.uniform(1.4, 2.2), 0.15, (n, 1))
        drift = -s * rng.uniform(0.0, 0.5) + rng.normal(0.0, 0.08, (n, 1)) * t[:, -1:]
    amp, fr, ph = rng.uniform(0.0, 0.1), rng.uniform(0.5, 1.5), rng.uniform(0, 6.3)
    xs = x0 + drift * t ** 1.3 + amp * np.sin(2 * np.pi * fr * t + ph)
    ys = y0 + (y1 - y0) * t
    base = HAIR[rng.integers(len(HAIR))] * np.float32(rng.uniform(0.85, 1.15))
    cov8 = np.zeros((h, w), np.uint8)
    colour = np.empty((h, w, 3), np.float32)
    colour[:] = base
    thick = np.maximum(1, np.round(grid.res * rng.uniform(0.008, 0.025, n))).astype(int)
    for i in range(n):
        p = np.round((grid.to_px(np.stack([xs[i], ys[i]], 1)) - 0.5) * 16).astype(np.int32)
        cv2.polylines(cov8, [p], False, 255, int(thick[i]), cv2.LINE_AA, shift=4)
        g = float(rng.uniform(0.75, 1.3))
        cv2.polylines(colour, [p], False, tuple(float(v) for v in np.clip(base * g, 0, 255)), int(thick[i]),
                      cv2.LINE_AA, shift=4)
    cov = cov8.astype(np.float32) / 255.0
    return [Layer(colour, cov, skin_surface, 0.12, region="any", light=0.7)], f"hair:{style}"
