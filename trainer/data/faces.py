"""Detect and align real face images once, cache the geometry, count what fails.

For every image we keep the 5 detector landmarks (frame pixels) and the frame->crop matrices of the
embedder's chip and of the 112x112 ArcFace crop; pixels are re-warped on demand (0.1 ms a crop), so the
cache stays small (a few MB for all of LFW). Images where no face is found are *not* dropped: they get
the dataset's median landmarks (LFW and the CelebA subset are framed alike, face centred) and are flagged
``status = FALLBACK``; unreadable files are flagged ``UNREADABLE``. Counts are logged and returned.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from sdk.align import ARCFACE_112, similarity_to_template, warp
from sdk.types import Face

log = logging.getLogger(__name__)

DETECTED, FALLBACK, UNREADABLE = 0, 1, 2
CACHE_VERSION = 1


@dataclass
class AlignedSet:
    """Geometry of N images.

    Attributes:
        paths: N image paths (strings, as given).
        status: (N,) int8: DETECTED, FALLBACK (no face: median landmarks used) or UNREADABLE.
        landmarks: (N, 5, 2) float32 frame pixels (MTCNN order).
        boxes: (N, 4) float32 frame pixels.
        chip_m: (N, 2, 3) float64 frame -> embedder chip matrices.
        arc_m: (N, 2, 3) float64 frame -> 112x112 ArcFace crop matrices.
    """

    paths: list[str]
    status: np.ndarray
    landmarks: np.ndarray
    boxes: np.ndarray
    chip_m: np.ndarray
    arc_m: np.ndarray

    def counts(self) -> dict[str, int]:
        return {"images": len(self.paths), "detected": int((self.status == DETECTED).sum()),
                "fallback_no_face": int((self.status == FALLBACK).sum()),
                "unreadable": int((self.status == UNREADABLE).sum())}

    def save(self, path: Path) -> None:
        np.savez_compressed(path, paths=np.array(self.paths), status=self.status, landmarks=self.landmarks,
                            boxes=self.boxes, chip_m=self.chip_m, arc_m=self.arc_m)

    @classmethod
    def load(cls, path: Path) -> "AlignedSet":
        z = np.load(path, allow_pickle=False)
        return cls([str(p) for p in z["paths"]], z["status"], z["landmarks"], z["boxes"], z["chip_m"], z["arc_m"])

    def chip_landmarks(self, i: int) -> np.ndarray:
        """(5, 2) landmarks of image ``i`` in embedder-chip pixels."""
        m = self.chip_m[i]
        return (self.landmarks[i] @ m[:, :2].T + m[:, 2]).astype(np.float32)

    def arc_landmarks(self, i: int) -> np.ndarray:
        """(5, 2) landmarks of image ``i`` in ArcFace-crop pixels."""
        m = self.arc_m[i]
        return (self.landmarks[i] @ m[:, :2].T + m[:, 2]).astype(np.float32)


def read_bgr(path: str | Path) -> np.ndarray | None:
    """BGR uint8 image (grey files are expanded to 3 channels), or ``None`` when unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return img


def pick_central_face(faces: Sequence[Face], shape: tuple[int, ...]) -> Face | None:
    """The face LFW-style protocols mean: the largest of those whose box contains the image centre, else
    the one closest to the centre."""
    if not faces:
        return None
    cy, cx = shape[0] / 2.0, shape[1] / 2.0
    inside = [f for f in faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
    if inside:
        return max(inside, key=lambda f: f.width * f.height)
    return min(faces, key=lambda f: (0.5 * (f.box[0] + f.box[2]) - cx) ** 2 + (0.5 * (f.box[1] + f.box[3]) - cy) ** 2)


def cache_key(paths: Sequence[str], geometry_id: str) -> str:
    """Key of an alignment cache: the image list and the crop geometry (``embedder.geometry_id``)."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{geometry_id}|".encode())
    for p in paths:
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:16]


def align_images(paths: Sequence[str | Path], detector, embedder, cache_dir: Path | None = None,
                 progress: bool = True) -> AlignedSet:
    """Detect + align every image (cached in ``cache_dir`` when given).

    Args:
        paths: image files.
        detector: an object with ``detect(bgr) -> list[Face]`` (``sdk.detect.MTCNNDetector``).
        embedder: an object with ``crop_transforms(frame, faces)`` and ``geometry_id`` (or ``model_id``): embedders
            that cut the same crops share the cache (the detector is the bundle's MTCNN in every bundle so far).
        cache_dir: folder for the ``aligned-<key>.npz`` cache; ``None`` disables caching.
    """
    paths = [str(p) for p in paths]
    cache = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        geometry = getattr(embedder, "geometry_id", embedder.model_id)
        cache = cache_dir / f"aligned-{cache_key(paths, geometry)}.npz"
        if cache.is_file():
            out = AlignedSet.load(cache)
            log.info("aligned faces from cache %s: %s", cache, out.counts())
            return out
    n = len(paths)
    status = np.full(n, UNREADABLE, np.int8)
    lms = np.zeros((n, 5, 2), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    chip_m = np.zeros((n, 2, 3))
    arc_m = np.zeros((n, 2, 3))
    shapes: dict[int, tuple[int, ...]] = {}
    for i, p in enumerate(tqdm(paths, desc="detect+align", unit="img", disable=not progress)):
        img = read_bgr(p)
        if img is None:
            continue
        shapes[i] = img.shape
        face = pick_central_face(detector.detect(img), img.shape)
        if face is None:
            status[i] = FALLBACK
            continue
        status[i] = DETECTED
        lms[i], boxes[i] = face.landmarks, face.box
        chip_m[i] = embedder.crop_transforms(img, [face])[0]
        arc_m[i] = similarity_to_template(face.landmarks, ARCFACE_112)
    ok = status == DETECTED
    fb = np.nonzero(status == FALLBACK)[0]
    if len(fb):
        if not ok.any():
            raise RuntimeError("no face detected in any image: cannot derive fallback landmarks")
        med_lm, med_box = np.median(lms[ok], axis=0), np.median(boxes[ok], axis=0)
        med_chip, med_arc = np.median(chip_m[ok], axis=0), np.median(arc_m[ok], axis=0)
        for i in fb:
            lms[i], boxes[i], chip_m[i], arc_m[i] = med_lm, med_box, med_chip, med_arc
    out = AlignedSet(paths, status, lms, boxes, chip_m, arc_m)
    log.info("aligned %s", json.dumps(out.counts()))
    if cache is not None:
        out.save(cache)
    return out


def warp_crop(img: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop of ``size = (w, h)`` from BGR ``img`` through frame->crop matrix ``m`` (BGR out)."""
    return warp(img, m, size)
