"""Scarves, sunglasses and face shields in texture space.

``scarf`` and ``sunglasses`` are training families; ``face_shield`` (clear plastic, mostly transparent) is held
out. Canonical units as in :mod:`trainer.data.occluders.masks`.
"""
from __future__ import annotations

import numpy as np

from trainer.data.occluders.appearance import knit, print_texture, random_colour, random_folds
from trainer.data.occluders.layer import Layer, Strap, poly_coverage
from trainer.data.occluders.surface import EARS3D, TextureGrid, face_cylinder, glasses_surface, mask_surface, shield_surface


def scarf(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """A thick scarf wrapped up to the nose: wavy rolled top hem, knit / plaid / stripes, deep folds."""
    gx, gy = grid.coords()
    top = rng.uniform(0.45, 0.8)
    hw = 1.45
    xt = np.linspace(-hw, hw, 25)
    wav = rng.uniform(0.02, 0.07) * np.sin(xt * rng.uniform(3, 7) + rng.uniform(0, 6.3))
    top_edge = np.stack([xt, top + wav - 0.08 * np.exp(-(xt / 0.35) ** 2) + 0.1 * (xt / hw) ** 2], 1)
    poly = np.concatenate([top_edge, [[hw + 0.2, grid.y1 + 0.5], [-hw - 0.2, grid.y1 + 0.5]]])
    cov = poly_coverage(grid, poly)
    texture = ("knit", "plaid", "stripes", "plain", "print")[int(rng.integers(5))]
    c1, c2 = random_colour(rng), random_colour(rng)
    colour = np.empty(gx.shape + (3,), np.float32)
    colour[:] = c1
    if texture == "plaid":
        p1, p2 = rng.uniform(0.15, 0.35), rng.uniform(0.15, 0.35)
        bx, by = ((gx / p1) % 1.0) < 0.3, ((gy / p2) % 1.0) < 0.3
        colour[bx | by] = 0.5 * (c1 + c2)
        colour[bx & by] = c2
    elif texture == "stripes":
        colour[((gy / rng.uniform(0.12, 0.35)) % 1.0) < 0.5] = c2
    elif texture == "print":
        colour = print_texture(("floral", "paisley", "dots", "camo")[int(rng.integers(4))], gx, gy, rng, c1)
    colour *= knit(gx, gy, rng)[..., None]
    height = random_folds(gx, gy, rng, 0.04) + (0.05 * np.sin(gy * rng.uniform(6, 10))).astype(np.float32)
    height -= (0.06 * np.clip(1.0 - (gy - top) / 0.12, 0, 1)).astype(np.float32)  # rolled hem
    surf = mask_surface(ridge=0.3, width=0.6, chin_roll=0.1, top=top)
    return [Layer(colour, cov, surf, 0.22 + rng.uniform(0, 0.1), height=height, region="lower")], f"scarf:{texture}"


def sunglasses(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """Sunglasses: round / aviator / wayfarer / cat-eye lenses, tinted (sometimes see-through) with a gradient
    and a specular streak, a frame, a bridge and arms to the ears."""
    gx, gy = grid.coords()
    shape = ("round", "aviator", "wayfarer", "cateye")[int(rng.integers(4))]
    cx, cy = rng.uniform(0.47, 0.55), rng.uniform(-0.04, 0.05)
    w, h = rng.uniform(0.34, 0.44), rng.uniform(0.2, 0.3)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    n = {"round": 2.0, "aviator": 2.6, "wayfarer": 4.0, "cateye": 3.0}[shape]
    ux = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2 / n)
    uy = np.sign(np.sin(t)) * np.abs(np.sin(t)) ** (2 / n)
    cov = np.zeros(gx.shape, np.float32)
    frame = np.zeros(gx.shape, np.float32)
    ft = rng.uniform(0.03, 0.07)
    for side in (-1.0, 1.0):
        sx = ux.copy()
        sy = uy.copy()
        if shape == "aviator":
            sy = sy + 0.25 * np.clip(uy, 0, 1) * (ux * side < 0)
        if shape == "cateye":
            sy = sy - 0.3 * np.clip(-uy, 0, 1) * np.clip(ux * side, 0, 1)
        lens = np.stack([side * cx + w * sx, cy + h * sy], 1)
        c_in = poly_coverage(grid, lens)
        c_out = poly_coverage(grid, (lens - lens.mean(0)) * (1.0 + ft / w) + lens.mean(0))
        cov = np.maximum(cov, c_in)
        frame = np.maximum(frame, np.clip(c_out - c_in, 0, 1))
    bridge = np.array([[-cx + w * 0.85, cy - 0.5 * h], [cx - w * 0.85, cy - 0.5 * h],
                       [cx - w * 0.85, cy - 0.5 * h + ft], [-cx + w * 0.85, cy - 0.5 * h + ft]])
    frame = np.maximum(frame, poly_coverage(grid, bridge))
    tint = np.array([(22, 22, 24), (30, 42, 55), (35, 48, 32), (60, 40, 25), (25, 25, 60), (40, 90, 140)],
                    np.float32)[int(rng.integers(6))]
    grad = (0.7 + 0.6 * np.clip((gy - (cy - h)) / (2 * h), 0, 1)).astype(np.float32)
    colour = tint[None, None, :] * grad[..., None]
    k = rng.uniform(0.3, 0.8)
    streak = np.exp(-(((gx + gy * k) % (2 * cx)) - cx * 0.6) ** 2 / 0.003).astype(np.float32)
    colour += (streak * rng.uniform(40, 90))[..., None]
    see_through = rng.random() < 0.3
    opacity = np.where(frame > 0.5, 1.0, rng.uniform(0.7, 0.88) if see_through else 1.0).astype(np.float32)
    fc = np.array([(15, 15, 15), (40, 140, 190), (175, 175, 180), (30, 50, 80), (20, 20, 120)],
                  np.float32)[int(rng.integers(5))]
    colour[frame > 0.5] = fc
    total = np.maximum(cov, frame)
    surf = glasses_surface(0.0)
    arms = []
    for side in (-1, 1):
        x0 = side * (cx + w + ft)
        z0 = float(face_cylinder(np.array([x0 * 0.8]))[0]) + 0.22
        ear = EARS3D[0 if side < 0 else 1] + np.array([0.0, -0.12, 0.0])
        p = np.stack([np.linspace(x0, ear[0], 6), np.linspace(cy - 0.4 * h, ear[1], 6), np.linspace(z0, ear[2], 6)], 1)
        arms.append(Strap(p, fc, max(ft, 0.03), side))
    layer = Layer(colour, total, surf, 0.22, opacity=opacity, region="upper", light=0.4, straps=arms)
    return [layer], f"sunglasses:{shape}" + (":tinted" if see_through else "")


def face_shield(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """Held out. A clear plastic visor from the forehead to below the chin: faint tint, specular streaks, an
    opaque headband on top."""
    gx, gy = grid.coords()
    hw = 1.6
    top, bottom = grid.y0 + 0.05, grid.y1 - 0.05
    xt = np.linspace(hw, -hw, 21)
    poly = np.concatenate([[[-hw, top], [hw, top]], np.stack([xt, bottom - 0.3 * (xt / hw) ** 2], 1)])
    cov = poly_coverage(grid, poly)
    tint = np.array([(235, 235, 235), (240, 225, 200), (210, 235, 240)], np.float32)[int(rng.integers(3))]
    colour = np.empty(gx.shape + (3,), np.float32)
    colour[:] = tint
    k = rng.uniform(-0.6, 0.6)
    streak = np.exp(-(((gx - gy * k) - rng.uniform(-0.8, 0.8)) ** 2) / 0.01).astype(np.float32)
    opacity = (rng.uniform(0.12, 0.25) + 0.5 * streak).astype(np.float32)
    band = gy < top + rng.uniform(0.18, 0.28)
    colour[band] = random_colour(rng)
    opacity[band] = 1.0
    return [Layer(colour, cov, shield_surface(), 0.0, opacity=np.clip(opacity, 0, 1), region="any", light=0.3)], \
        "face_shield"
