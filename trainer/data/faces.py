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


def detector_id(detector) -> str:
    """Part of the alignment cache key naming the detector: empty for MTCNN (the key every older cache was written
    under), else its class, model file and config (another detector finds other boxes and landmarks)."""
    if type(detector).__name__ == "MTCNNDetector":
        return ""
    path = getattr(detector, "path", None)
    size = Path(path).stat().st_size if path is not None and Path(path).is_file() else ""
    return f"|{type(detector).__name__}|{Path(path).name if path else ''}|{size}|{getattr(detector, 'config', '')!r}"


def align_images(paths: Sequence[str | Path], detector, embedder, cache_dir: Path | None = None,
                 progress: bool = True) -> AlignedSet:
    """Detect + align every image (cached in ``cache_dir`` when given).

    Args:
        paths: image files.
        detector: an object with ``detect(bgr) -> list[Face]`` (``sdk.detect.MTCNNDetector``).
        embedder: an object with ``crop_transforms(frame, faces)`` and ``geometry_id`` (or ``model_id``): embedders
            that cut the same crops share the cache, when their detectors agree (:func:`detector_id`).
        cache_dir: folder for the ``aligned-<key>.npz`` cache; ``None`` disables caching.
    """
    paths = [str(p) for p in paths]
    cache = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        geometry = getattr(embedder, "geometry_id", embedder.model_id) + detector_id(detector)
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


# ------------------------------------------------------------------------------ aligned crops for the trainers
def _cap_per_identity(identities: Sequence[str], cap: int) -> list[int]:
    """Indices keeping at most ``cap`` images of each identity (in order)."""
    seen: dict[str, int] = {}
    keep = []
    for i, d in enumerate(identities):
        seen[d] = seen.get(d, 0) + 1
        if seen[d] <= cap:
            keep.append(i)
    return keep


def load_faces(data: str | Path, faces: str | Path | None = None, images_per_identity: int = 10,
               model: str | None = None, min_face_size: int = 60, cache: str | Path = "out/cache",
               progress: bool = True):
    """The faces of the folder-per-identity tree ``data`` as 112x112 ArcFace crops, or of the face pack ``faces``.

    Args:
        data: folder with one sub-folder per identity (ignored when ``faces`` is given).
        faces: a face pack (``.npz`` from ``python trainer/main.py pack-faces``): no detector runs.
        images_per_identity: at most this many images of each identity (0 = all).
        model: bundle whose detector / embedder align the faces (default: the built-in baseline).
        min_face_size: detector minimum face size (px).
        cache: alignment cache folder.
        progress: tqdm bar for the alignment pass.

    Returns a :class:`trainer.data.face_arrays.FaceArrays`.  Only detected faces are kept: images that cannot be
    read or where no face is found are counted (``FaceArrays.counts``, logged) and left out -- never replaced by a
    black or guessed crop.
    """
    from trainer.data.face_arrays import FaceArrays, UnreadableImageError

    if faces:
        from trainer.data.pack import load_face_pack

        arr = load_face_pack(faces)
        if images_per_identity:
            arr = arr.subset(_cap_per_identity(arr.identities, images_per_identity))
        log.info("faces: %d from pack %s", len(arr.crops), faces)
        return arr
    from sdk._registry import build_stage
    from sdk.align import ARCFACE_CROP
    from sdk.bundle import load_bundle
    from trainer.data.readers import read_identity_tree

    samples = read_identity_tree(data, min_images=2)
    if images_per_identity:
        samples = [samples[i] for i in _cap_per_identity([s.identity for s in samples], images_per_identity)]
    bundle = load_bundle(model or "baseline", verify_hash=False)
    det = build_stage(bundle.stages["detect"], {"max_side": None, "min_face_size": min_face_size})
    emb = build_stage(bundle.stages["embed"])
    aligned = align_images([str(s.path) for s in samples], det, emb, Path(cache), progress=progress)
    keep = np.nonzero(aligned.status == DETECTED)[0]
    counts = aligned.counts()
    log.info("faces: %s; training on the %d detected (unreadable and undetected images left out)", counts, len(keep))
    crops = np.zeros((len(keep), ARCFACE_CROP.height, ARCFACE_CROP.width, 3), np.uint8)
    lms = np.zeros((len(keep), 5, 2), np.float32)
    for k, i in enumerate(keep):
        img = read_bgr(aligned.paths[i])
        if img is None:
            raise UnreadableImageError(f"{aligned.paths[i]}: readable when aligned, unreadable now")
        crops[k] = warp_crop(img, aligned.arc_m[i], ARCFACE_CROP.size)
        lms[k] = aligned.arc_landmarks(i)
    return FaceArrays(crops, lms, [samples[i].identity for i in keep], counts)




def load_faces_for(cfg):
    """:func:`load_faces` with the fields of a trainer config (``SegTrainConfig`` / ``InpaintTrainConfig``: ``data``,
    ``faces``, ``images_per_identity``, ``model``, ``min_face_size``, ``cache``, ``progress``)."""
    return load_faces(cfg.data, getattr(cfg, "faces", None), cfg.images_per_identity, cfg.model, cfg.min_face_size,
                      cfg.cache, cfg.progress)
