"""Every readable clean face we have, with identity labels where they exist: a face list (and a face pack).

Relational distillation's instance term needs no identity label, so the student can learn from every clean face;
the pair / triplet / CE terms need identity-labelled batches. This module gathers

=================  =====================================================  ==========================================
source             what                                                   identity
=================  =====================================================  ==========================================
``celeba``         the CelebA subset (``<root>/<id>/<img>``)              ``celeba:<id>``
``lfw-nonpair``    LFW people named in **no** line of ``pairs.txt``        ``lfw:<Name>`` (disjoint from the test pairs
                                                                          by name)
``utkface``        UTKFace crops (``crop_part1``, flat folder)             None (unlabelled)
``extra``          any other flat folder of face photos                    None
=================  =====================================================  ==========================================

Each image is read and searched by the SDK's MTCNN, as it is and, if no face is found, once more on a copy padded by
``pad`` x its longer side (tight crops need context); the central face is kept
(:func:`trainer.data.faces.pick_central_face`). Images that cannot be read, or where no face is found, are
**counted and left out** (no fallback crops: a black or median-landmark crop is not a face).

Outputs (``tools/build_face_list.py``): ``faces.jsonl`` (one line per image: path, source, identity or null,
status, landmarks in image pixels), ``summary.json`` (counts per source and status, identities) and optionally a face
pack (:mod:`trainer.data.pack` layout, 112x112 ArcFace crops; unlabelled faces have identity ``""``; extra arrays
``sources``, ``labelled``, ``paths``) that ``load_face_pack`` reads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

SOURCES = ("celeba", "lfw-nonpair", "utkface", "extra")
DETECTED, UNDETECTED, UNREADABLE = "detected", "no_face", "unreadable"
_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class FaceEntry:
    """One image of the list: ``path``, ``source``, ``identity`` (None = unlabelled), detection ``status``,
    ``landmarks`` (5x2 image px, MTCNN order) and ``box`` (x1, y1, x2, y2 px) when detected."""

    path: str
    source: str
    identity: str | None
    status: str = "pending"
    landmarks: list | None = None
    box: list | None = None


def lfw_pair_people(pairs_txt: str | Path) -> set[str]:
    """Every name that appears in any line of LFW's ``pairs.txt`` (both sides of mismatched pairs)."""
    names: set[str] = set()
    lines = Path(pairs_txt).read_text().splitlines()[1:]
    for ln in lines:
        parts = ln.split()
        if len(parts) == 3:
            names.add(parts[0])
        elif len(parts) == 4:
            names.update((parts[0], parts[2]))
    return names


def list_sources(celeba: str | Path | None = None, lfw: str | Path | None = None,
                 utkface: str | Path | None = None, extra: Sequence[str | Path] = ()) -> list[FaceEntry]:
    """Image entries of every given source (sorted, deterministic). ``lfw`` is the LFW root (with ``pairs.txt``):
    only people absent from ``pairs.txt`` are listed. Raises FileNotFoundError for a missing folder."""
    out: list[FaceEntry] = []
    if celeba:
        from trainer.data.readers import read_identity_tree

        out += [FaceEntry(str(s.path), "celeba", f"celeba:{s.identity}") for s in read_identity_tree(celeba)]
    if lfw:
        from trainer.data.readers import read_identity_tree

        used = lfw_pair_people(Path(lfw) / "pairs.txt")
        out += [FaceEntry(str(s.path), "lfw-nonpair", f"lfw:{s.identity}") for s in read_identity_tree(lfw)
                if s.identity not in used]
    for src, root in [("utkface", utkface)] + [("extra", e) for e in extra]:
        if not root:
            continue
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{src} folder not found: {root}")
        out += [FaceEntry(str(p), src, None) for p in sorted(root.iterdir())
                if p.is_file() and (p.suffix.lower() in _SUFFIXES or p.name.lower().endswith(".chip.jpg"))]
    return out


def detect_entries(entries: Sequence[FaceEntry], detector, pad: float = 0.25, cache: Path | None = None,
                   progress: bool = True, checkpoint_every: int = 500) -> list[FaceEntry]:
    """Detect the central face of every entry (retrying on the image padded by ``pad`` x its longer side) with
    ``detector`` (the SDK's MTCNN; build it with a ``min_face_size`` that suits the sources, e.g. 40 px for these
    ~250 px photos). Returns new entries with status / landmarks / box (image pixels).

    ``cache``: a .jsonl file of finished entries, appended every ``checkpoint_every`` images, so an interrupted run
    resumes where it stopped (entries are matched by path; the detector settings and ``pad`` are in its first line).
    """
    from trainer.data.faces import pick_central_face

    cfg = getattr(detector, "config", None)
    if dataclasses.is_dataclass(cfg) and hasattr(cfg, "threads"):
        cfg = dataclasses.replace(cfg, threads=0)  # threads do not change what is found
    header = {"pad": pad, "detector": repr(cfg)}
    done: dict[str, FaceEntry] = {}
    if cache is not None and cache.is_file():
        lines = cache.read_text().splitlines()
        if lines and json.loads(lines[0]) == header:
            for ln in lines[1:]:
                try:
                    e = FaceEntry(**json.loads(ln))
                except (ValueError, TypeError):
                    break  # a line cut by an interrupted write: redo from there
                done[e.path] = e
            log.info("face list: %d detections from %s", len(done), cache)
        else:
            cache.unlink()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        if not cache.is_file():
            cache.write_text(json.dumps(header) + "\n")
    out, pending = [], []

    def flush():
        if cache is not None and pending:
            with open(cache, "a") as f:
                f.write("".join(json.dumps(asdict(e)) + "\n" for e in pending))
        pending.clear()

    for e in tqdm(entries, desc="detect faces", unit="img", disable=not progress):
        if e.path in done:
            d = done[e.path]
            out.append(FaceEntry(e.path, e.source, e.identity, d.status, d.landmarks, d.box))
            continue
        img = cv2.imread(e.path, cv2.IMREAD_COLOR)
        if img is None:
            r = FaceEntry(e.path, e.source, e.identity, UNREADABLE)
        else:
            b = 0
            face = pick_central_face(detector.detect(img), img.shape)
            if face is None and pad > 0:  # tight crops: retry with context around the face
                h, w = img.shape[:2]
                b = int(round(pad * max(h, w)))
                padded = cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_CONSTANT, value=(128, 128, 128))
                face = pick_central_face(detector.detect(padded), padded.shape)
            if face is None:
                r = FaceEntry(e.path, e.source, e.identity, UNDETECTED)
            else:
                r = FaceEntry(e.path, e.source, e.identity, DETECTED,
                              (np.asarray(face.landmarks, np.float64) - b).round(2).tolist(),
                              (np.asarray(face.box, np.float64) - b).round(2).tolist())
        out.append(r)
        pending.append(r)
        if len(pending) >= checkpoint_every:
            flush()
    flush()
    return out


def summarize(entries: Iterable[FaceEntry]) -> dict:
    """Counts per source and status, labelled faces and identities among the detected."""
    entries = list(entries)
    by = Counter((e.source, e.status) for e in entries)
    out: dict = {"images": len(entries), "sources": {}}
    for src in sorted({e.source for e in entries}):
        det = [e for e in entries if e.source == src and e.status == DETECTED]
        out["sources"][src] = {"images": sum(v for (s, _), v in by.items() if s == src),
                               "detected": by[(src, DETECTED)], "no_face": by[(src, UNDETECTED)],
                               "unreadable": by[(src, UNREADABLE)],
                               "labelled": sum(e.identity is not None for e in det),
                               "identities": len({e.identity for e in det if e.identity is not None})}
    det = [e for e in entries if e.status == DETECTED]
    out["detected"] = len(det)
    out["labelled"] = sum(e.identity is not None for e in det)
    out["unlabelled"] = len(det) - out["labelled"]
    out["identities"] = len({e.identity for e in det if e.identity is not None})
    return out


def write_face_list(entries: Sequence[FaceEntry], out_dir: Path) -> dict:
    """``faces.jsonl`` + ``summary.json`` in ``out_dir``; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "faces.jsonl", "w") as f:
        for e in entries:
            f.write(json.dumps(asdict(e)) + "\n")
    summary = summarize(entries)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def read_face_list(path: str | Path) -> list[FaceEntry]:
    """Entries of a ``faces.jsonl``."""
    return [FaceEntry(**json.loads(ln)) for ln in Path(path).read_text().splitlines() if ln.strip()]


def write_pack(entries: Sequence[FaceEntry], path: Path, quality: int = 95, progress: bool = True) -> Path:
    """A face pack (:mod:`trainer.data.pack` layout) of the detected entries: 112x112 ArcFace crops, crop landmarks,
    identities (``""`` = unlabelled) plus ``sources``, ``labelled`` and ``paths`` arrays."""
    from sdk.align import ARCFACE_112, ARCFACE_CROP, similarity_to_template, warp
    from trainer.data.pack import PACK_VERSION

    blobs, lms, ids, srcs, paths = [], [], [], [], []
    for e in tqdm([e for e in entries if e.status == DETECTED], desc="pack faces", unit="face", disable=not progress):
        img = cv2.imread(e.path, cv2.IMREAD_COLOR)
        if img is None:
            continue
        lm = np.asarray(e.landmarks, np.float32)
        m = similarity_to_template(lm, ARCFACE_112)
        crop = warp(img, m, ARCFACE_CROP.size)
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            continue
        blobs.append(buf.reshape(-1))
        lms.append((lm.astype(np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32))
        ids.append(e.identity or "")
        srcs.append(e.source)
        paths.append(e.path)
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, jpeg=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8), offsets=offsets,
             landmarks=np.asarray(lms, np.float32).reshape(-1, 5, 2), identities=np.array(ids, dtype=str),
             sources=np.array(srcs, dtype=str), labelled=np.array([bool(i) for i in ids]),
             paths=np.array(paths, dtype=str), version=np.array(PACK_VERSION))
    tmp.replace(path)
    return path
