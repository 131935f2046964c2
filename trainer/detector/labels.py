"""Teacher labels for the detector: MTCNN's boxes and 5 landmarks on the *clean* images, computed once.

The labels of a masked face are the ones MTCNN gives on the same image without the mask (the mask is drawn
afterwards by :mod:`trainer.data.synthesis`), so the student learns where the hidden nose and mouth are.
Every face MTCNN finds in an image is kept (LFW photos often show a second person in the background): the
scene compositor labels all of them, so no real face is ever taught as background.

The result is one ``.npz`` (no pickle) with per-image rows and a flat face table; see :class:`LabelSet`.
Identities are split deterministically (CRC32 of the identity name) into training and held-out evaluation
parts: :func:`is_eval_identity`.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

__all__ = ["LabelSet", "is_eval_identity", "label_images", "load_labels", "main_face"]


def is_eval_identity(identity: str, percent: int = 20) -> bool:
    """True for the ~``percent`` % of identities held out for evaluation (stable across runs and machines)."""
    return zlib.crc32(identity.encode()) % 100 < percent


@dataclass
class LabelSet:
    """MTCNN labels of a list of images.

    Attributes:
        paths: (I,) image paths (str); identities: (I,) identity names; sources: (I,) dataset tag.
        first, count: (I,) int, the image's faces are rows ``first .. first + count - 1`` of the face table.
        main: (I,) int, row of the image's main face (largest box near the centre), -1 when none.
        boxes: (F, 4) float32 ``x1, y1, x2, y2`` px; landmarks: (F, 5, 2) float32 px (MTCNN order);
        scores: (F,) float32 MTCNN scores.
    """

    paths: np.ndarray
    identities: np.ndarray
    sources: np.ndarray
    first: np.ndarray
    count: np.ndarray
    main: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def faces_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, n = int(self.first[i]), int(self.count[i])
        return self.boxes[a:a + n], self.landmarks[a:a + n]

    def subset(self, keep: np.ndarray) -> "LabelSet":
        """Images where ``keep`` (bool (I,)) is set (face table compacted)."""
        idx = np.flatnonzero(keep)
        rows = [np.arange(self.first[i], self.first[i] + self.count[i]) for i in idx]
        rows_cat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        first = np.concatenate([[0], np.cumsum(self.count[idx])[:-1]]).astype(np.int64) if len(idx) else idx
        main = np.where(self.main[idx] >= 0, self.main[idx] - self.first[idx] + first, -1)
        return LabelSet(self.paths[idx], self.identities[idx], self.sources[idx], first, self.count[idx].copy(),
                        main, self.boxes[rows_cat], self.landmarks[rows_cat], self.scores[rows_cat])

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})


def load_labels(path: str | Path) -> LabelSet:
    """Read a label file written by :func:`label_images` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        return LabelSet(**{k: z[k] for k in LabelSet.__dataclass_fields__})


def main_face(boxes: np.ndarray, w: int, h: int) -> int:
    """Row of the main face among ``boxes`` (N, 4) of a ``w`` x ``h`` photo: the largest near the centre; -1 if none."""
    if len(boxes) == 0:
        return -1
    side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    d = np.hypot(c[:, 0] - w / 2, c[:, 1] - h / 2) / max(w, h)
    return int(np.argmax(side * (1.0 - d)))


def label_images(items: list[tuple[str, str, str]], min_score: float = 0.9) -> LabelSet:
    """Run MTCNN (the SDK's, full resolution) on each ``(path, identity, source)``; keep faces with score
    >= ``min_score``. Unreadable images get zero faces (counted in the log)."""
    from sdk.detect import DetectorConfig, MTCNNDetector

    det = MTCNNDetector.from_package(DetectorConfig(max_side=None, threads=1))
    boxes, lms, scores, first, count, main = [], [], [], [], [], []
    bad = 0
    n = 0
    for path, _, _ in tqdm(items, desc="MTCNN labels", unit="img"):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        faces = [] if img is None else [f for f in det.detect(img) if f.score >= min_score]
        bad += img is None
        first.append(n)
        count.append(len(faces))
        b = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
        m = main_face(b, *(img.shape[1::-1] if img is not None else (1, 1)))
        main.append(n + m if m >= 0 else -1)
        boxes.append(b)
        lms.append(np.array([f.landmarks for f in faces], np.float32).reshape(-1, 5, 2))
        scores.append(np.array([f.score for f in faces], np.float32))
        n += len(faces)
    if bad:
        log.warning("%d unreadable images", bad)
    return LabelSet(np.array([p for p, _, _ in items]), np.array([i for _, i, _ in items]),
                    np.array([s for _, _, s in items]), np.array(first, np.int64), np.array(count, np.int64),
                    np.array(main, np.int64), np.concatenate(boxes), np.concatenate(lms), np.concatenate(scores))


def collect_items(roots: list[tuple[str, Path]], per_identity: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Up to ``per_identity`` images (random, fixed by ``seed``) of every identity under each ``(tag, root)``."""
    from trainer.data.readers import read_identity_tree

    rng = np.random.default_rng(seed)
    out = []
    for tag, root in roots:
        by_id: dict[str, list[str]] = {}
        for s in read_identity_tree(root):
            by_id.setdefault(s.identity, []).append(str(s.path))
        for ident in sorted(by_id):
            ps = by_id[ident]
            pick = rng.permutation(len(ps))[:per_identity] if per_identity > 0 else range(len(ps))
            out.extend((ps[int(k)], f"{tag}:{ident}", tag) for k in pick)
    return out


def build_or_load(cache: Path, roots: list[tuple[str, Path]], per_identity: int) -> LabelSet:
    """The label file at ``cache`` if it exists, else label ``roots`` and write it there."""
    if cache.is_file():
        ls = load_labels(cache)
        log.info("labels: %s (%d images, %d faces)", cache, len(ls), len(ls.boxes))
        return ls
    items = collect_items(roots, per_identity)
    ls = label_images(items)
    cache.parent.mkdir(parents=True, exist_ok=True)
    ls.save(cache)
    log.info("labels written: %s (%d images, %d faces)", cache, len(ls), len(ls.boxes))
    return ls
