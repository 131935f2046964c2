"""Scene compositor: faces with MTCNN's clean-image labels pasted at many scales onto non-face backgrounds.

A scene is a BGR uint8 image with 1-N faces (optionally occluded by :class:`OccluderSampler`) cut from the
labelled photos (``LabelSet``) with some context around them, scaled to a target face size, rotated a little,
and blended in with a random matte (feathered ellipse or hard/soft rectangle) at a random place; distractor
patches cut from the background pool get the same mattes, so that a pasted patch is never evidence of a face.
Every face MTCNN found inside a pasted patch becomes a label (the main face and any background person);
faces cut by the patch edge, covered by a later patch or outside the scene become *ignore* regions.

Labels: ``boxes`` (K, 4) ``x1, y1, x2, y2`` and ``landmarks`` (K, 5, 2) in scene pixels, MTCNN order; the
landmarks of an occluded face are the clean-image ones (where the mouth and nose are under the mask).

**Tight crops** (``tight_prob``): a share of scenes is instead one photo cut tight around its face, the way
real masked-face photos are often framed (the square crop is 0.55-1.4x the face size, so the forehead and chin
may be cut off, down to eyes and mask), scaled to a side of 24 px up to the scene's and placed at the top-left
corner with black elsewhere -- what the detector sees when such a photo is padded to a multiple of 32. Faces with
at least 25 % of their box inside the crop are labels (boxes may reach past the crop's edge).

**Small photos enlarged** (``lowres_prob``): a share of composed scenes is shrunk and enlarged back, as a 100-300 px
photo is when the detector runs it at 2x.

**Hard negatives** (``hard_prob``): a share of scenes gets a rendered background of what LTDet mistook for faces
(:func:`render_hard_negative`: lines of text in OpenCV's fonts, star fields), and a quarter of that share is a small
non-face photo alone (a crop of such a texture or of a background picture, placed as a tight crop is, no faces).

Backgrounds are non-face images that ship with scikit-image, split into a training and an evaluation pool
(:data:`TRAIN_BACKGROUNDS`, :data:`EVAL_BACKGROUNDS`), plus procedurally rendered textures.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from trainer.detector.labels import LabelSet
from trainer.detector.occlusion import OccluderSampler
from trainer.detector.textures import render_hard_negative, render_texture

__all__ = ["EVAL_BACKGROUNDS", "Scene", "SceneConfig", "SceneRenderer", "TRAIN_BACKGROUNDS", "background_pool",
           "render_hard_negative", "render_texture"]

TRAIN_BACKGROUNDS = ("brick", "grass", "chelsea", "cat", "cell", "coins", "colorwheel", "immunohistochemistry",
                     "moon", "retina", "shepp_logan_phantom", "text", "binary_blobs", "checkerboard",
                     "horse", "logo", "microaneurysms")
EVAL_BACKGROUNDS = ("coffee", "rocket", "gravel", "clock", "page", "hubble_deep_field")

_FLIP = np.array([1, 0, 2, 4, 3])


@functools.lru_cache(maxsize=4)
def background_pool(split: str) -> tuple[np.ndarray, ...]:
    """The scikit-image non-face pictures of ``split`` (``"train"``/``"eval"``) as BGR uint8 arrays."""
    import skimage.data as sd

    names = TRAIN_BACKGROUNDS if split == "train" else EVAL_BACKGROUNDS
    out = []
    for n in names:
        # binary_blobs draws from an unseeded RNG by default: seed it, so scenes are the same in every process
        a = np.asarray(sd.binary_blobs(rng=0) if n == "binary_blobs" else getattr(sd, n)())
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif a.dtype != np.uint8:
            a = np.clip(a * 255.0 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        a = a[..., :3][..., ::-1]  # RGB(A) -> BGR
        out.append(np.ascontiguousarray(a))
    return tuple(out)


@dataclass
class SceneConfig:
    """How scenes are composed. Sizes in scene pixels; a face's size is ``sqrt(w * h)`` of its MTCNN box.

    Attributes:
        height, width: scene size (px).
        faces: (min, max) number of pasted face patches.
        face_px: (min, max) face size, drawn log-uniformly (ignored when ``size_bins`` is set).
        size_bins: optional list of (lo, hi) bins; each face draws a bin uniformly, then a size in it.
        occlude_prob: probability that a pasted face is occluded (``render(occlude=...)`` overrides).
        context: (min, max) patch side / face size.
        rotate_deg: in-plane rotation up to +- this (applied to half the faces).
        distractors: (min, max) non-face patches pasted with the same mattes.
        texture_prob: probability that the background is a rendered texture instead of a picture.
        grey_prob: probability of a greyscale scene; tint_prob: probability that a grey face is tinted.
        blur_prob, jpeg_prob, noise_prob: photometric degradations of the whole scene.
        flip: mirror half the scenes (landmark order kept image-left first).
        min_label_px: faces smaller than this become ignore regions.
        background_split: ``"train"`` or ``"eval"`` picture pool.
        tight_prob: probability that a scene is a tight crop of one photo (module doc); 0 keeps every scene
            the same as without the option.
        tight_ratio: (min, max) crop side / face size of tight crops.
        tight_face_px: (min, max) face size in tight crops, drawn log-uniformly (the crop side follows).
        lowres_prob: probability that a composed scene is shown as a small photo enlarged: shrunk by
            ``lowres_factor`` (drawn uniformly) and enlarged back, nearest-neighbour or bilinear (what the detector's
            ``upscale_below`` pass sees); drawn from its own stream, 0 keeps every scene the same.
        lowres_factor: (min, max) shrink factor of ``lowres_prob``.
        real_prob: probability that a face photo (pasted or cut tight) comes from the renderer's ``real`` pool
            (pseudo-labelled real masked photos: no synthetic occluder is added, kind ``"realmask"``); 0 keeps every
            scene the same as without the option.
        hard_prob: probability that a scene's background is a hard negative (:func:`render_hard_negative`); a
            quarter of it: the scene is a small non-face photo alone (module doc). Drawn from its own stream, 0
            keeps every scene the same as without the option.
    """

    height: int = 256
    width: int = 256
    faces: tuple[int, int] = (1, 5)
    face_px: tuple[float, float] = (12.0, 160.0)
    size_bins: list[tuple[float, float]] | None = None
    occlude_prob: float = 0.7
    context: tuple[float, float] = (1.5, 2.6)
    rotate_deg: float = 15.0
    distractors: tuple[int, int] = (0, 3)
    texture_prob: float = 0.3
    grey_prob: float = 0.25
    tint_prob: float = 0.6
    blur_prob: float = 0.15
    jpeg_prob: float = 0.3
    noise_prob: float = 0.2
    flip: bool = True
    min_label_px: float = 10.0
    background_split: str = "train"
    tight_prob: float = 0.0
    tight_ratio: tuple[float, float] = (0.55, 1.4)
    tight_face_px: tuple[float, float] = (18.0, 150.0)
    lowres_prob: float = 0.0
    lowres_factor: tuple[float, float] = (0.3, 0.7)
    real_prob: float = 0.0
    hard_prob: float = 0.0


@dataclass
class Scene:
    """One composed scene (see module doc). ``sizes`` (K,) face sizes (px); ``occluded`` (K,) bool;
    ``kinds`` the occluder kind per face ("" when clean); ``ignore`` (J, 4) boxes not to score."""

    image: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    occluded: np.ndarray
    kinds: list[str] = field(default_factory=list)
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    @property
    def sizes(self) -> np.ndarray:
        b = self.boxes
        return np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))


def _matte(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Alpha (h, w) float32 in [0, 1]: feathered ellipse, soft or hard rectangle."""
    r = rng.random()
    a = np.zeros((h, w), np.float32)
    if r < 0.5:
        cv2.ellipse(a, (w // 2, h // 2), (max(1, int(w * 0.5)), max(1, int(h * 0.5))), 0, 0, 360, 1.0, -1)
        k = max(1, int(min(h, w) * rng.uniform(0.05, 0.2))) | 1
        a = cv2.GaussianBlur(a, (k, k), 0)
    elif r < 0.8:
        m = max(1, int(min(h, w) * 0.08))
        a[m:h - m, m:w - m] = 1.0
        k = (2 * m) | 1
        a = cv2.GaussianBlur(a, (k, k), 0)
    else:
        a[:] = 1.0
    return a


class SceneRenderer:
    """``renderer.render(seed) -> Scene``; deterministic per seed (and per ``occlude``).

    Args:
        labels: MTCNN labels of the face photos (only images with a main face are used).
        config: composition settings.
        occluders: occluder sampler (training or held-out families), or None for clean faces only.
        real: optional second pool, photos of faces that are already covered (pseudo-labelled real masked photos,
            :mod:`trainer.detector.real_labels`), drawn with ``config.real_prob``; they get no synthetic occluder.
    """

    REAL_KIND = "realmask"

    def __init__(self, labels: LabelSet, config: SceneConfig = SceneConfig(),
                 occluders: OccluderSampler | None = None, image_loader=None, real: LabelSet | None = None):
        self.labels = labels
        self.cfg = config
        self.occ = occluders
        self.usable = np.flatnonzero(labels.main >= 0)
        if len(self.usable) == 0:
            raise ValueError("no labelled image has a face")
        self.real = real
        self.real_usable = np.flatnonzero(real.main >= 0) if real is not None else np.zeros(0, np.intp)
        if config.real_prob > 0 and len(self.real_usable) == 0:
            raise ValueError("real_prob > 0 needs a real photo pool with at least one labelled face")
        self._load = image_loader or (lambda p: cv2.imread(str(p), cv2.IMREAD_COLOR))
        self.backgrounds = background_pool(config.background_split)

    # ------------------------------------------------------------------------------------------------------
    def _background(self, rng: np.random.Generator) -> np.ndarray:
        H, W = self.cfg.height, self.cfg.width
        if rng.random() < self.cfg.texture_prob:
            return render_texture(rng, H, W)
        src = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        sh, sw = src.shape[:2]
        s = max(H / sh, W / sw) * rng.uniform(1.0, 2.0)
        img = cv2.resize(src, (max(W, int(sw * s)), max(H, int(sh * s))), interpolation=cv2.INTER_LINEAR)
        y = int(rng.integers(img.shape[0] - H + 1))
        x = int(rng.integers(img.shape[1] - W + 1))
        img = img[y:y + H, x:x + W]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        g = rng.uniform(0.6, 1.3)
        return np.clip(img.astype(np.float32) * g + rng.uniform(-20, 20), 0, 255).astype(np.uint8)

    def _face_size(self, rng: np.random.Generator) -> float:
        bins = self.cfg.size_bins
        lo, hi = bins[int(rng.integers(len(bins)))] if bins else self.cfg.face_px
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    @staticmethod
    def _affine(centre_src: np.ndarray, centre_dst: np.ndarray, scale: float, deg: float) -> np.ndarray:
        a = math.radians(deg)
        c, s = math.cos(a) * scale, math.sin(a) * scale
        R = np.array([[c, -s], [s, c]])
        t = centre_dst - R @ centre_src
        return np.hstack([R, t[:, None]])

    def _paste(self, canvas: np.ndarray, alpha_total: np.ndarray, src: np.ndarray, rect: tuple[int, int, int, int],
               M: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blend ``src[rect]`` warped by ``M`` into ``canvas`` with a random matte; returns the warped alpha."""
        H, W = canvas.shape[:2]
        x0, y0, x1, y1 = rect
        a = np.zeros(src.shape[:2], np.float32)
        a[y0:y1, x0:x1] = _matte(rng, y1 - y0, x1 - x0)
        scale = math.hypot(M[0, 0], M[0, 1])
        img = src
        if scale < 0.5:  # pre-shrink: warpAffine's bilinear would alias
            f = scale * 1.5
            img = cv2.resize(src, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            a = cv2.resize(a, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA)
            M = M.copy()
            M[:, :2] /= f
        warped = cv2.warpAffine(img, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        wa = cv2.warpAffine(a, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        canvas[:] = (canvas.astype(np.float32) * (1 - wa[..., None]) + warped.astype(np.float32) * wa[..., None]
                     ).round().clip(0, 255).astype(np.uint8)
        np.maximum(alpha_total, wa, out=alpha_total)
        return wa

    @staticmethod
    def _photometric(img: np.ndarray, rng: np.random.Generator, tint: bool) -> np.ndarray:
        x = img.astype(np.float32)
        if tint:
            x = x * rng.uniform([0.75, 0.85, 1.0], [0.9, 0.95, 1.1]).astype(np.float32)
        x = (x - 128) * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-30, 30)
        return np.clip(x, 0, 255).astype(np.uint8)

    def _occlude_and_grade(self, src: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                           photo_rng: np.random.Generator, occlude: bool | None) -> tuple[np.ndarray, str]:
        """A face photo with (per ``occlude`` / ``occlude_prob``, drawn from ``rng``) a training occluder on the face
        with ``landmarks``, then contrast / brightness jitter (grey photos maybe tinted; ``photo_rng``); returns the
        photo and the occluder's kind ("" when clean)."""
        cfg = self.cfg
        grey = bool(np.array_equal(src[..., 0], src[..., 1]) and np.array_equal(src[..., 1], src[..., 2]))
        kind = ""
        do_occ = (rng.random() < cfg.occlude_prob) if occlude is None else occlude
        occ_seed = int(rng.integers(2 ** 31))
        if do_occ and self.occ is not None:
            s = self.occ.draw(src, landmarks, occ_seed)
            if s is not None:
                src, kind = s.masked, s.kind
        return self._photometric(src, photo_rng, tint=grey and photo_rng.random() < cfg.tint_prob), kind

    def _pick_photo(self, rng: np.random.Generator, key: list[int]) -> tuple[LabelSet, int]:
        """``(pool, image index)`` of the next face photo: the real pool with ``real_prob`` (drawn from its own
        stream ``key``, so ``real_prob`` 0 leaves ``rng`` untouched), else a labelled LFW / CelebA photo from
        ``rng``."""
        if self.cfg.real_prob > 0:
            alt = np.random.default_rng(key)
            if alt.random() < self.cfg.real_prob:
                return self.real, int(self.real_usable[int(alt.integers(len(self.real_usable)))])
        return self.labels, int(self.usable[int(rng.integers(len(self.usable)))])

    def _face_photo(self, ls: LabelSet, i: int, rng: np.random.Generator, photo_rng: np.random.Generator,
                    occlude: bool | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str] | None:
        """Photo ``i`` of pool ``ls`` read, occluded and graded (:meth:`_occlude_and_grade`; real photos keep their own
        cover, kind :attr:`REAL_KIND`): ``(image, boxes, landmarks, main row, kind)``, None when unreadable."""
        src = self._load(ls.paths[i])
        if src is None:
            return None
        fb, fl = ls.faces_of(i)
        m = int(ls.main[i] - ls.first[i])
        real = ls is not self.labels
        src, kind = self._occlude_and_grade(src, fl[m], rng, photo_rng, False if real else occlude)
        return src, fb, fl, m, (self.REAL_KIND if real else kind)

    # ------------------------------------------------------------------------------------------------------
    def render(self, seed: int, occlude: bool | None = None) -> Scene:
        """Compose scene ``seed``. ``occlude``: None (each face with ``occlude_prob``), True (every face that
        the occluder sampler can cover) or False (all clean). The layout does not depend on ``occlude``."""
        cfg, rng = self.cfg, np.random.default_rng(seed)
        hard = np.random.default_rng([seed, 15])
        hard_draw = hard.random() if cfg.hard_prob > 0 else 1.0
        if hard_draw < cfg.hard_prob / 4:
            return self._render_negative_photo(hard)
        if cfg.tight_prob > 0 and np.random.default_rng([seed, 11]).random() < cfg.tight_prob:
            return self._render_tight(seed, occlude)
        H, W = cfg.height, cfg.width
        canvas = render_hard_negative(hard, H, W) if hard_draw < cfg.hard_prob else self._background(rng)
        alpha_total = np.zeros((H, W), np.float32)
        boxes: list[np.ndarray] = []
        lms: list[np.ndarray] = []
        occl: list[bool] = []
        kinds: list[str] = []
        ignore: list[np.ndarray] = []
        n_faces = int(rng.integers(cfg.faces[0], cfg.faces[1] + 1))
        n_dis = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
        jobs = ["face"] * n_faces + ["dis"] * n_dis
        rng.shuffle(jobs)
        for j, job in enumerate(jobs):
            sub = np.random.default_rng([seed, j, 7])
            if job == "dis":
                src = self.backgrounds[int(rng.integers(len(self.backgrounds)))] if rng.random() < 0.7 \
                    else render_texture(rng, 160, 160)
                sh, sw = src.shape[:2]
                side = float(rng.uniform(20, min(sh, sw) * 0.9))
                cx, cy = rng.uniform(side / 2, sw - side / 2), rng.uniform(side / 2, sh - side / 2)
                rect = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
                t = self._face_size(rng) * rng.uniform(1.3, 2.5)
                M = self._affine(np.array([cx, cy]), rng.uniform([0, 0], [W, H]), t / side,
                                 rng.uniform(-30, 30))
                wa = self._paste(canvas, alpha_total, src, rect, M, rng)
                self._cover(boxes, lms, occl, kinds, ignore, wa)
                continue
            got = self._face_photo(*self._pick_photo(rng, [seed, j, 13]), rng, sub, occlude)
            if got is None:
                continue
            src, fb, fl, m, kind = got
            b = fb[m]
            side = float(math.sqrt(max(b[2] - b[0], 1.0) * max(b[3] - b[1], 1.0)))
            c = (b[:2] + b[2:]) / 2 + rng.uniform(-0.15, 0.15, 2) * side
            P = side * rng.uniform(*cfg.context)
            sh, sw = src.shape[:2]
            rect = (int(max(0, c[0] - P / 2)), int(max(0, c[1] - P / 2)), int(min(sw, c[0] + P / 2)),
                    int(min(sh, c[1] + P / 2)))
            t = self._face_size(rng)
            deg = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg) if rng.random() < 0.5 else 0.0
            fc = (b[:2] + b[2:]) / 2
            # place: a few tries to keep clear of earlier faces
            best, best_ov = None, 1e9
            for _ in range(8):
                dst = rng.uniform([-0.1 * t, -0.1 * t], [W + 0.1 * t, H + 0.1 * t])
                M = self._affine(fc, dst, t / side, deg)
                pr = self._rect_after(rect, M)
                ov = sum(self._overlap(bb, pr) for bb in boxes)
                if ov < best_ov:
                    best, best_ov = M, ov
                if ov == 0:
                    break
            M = best
            wa = self._paste(canvas, alpha_total, src, rect, M, rng)
            self._cover(boxes, lms, occl, kinds, ignore, wa)
            x0, y0, x1, y1 = rect
            for k in range(len(fb)):
                bb, ll = self._transform_face(fb[k], fl[k], M)
                inside_src = (fb[k][0] >= x0 - 2 and fb[k][1] >= y0 - 2 and fb[k][2] <= x1 + 2 and fb[k][3] <= y1 + 2)
                cover = self._mean_in(wa, bb)
                sz = math.sqrt(max(bb[2] - bb[0], 0) * max(bb[3] - bb[1], 0))
                vis = self._visible_frac(bb, W, H)
                if cover < 0.15 and not inside_src:
                    continue
                if inside_src and cover > 0.8 and vis > 0.75 and sz >= cfg.min_label_px:
                    boxes.append(bb)
                    lms.append(ll)
                    occl.append(bool(kind) and k == m)
                    kinds.append(kind if k == m else "")
                else:
                    ignore.append(bb)
        img = self._finish(canvas, rng)
        if cfg.lowres_prob > 0:
            img = self._lowres(img, np.random.default_rng([seed, 14]))
        bx = np.array(boxes, np.float32).reshape(-1, 4)
        lm = np.array(lms, np.float32).reshape(-1, 5, 2)
        ig = np.array(ignore, np.float32).reshape(-1, 4)
        if cfg.flip and rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
            bx = np.stack([W - bx[:, 2], bx[:, 1], W - bx[:, 0], bx[:, 3]], 1)
            ig = np.stack([W - ig[:, 2], ig[:, 1], W - ig[:, 0], ig[:, 3]], 1)
            lm = lm[:, _FLIP].copy()
            lm[..., 0] = W - lm[..., 0]
        return Scene(img, bx, lm, np.array(occl, bool), kinds, ig)

    def _render_tight(self, seed: int, occlude: bool | None) -> Scene:
        """A tight crop of one photo at the top-left corner, black elsewhere (module doc)."""
        cfg, rng = self.cfg, np.random.default_rng([seed, 12])
        H, W = cfg.height, cfg.width
        got = None
        for k in range(4):
            got = self._face_photo(*self._pick_photo(rng, [seed, 12, k, 13]), rng, rng, occlude)
            if got is not None:
                break
        canvas = np.zeros((H, W, 3), np.uint8)
        if got is None:
            return Scene(canvas, np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, bool),
                         [], np.zeros((0, 4), np.float32))
        src, fb, fl, m, kind = got
        b = fb[m]
        face = float(math.sqrt(max(b[2] - b[0], 1.0) * max(b[3] - b[1], 1.0)))
        ratio = rng.uniform(*cfg.tight_ratio)
        t = float(math.exp(rng.uniform(math.log(cfg.tight_face_px[0]), math.log(cfg.tight_face_px[1]))))
        side = int(min(W, H, max(24, round(t * ratio))))
        t = side / ratio  # face size in the scene
        c = (b[:2] + b[2:]) / 2 + rng.uniform(-0.12, 0.12, 2) * face
        deg = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg) if rng.random() < 0.3 else 0.0
        M = self._affine(c, np.array([side / 2, side / 2]), t / face, deg)
        scale = t / face
        img, Mw = src, M
        if scale < 0.5:  # pre-shrink: warpAffine's bilinear would alias
            f = scale * 1.5
            img = cv2.resize(src, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            Mw = M.copy()
            Mw[:, :2] /= f
        crop = cv2.warpAffine(img, Mw, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if rng.random() < 0.3:  # a low-resolution photo shown larger
            f = rng.uniform(0.3, 0.8)
            small = cv2.resize(crop, (max(8, int(side * f)),) * 2, interpolation=cv2.INTER_AREA)
            crop = cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR)
        flip = cfg.flip and rng.random() < 0.5
        if flip:
            crop = np.ascontiguousarray(crop[:, ::-1])
        canvas[:side, :side] = self._finish(crop, rng)  # blur / noise / JPEG on the photo, not the padding
        boxes, lms, occl, kinds, ignore = [], [], [], [], []
        for k in range(len(fb)):
            bb, ll = self._transform_face(fb[k], fl[k], M)
            if flip:
                bb = np.array([side - bb[2], bb[1], side - bb[0], bb[3]], np.float32)
                ll = ll[_FLIP].copy()
                ll[:, 0] = side - ll[:, 0]
            sz = math.sqrt(max(bb[2] - bb[0], 0) * max(bb[3] - bb[1], 0))
            vis = self._visible_frac(bb, side, side)
            if vis <= 0.05:
                continue
            if vis >= 0.25 and sz >= cfg.min_label_px:
                boxes.append(bb)
                lms.append(ll)
                occl.append(bool(kind) and k == m)
                kinds.append(kind if k == m else "")
            else:
                ignore.append(bb)
        return Scene(canvas, np.array(boxes, np.float32).reshape(-1, 4), np.array(lms, np.float32).reshape(-1, 5, 2),
                     np.array(occl, bool), kinds, np.array(ignore, np.float32).reshape(-1, 4))

    def _render_negative_photo(self, rng: np.random.Generator) -> Scene:
        """A small photo without a face (a hard negative or a background picture, 24 px up to the scene's side) at the
        top-left corner, black elsewhere, as :meth:`_render_tight` places a face photo; no labels."""
        H, W = self.cfg.height, self.cfg.width
        side = int(rng.integers(24, min(H, W) + 1))
        h = int(min(H, max(16, round(side * rng.uniform(0.7, 1.4)))))
        if rng.random() < 0.6:
            photo = render_hard_negative(rng, h, side)
        else:
            src = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            sh, sw = src.shape[:2]
            cs = int(rng.integers(min(sh, sw) // 6, min(sh, sw) + 1))
            y, x = int(rng.integers(sh - cs + 1)), int(rng.integers(sw - cs + 1))
            photo = cv2.resize(src[y:y + cs, x:x + cs], (side, h), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((H, W, 3), np.uint8)
        canvas[:h, :side] = self._finish(photo, rng)
        empty = np.zeros((0, 4), np.float32)
        return Scene(canvas, empty, np.zeros((0, 5, 2), np.float32), np.zeros(0, bool), [], empty.copy())

    def _lowres(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``img`` shrunk and enlarged back with ``lowres_prob`` (:class:`SceneConfig`), else as it is."""
        cfg = self.cfg
        if rng.random() >= cfg.lowres_prob:
            return img
        H, W = img.shape[:2]
        f = rng.uniform(*cfg.lowres_factor)
        small = cv2.resize(img, (max(8, round(W * f)), max(8, round(H * f))), interpolation=cv2.INTER_AREA)
        how = cv2.INTER_NEAREST if rng.random() < 0.5 else cv2.INTER_LINEAR
        return np.ascontiguousarray(cv2.resize(small, (W, H), interpolation=how))

    def _finish(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        if rng.random() < cfg.grey_prob:
            g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            img = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
        if rng.random() < cfg.blur_prob:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
        if rng.random() < cfg.noise_prob:
            img = np.clip(img.astype(np.float32) + rng.normal(0, rng.uniform(2, 10), img.shape), 0, 255
                          ).astype(np.uint8)
        if rng.random() < cfg.jpeg_prob:
            ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
            if ok:
                img = cv2.imdecode(enc, cv2.IMREAD_COLOR)
        return np.ascontiguousarray(img)

    # -- geometry helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _rect_after(rect, M) -> np.ndarray:
        x0, y0, x1, y1 = rect
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
        q = pts @ M[:, :2].T + M[:, 2]
        return np.array([q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()])

    @staticmethod
    def _overlap(box: np.ndarray, rect: np.ndarray) -> float:
        w = max(0.0, min(box[2], rect[2]) - max(box[0], rect[0]))
        h = max(0.0, min(box[3], rect[3]) - max(box[1], rect[1]))
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)
        return w * h / area

    @staticmethod
    def _transform_face(box: np.ndarray, lm: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ll = lm.astype(np.float64) @ M[:, :2].T + M[:, 2]
        c = ((box[:2] + box[2:]) / 2) @ M[:, :2].T + M[:, 2]
        s = math.hypot(M[0, 0], M[0, 1])
        half = (box[2:] - box[:2]) * s / 2
        return np.concatenate([c - half, c + half]).astype(np.float32), ll.astype(np.float32)

    @staticmethod
    def _mean_in(alpha: np.ndarray, box: np.ndarray) -> float:
        H, W = alpha.shape
        x0, y0 = int(max(0, math.floor(box[0]))), int(max(0, math.floor(box[1])))
        x1, y1 = int(min(W, math.ceil(box[2]))), int(min(H, math.ceil(box[3])))
        if x1 <= x0 or y1 <= y0:
            return 0.0
        return float(alpha[y0:y1, x0:x1].mean())

    @staticmethod
    def _visible_frac(box: np.ndarray, W: int, H: int) -> float:
        w = max(0.0, min(box[2], W) - max(box[0], 0))
        h = max(0.0, min(box[3], H) - max(box[1], 0))
        return w * h / max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)

    def _cover(self, boxes, lms, occl, kinds, ignore, wa: np.ndarray) -> None:
        """A new patch covering an earlier face by > 25 % turns that face into an ignore region."""
        k = 0
        while k < len(boxes):
            if self._mean_in(wa, boxes[k]) > 0.25:
                ignore.append(boxes.pop(k))
                lms.pop(k)
                occl.pop(k)
                kinds.pop(k)
            else:
                k += 1
