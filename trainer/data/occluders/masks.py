"""Procedural face masks in texture space (one function per family; each returns a list of layers).

Training families: ``surgical`` (pleated, nose wire, ear loops), ``kn95`` (two panels on a sharp ridge, edge seal,
ear loops), ``cloth`` (contoured, printed / knitted, centre seam, fabric loops), ``pulled_down`` (a surgical or
cloth mask under the nose or under the chin). Held-out families (never trained on): ``bandana`` (a triangular
kerchief with paisley prints hanging below the chin), ``respirator`` (a cup respirator with an exhalation valve and
two head straps), ``neck_gaiter`` (a tight printed tube from the nose down the neck).

Outlines are in canonical face units (eye distance ``e``; eyes at y = 0, mouth at y ~ 1.16, chin ~ 1.8-1.9).
"""
from __future__ import annotations

import numpy as np

from trainer.data.occluders.appearance import PRINTS, knit, pleats, print_texture, random_colour, random_folds
from trainer.data.occluders.layer import Layer, Strap, ear_loop, poly_coverage
from trainer.data.occluders.surface import TextureGrid, cup_surface, mask_surface

_SURGICAL = np.array([(226, 196, 150), (240, 240, 238), (200, 214, 176), (205, 185, 240), (35, 35, 38),
                      (230, 215, 190), (160, 200, 120)], np.float32)


def _outline(top_c: float, top_s: float, hw: float, bot_s: float, chin: float, n: int = 21,
             top_pow: float = 2.0, bot_pow: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A mask outline: top edge from (-hw, top_s) over the nose (0, top_c) to (hw, top_s); bottom edge from
    (hw, bot_s) under the chin (0, chin) back. Returns (polygon (2n, 2), corners [[tl], [bl]] of the left side)."""
    xt = np.linspace(-hw, hw, n)
    top = np.stack([xt, top_s - (top_s - top_c) * np.cos(xt / hw * np.pi / 2) ** top_pow], 1)
    xb = np.linspace(hw * 0.97, -hw * 0.97, n)
    bot = np.stack([xb, bot_s + (chin - bot_s) * np.cos(xb / (hw * 0.97) * np.pi / 2) ** bot_pow], 1)
    return np.concatenate([top, bot]), np.array([[-hw, top_s + 0.04], [-hw * 0.97, bot_s - 0.04]])


def _loops(corners: np.ndarray, surface, lift: float, colour: np.ndarray, width: float) -> list[Strap]:
    """Ear loops on both sides from the left-side ``corners`` (mirrored for the right side)."""
    out = []
    for side in (-1, 1):
        c = corners if side < 0 else corners * np.array([-1.0, 1.0])
        out += ear_loop(c[0], c[1], surface, lift, side, colour, width)
    return out


def _fabric_colour(gx, gy, rng, print_prob: float, base: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    if rng.random() < print_prob:
        name = PRINTS[int(rng.integers(len(PRINTS)))]
        return print_texture(name, gx, gy, rng, base), name
    col = np.empty(gx.shape + (3,), np.float32)
    col[:] = random_colour(rng) if base is None else base
    return col, "plain"


def surgical(grid: TextureGrid, rng: np.random.Generator, drop: float = 0.0) -> tuple[list[Layer], str]:
    """Pleated surgical mask; ``drop`` moves it down (eye distances) for pulled-down variants."""
    gx, gy = grid.coords()
    top_c = 0.27 + rng.uniform(-0.04, 0.05) + drop
    top_s = 0.5 + rng.uniform(-0.05, 0.06) + drop
    hw = 1.08 + rng.uniform(-0.06, 0.08)
    bot_s, chin = 1.38 + rng.uniform(-0.06, 0.06) + drop * 0.6, 1.9 + rng.uniform(-0.06, 0.08) + drop * 0.6
    poly, corners = _outline(top_c, top_s, hw, bot_s, chin)
    cov = poly_coverage(grid, poly)
    surf = mask_surface(ridge=0.38 + rng.uniform(-0.05, 0.08), width=0.5 + rng.uniform(-0.05, 0.1), top=top_c)
    if rng.random() < 0.7:
        base = _SURGICAL[rng.integers(len(_SURGICAL))] * np.float32(rng.uniform(0.92, 1.05))
        colour = np.empty(gx.shape + (3,), np.float32)
        colour[:] = base
        look = "plain"
    else:
        colour, look = _fabric_colour(gx, gy, rng, 1.0)
    colour *= (1.0 + 0.03 * rng.standard_normal(gx.shape).astype(np.float32))[..., None]  # non-woven grain
    height = pleats(gy, top_s + 0.05, bot_s + 0.1, 3, rng.uniform(0.03, 0.06))
    nose_wire = (np.abs(gy - (top_c + 0.05 + (top_s - top_c) * (np.abs(gx) / hw) ** 2)) < 0.03) & (np.abs(gx) < 0.35)
    colour[nose_wire] *= 1.06
    loops = _loops(corners, surf, 0.06, np.full(3, rng.uniform(200, 245), np.float32), 0.025)
    return [Layer(colour, cov, surf, 0.0, height=height, region="lower", straps=loops)], f"surgical:{look}"


def kn95(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """KN95 / FFP2 fold-flat mask: two panels meeting on a sharp vertical ridge, an edge seal, ear loops."""
    gx, gy = grid.coords()
    hw = 1.02 + rng.uniform(-0.06, 0.08)
    top_c, top_s = 0.18 + rng.uniform(-0.04, 0.05), 0.55 + rng.uniform(-0.05, 0.05)
    chin, bot_s = 2.0 + rng.uniform(-0.06, 0.08), 1.35 + rng.uniform(-0.05, 0.05)
    poly, corners = _outline(top_c, top_s, hw, bot_s, chin, top_pow=0.9, bot_pow=0.7)
    cov = poly_coverage(grid, poly)
    surf = mask_surface(ridge=0.55 + rng.uniform(-0.05, 0.08), width=0.28 + rng.uniform(-0.04, 0.06),
                        chin_roll=0.5, top=top_c)
    base = [np.array(c, np.float32) for c in ((238, 238, 236), (40, 40, 42), (150, 150, 152), (226, 196, 150))]
    base_c = base[int(rng.integers(len(base)))] if rng.random() < 0.75 else random_colour(rng)
    colour = np.empty(gx.shape + (3,), np.float32)
    colour[:] = base_c
    colour *= (1.0 + 0.025 * rng.standard_normal(gx.shape).astype(np.float32))[..., None]
    seam = np.abs(gx) < 0.015
    colour[seam] *= 0.85
    # edge seal: a band just inside the outline
    inner = poly_coverage(grid, poly * 0.0 + (poly - poly.mean(0)) * 0.93 + poly.mean(0))
    colour[(cov > 0.5) & (inner < 0.5)] *= 0.9
    look = "plain"
    if rng.random() < 0.4:
        colour = print_texture("text", gx, gy, rng, base_c) * (colour / np.maximum(base_c, 1.0))
        look = "text"
    height = 0.02 * np.sin(gy * 9.0).astype(np.float32) * (np.abs(gx) < 0.9)
    loops = _loops(corners, surf, 0.06, base_c * 0.95, 0.03)
    return [Layer(colour, cov, surf, 0.0, height=height, region="lower", straps=loops)], f"kn95:{look}"


def cloth(grid: TextureGrid, rng: np.random.Generator, drop: float = 0.0) -> tuple[list[Layer], str]:
    """Contoured cloth mask with prints or knit, a centre seam and fabric loops."""
    gx, gy = grid.coords()
    hw = 1.0 + rng.uniform(-0.05, 0.08)
    top_c, top_s = 0.22 + rng.uniform(-0.03, 0.05) + drop, 0.45 + rng.uniform(-0.05, 0.05) + drop
    bot_s, chin = 1.25 + rng.uniform(-0.05, 0.05) + 0.6 * drop, 1.85 + rng.uniform(-0.06, 0.08) + 0.6 * drop
    poly, corners = _outline(top_c, top_s, hw, bot_s, chin, top_pow=1.5, bot_pow=0.8)
    cov = poly_coverage(grid, poly)
    surf = mask_surface(ridge=0.35 + rng.uniform(-0.05, 0.08), width=0.45, top=top_c)
    colour, look = _fabric_colour(gx, gy, rng, 0.8)
    colour *= knit(gx, gy, rng)[..., None]
    colour[np.abs(gx) < 0.012] *= 0.8
    height = random_folds(gx, gy, rng, 0.015)
    loops = _loops(corners, surf, 0.06, colour[colour.shape[0] // 2, colour.shape[1] // 2] * 0.9, 0.05)
    return [Layer(colour, cov, surf, 0.0, height=height, region="lower", straps=loops)], f"cloth:{look}"


def pulled_down(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """A surgical or cloth mask worn wrong: under the nose (mouth covered) or under the chin (mouth free)."""
    under_chin = rng.random() < 0.4
    drop = rng.uniform(1.0, 1.25) if under_chin else rng.uniform(0.45, 0.65)
    layers, kind = (surgical if rng.random() < 0.5 else cloth)(grid, rng, drop=drop)
    return layers, f"pulled_down:{'chin' if under_chin else 'nose'}:{kind}"


# ------------------------------------------------------------------------------------------------ held-out
def bandana(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """Held out. A folded kerchief tied behind the head: straight top over the nose, a point hanging below the
    chin, paisley prints, creases radiating from the point."""
    gx, gy = grid.coords()
    top = 0.3 + rng.uniform(-0.05, 0.1)
    tip = np.array([rng.uniform(-0.15, 0.15), min(grid.y1 - 0.05, 2.45 + rng.uniform(-0.1, 0.1))])
    hw = 1.3 + rng.uniform(-0.05, 0.1)
    xt = np.linspace(-hw, hw, 21)
    top_edge = np.stack([xt, top + 0.1 * (xt / hw) ** 2 + 0.02 * np.sin(xt * 7)], 1)
    poly = np.concatenate([top_edge, [[hw, top + 0.7], tip, [-hw, top + 0.7]]])
    cov = poly_coverage(grid, poly)
    base = np.array([(40, 40, 180), (110, 50, 20), (25, 25, 25), (60, 120, 60), (30, 140, 220), (120, 60, 120)],
                    np.float32)[int(rng.integers(6))]
    colour = print_texture("paisley", gx, gy, rng, base)
    if rng.random() < 0.5:  # the classic white border ornament
        border = (np.abs(gy - top - 0.12) < 0.03)
        colour[border] = (235, 235, 235)
    d = np.hypot(gx - tip[0], gy - tip[1])
    ang = np.arctan2(gy - tip[1], gx - tip[0])
    height = (0.03 * np.sin(ang * rng.uniform(7, 12)) * np.clip(1.2 - d / 2.5, 0, 1)).astype(np.float32)
    surf = mask_surface(ridge=0.4, width=0.6, chin_roll=0.15, top=top)
    colour *= knit(gx, gy, rng)[..., None]
    return [Layer(colour, cov, surf, 0.12, height=height, region="lower")], "bandana"


def respirator(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """Held out. A moulded cup respirator with an exhalation valve and two head straps."""
    gx, gy = grid.coords()
    cy, rx, ry = 1.05 + rng.uniform(-0.05, 0.05), 0.92 + rng.uniform(-0.05, 0.06), 0.88 + rng.uniform(-0.04, 0.05)
    surf = cup_surface(height=0.5 + rng.uniform(-0.05, 0.1), cy=cy, rx=rx, ry=ry)
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    cov = poly_coverage(grid, np.stack([rx * np.cos(t), cy + ry * np.sin(t) - 0.06 * (np.sin(t) < 0)], 1))
    base = np.array([(236, 236, 232), (200, 215, 225), (120, 120, 125), (170, 220, 235)], np.float32)
    colour = np.empty(gx.shape + (3,), np.float32)
    colour[:] = base[int(rng.integers(4))] if rng.random() < 0.8 else random_colour(rng)
    colour *= (1.0 + 0.03 * rng.standard_normal(gx.shape).astype(np.float32))[..., None]
    rim = (cov > 0.5) & (((gx / rx) ** 2 + ((gy - cy) / ry) ** 2) > 0.85)
    colour[rim] *= 0.88
    layers = [Layer(colour, cov, surf, 0.0, region="lower")]
    # the valve: a darker plastic disc or rounded square with concentric ridges, standing out of the cup
    vx, vy, vr = rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 0.4), cy + rng.uniform(0.0, 0.2), rng.uniform(0.17, 0.25)
    vc = np.array([(60, 60, 62), (230, 230, 230), (40, 110, 200), (180, 120, 40)], np.float32)[int(rng.integers(4))]
    dd = np.hypot(gx - vx, gy - vy)
    vcov = np.clip((vr - dd) * grid.res, 0, 1).astype(np.float32)
    vcol = np.empty(gx.shape + (3,), np.float32)
    vcol[:] = vc
    vcol *= (0.9 + 0.1 * np.cos(dd / vr * 12.0))[..., None].astype(np.float32)
    vheight = (0.15 * np.clip(1 - dd / vr, 0, 1)).astype(np.float32)
    layers.append(Layer(vcol, vcov, surf, 0.06, height=vheight, region="lower"))
    sc = np.array([(40, 200, 240), (200, 120, 30), (240, 240, 240), (60, 60, 60), (30, 30, 200)],
                  np.float32)[int(rng.integers(5))]
    straps = []
    for side in (-1, 1):
        for y_att, target in ((cy - 0.45, np.array([side * 1.15, -0.45, -0.7])),
                              (cy + 0.5, np.array([side * 1.1, 1.35, -0.8]))):
            x_att = side * rx * 0.95
            z0 = float(surf(np.array([x_att]), np.array([y_att]))[0])
            p = np.stack([np.linspace(x_att, target[0], 8), np.linspace(y_att, target[1], 8),
                          np.linspace(z0, target[2], 8)], 1)
            straps.append(Strap(p, sc, 0.05, side))
    layers[0].straps = straps
    return layers, "respirator"


def neck_gaiter(grid: TextureGrid, rng: np.random.Generator) -> tuple[list[Layer], str]:
    """Held out. A tight stretch tube pulled up over the nose: printed all over, no straps, reaching down the
    neck past the bottom of the face, with horizontal stretch folds at the neck."""
    gx, gy = grid.coords()
    top = 0.38 + rng.uniform(-0.06, 0.12)
    hw = 1.25
    xt = np.linspace(-hw, hw, 21)
    top_edge = np.stack([xt, top + 0.12 * (np.abs(xt) / hw) ** 1.5 - 0.05 * np.exp(-(xt / 0.25) ** 2)], 1)
    poly = np.concatenate([top_edge, [[hw, grid.y1 + 0.5], [-hw, grid.y1 + 0.5]]])
    cov = poly_coverage(grid, poly)
    name = ("camo", "gradient", "stripes", "noise", "floral", "checks")[int(rng.integers(6))]
    colour = print_texture(name, gx, gy, rng)
    colour *= knit(gx, gy, rng)[..., None]
    height = (0.025 * np.sin(gy * rng.uniform(10, 16)) * np.clip((gy - 1.8) / 0.4, 0, 1)).astype(np.float32)
    surf = mask_surface(ridge=0.3, width=0.45, chin_roll=0.15, top=top)
    return [Layer(colour, cov, surf, 0.03, height=height, region="lower")], f"neck_gaiter:{name}"

