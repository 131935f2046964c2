"""Real-mask validation: ``python -m trainer.evaluate --protocol real-mask``.

Reads only the **validation** part of the committed split (``trainer/data/splits/face_mask_detection.json``) of the
real photos (``chandrikadeb7/Face-Mask-Detection``: ``with_mask`` / ``without_mask``, no identities). What is
measured on what:

1. **Detector recall on real photos** (the bundle's MTCNN, default config): a photo counts as found when at least one
   face is detected. Twice: the photo as it is, and padded by 30% of its longer side with mid-grey (many photos are
   tight crops where MTCNN lacks context). No box ground truth exists, so this is recall only, per photo.
2. **Detector recall in scenes**: each photo scaled so its longer side is S px (``--scene-sizes``) and pasted at a
   seeded random place into a 640x480 background (scikit-image sample pictures without people); found = a detection
   whose box centre lies inside the pasted photo and whose area is at least 4% of it. Detections outside the pasted
   photo are counted as false detections per scene.
3. **Segmenter presence on real photos**: for the largest face found in the padded photo, the bundle's segmenter
   says occluded (probability >= its threshold) -- the rate on ``with_mask`` photos (true-positive rate) and on
   ``without_mask`` photos (false-positive rate). The folder labels come from the dataset (some ``with_mask`` photos
   show a mask under the chin or in the hand).
4. **Segmenter IoU with exact masks**: occluders pasted by ``trainer.data.occluders`` onto the 112x112 ArcFace crops
   of the clean ``without_mask`` validation faces, one per family (training and held-out procedural families, and
   with ``--occluders`` the real cutouts ``real_val`` cut from the with_mask *validation* photos and ``harvested``);
   IoU of the thresholded segmenter map against the exact M, and presence. The ``real_val`` / ``harvested`` rows are
   biased in the segmenter's favour: the cutouts' shapes are the same segmenter's output on their source photos.
   ``none``: the clean crops (false-positive area and presence).

Writes ``report.json``, ``report.md`` (three tables), ``real_mask.png`` (recall by scene size, IoU by family) and
``examples.png`` (pasted families on real clean faces, with the segmenter's map) under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger("trainer.eval.realmask")

SCENE_SIZE = (640, 480)
_BACKGROUNDS = ("coffee", "rocket", "brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina",
                "colorwheel")


def backgrounds(size: tuple[int, int] = SCENE_SIZE) -> list[np.ndarray]:
    """BGR scenes of ``size`` (w, h) from scikit-image's sample pictures (no people, shipped with the package)."""
    from skimage import data

    out = []
    for name in _BACKGROUNDS:
        im = np.asarray(getattr(data, name)())
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, 2)
        im = np.ascontiguousarray(im[..., :3][..., ::-1])
        if im.dtype != np.uint8:
            im = (255 * (im.astype(np.float32) / max(float(im.max()), 1e-6))).astype(np.uint8)
        out.append(cv2.resize(im, size, interpolation=cv2.INTER_AREA))
    return out


def paste_into_scene(photo: np.ndarray, side: int, background: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``photo`` scaled to longer side ``side`` and pasted at a random place into a copy of ``background``.
    Returns (scene BGR, pasted rectangle (x0, y0, x1, y1))."""
    h, w = photo.shape[:2]
    k = side / max(h, w)
    nw, nh = max(1, int(round(w * k))), max(1, int(round(h * k)))
    small = cv2.resize(photo, (nw, nh), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    H, W = background.shape[:2]
    nw, nh = min(nw, W), min(nh, H)
    x0, y0 = int(rng.integers(0, W - nw + 1)), int(rng.integers(0, H - nh + 1))
    scene = background.copy()
    scene[y0:y0 + nh, x0:x0 + nw] = small[:nh, :nw]
    return scene, (x0, y0, x0 + nw, y0 + nh)


def scene_hits(faces, rect: tuple[int, int, int, int], min_area_frac: float = 0.04) -> tuple[bool, int]:
    """(a detection lies in ``rect`` -- centre inside, area >= ``min_area_frac`` of it --, detections outside it)."""
    x0, y0, x1, y1 = rect
    area = max((x1 - x0) * (y1 - y0), 1)
    hit, outside = False, 0
    for f in faces:
        cx, cy = 0.5 * (f.box[0] + f.box[2]), 0.5 * (f.box[1] + f.box[3])
        if x0 <= cx <= x1 and y0 <= cy <= y1:
            hit |= f.width * f.height >= min_area_frac * area
        else:
            outside += 1
    return hit, outside


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean maps (1.0 when both are empty)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    u = np.logical_or(p, t).sum()
    return 1.0 if u == 0 else float(np.logical_and(p, t).sum() / u)


def _rate(flags) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def measure_photos(files, detector, segmenter, sizes, bgs, seed: int, progress: bool = True) -> dict:
    """Per-folder detection / presence on real photos (steps 1-3 of the module doc) and the clean crops for step 4.

    Args:
        files: ``{folder: [(path, sha1)]}``.
    Returns:
        ``{"rows": {...}, "clean": [(crop112, landmarks112)]}`` (clean crops from ``without_mask`` photos).
    """
    from sdk.align import ARCFACE_112, similarity_to_template
    from trainer.data.occluders.harvest import limit_side, pad_for_detection

    rows, clean = {}, []
    for folder, items in files.items():
        raw, padded, occ, unreadable = [], [], [], 0
        scene = {s: [] for s in sizes}
        false_det = {s: [] for s in sizes}
        for k, (path, sha) in enumerate(tqdm(items, desc=f"real-mask {folder}", unit="photo", disable=not progress)):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                unreadable += 1
                continue
            img = limit_side(img)
            raw.append(len(detector.detect(img)) > 0)
            pimg, _ = pad_for_detection(img)
            faces = detector.detect(pimg)
            padded.append(len(faces) > 0)
            if faces:
                face = max(faces, key=lambda f: f.width * f.height)
                crop = segmenter.crops(pimg, [face])[0] if segmenter is not None else None
                if segmenter is not None:
                    _, p = segmenter.segment(crop[None])
                    occ.append(float(p[0]))
                if folder == "without_mask" and crop is not None:
                    m = similarity_to_template(np.asarray(face.landmarks, np.float32), ARCFACE_112)
                    lm = (np.asarray(face.landmarks, np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32)
                    clean.append((crop, lm))
            rng = np.random.default_rng([seed, int(sha[:8], 16)])
            for s in sizes:
                sc, rect = paste_into_scene(img, s, bgs[int(rng.integers(len(bgs)))], rng)
                hit, out = scene_hits(detector.detect(sc), rect)
                scene[s].append(hit)
                false_det[s].append(out)
        n = len(raw)
        rows[f"detector recall / {folder} / photo as is"] = {"n": n, "recall": _rate(raw)}
        rows[f"detector recall / {folder} / photo padded 30%"] = {"n": n, "recall": _rate(padded)}
        for s in sizes:
            rows[f"detector recall / {folder} / scene, photo {s} px"] = {
                "n": len(scene[s]), "recall": _rate(scene[s]),
                "false_detections_per_scene": float(np.mean(false_det[s])) if false_det[s] else None}
        if segmenter is not None:
            thr = segmenter.threshold
            rows[f"segmenter presence / {folder}"] = {
                "n": len(occ), "occluded_rate": _rate([o >= thr for o in occ]),
                "mean_occluded_prob": float(np.mean(occ)) if occ else None}
        rows[f"unreadable / {folder}"] = {"n": unreadable}
    return {"rows": rows, "clean": clean}


def measure_iou(clean, segmenter, synth, families_: list[str], seed: int, progress: bool = True) -> tuple[dict, list]:
    """Segmenter IoU / presence per family on occluders pasted onto the clean crops (step 4). Returns (rows,
    example tiles)."""
    rows, tiles = {}, []
    thr = segmenter.threshold
    crops = np.stack([c for c, _ in clean]) if clean else np.zeros((0, 112, 112, 3), np.uint8)
    if len(crops):
        m, p = segmenter.segment(crops)
        rows["none"] = {"n": len(crops), "occluded_rate": float(np.mean(p >= thr)),
                        "false_positive_area": float(np.mean(m >= thr))}
    for fam in tqdm(families_, desc="segmenter IoU", unit="family", disable=not progress):
        masked, truths = [], []
        for i, (crop, lm) in enumerate(clean):
            s = synth(crop, lm, [seed, i, zlib.crc32(fam.encode())], family=fam)
            if s.mask.any():
                masked.append(s.masked)
                truths.append(s.mask > 0)
        if not masked:
            continue
        m, p = segmenter.segment(np.stack(masked))
        ious = [iou(mm >= thr, t) for mm, t in zip(m, truths)]
        from trainer.data.occluders.registry import FAMILIES

        rows[fam] = {"split": FAMILIES[fam].split, "n": len(masked), "miou": float(np.mean(ious)),
                     "occluded_rate": float(np.mean(p >= thr))}
        for k in range(min(4, len(masked))):
            vis = masked[k].copy()
            edge = cv2.morphologyEx((m[k] >= thr).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
            vis[edge > 0] = (0, 255, 255)
            tiles.append((fam, masked[k], vis))
    return rows, tiles


def _table(title: str, header: list[str], rows: list[list]) -> str:
    out = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("–" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _pct(v):
    return None if v is None else f"{100 * v:.1f}"


def write_outputs(doc: dict, out: Path, tiles: list) -> str:
    """report.json, report.md, real_mask.png, examples.png; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    det = doc["photos"]
    md = [f"# Real-mask validation ({doc['meta']['model']})", "",
          f"Validation part of `{doc['meta']['split']}`; {doc['meta']['machine']}; {doc['meta']['seconds']} s.", ""]
    rows = []
    for folder in ("with_mask", "without_mask"):
        pre = f"detector recall / {folder} / "
        for k, v in det.items():
            if k.startswith(pre):
                rows.append([folder, k[len(pre):], v["n"], _pct(v["recall"]),
                             None if v.get("false_detections_per_scene") is None
                             else f"{v['false_detections_per_scene']:.2f}"])
    md.append(_table("Detector recall (photos with >= 1 face found)", ["photos", "setting", "n", "recall (%)",
                                                                       "false detections / scene"], rows))
    rows = [[f, det[f"segmenter presence / {f}"]["n"], _pct(det[f"segmenter presence / {f}"]["occluded_rate"]),
             f"{det[f'segmenter presence / {f}']['mean_occluded_prob']:.3f}"]
            for f in ("with_mask", "without_mask") if f"segmenter presence / {f}" in det]
    if rows:
        md.append(_table("Segmenter presence on real photos (largest face, padded photo)",
                         ["photos", "faces", "called occluded (%)", "mean p(occluded)"], rows))
    iou_rows = doc.get("iou", {})
    rows = []
    for fam, v in iou_rows.items():
        if fam == "none":
            rows.append(["none (clean crops)", "–", v["n"], f"FP area {100 * v['false_positive_area']:.2f}%",
                         _pct(v["occluded_rate"])])
        else:
            rows.append([fam, v["split"], v["n"], f"{v['miou']:.3f}", _pct(v["occluded_rate"])])
    if rows:
        md.append(_table("Segmenter on occluders pasted onto real clean faces (exact masks)",
                         ["family", "split", "faces", "mean IoU", "called occluded (%)"], rows))
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    _plot(doc, out / "real_mask.png")
    if tiles:
        per_row = 8
        cells = [np.concatenate([t[1], t[2]], 0) for t in tiles]
        for c, t in zip(cells, tiles):
            cv2.putText(c, t[0][:14], (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 255, 255), 1, cv2.LINE_AA)
        while len(cells) % per_row:
            cells.append(np.zeros_like(cells[0]))
        grid = np.concatenate([np.concatenate(cells[i:i + per_row], 1) for i in range(0, len(cells), per_row)], 0)
        cv2.imwrite(str(out / "examples.png"), grid)
    return text


def _plot(doc: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = doc["meta"]["scene_sizes"]
    for folder, style in (("with_mask", "o-"), ("without_mask", "s--")):
        ys = [doc["photos"].get(f"detector recall / {folder} / scene, photo {s} px", {}).get("recall") for s in sizes]
        if all(y is not None for y in ys):
            ax1.plot(sizes, [100 * y for y in ys], style, label=folder)
    ax1.set_xscale("log")
    ax1.set_xticks(sizes)
    ax1.set_xticklabels([str(s) for s in sizes])
    ax1.set_xlabel("photo size in the scene (longer side, px)")
    ax1.set_ylabel("detector recall (%)")
    ax1.set_ylim(0, 101)
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax1.set_title("MTCNN on real photos in scenes")
    fams = [f for f in doc.get("iou", {}) if f != "none"]
    if fams:
        vals = [doc["iou"][f]["miou"] for f in fams]
        cols = ["tab:blue" if doc["iou"][f]["split"] == "train" else "tab:orange" for f in fams]
        ax2.barh(range(len(fams)), vals, color=cols)
        ax2.set_yticks(range(len(fams)))
        ax2.set_yticklabels(fams, fontsize=8)
        ax2.set_xlim(0, 1)
        ax2.set_xlabel("segmenter mean IoU (blue: train family, orange: held out)")
        ax2.grid(alpha=0.3, axis="x")
        ax2.set_title("Pasted on real clean faces")
    fig.tight_layout()
    fig.savefig(path, format="png")


def run_real_mask(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The ``real-mask`` protocol end to end (called by ``python -m trainer.evaluate``)."""
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.occluders import OccluderConfig, OccluderSynthesizer, families
    from trainer.data.realmask_split import DEFAULT_SPLIT, split_files

    t0 = time.perf_counter()
    split = args.split or DEFAULT_SPLIT
    bundle = load_bundle(args.model)
    detector = build_stage(bundle.stages["detect"], {"threads": 1})
    segmenter = build_stage(bundle.stages["segment"]) if bundle.stages.get("segment") else None
    if segmenter is None:
        log.warning("bundle %s has no segment stage: segmenter rows are skipped (use --model default)", bundle.name)
    sizes = [int(s) for s in str(args.scene_sizes).split(",") if s.strip()]
    files = {f: split_files(args.data, "validation", f, split) for f in ("with_mask", "without_mask")}
    if args.limit:
        files = {f: v[: args.limit] for f, v in files.items()}
    if not any(files.values()):
        raise SystemExit(f"no validation photos of {split} found under {args.data}")
    photos = measure_photos(files, detector, segmenter, sizes, backgrounds(), args.seed)
    iou_rows, tiles = {}, []
    if segmenter is not None and photos["clean"]:
        synth = OccluderSynthesizer(OccluderConfig(split="all", cutouts_dir=args.occluders,
                                                   templates_dir=args.templates))
        fams = [f for f in families("all") if f in synth.available()]
        iou_rows, tiles = measure_iou(photos["clean"], segmenter, synth, fams, args.seed)
    doc = {"photos": photos["rows"], "iou": iou_rows,
           "meta": {"protocol": "real-mask", "model": bundle.name, "data": str(args.data), "split": str(split),
                    "occluders": args.occluders, "scene_sizes": sizes, "seed": args.seed,
                    "clean_faces": len(photos["clean"]), "seconds": round(time.perf_counter() - t0, 1),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "command": "python -m trainer.evaluate " + " ".join(argv if argv is not None else
                                                                          __import__("sys").argv[1:])}}
    print(write_outputs(doc, args.out, tiles))
    return 0
