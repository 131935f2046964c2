"""Student training data, prepared once: read, filter, split (identity-disjoint), align, teacher descriptors.

:func:`prepare_data` detects and aligns every image once (cached, :func:`trainer.data.faces.align_images`),
leaves out images that cannot be read (and, with ``keep_undetected=False``, those without a detected face),
counts them (``Prepared.counts``, logged and reported in ``summary.json``), splits the rest by identity and
computes the teacher's descriptors of the clean crops (cached).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.student.config import StudentConfig
from trainer.student.data import MaskedChipDataset
from trainer.student.teacher import teacher_cache_name, teacher_descriptors, teacher_matrices

log = logging.getLogger("trainer.student")

__all__ = ["Prepared", "select_samples", "prepare_data"]


@dataclass
class Prepared:
    """Aligned train/val data and the teacher's clean descriptors."""

    paths: list[str]
    identities: list[str]
    labels: np.ndarray          # (N,) index into identities
    train_idx: np.ndarray
    val_idx: np.ndarray
    chip_m: np.ndarray
    landmarks: np.ndarray
    teacher: np.ndarray         # (N, Dt) raw teacher descriptors of its clean crops (Dt = 128 for dlib)
    train_ids: list[str]
    val_ids: list[str]
    counts: dict = field(default_factory=dict)  # images / detected / fallback_no_face / unreadable / used
    #: unlabelled extra faces (``cfg.extra_faces``): indices after the labelled ones, label -1, training only
    extra_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def select_samples(data: str | Path, max_per_identity: int):
    """The images of the folder-per-identity tree ``data`` (identities with 2+ images), at most
    ``max_per_identity`` per identity (0 = all)."""
    from trainer.data.readers import read_identity_tree

    samples = read_identity_tree(data, min_images=2)
    out, count = [], {}
    for s in samples:
        count[s.identity] = count.get(s.identity, 0) + 1
        if not max_per_identity or count[s.identity] <= max_per_identity:
            out.append(s)
    return out


def prepare_data(cfg: StudentConfig, teacher, detector=None, embedder=None) -> Prepared:
    """Read, split (identity-disjoint), align (cached) and compute the teacher's clean descriptors (cached).

    ``teacher``: the dlib ResNet (descriptors of the 150x150 dlib chips) or an :class:`OnnxTeacher` (of its own
    crops, ``teacher.crop``)."""
    from trainer.data.faces import align_images
    from trainer.data.readers import identity_split

    samples = select_samples(cfg.data, cfg.max_per_identity)
    cache = Path(cfg.cache) if cfg.cache else Path(cfg.out) / "cache"
    if detector is None or embedder is None:
        from sdk._registry import build_stage
        from sdk.bundle import load_bundle

        bundle = load_bundle(cfg.model or "baseline")  # MTCNN + dlib5 chips, as every shipped student was trained
        detector = build_stage(bundle.stages["detect"], {"max_side": None})
        embedder = build_stage(bundle.stages["embed"])
    paths = [str(s.path) for s in samples]
    aligned = align_images(paths, detector, embedder, cache, progress=cfg.progress)
    samples, aligned, counts = _usable(samples, aligned, cfg.keep_undetected)
    paths = [str(s.path) for s in samples]
    val_frac = cfg.val_fraction
    split = identity_split(samples, (1.0 - val_frac, val_frac, 0.0), seed=cfg.seed)
    train_ids, val_ids = list(split.train), list(split.val)
    if not val_ids and val_frac > 0 and len(train_ids) > 1:  # tiny sets: hold out one identity at least
        val_ids, train_ids = train_ids[-1:], train_ids[:-1]
    # labels: training identities first (0..T-1, the ArcFace classes), held-out ones after
    order = train_ids + val_ids
    lab_of = {name: i for i, name in enumerate(order)}
    labels = np.array([lab_of[s.identity] for s in samples], np.int64)
    tr = np.array([i for i, s in enumerate(samples) if s.identity in set(train_ids)], np.int64)
    va = np.array([i for i, s in enumerate(samples) if s.identity in set(val_ids)], np.int64)
    t_m, t_size = teacher_matrices(teacher, aligned.chip_m, aligned.landmarks)
    ds = MaskedChipDataset(aligned.paths, t_m, aligned.landmarks, labels, None, 0.0, cfg.seed, chip_size=t_size)
    name = teacher_cache_name(teacher, paths, t_m, cfg.init)
    t = teacher_descriptors(teacher, ds, cache / name, progress=cfg.progress)
    prep = Prepared(aligned.paths, order, labels, tr, va, aligned.chip_m, aligned.landmarks, t, train_ids, val_ids,
                    counts)
    if cfg.extra_faces:
        prep = _with_extra_faces(prep, cfg, teacher, embedder, cache)
    if cfg.exclude:
        prep = _without_excluded(prep, cfg.exclude)
    return prep


def read_exclude_list(path: str | Path) -> set[str]:
    """Image paths (one per line, ``#`` comments) never trained on, resolved to absolute paths."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exclude list not found: {p}")
    lines = [ln.split("#", 1)[0].strip() for ln in p.read_text().splitlines()]
    return {str(Path(ln).resolve()) for ln in lines if ln}


def _without_excluded(prep: Prepared, exclude: str | Path) -> Prepared:
    """``prep`` whose training / validation / extra indices skip the images of the ``exclude`` list (counted)."""
    drop = read_exclude_list(exclude)
    bad = np.array([str(Path(q).resolve()) in drop for q in prep.paths], bool)
    keep = lambda idx: idx[~bad[idx]] if len(idx) else idx  # noqa: E731
    n = int(bad.sum())
    prep.train_idx, prep.val_idx, prep.extra_idx = keep(prep.train_idx), keep(prep.val_idx), keep(prep.extra_idx)
    prep.counts = {**prep.counts, "excluded": n}
    log.info("left out %d images named in %s (%d paths listed)", n, exclude, len(drop))
    return prep


def extra_face_entries(cfg: StudentConfig) -> list:
    """Detected face-list entries of ``cfg.extra_sources`` from ``cfg.extra_faces`` (ValueError when none)."""
    from trainer.data.facelist import DETECTED, SOURCES, read_face_list

    unknown = set(cfg.extra_sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown face-list sources {sorted(unknown)}; the face list has {', '.join(SOURCES)}")
    if not Path(cfg.extra_faces).is_file():
        raise FileNotFoundError(f"face list not found: {cfg.extra_faces} (build it with tools/build_face_list.py)")
    entries = [e for e in read_face_list(cfg.extra_faces)
               if e.source in cfg.extra_sources and e.status == DETECTED and e.landmarks is not None]
    if not entries:
        raise ValueError(f"{cfg.extra_faces}: no detected face of the sources {', '.join(cfg.extra_sources)}")
    return entries


def align_entries(entries, embedder, cache: Path, progress: bool = True):
    """:class:`trainer.data.faces.AlignedSet` of face-list entries at their listed landmarks (no detection; cached
    by paths + landmarks + the embedder's geometry). Unreadable images get status ``unreadable``."""
    import hashlib
    import json

    import cv2
    from tqdm import tqdm

    from sdk.align import ARCFACE_112, similarity_to_template
    from sdk.types import Face
    from trainer.data.faces import DETECTED, UNREADABLE, AlignedSet

    geometry = getattr(embedder, "geometry_id", embedder.model_id)
    key = hashlib.sha1(json.dumps([[e.path, e.landmarks, e.box] for e in entries] + [geometry]).encode())
    path = cache / f"aligned-list-{key.hexdigest()[:16]}.npz"
    if path.is_file():
        return AlignedSet.load(path)
    n = len(entries)
    status = np.full(n, UNREADABLE, np.int8)
    lms = np.asarray([e.landmarks for e in entries], np.float32).reshape(n, 5, 2)
    boxes = np.asarray([e.box or [0, 0, 0, 0] for e in entries], np.float32).reshape(n, 4)
    chip_m, arc_m = np.zeros((n, 2, 3)), np.zeros((n, 2, 3))
    for i, e in enumerate(tqdm(entries, desc="align extra faces", unit="img", disable=not progress)):
        img = cv2.imread(e.path, cv2.IMREAD_COLOR)
        if img is None:
            continue
        chip_m[i] = embedder.crop_transforms(img, [Face(boxes[i], lms[i], 1.0)])[0]
        arc_m[i] = similarity_to_template(lms[i], ARCFACE_112)
        status[i] = DETECTED
    out = AlignedSet([e.path for e in entries], status, lms, boxes, chip_m, arc_m)
    cache.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return out


def _with_extra_faces(prep: Prepared, cfg: StudentConfig, teacher, embedder, cache: Path) -> Prepared:
    """``prep`` plus the unlabelled extra faces (appended; label -1; teacher descriptors cached separately)."""
    from trainer.data.faces import DETECTED

    entries = extra_face_entries(cfg)
    aligned = align_entries(entries, embedder, cache, progress=cfg.progress)
    ok = np.flatnonzero(aligned.status == DETECTED)
    if len(ok) < len(entries):
        log.warning("extra faces: %d of %d images cannot be read, left out", len(entries) - len(ok), len(entries))
    paths = [aligned.paths[i] for i in ok]
    t_m, t_size = teacher_matrices(teacher, aligned.chip_m[ok], aligned.landmarks[ok])
    ds = MaskedChipDataset(paths, t_m, aligned.landmarks[ok], np.full(len(ok), -1), None, 0.0, cfg.seed,
                           chip_size=t_size)
    t = teacher_descriptors(teacher, ds, cache / teacher_cache_name(teacher, paths, t_m, cfg.init),
                            progress=cfg.progress)
    n0 = len(prep.paths)
    by_source: dict[str, int] = {}
    for i in ok:
        by_source[entries[i].source] = by_source.get(entries[i].source, 0) + 1
    log.info("extra unlabelled faces from %s: %s", cfg.extra_faces, by_source)
    return Prepared(prep.paths + paths, prep.identities, np.concatenate([prep.labels, np.full(len(ok), -1)]),
                    prep.train_idx, prep.val_idx, np.concatenate([prep.chip_m, aligned.chip_m[ok]]),
                    np.concatenate([prep.landmarks, aligned.landmarks[ok]]), np.concatenate([prep.teacher, t]),
                    prep.train_ids, prep.val_ids, {**prep.counts, "extra": by_source},
                    np.arange(n0, n0 + len(ok), dtype=np.int64))


def _usable(samples: list, aligned, keep_undetected: bool):
    """``(samples, aligned, counts)`` without the unreadable images (and without the undetected ones unless
    ``keep_undetected``); the counts are logged, and a warning names up to 5 left-out files."""
    from trainer.data.faces import DETECTED, FALLBACK, AlignedSet

    counts = aligned.counts()
    ok = aligned.status == DETECTED
    if keep_undetected:
        ok = ok | (aligned.status == FALLBACK)
    counts["used"] = int(ok.sum())
    dropped = [aligned.paths[i] for i in np.flatnonzero(~ok)]
    if dropped:
        log.warning("left out %d of %d images (%d unreadable, %d without a detected face%s): %s%s", len(dropped),
                    len(samples), counts["unreadable"], counts["fallback_no_face"],
                    " -- kept at median landmarks" if keep_undetected else "", ", ".join(dropped[:5]),
                    " ..." if len(dropped) > 5 else "")
    elif counts["fallback_no_face"]:
        log.info("%d images without a detected face kept at the set's median landmarks (--no-keep-undetected "
                 "leaves them out)", counts["fallback_no_face"])
    if ok.all():
        return samples, aligned, counts
    idx = np.flatnonzero(ok)
    sub = AlignedSet([aligned.paths[i] for i in idx], aligned.status[idx], aligned.landmarks[idx], aligned.boxes[idx],
                     aligned.chip_m[idx], aligned.arc_m[idx])
    return [samples[i] for i in idx], sub, counts
