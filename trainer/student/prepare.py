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

        bundle = load_bundle(cfg.model)
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
    return Prepared(aligned.paths, order, labels, tr, va, aligned.chip_m, aligned.landmarks, t, train_ids, val_ids,
                    counts)


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
