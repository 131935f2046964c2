"""Harvest real occluders from real masked photos and paste them onto clean faces.

**Harvest** (``python tools/harvest_occluders.py``): for each photo, the SDK's MTCNN finds the largest face (on the
photo padded by 30% of its longer side: many of these photos are tight crops), the SDK's occlusion segmenter
(``sdk/models/default/segmenter.onnx``) segments its 112x112 ArcFace crop, and the occlusion probability is mapped
back to the photo. Photo and probability are then unwrapped into **texture space** through the same mask surface
the procedural masks use (:mod:`trainer.data.occluders.surface`, ``mask_surface()``): a cutout is an RGBA raster over
canonical face coordinates, independent of the source's pose. The alpha keeps the segmenter's probability below the
eye line, in the largest connected region; where the source head was turned away (texels it did not see) the
mirror image of the seen side fills in. Photos are skipped, and counted by reason, when no face is found, the
segmenter does not call the face occluded, the face is smaller than ``min_eye_dist`` px, or the region does not
cover the mouth.

**Paste** (:func:`paste_cutout`): the cutout is warped onto a target face through its own pose (per-pixel surface
warp, not one homography), relit with the target's low-frequency light, blurred / noised / JPEG'd like the target,
and composited with the exact map M.

Cutouts are stored as ``<out>/<part>/<sha1>.png`` (BGRA, texture grid in ``index.json``) plus ``index.json``: one
entry per cutout with its source file name, the photo's SHA-1, the estimated yaw / pitch, the face's eye distance
and the segmenter's occlusion probability. Nothing here is ever committed: the cutouts are derived from
research-only photos.

Honesty note: the cutout's shape *is* the segmenter's own prediction on the source photo, so measuring the same
segmenter's IoU on pasted cutouts is biased in its favour (it is asked to find regions it already found once, on a
new face). Procedural held-out families do not have this bias; see ``trainer/eval/realmask.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from trainer.data.occluders.appearance import FaceLook, composite
from trainer.data.occluders.surface import (HeadPose, TextureGrid, estimate_head_pose, eye_line_distance,
                                            mask_surface, sample_image_to_texture, warp_texture_to_image)

log = logging.getLogger(__name__)

CUTOUT_GRID = TextureGrid(x0=-1.7, y0=-0.9, x1=1.7, y1=2.6, res=64.0)
CUTOUT_SURFACE = mask_surface()
INDEX = "index.json"
PARTS = ("harvest", "validation")
#: texels that must be covered for a cutout to count as a mask over the mouth (canonical rectangle)
MOUTH_BOX = (-0.3, 1.0, 0.3, 1.3)
#: photos are downscaled to this longer side before harvesting
MAX_PHOTO_SIDE = 2048


@dataclass(frozen=True)
class CutoutMeta:
    """Index entry of one cutout (see module doc)."""

    name: str
    source: str
    sha1: str
    part: str
    yaw_deg: float
    pitch_deg: float
    eye_dist: float
    occluded_prob: float
    coverage: float  #: fraction of the lower-face rectangle x in [-0.9, 0.9], y in [0.6, 1.6] the alpha covers
    mirrored_fill: float  #: fraction of the alpha that came from the mirrored side


@dataclass(frozen=True, eq=False)
class Cutout:
    """A harvested occluder: ``rgba`` (h, w, 4) uint8 **BGRA** on ``CUTOUT_GRID`` and its index entry."""

    rgba: np.ndarray
    meta: CutoutMeta


# ------------------------------------------------------------------------------------------------ harvesting
def _largest_component(a: np.ndarray) -> np.ndarray:
    n, lab, stats, _ = cv2.connectedComponentsWithStats((a > 0.5).astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(a, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == k


def cutout_from_probability(image: np.ndarray, prob: np.ndarray, landmarks: np.ndarray,
                            grid: TextureGrid = CUTOUT_GRID) -> tuple[np.ndarray, dict]:
    """Unwrap ``image`` (BGR) and its per-pixel occlusion probability ``prob`` (H, W float in [0, 1]) around the
    face with ``landmarks`` into texture space.

    Returns:
        ``(rgba (h, w, 4) uint8 BGRA, facts)`` with facts ``yaw_deg``, ``pitch_deg``, ``eye_dist``, ``coverage``,
        ``mouth_coverage``, ``mirrored_fill``.
    """
    pose = estimate_head_pose(landmarks)
    stack = np.concatenate([image.astype(np.float32), prob.astype(np.float32)[..., None]], -1)
    tex, vis = sample_image_to_texture(stack, grid, pose, CUTOUT_SURFACE)
    gx, gy = grid.coords()
    alpha = np.clip(tex[..., 3], 0, 1) * vis
    alpha[(gy < 0.08) | (gy > 2.45) | (np.abs(gx) > 1.45)] = 0.0  # below the eye line, within the lower face
    colour = tex[..., :3]
    # texels the source did not see: take the mirror image of the seen side (faces and masks are ~symmetric)
    unseen = vis < 0.5
    m_alpha, m_colour, m_vis = alpha[:, ::-1], colour[:, ::-1], vis[:, ::-1]
    fill = unseen & (m_vis > 0.5) & (m_alpha > 0.5)
    alpha = np.where(fill, m_alpha, alpha)
    colour = np.where(fill[..., None], m_colour, colour)
    keep = _largest_component(alpha)
    alpha = np.where(keep, alpha, 0.0)
    # feather the edge by half a texel so the paste has no jaggies
    alpha = cv2.GaussianBlur(alpha.astype(np.float32), (0, 0), 0.7) * (cv2.dilate(keep.astype(np.uint8), None) > 0)
    rgba = np.concatenate([np.clip(colour, 0, 255), np.clip(alpha * 255.0, 0, 255)[..., None]], -1)
    rgba = (rgba + 0.5).astype(np.uint8)
    lower = (np.abs(gx) <= 0.9) & (gy >= 0.6) & (gy <= 1.6)
    x0, y0, x1, y1 = MOUTH_BOX
    mouth = (gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1)
    solid = alpha > 0.5
    facts = {"yaw_deg": pose.yaw_deg, "pitch_deg": pose.pitch_deg, "eye_dist": pose.eye_dist,
             "coverage": float(solid[lower].mean()), "mouth_coverage": float(solid[mouth].mean()),
             "mirrored_fill": float((fill & solid).sum() / max(int(solid.sum()), 1))}
    return rgba, facts


def extend_below_crop(image: np.ndarray, prob: np.ndarray, seen: np.ndarray, landmarks: np.ndarray,
                      work_eye_dist: float = 40.0, iters: int = 3) -> np.ndarray:
    """Extend the segmenter's occlusion probability past the bottom of its 112x112 crop (which ends near the chin,
    where masks do not): GrabCut over the lower face, seeded by the segmenter where it looked (prob >= 0.7 -> surely
    occluder, <= 0.3 -> surely not) and free to grow below the crop. Returns the new probability (frame pixels):
    unchanged inside the crop, GrabCut's foreground (1.0) outside it. Works on a copy scaled to ``work_eye_dist``."""
    lm = np.asarray(landmarks, np.float64)
    pose = estimate_head_pose(lm)
    H, W = image.shape[:2]
    c = pose.project(np.array([[-1.6, 0.1, 0.0], [1.6, 0.1, 0.0], [1.6, 2.7, 0.0], [-1.6, 2.7, 0.0]]))
    x0, y0 = int(max(0, c[:, 0].min())), int(max(0, c[:, 1].min()))
    x1, y1 = int(min(W, c[:, 0].max() + 1)), int(min(H, c[:, 1].max() + 1))
    if x1 - x0 < 16 or y1 - y0 < 16 or not (prob[y0:y1, x0:x1] >= 0.7).any():
        return prob
    k = min(1.0, work_eye_dist / max(pose.eye_dist, 1.0))
    size = (max(8, int((x1 - x0) * k)), max(8, int((y1 - y0) * k)))
    roi = cv2.resize(image[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    pr = cv2.resize(prob[y0:y1, x0:x1], size, interpolation=cv2.INTER_LINEAR)
    sn = cv2.resize(seen[y0:y1, x0:x1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    gc = np.full(pr.shape, cv2.GC_PR_BGD, np.uint8)
    gc[sn & (pr >= 0.7)] = cv2.GC_FGD
    gc[sn & (pr <= 0.3)] = cv2.GC_BGD
    gc[sn & (pr > 0.3) & (pr < 0.7)] = cv2.GC_PR_FGD
    # just below the crop under a confident occluder: probably still occluder
    below = (~sn) & (cv2.dilate((sn & (pr >= 0.7)).astype(np.uint8), np.ones((9, 3), np.uint8)) > 0)
    gc[below] = cv2.GC_PR_FGD
    if not (gc == cv2.GC_BGD).any() or not (gc == cv2.GC_FGD).any():
        return prob
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(roi), gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return prob
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
    fg = cv2.resize(fg, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = prob.copy()
    sub = out[y0:y1, x0:x1]
    sub[~seen[y0:y1, x0:x1]] = fg[~seen[y0:y1, x0:x1]]
    return out


def pad_for_detection(image: np.ndarray, frac: float = 0.3) -> tuple[np.ndarray, int]:
    """``image`` with a mid-grey border of ``frac`` x its longer side on every side (MTCNN needs context around
    tight face crops); returns ``(padded, border_px)``."""
    b = int(round(frac * max(image.shape[:2])))
    return cv2.copyMakeBorder(image, b, b, b, b, cv2.BORDER_CONSTANT, value=(128, 128, 128)), b


@dataclass
class HarvestStats:
    """Counts of one harvest run, by outcome."""

    photos: int = 0
    kept: int = 0
    unreadable: int = 0
    no_face: int = 0
    too_small: int = 0
    not_occluded: int = 0
    no_mouth_cover: int = 0


def harvest_photo(image: np.ndarray, detector, segmenter, min_eye_dist: float = 24.0,
                  min_mouth_cover: float = 0.6) -> tuple[np.ndarray | None, dict]:
    """One photo -> ``(rgba cutout or None, facts)``; ``facts["reason"]`` says why there is no cutout.

    Args:
        image: BGR uint8 photo.
        detector: ``detect(bgr) -> list[sdk.types.Face]`` (the SDK's MTCNN).
        segmenter: the SDK's :class:`sdk.segment.OnnxSegmenter` (``crops`` + ``segment``).
    """
    from sdk.align import ARCFACE_112, similarity_to_template

    padded, b = pad_for_detection(image)
    faces = detector.detect(padded)
    if not faces:
        return None, {"reason": "no_face"}
    face = max(faces, key=lambda f: f.width * f.height)
    lm = np.asarray(face.landmarks, np.float64)
    if float(np.hypot(*(lm[1] - lm[0]))) < min_eye_dist:
        return None, {"reason": "too_small"}
    crop = segmenter.crops(padded, [face])
    masks, occ = segmenter.segment(crop)
    if float(occ[0]) < segmenter.threshold:
        return None, {"reason": "not_occluded", "occluded_prob": float(occ[0])}
    m = similarity_to_template(lm.astype(np.float32), ARCFACE_112)
    H, W = padded.shape[:2]
    prob = cv2.warpAffine(masks[0], m, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    seen = cv2.warpAffine(np.ones((112, 112), np.float32), m, (W, H), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    prob = extend_below_crop(padded, prob, seen > 0.5, lm)
    inside = np.zeros((H, W), bool)
    inside[b:H - b, b:W - b] = True
    prob = np.where(inside, prob, 0.0).astype(np.float32)  # never the grey padding
    rgba, facts = cutout_from_probability(padded, prob, lm)
    facts["occluded_prob"] = float(occ[0])
    if facts["mouth_coverage"] < min_mouth_cover:
        return None, {**facts, "reason": "no_mouth_cover"}
    return rgba, facts


def limit_side(image: np.ndarray, max_side: int = MAX_PHOTO_SIDE) -> np.ndarray:
    """``image`` downscaled (INTER_AREA) so that its longer side is at most ``max_side`` px (some scraped photos are
    9000 px wide; the SDK refuses frames over 8192 px)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    k = max_side / max(h, w)
    return cv2.resize(image, (max(1, int(w * k)), max(1, int(h * k))), interpolation=cv2.INTER_AREA)


def harvest_files(files: Sequence[tuple[Path, str]], out_dir: Path, part: str, detector, segmenter,
                  progress: bool = True, min_eye_dist: float = 24.0) -> HarvestStats:
    """Harvest every ``(path, sha1)`` in ``files`` into ``out_dir/<part>/`` and (re)write ``out_dir/<part>/index.json``.

    Every outcome is appended to ``out_dir/<part>/progress.jsonl`` as it happens, so an interrupted run resumes
    where it stopped (photos are matched by SHA-1). Raises ValueError for an unknown ``part`` (``PARTS``).
    """
    from tqdm import tqdm

    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    dest = Path(out_dir) / part
    dest.mkdir(parents=True, exist_ok=True)
    prog = dest / "progress.jsonl"
    done: dict[str, dict] = {}
    if prog.is_file():
        for ln in prog.read_text().splitlines():
            try:
                r = json.loads(ln)
                done[r["sha1"]] = r
            except (ValueError, KeyError):
                break
    stats = HarvestStats()
    index: list[CutoutMeta] = []
    with open(prog, "a") as log_f:
        for path, sha in tqdm(list(files), desc=f"harvest {part}", unit="photo", disable=not progress):
            stats.photos += 1
            if sha not in done:
                img = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if img is None:
                    rec = {"sha1": sha, "outcome": "unreadable"}
                else:
                    rgba, facts = harvest_photo(limit_side(img), detector, segmenter, min_eye_dist)
                    if rgba is None:
                        rec = {"sha1": sha, "outcome": facts["reason"]}
                    else:
                        name = f"{sha[:16]}.png"
                        cv2.imwrite(str(dest / name), rgba)
                        meta = CutoutMeta(name, Path(path).name, sha, part, round(facts["yaw_deg"], 1),
                                          round(facts["pitch_deg"], 1), round(facts["eye_dist"], 1),
                                          round(facts["occluded_prob"], 4), round(facts["coverage"], 4),
                                          round(facts["mirrored_fill"], 4))
                        rec = {"sha1": sha, "outcome": "kept", "meta": asdict(meta)}
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
                done[sha] = rec
            rec = done[sha]
            if rec["outcome"] == "kept":
                index.append(CutoutMeta(**rec["meta"]))
                stats.kept += 1
            else:
                setattr(stats, rec["outcome"], getattr(stats, rec["outcome"]) + 1)
    (dest / INDEX).write_text(json.dumps({"grid": asdict(CUTOUT_GRID), "surface": "mask_surface()",
                                          "stats": asdict(stats), "cutouts": [asdict(c) for c in index]}, indent=0))
    log.info("harvest %s: %s", part, asdict(stats))
    return stats


# ------------------------------------------------------------------------------------------------ the bank
class CutoutBank:
    """The cutouts of one part (``harvest`` or ``validation``) of a cutout folder, read lazily.

    Raises FileNotFoundError when ``<root>/<part>/index.json`` is missing, ValueError when it lists no cutouts.
    """

    def __init__(self, root: str | Path, part: str):
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        self.dir = Path(root) / part
        idx = self.dir / INDEX
        if not idx.is_file():
            raise FileNotFoundError(f"no cutout index {idx} (python tools/harvest_occluders.py writes it)")
        doc = json.loads(idx.read_text())
        self.grid = TextureGrid(**doc["grid"])
        self.entries = [CutoutMeta(**c) for c in doc["cutouts"]]
        if not self.entries:
            raise ValueError(f"{idx} lists no cutouts")
        self.part = part
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}

    def get(self, i: int) -> Cutout:
        if i not in self._cache:
            img = cv2.imread(str(self.dir / self.entries[i].name), cv2.IMREAD_UNCHANGED)
            if img is None or img.ndim != 3 or img.shape[2] != 4:
                raise ValueError(f"cutout {self.dir / self.entries[i].name} is missing or not BGRA")
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[i] = img
        return Cutout(self._cache[i], self.entries[i])

    def sample(self, rng: np.random.Generator) -> Cutout:
        return self.get(int(rng.integers(len(self.entries))))


# ------------------------------------------------------------------------------------------------ pasting
def paste_cutout(cutout: Cutout, image: np.ndarray, out: np.ndarray, mask: np.ndarray, landmarks: np.ndarray,
                 pose: HeadPose, look: FaceLook, rng: np.random.Generator, grid: TextureGrid = CUTOUT_GRID,
                 recolour: bool = False, match: bool = True, lower_top: float = 0.05) -> bool:
    """Warp ``cutout`` onto the face (``out``/``mask`` in place, M exact); ``recolour`` rotates its hue (training
    augmentation). Returns True if any pixel was painted."""
    rgba = cutout.rgba.astype(np.float32)
    colour, alpha = rgba[..., :3], rgba[..., 3] / 255.0
    if rng.random() < 0.5:  # masks are ~symmetric: a mirrored cutout is as real as the original
        colour, alpha = colour[:, ::-1], alpha[:, ::-1]
    if recolour:
        hsv = cv2.cvtColor(np.clip(colour, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(0, 180))) % 180
        colour = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    ys, xs = np.nonzero(alpha > 0.02)
    if not len(xs):
        return False
    gx, gy = grid.coords()
    sel = np.linspace(0, len(xs) - 1, min(len(xs), 400)).astype(int)
    p = pose.project_surface(np.stack([gx[ys[sel], xs[sel]], gy[ys[sel], xs[sel]]], 1), CUTOUT_SURFACE)
    H, W = image.shape[:2]
    x0, y0 = max(int(np.floor(p[:, 0].min())) - 2, 0), max(int(np.floor(p[:, 1].min())) - 2, 0)
    x1, y1 = min(int(np.ceil(p[:, 0].max())) + 3, W), min(int(np.ceil(p[:, 1].max())) + 3, H)
    if x1 <= x0 or y1 <= y0:
        return False
    box = (x0, y0, x1, y1)
    stack = np.concatenate([colour * alpha[..., None], alpha[..., None]], -1)
    warped, _ = warp_texture_to_image(stack, grid, pose, CUTOUT_SURFACE, 0.0, box)
    cov = warped[..., 3]
    col = warped[..., :3] / np.maximum(cov, 1e-4)[..., None]
    col = col * (look.shading[y0:y1, x0:x1] ** 0.35)[..., None]
    allowed = eye_line_distance(landmarks, box) > lower_top * pose.eye_dist
    return composite(image, box, col, cov, 1.0, look, rng, out, mask, allowed, match)


def file_sha1(path: str | Path) -> str:
    """SHA-1 hex digest of a file's bytes."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()
