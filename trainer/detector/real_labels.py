"""Pseudo-labels of real masked photos for LTDet's training (``trainer/main.py detector --real-photos``).

Synthetic occluders on LFW / CelebA do not look like the masks of in-the-wild photos, and what a detector trained on
them still misses there are real framings: photos cut to eyes-and-mask, 15-25 px masked faces in small stock photos.
This module labels the real masked photos of the **harvest** part of the real-photo split
(``trainer/data/splits/face_mask_detection.json``; the *validation* part, which
:mod:`trainer.detector.evaluate` scores, is never read here) so that the scene compositor can cut them tight,
shrink them and paste them like the labelled LFW / CelebA photos (:class:`trainer.detector.scenes.SceneRenderer`'s
``real`` pool).

Labelling (:func:`pseudo_label`): each photo, downscaled to at most ``side`` px (the size the evaluation sees) or, when
small, enlarged (:class:`PseudoLabelConfig`), is run
through a trained LTDet bundle (boxes + its refined landmarks, faces scoring >= ``keep_score``) and MTCNN (the SDK's,
faces scoring >= ``mtcnn_score``); faces found by both are merged (LTDet's box and points kept), faces found by one
are kept too, so that no found face is taught as background. A photo is used only when it has a *main* face that one
detector is sure of (LTDet >= ``main_score`` or MTCNN >= ``mtcnn_main_score``): the largest near-centre one. Boxes
and points are stored in the photo's own pixels (the compositor reads the file at full size).

The result is an ordinary :class:`~trainer.detector.labels.LabelSet` (source ``"realmask"``, identity
``"realmask:<sha1>"``), cached as one ``.npz`` next to the other label files, with a ``.json`` naming the labeller and
its settings.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sdk.track import iou_matrix
from trainer.detector.labels import LabelSet, load_labels, main_face

log = logging.getLogger(__name__)

__all__ = ["PseudoLabelConfig", "build_or_load_real", "merge_faces", "pseudo_label", "real_photo_items"]

SOURCE = "realmask"


@dataclass(frozen=True)
class PseudoLabelConfig:
    """How real photos are pseudo-labelled (module doc). Scores in [0, 1]; sizes in px: photos are labelled at most
    ``side`` px long, and photos shorter than ``small_side`` are enlarged to it (at most ``max_enlarge`` x: their faces
    are often 10-20 px, which both detectors find more surely when enlarged)."""

    keep_score: float = 0.6
    main_score: float = 0.9
    mtcnn_score: float = 0.9
    mtcnn_main_score: float = 0.97
    merge_iou: float = 0.4
    side: int = 640
    small_side: int = 320
    max_enlarge: float = 4.0


def real_photo_items(root: str | Path, part: str = "harvest", split: str | Path | None = None
                     ) -> list[tuple[str, str, str]]:
    """``[(path, "realmask:<sha1>", "realmask")]`` of the ``with_mask`` photos of ``part`` under ``root`` (the real
    photo dataset folder: ``with_mask/``, ``without_mask/``), SHA-1s checked against the split file."""
    from trainer.data.realmask_split import DEFAULT_SPLIT, split_files

    rows = split_files(root, part, "with_mask", split or DEFAULT_SPLIT)
    if not rows:
        raise SystemExit(f"{root}: no with_mask photos of the {part!r} part found (the real-photo dataset folder, "
                         "tools/get_extra_data.py --source face-mask-detection)")
    return [(str(p), f"{SOURCE}:{sha}", SOURCE) for p, sha in rows]


def _unmatched(a_boxes: np.ndarray, b_boxes: np.ndarray, iou: float) -> np.ndarray:
    """For each box of ``b`` (M, 4), True when no box of ``a`` (N, 4) overlaps it by more than ``iou``."""
    if len(a_boxes) == 0 or len(b_boxes) == 0:
        return np.ones(len(b_boxes), bool)
    return iou_matrix(a_boxes, b_boxes).max(0) <= iou


def merge_faces(lt: tuple[np.ndarray, np.ndarray, np.ndarray], mt: tuple[np.ndarray, np.ndarray, np.ndarray],
                cfg: PseudoLabelConfig, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Merge LTDet's and MTCNN's faces of one photo (each ``(boxes (N, 4), landmarks (N, 5, 2), scores (N,))``, already
    filtered by their keep scores): ``(boxes, landmarks, confident (K,) bool, main index or -1)``. LTDet's faces come
    first; an MTCNN face is added when it overlaps none of them by more than ``cfg.merge_iou``."""
    lb, ll, ls = lt
    mb, ml, ms = mt
    add = _unmatched(lb, mb, cfg.merge_iou)
    boxes = np.concatenate([lb, mb[add]]).astype(np.float32).reshape(-1, 4)
    lms = np.concatenate([ll, ml[add]]).astype(np.float32).reshape(-1, 5, 2)
    sure_lt = ls >= cfg.main_score
    # an LTDet face MTCNN is sure of is sure too
    if len(lb) and len(mb):
        sure_mt_of_lt = ~_unmatched(mb[ms >= cfg.mtcnn_main_score], lb, cfg.merge_iou)
        sure_lt = sure_lt | sure_mt_of_lt
    sure = np.concatenate([sure_lt, ms[add] >= cfg.mtcnn_main_score]).astype(bool)
    m = main_face(boxes[sure], w, h)  # the main face among the sure ones
    return boxes, lms, sure, int(np.flatnonzero(sure)[m]) if m >= 0 else -1


def pseudo_label(items: list[tuple[str, str, str]], labeller: str, cfg: PseudoLabelConfig = PseudoLabelConfig(),
                 progress: bool = True) -> LabelSet:
    """Label ``items`` (``(path, identity, source)``) with the LTDet bundle ``labeller`` (folder or built-in name) and
    MTCNN (module doc). Unreadable photos and photos without a main face get ``main = -1``."""
    from sdk._registry import build_stage
    from sdk.detect import DetectorConfig, MTCNNDetector
    from trainer.detector.checkpoint import ltdet_spec

    spec = ltdet_spec(labeller)
    if spec is None:
        raise SystemExit(f"{labeller}: not an LTDet bundle (folder or built-in name)")
    lt_det = build_stage(spec, {"score_threshold": cfg.keep_score, "threads": 1})
    mt_det = MTCNNDetector.from_package(DetectorConfig(threads=1))

    def arrays(faces, f: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.array([x.box for x in faces], np.float32).reshape(-1, 4) / f,
                np.array([x.landmarks for x in faces], np.float32).reshape(-1, 5, 2) / f,
                np.array([x.score for x in faces], np.float32))

    boxes, lms, scores, first, count, main = [], [], [], [], [], []
    n = used = 0
    for path, _, _ in tqdm(items, desc="pseudo-labels (real masked photos)", unit="photo", disable=not progress):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        b = np.zeros((0, 4), np.float32)
        lm = np.zeros((0, 5, 2), np.float32)
        sure = np.zeros(0, bool)
        m = -1
        if img is not None and min(img.shape[:2]) >= 24:
            h, w = img.shape[:2]
            f = min(1.0, cfg.side / max(h, w))
            if max(h, w) < cfg.small_side:
                f = min(cfg.max_enlarge, cfg.small_side / max(h, w))
            small = img if f == 1.0 else cv2.resize(img, None, fx=f, fy=f,
                                                    interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
            lt = arrays(lt_det.detect(small), f)
            mt = arrays([x for x in mt_det.detect(small) if x.score >= cfg.mtcnn_score], f)
            b, lm, sure, m = merge_faces(lt, mt, cfg, w, h)
        first.append(n)
        count.append(len(b))
        main.append(n + m if m >= 0 else -1)
        used += m >= 0
        boxes.append(b)
        lms.append(lm)
        scores.append(sure.astype(np.float32))
        n += len(b)
    log.info("pseudo-labels: %d of %d photos have a sure main face (%d faces in all)", used, len(items), n)
    return LabelSet(np.array([p for p, _, _ in items]), np.array([i for _, i, _ in items]),
                    np.array([s for _, _, s in items]), np.array(first, np.int64), np.array(count, np.int64),
                    np.array(main, np.int64), np.concatenate(boxes), np.concatenate(lms), np.concatenate(scores))


def build_or_load_real(root: str | Path, labeller: str, cache: str | Path,
                       cfg: PseudoLabelConfig = PseudoLabelConfig(), progress: bool = True) -> LabelSet:
    """The pseudo-labels of the harvest part's masked photos under ``root``: read from ``cache`` when it exists, lists
    the same photos and was made by the same labeller and settings (``<cache>.json``), else computed
    (:func:`pseudo_label`) and written there. Only photos with a main face are returned."""
    items = real_photo_items(root)
    cache = Path(cache)
    meta_path = cache.with_suffix(".json")
    meta = {"labeller": str(labeller), "config": asdict(cfg)}
    ls = None
    if cache.is_file():
        ls = load_labels(cache)
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if sorted(map(str, ls.identities)) != sorted(i for _, i, _ in items) or old != meta:
            log.info("%s holds other photos or another labeller's labels; labelling again", cache)
            ls = None
        else:
            # the same photos, maybe at another path: point at this root's files
            by_id = {i: p for p, i, _ in items}
            ls.paths = np.array([by_id[str(i)] for i in ls.identities])
    if ls is None:
        ls = pseudo_label(items, labeller, cfg, progress)
        cache.parent.mkdir(parents=True, exist_ok=True)
        ls.save(cache)
        meta_path.write_text(json.dumps(meta, indent=1))
        log.info("pseudo-labels written: %s", cache)
    return ls.subset(ls.main >= 0)
