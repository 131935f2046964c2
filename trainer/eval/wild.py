"""In-the-wild LFW pairs: ``python -m trainer.evaluate --protocol wild-lfw``.

The other LFW protocols follow the papers: faces are detected and aligned on the *clean* photo and the occluder is
painted on the aligned chip, so a detector that loses masked faces, or whose landmarks drift under a mask, costs
nothing there. Here the occluder is painted on the **photo**, before anything runs, and every bundle goes through
the SDK exactly as a user's camera frame would (:class:`sdk.Recognizer`: detect -> segment -> align -> embed, the
bundle's own occlusion call and per-state thresholds). A masked probe whose face is not found cannot match anyone.

What is measured (LFW view 2, probe side masked, reference side clean -- enrol clean, identify masked):

* **Reference faces**: MTCNN (the built-in ``baseline`` bundle's detector, the same for every bundle) on each clean
  photo; its central face (:func:`trainer.data.faces.pick_central_face`) is where the occluder goes and which face
  each bundle must find. Photos where MTCNN finds no face are left out (their pairs too; the report says how many).
* **Masked photos**: one occluder of the held-out mix (:data:`trainer.data.occluders.registry.HELDOUT_MIX`:
  bandana, respirator, neck gaiter, real masks cut from the *validation* photos -- families neither the embedder
  nor the detector trains on) painted on the reference face with its landmarks, seeded per image: identical for
  every bundle and every run.
* Per bundle: the reference face on the clean photo and on the masked photo (:func:`match_reference`: the detected
  face nearest the reference face, centre within half its size and size 0.5-2x); found rates; the pair scores
  (mask-aware two-view score with the bundle's segmenter call, as :meth:`sdk.Recognizer.verify`), a pair with a
  face not found scoring -1 (a miss, never a match); LFW 10-fold accuracy, TAR at FAR 1e-2 / 1e-3, and TAR / FAR at
  the bundle's shipped per-state threshold (what a user gets). Rows: ``unmasked`` (both photos clean, same path) and
  ``heldout (probe, on photo)``.

Writes ``report.json`` / ``report.md`` (:func:`trainer.eval.write_report`), ``roc.png`` and ``examples.png`` (masked
photos with each bundle's face) under ``--out``. Several bundles in one run: ``--model A --compare B C``.

    python -m trainer.evaluate --protocol wild-lfw --data ../shared/data/lfw --occluders <cutouts> \\
        --model default --compare ltdet-v3 ltdet-v4 --limit 4 --out reports/wild_lfw
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger("trainer.eval.wild")

#: the occluder condition painted on the probe photos (held out from every model's training)
CONDITION = "heldout"
#: score of a pair whose face was not found (cosine scores are >= -1: never above a threshold)
MISSING = -1.0


@dataclass
class Reference:
    """MTCNN's central face on each clean photo: ``ok`` (N,) bool, ``boxes`` (N, 4) px, ``landmarks`` (N, 5, 2) px."""

    ok: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray


@dataclass
class BundleRun:
    """One bundle's pass over the photos: ``found`` (N,) bool, ``templates`` (N, D) float32 (zeros where not
    found), ``occluded`` (N,) bool (the bundle's segmenter call), ``boxes`` (N, 4)."""

    found: np.ndarray
    templates: np.ndarray
    occluded: np.ndarray
    boxes: np.ndarray


def add_validation_args(p: argparse.ArgumentParser) -> None:
    """The options every validation tool on LFW's calibration split shares (``tools/validate_wild.py``,
    ``tools/chip_placement.py``): ``--lfw``, ``--occluders``, ``--templates``."""
    p.add_argument("--lfw", type=Path, required=True, help="LFW folder (one sub-folder per person, pairs.txt)")
    p.add_argument("--occluders", required=True, help="cutout folder (harvested training cutouts are in trainmix)")
    p.add_argument("--templates", default="../shared/data/mask_templates", help="MaskTheFace templates folder")


def reference_faces(paths: list[str], cache_dir: Path | None, progress: bool = True) -> Reference:
    """MTCNN's central face of every photo (cached in ``cache_dir`` as ``wild-ref-<key>.npz``)."""
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.faces import cache_key, pick_central_face, read_bgr

    cache = cache_dir / f"wild-ref-{cache_key(paths, 'mtcnn-central')}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return Reference(z["ok"], z["boxes"], z["landmarks"])
    det = build_stage(load_bundle("baseline").stages["detect"], {"max_side": None}).prepare()
    n = len(paths)
    ref = Reference(np.zeros(n, bool), np.zeros((n, 4), np.float32), np.zeros((n, 5, 2), np.float32))
    for i, p in enumerate(tqdm(paths, desc="reference faces (MTCNN)", unit="img", disable=not progress)):
        img = read_bgr(p)
        face = pick_central_face(det.detect(img), img.shape) if img is not None else None
        if face is not None:
            ref.ok[i], ref.boxes[i], ref.landmarks[i] = True, face.box, face.landmarks
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, ok=ref.ok, boxes=ref.boxes, landmarks=ref.landmarks)
    return ref


def masked_photo(img: np.ndarray, landmarks: np.ndarray, seed: int, templates: str | None,
                 occluders: str | None, condition: str = CONDITION) -> np.ndarray:
    """``img`` (BGR uint8) with the occluder of ``seed`` (of the ``condition`` mix: held out by default,
    ``"trainmix"`` for validation) painted on the face with ``landmarks`` (5, 2)."""
    from trainer.eval.heldout import render_occluder

    out, _ = render_occluder(img, landmarks, condition, seed, templates, occluders)
    return out


def match_reference(faces, box: np.ndarray):
    """The face of ``faces`` that is the reference face ``box``: nearest centre, within half the reference size,
    size 0.5-2x; ``None`` when none is."""
    size = float(np.sqrt((box[2] - box[0]) * (box[3] - box[1])))
    c = (box[:2] + box[2:]) / 2
    best, best_d = None, 0.5 * size
    for f in faces:
        b = np.asarray(f.box, np.float64)
        fs = float(np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 0.0)))
        d = float(np.abs((b[:2] + b[2:]) / 2 - c).max())
        if d <= best_d and 0.5 <= fs / max(size, 1e-6) <= 2.0:
            best, best_d = f, d
    return best


def run_bundle(rec, paths: list[str], ref: Reference, masked: bool, args: argparse.Namespace,
               progress: bool = True, condition: str = CONDITION) -> BundleRun:
    """``rec`` (a prepared :class:`sdk.Recognizer`) on every photo with a reference face, clean or masked (with an
    occluder of ``condition``)."""
    from trainer.data.faces import read_bgr

    n = len(paths)
    dim = None
    found, occl, boxes = np.zeros(n, bool), np.zeros(n, bool), np.zeros((n, 4), np.float32)
    temps: list[np.ndarray | None] = [None] * n
    what = "masked" if masked else "clean"
    for i in tqdm(np.flatnonzero(ref.ok), desc=f"{rec.bundle.name} ({what} photos)", unit="img", disable=not progress):
        img = read_bgr(paths[i])
        if img is None:
            continue
        if masked:
            img = masked_photo(img, ref.landmarks[i], args.seed * 1_000_003 + int(i), args.templates, args.occluders,
                               condition)
        face = match_reference(rec.detect(img), ref.boxes[i])
        if face is None:
            continue
        probs: list = []
        temps[i] = rec.embed_faces(img, [face], occlusion=probs)[0]
        dim = temps[i].shape[0]
        found[i], occl[i], boxes[i] = True, rec.is_occluded(probs[0]), face.box
    t = np.zeros((n, dim or 1), np.float32)
    for i, v in enumerate(temps):
        if v is not None:
            t[i] = v
    return BundleRun(found, t, occl, boxes)


def pair_scores(rec, a: BundleRun, b: BundleRun, ia: np.ndarray, ib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of pairs (reference ``a[ia]``, probe ``b[ib]``) as :meth:`sdk.Recognizer.verify` computes them, with
    :data:`MISSING` where either face was not found; and the shipped threshold of each pair's state."""
    from sdk import views

    occ_a = np.zeros(len(ia), bool)  # enrolled references are taken to be clean (the SDK's identify)
    occ_b = b.occluded[ib]
    if rec.mask_aware is None:
        s = np.einsum("nd,nd->n", a.templates[ia], b.templates[ib])
    else:
        s = views.pair_scores(a.templates[ia], b.templates[ib], occ_a, occ_b, rec.mask_aware)
    s = np.where(a.found[ia] & b.found[ib], s, MISSING).astype(np.float64)
    thr = np.array([rec.operating_point(bool(o), False)[1] for o in occ_b])
    return s, thr


def summarise(scores: np.ndarray, thr: np.ndarray, labels: np.ndarray, folds: np.ndarray,
              found_pairs: np.ndarray) -> dict:
    """One report row: LFW 10-fold accuracy, TAR at FAR, TAR / FAR at the shipped thresholds, pairs lost."""
    from trainer.eval import lfw_10fold, tar_at_far

    acc = scores >= thr
    return {"verification": lfw_10fold(scores, labels, folds),
            "tar_at_far": tar_at_far(scores, labels, (1e-2, 1e-3)),
            "TAR@shipped (%)": round(100 * float(acc[labels].mean()), 2),
            "FAR@shipped (%)": round(100 * float(acc[~labels].mean()), 2),
            "pairs with a face not found (%)": round(100 * float((~found_pairs).mean()), 2)}


def _examples(paths, ref: Reference, runs: dict, args, path: Path, k: int = 8) -> None:
    """``k`` masked probe photos (seeded pick) with each bundle's face (colour per bundle, none = not found)."""
    from trainer.data.faces import read_bgr

    idx = np.flatnonzero(ref.ok)
    pick = np.sort(np.random.default_rng(3).choice(idx, size=min(k, len(idx)), replace=False))
    colours = [(0, 200, 0), (0, 140, 255), (255, 80, 0), (200, 0, 200), (0, 220, 220)]
    tiles = []
    for i in pick:
        img = masked_photo(read_bgr(paths[i]), ref.landmarks[i], args.seed * 1_000_003 + int(i), args.templates,
                           args.occluders)
        sx, sy = 250 / img.shape[1], 250 / img.shape[0]
        img = cv2.resize(img, (250, 250), interpolation=cv2.INTER_AREA)
        for j, (name, run) in enumerate(runs.items()):
            c = colours[j % len(colours)]
            if run.found[i]:
                x0, x1 = (int(round(v * sx)) for v in run.boxes[i, 0::2])
                y0, y1 = (int(round(v * sy)) for v in run.boxes[i, 1::2])
                cv2.rectangle(img, (x0 - j, y0 - j), (x1 + j, y1 + j), c, 1)
            cv2.putText(img, f"{name}: {'found' if run.found[i] else 'MISSED'}", (3, 12 + 12 * j),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35, c, 1, cv2.LINE_AA)
        tiles.append(img)
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[r:r + 4]) for r in range(0, len(tiles), 4)]
    cv2.imwrite(str(path), np.vstack(rows))


def run_wild_lfw(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The ``wild-lfw`` protocol for ``args.model`` and ``args.compare`` (see the module docstring)."""
    import sdk
    from trainer.data.readers import read_lfw_pairs
    from trainer.eval import plot_roc, roc_curve, write_report
    from trainer.eval.report import machine_line

    if not args.occluders:
        raise SystemExit("wild-lfw paints the held-out mix, which includes real_val cutouts: pass --occluders "
                         "<cutout folder> (python tools/harvest_occluders.py --part validation writes it)")
    pairs = read_lfw_pairs(args.pairs or Path(args.data) / "pairs.txt", args.data)
    if args.limit:
        if args.limit < 2:
            raise SystemExit("--limit counts folds and must be >= 2 (thresholds come from the other folds)")
        pairs = [p for p in pairs if p.fold < args.limit]
    paths = sorted({str(p.a) for p in pairs} | {str(p.b) for p in pairs})
    pos = {p: i for i, p in enumerate(paths)}
    t0 = time.perf_counter()
    ref = reference_faces(paths, args.cache)
    ia = np.array([pos[str(p.a)] for p in pairs])
    ib = np.array([pos[str(p.b)] for p in pairs])
    keep = ref.ok[ia] & ref.ok[ib]
    ia, ib = ia[keep], ib[keep]
    labels = np.array([p.same for p in pairs], bool)[keep]
    folds = np.array([p.fold for p in pairs])[keep]
    log.info("%d of %d photos have an MTCNN reference face; %d of %d pairs kept", int(ref.ok.sum()), len(paths),
             int(keep.sum()), len(pairs))
    results, curves, masked_runs, found = {}, {}, {}, {}
    for model in [args.model, *args.compare]:
        rec = sdk.Recognizer(model)
        rec.prepare()
        name = rec.bundle.name
        t1 = time.perf_counter()
        clean = run_bundle(rec, paths, ref, False, args)
        masked = run_bundle(rec, paths, ref, True, args)
        masked_runs[name] = masked
        for cond, probe in (("unmasked", clean), ("heldout (probe, on photo)", masked)):
            s, thr = pair_scores(rec, clean, probe, ia, ib)
            row = summarise(s, thr, labels, folds, clean.found[ia] & probe.found[ib])
            results[f"{name}: {cond}"] = row
            far, tar, _ = roc_curve(s, labels)
            curves[f"{name}: {cond}"] = (far, tar)
        found[name] = {"clean photos (%)": round(100 * float(clean.found[ref.ok].mean()), 2),
                       "masked photos (%)": round(100 * float(masked.found[ref.ok].mean()), 2),
                       "masked called occluded (%)": round(100 * float(masked.occluded[masked.found].mean()), 2)
                       if masked.found.any() else None,
                       "seconds": round(time.perf_counter() - t1, 1)}
        log.info("%s: found %s", name, found[name])
        rec.close()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"protocol": "wild-lfw", "data": str(args.data), "condition": f"{CONDITION} painted on the probe photo",
            "models": [args.model, *args.compare], "photos": len(paths), "reference faces": int(ref.ok.sum()),
            "pairs": int(len(ia)), "folds": int(len(np.unique(folds))), "seed": args.seed, "faces found": found,
            "seconds": round(time.perf_counter() - t0, 1),
            "machine": machine_line(),
            "command": "python -m trainer.evaluate " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    write_report(results, args.out / "report.json", args.out / "report.md", title=f"in-the-wild LFW on {args.data.name}",
                 meta=meta)
    plot_roc(curves, args.out / "roc.png", title="LFW, held-out occluders painted on the probe photo")
    _examples(paths, ref, masked_runs, args, args.out / "examples.png")
    print((args.out / "report.md").read_text())
    return 0
