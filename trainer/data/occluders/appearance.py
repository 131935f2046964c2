"""Appearance of synthetic occluders: light, blur, noise and JPEG read off the face itself; fabrics and prints.

* :func:`read_face` measures, on the face an occluder will be drawn on: its low-frequency luminance (a shading map
  the occluder inherits, so a face lit from the left gets a mask lit from the left), a Lambertian light direction
  fitted to that luminance over the face model's normals, the image blur (Gaussian sigma, px), the sensor noise
  (grey levels) and the JPEG quality the face was saved with (when the image shows one; ``None`` otherwise).
* :func:`composite` blends an occluder layer (colour, coverage, opacity) into the image with that blur, noise and
  JPEG, and returns the exact occlusion map: M = coverage after blur > 0.5; pixels outside M never change.
* Texture-space materials: palettes, prints (stripes, checks, dots, floral, paisley, camo, text, logos, noise),
  knit and woven fabric, fold height fields.

Colours are BGR float32 in [0, 255]; images BGR uint8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from trainer.data.occluders.surface import HeadPose, skin_surface, surface_normals

# ------------------------------------------------------------------------------------------------ palettes (BGR)
PLAIN = np.array([(226, 196, 150), (240, 240, 238), (200, 214, 176), (205, 185, 240), (35, 35, 38), (120, 120, 122),
                  (95, 45, 25), (45, 45, 160), (170, 200, 220), (80, 200, 235), (150, 110, 60), (70, 110, 70),
                  (190, 160, 210), (60, 60, 200), (30, 30, 120), (200, 130, 40), (140, 180, 200), (90, 90, 90)],
                 np.float32)
SKIN = np.array([(165, 190, 230), (140, 170, 215), (110, 145, 195), (80, 115, 165), (55, 80, 125), (40, 60, 95)],
                np.float32)
HAIR = np.array([(22, 22, 26), (30, 42, 62), (40, 68, 105), (95, 150, 195), (150, 150, 152), (35, 60, 140),
                 (60, 90, 130)], np.float32)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A fabric colour: 60% from the palette, 40% a random hue / saturation / value (BGR float32)."""
    if rng.random() < 0.6:
        c = PLAIN[rng.integers(len(PLAIN))].copy()
    else:
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(20, 256), rng.integers(40, 250)]]])
        c = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    return c * np.float32(1.0 + rng.uniform(-0.06, 0.06))


# ------------------------------------------------------------------------------------------------ reading the face
@dataclass(frozen=True, eq=False)
class FaceLook:
    """What an occluder should match on one face (see :func:`read_face`).

    Attributes:
        shading: (H, W) float32, the image's low-pass luminance divided by its median over the face (~1 on the face).
        light: (3,) float64 light direction (camera space, unit) scaled by the diffuse / ambient ratio (0 = flat).
        blur_sigma: estimated Gaussian blur of the image (px, >= 0).
        noise_sigma: estimated noise std (grey levels).
        jpeg_quality: JPEG quality the image appears saved with, or None.
        grey: the image is greyscale (B == G == R).
        skin: (3,) float32 median BGR colour of the cheeks (the face's own skin).
    """

    shading: np.ndarray
    light: np.ndarray
    blur_sigma: float
    noise_sigma: float
    jpeg_quality: int | None
    grey: bool
    skin: np.ndarray


def _luma(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32)
    return f[..., 0] * 0.114 + f[..., 1] * 0.587 + f[..., 2] * 0.299


def estimate_blur(grey: np.ndarray) -> float:
    """Gaussian blur sigma (px) of an image region from its gradient energy before / after a sigma-1 re-blur.

    For an edge blurred by s, the squared-gradient energy goes as 1/s, so the ratio r = E(blur 1) / E(as is) is
    s / sqrt(s^2 + 1), i.e. s = r / sqrt(1 - r^2). Pixel sampling itself acts like s ~ 0.5.
    """
    g = grey.astype(np.float32)
    if min(g.shape) < 8:
        return 0.5

    def energy(a):
        gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3)
        return float(np.mean(gx * gx + gy * gy)) + 1e-6

    r = energy(cv2.GaussianBlur(g, (0, 0), 1.0)) / energy(g)
    r = min(r, 0.995)
    return float(r / math.sqrt(1.0 - r * r))


def estimate_noise(grey: np.ndarray) -> float:
    """Noise std (grey levels) by Immerkaer's method (robust to edges in smooth regions)."""
    g = grey.astype(np.float32)
    if min(g.shape) < 5:
        return 0.0
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    c = cv2.filter2D(g, cv2.CV_32F, k)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2.0) * np.mean(np.abs(c)) / 6.0)


def estimate_jpeg_quality(grey: np.ndarray, qualities: tuple[int, ...] = tuple(range(40, 100, 5))) -> int | None:
    """The quality an 8x8-grid-aligned JPEG was saved with: re-saving at its own quality changes it least (a dip in
    the re-compression error against its neighbours); None when there is no clear dip (not JPEG, or resampled)."""
    g = np.clip(grey, 0, 255).astype(np.uint8)
    if min(g.shape) < 16:
        return None
    errs = []
    for q in qualities:
        ok, buf = cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, int(q)])
        errs.append(float(np.mean(np.abs(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) - g))))
    errs = np.array(errs)
    best, best_q = 1.0, None
    for i in range(1, len(errs) - 1):
        ratio = errs[i] / max(0.5 * (errs[i - 1] + errs[i + 1]), 1e-6)
        if ratio < best:
            best, best_q = ratio, qualities[i]
    return int(best_q) if best < 0.8 else None


def read_face(image: np.ndarray, pose: HeadPose) -> FaceLook:
    """Measure the light, blur, noise, JPEG quality and skin colour of the face at ``pose`` in ``image`` (BGR)."""
    H, W = image.shape[:2]
    grey_img = bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))
    L = _luma(image)
    e = pose.eye_dist
    low = cv2.GaussianBlur(L, (0, 0), max(1.0, 0.3 * e))
    # sample the low-pass luminance over the face model and fit L = a + b . n (Lambertian, camera-space normals)
    xs, ys = np.meshgrid(np.linspace(-0.85, 0.85, 9), np.linspace(-0.45, 1.5, 9))
    xs, ys = xs.ravel(), ys.ravel()
    n = pose.light_normal(surface_normals(skin_surface, xs, ys))
    pts = pose.project(np.stack([xs, ys, skin_surface(xs, ys)], 1))
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < W - 1) & (pts[:, 1] >= 0) & (pts[:, 1] < H - 1) & (n[:, 2] > 0.2)
    light = np.zeros(3)
    med = float(np.median(low)) or 128.0
    if ok.sum() >= 12:
        vals = low[pts[ok, 1].astype(int), pts[ok, 0].astype(int)].astype(np.float64)
        med = float(np.median(vals)) or 128.0
        D = np.concatenate([np.ones((int(ok.sum()), 1)), n[ok]], 1)
        coef = np.linalg.lstsq(D, vals, rcond=None)[0]
        if coef[0] > 1e-3:
            light = np.clip(coef[1:] / coef[0], -1.5, 1.5)
    shading = np.clip(low / max(med, 1.0), 0.25, 2.0).astype(np.float32)
    # blur / noise / JPEG over the face box
    c = pose.project(np.array([[-0.9, -0.5, 0.0], [0.9, -0.5, 0.0], [0.9, 1.7, 0.0], [-0.9, 1.7, 0.0]]))
    x0, y0 = int(max(0, c[:, 0].min())), int(max(0, c[:, 1].min()))
    x1, y1 = int(min(W, c[:, 0].max())), int(min(H, c[:, 1].max()))
    region = L[y0:y1, x0:x1] if (x1 - x0 >= 8 and y1 - y0 >= 8) else L
    blur = estimate_blur(region)
    noise = min(estimate_noise(region), 8.0)
    q = estimate_jpeg_quality(L[: (H // 8) * 8, : (W // 8) * 8]) if H >= 16 and W >= 16 else None
    cheeks = pose.project(np.array([[-0.55, 0.75, -0.05], [0.55, 0.75, -0.05], [0.0, 0.2, 0.3]]))
    samples = []
    for x, y in np.round(cheeks).astype(int):
        if 1 <= x < W - 1 and 1 <= y < H - 1:
            samples.append(image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3))
    skin = (np.median(np.concatenate(samples), 0).astype(np.float32) if samples else SKIN[1].copy())
    return FaceLook(shading, light, blur, noise, q, grey_img, skin)


def lambert(look: FaceLook, pose: HeadPose, normals: np.ndarray) -> np.ndarray:
    """Relative shading (float32, ~1 for a front-facing patch) of canonical ``normals`` (..., 3) under the face's
    fitted light."""
    n = pose.light_normal(normals)
    front = 1.0 + float(look.light[2])
    s = (1.0 + n @ look.light) / max(front, 0.2)
    return np.clip(s, 0.35, 1.6).astype(np.float32)


# ------------------------------------------------------------------------------------------------ compositing
def composite(image: np.ndarray, box: tuple[int, int, int, int], colour: np.ndarray, coverage: np.ndarray,
              opacity: np.ndarray | float, look: FaceLook, rng: np.random.Generator, out: np.ndarray,
              mask: np.ndarray, allowed: np.ndarray | None = None, match: bool = True) -> bool:
    """Blend one occluder layer into ``out`` (in place) and mark its pixels in ``mask``.

    Args:
        image: the original (H, W, 3) uint8 BGR (for the JPEG match); ``out`` (H, W, 3) uint8 is painted.
        box: ``(x0, y0, x1, y1)``; colour (h, w, 3) float32 BGR; coverage (h, w) float32 in [0, 1] (geometry);
            opacity: (h, w) or scalar in [0, 1] (material: < 1 for sheer fabric or clear plastic).
        allowed: optional (h, w) bool: pixels the occluder may touch (e.g. below the eye line).
        match: blur, noise and JPEG as measured on the face (``look``); False paints the layer as it is.

    Returns:
        True when any pixel was painted. M (``mask``) is 1 exactly where coverage, after the blur, exceeds 0.5 and
        ``allowed`` holds; every pixel that changes is in M.
    """
    x0, y0, x1, y1 = box
    cov = np.clip(coverage.astype(np.float32), 0.0, 1.0)
    col = colour.astype(np.float32)
    if look.grey:
        g = col[..., 0] * 0.114 + col[..., 1] * 0.587 + col[..., 2] * 0.299
        col = np.repeat(g[..., None], 3, axis=2)
    if match:
        extra = math.sqrt(max(look.blur_sigma ** 2 - 0.55 ** 2, 0.0))
        if extra > 0.15:
            pm = cv2.GaussianBlur(col * cov[..., None], (0, 0), min(extra, 4.0))
            cov = cv2.GaussianBlur(cov, (0, 0), min(extra, 4.0))
            col = pm / np.maximum(cov, 1e-4)[..., None]
    sel = cov > 0.5
    if allowed is not None:
        sel &= allowed
    if not sel.any():
        return False
    a = (cov * (opacity if np.isscalar(opacity) else np.asarray(opacity, np.float32)))
    a = np.clip(np.where(sel, a, 0.0), 0.0, 1.0)[..., None]
    if match and look.noise_sigma > 0.3:
        n = rng.standard_normal(cov.shape, dtype=np.float32) * np.float32(look.noise_sigma)
        col = col + (n[..., None] if not look.grey else np.repeat(n[..., None], 3, 2))
    roi = out[y0:y1, x0:x1]
    blend = col * a + roi.astype(np.float32) * (1.0 - a)
    new = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    if match and look.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", new, [cv2.IMWRITE_JPEG_QUALITY, int(look.jpeg_quality)])
        if ok:
            dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if look.grey:
                dec = np.repeat(cv2.cvtColor(dec, cv2.COLOR_BGR2GRAY)[..., None], 3, 2)
            new = dec
    roi[sel] = new[sel]
    mask[y0:y1, x0:x1][sel] = 1
    return True


# ------------------------------------------------------------------------------------------------ materials
PRINTS = ("stripes", "checks", "dots", "floral", "camo", "noise", "text", "logo", "gradient")


def print_texture(name: str, gx: np.ndarray, gy: np.ndarray, rng: np.random.Generator,
                  base: np.ndarray | None = None) -> np.ndarray:
    """A (h, w, 3) float32 BGR print over canonical coordinates ``gx, gy`` (eye distances)."""
    h, w = gx.shape
    c1 = random_colour(rng) if base is None else base
    c2 = random_colour(rng)
    out = np.empty((h, w, 3), np.float32)
    out[:] = c1
    if name == "stripes":
        phi = math.radians(rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-12, 12))
        t = (gx * math.cos(phi) + gy * math.sin(phi)) / rng.uniform(0.08, 0.3)
        out[(t - np.floor(t)) < rng.uniform(0.25, 0.6)] = c2
    elif name == "checks":
        p = rng.uniform(0.08, 0.25)
        sel = ((np.floor(gx / p) + np.floor(gy / p)) % 2) == 0
        out[sel] = c2 * 0.6 + c1 * 0.4 if rng.random() < 0.5 else c2
    elif name == "dots":
        p = rng.uniform(0.1, 0.25)
        r = p * rng.uniform(0.15, 0.35)
        row = np.floor(gy / p)
        dx = gx / p - np.floor(gx / p + 0.5 * (row % 2)) - 0.5 * (row % 2)
        dy = gy / p - row - 0.5
        out[(dx * dx + dy * dy) * p * p < r * r] = c2
    elif name in ("floral", "paisley"):
        c3 = random_colour(rng)
        k = int(rng.integers(12, 30))
        for _ in range(k):
            cx, cy = rng.uniform(gx.min(), gx.max()), rng.uniform(gy.min(), gy.max())
            r = rng.uniform(0.06, 0.18)
            ang = np.arctan2(gy - cy, gx - cx)
            d = np.hypot(gx - cx, gy - cy)
            if name == "floral":
                petals = int(rng.integers(4, 7))
                rr = r * (0.55 + 0.45 * np.abs(np.cos(petals * ang / 2)))
                out[d < rr] = c2
                out[d < 0.3 * r] = c3
            else:  # paisley teardrop with a dot
                tail = rng.uniform(0, 2 * np.pi)
                rr = r * (0.6 + 0.4 * np.cos(ang - tail)) ** 1.5
                out[d < rr] = c2
                out[(d > 0.75 * rr) & (d < rr)] = c3
                out[d < 0.25 * r] = c3
    elif name == "camo":
        c3 = random_colour(rng)
        f = rng.random((7, 7)).astype(np.float32)
        big = cv2.resize(f, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_CUBIC)
        out[big > 0.45] = c2
        out[big > 0.72] = c3
    elif name == "noise":
        f = rng.random((max(2, h // 6), max(2, w // 6))).astype(np.float32)
        big = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
        out[:] = c1 * big + c2 * (1 - big)
    elif name == "gradient":
        t = np.clip((gy - gy.min()) / max(float(np.ptp(gy)), 1e-3), 0, 1)[..., None]
        out[:] = c1 * (1 - t) + c2 * t
    elif name in ("text", "logo"):
        _stamp(out, name, gx, gy, rng)
    return out


_WORDS = ("LT", "NO.1", "SAFE", "ABC", "KN95", "LOVE", "2021", "GO", "STAR", "XO", "COOL", "FFP2", "HELLO", "99")


def _stamp(out: np.ndarray, kind: str, gx: np.ndarray, gy: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a word or an emblem (in place, anti-aliased through a uint8 ink mask) centred near the mouth."""
    h, w = gx.shape
    res = (w - 1) / max(float(gx[0, -1] - gx[0, 0]), 1e-3)
    cx = int((rng.uniform(-0.35, 0.35) - gx[0, 0]) * res)
    cy = int((rng.uniform(0.95, 1.3) - gy[0, 0]) * res)
    ink = random_colour(rng)
    m1 = np.zeros((h, w), np.uint8)
    m2 = np.zeros((h, w), np.uint8)
    if kind == "text":
        word = _WORDS[rng.integers(len(_WORDS))]
        scale = max(0.3, res * rng.uniform(0.006, 0.012))
        th = max(1, int(round(scale * 2)))
        (tw, tht), _ = cv2.getTextSize(word, cv2.FONT_HERSHEY_DUPLEX, scale, th)
        cv2.putText(m1, word, (cx - tw // 2, cy + tht // 2), cv2.FONT_HERSHEY_DUPLEX, scale, 255, th, cv2.LINE_AA)
    else:
        r = max(2, int(res * rng.uniform(0.12, 0.22)))
        if rng.random() < 0.5:
            cv2.circle(m1, (cx, cy), r, 255, -1, cv2.LINE_AA)
            cv2.circle(m2, (cx, cy), max(1, int(r * 0.6)), 255, -1, cv2.LINE_AA)
        else:
            k = np.arange(10)
            rad = np.where(k % 2 == 0, r, 0.45 * r)
            ang = -np.pi / 2 + k * np.pi / 5
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(m1, [pts], 255, cv2.LINE_AA)
    for m, c in ((m1, ink), (m2, random_colour(rng))):
        a = (m.astype(np.float32) / 255.0)[..., None]
        out *= 1.0 - a
        out += a * c


def knit(gx: np.ndarray, gy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative fabric texture (float32 ~1): knit ribs, a woven grid or jersey noise."""
    kind = rng.integers(3)
    if kind == 0:
        p = rng.uniform(0.04, 0.08)
        return (0.88 + 0.12 * (0.5 + 0.5 * np.cos(2 * np.pi * gx / p))).astype(np.float32)
    if kind == 1:
        p = rng.uniform(0.025, 0.05)
        return (0.92 + 0.04 * np.cos(2 * np.pi * gx / p) + 0.04 * np.cos(2 * np.pi * gy / p)).astype(np.float32)
    f = rng.standard_normal(gx.shape).astype(np.float32)
    return (1.0 + 0.04 * cv2.GaussianBlur(f, (0, 0), 0.8)).astype(np.float32)


def pleats(gy: np.ndarray, top: float, bottom: float, n: int, depth: float) -> np.ndarray:
    """Height field (eye distances) of ``n`` horizontal pleats between ``top`` and ``bottom`` (a sawtooth: each
    pleat's upper part slopes out, its lower edge steps back)."""
    t = (gy - top) / max(bottom - top, 1e-3) * n
    frac = t - np.floor(t)
    inside = (t > 0.3) & (t < n - 0.2)
    return (depth * np.where(inside, frac, 0.0)).astype(np.float32)


def random_folds(gx: np.ndarray, gy: np.ndarray, rng: np.random.Generator, amp: float = 0.02) -> np.ndarray:
    """Height field of soft random creases (cloth, scarves)."""
    out = np.zeros(gx.shape, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        phi = rng.uniform(0, np.pi)
        f = rng.uniform(2.0, 6.0)
        out += (amp * np.sin(2 * np.pi * f * (gx * math.cos(phi) + gy * math.sin(phi)) / 3.0
                             + rng.uniform(0, 6.3))).astype(np.float32)
    return out
