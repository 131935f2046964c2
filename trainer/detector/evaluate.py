"""Detection evaluation: LTDet vs MTCNN vs dlib HOG in one run -> JSON + PNG.

``python -m trainer.detector.evaluate --model <bundle or .onnx> --data ../shared/data --templates ... --out DIR``

Protocols (all on identities held out from training, :func:`~trainer.detector.labels.is_eval_identity`):

* **scenes**: ``--scenes`` 640x480 scenes (evaluation background pool, 1-6 faces in the size bins 20-40,
  40-80, 80-160, 160-300 px) rendered twice with the same layout: *clean* and *occluded* (every face gets a
  held-out occluder family: respirators, hands, scarves, printed masks; :mod:`trainer.detector.occlusion`),
  plus ``--negatives`` scenes with no face (backgrounds and distractor patches only). Ground truth: MTCNN's
  boxes and landmarks on the clean photos.
* **lfw_masked**: LFW / CelebA photos as they are (250x250) with a held-out occluder on the main face: did the
  detector find that face.
* **real_masked**: real photos of people wearing masks (``--real``, e.g. the ``with_mask`` folder of
  chandrikadeb7/Face-Mask-Detection; no boxes): share of photos where a face is found; with ``--real-sizes``
  (the side of each photo's largest face, :mod:`tools.label_real_face_sizes`) also the share of photos whose face
  is >= 40 px where a face at least half that side is found (the issue's target is stated for faces >= 40 px).
* **small_negatives**: ``--small-negatives`` small photos without a face (64-320 px crops of the negative scenes,
  seeded): share with any detection at each detector's operating point -- the false positives of the passes that
  run on small photos only (LTDet's ``upscale_below`` / ``pad_below``), which the 640x480 scenes never trigger.

Matching (detector-convention agnostic: HOG boxes are tighter than MTCNN's): a detection matches a face when
IoU >= 0.5, or its centre is within 0.3 face sizes of the face's centre and its size is 0.5-2x the face's; greedy
by score. Unmatched detections whose centre is not in an ignore region are false positives.

Operating points: MTCNN at its default thresholds; LTDet and HOG at the lowest score threshold whose false
positives over all scenes (clean + occluded + negatives) do not exceed MTCNN's (``"at_mtcnn_fp"``), and LTDet
also at its bundle threshold (``"at_default"``). Landmark NME: mean point distance / the face's inter-ocular
distance (eye centres), over matched faces, against the clean-image MTCNN landmarks.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger("trainer.detector.evaluate")

BINS = ((20, 40), (40, 80), (80, 160), (160, 300))


@dataclass
class Dets:
    """Detections of one image: boxes (N, 4), landmarks (N, 5, 2) or None, scores (N,)."""

    boxes: np.ndarray
    landmarks: np.ndarray | None
    scores: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# detectors under test


class _Ltdet:
    """LTDet through the SDK stage (bundle folder -- its refiner included -- or ``.onnx`` file); ``pyramid``
    overrides the bundle's scales (name ``ltdet@<first scale>``); ``name`` names a compared bundle."""

    def __init__(self, model: str, threads: int, pyramid: tuple[float, ...] | None = None, name: str | None = None):
        from sdk.detect_onnx import LTDetConfig, LTDetDetector

        p = Path(model)
        opts: dict = {"score_threshold": 0.05, "threads": threads}
        if pyramid:
            opts["pyramid"] = tuple(pyramid)
        if p.is_dir():
            from sdk._registry import build_stage
            from sdk.bundle import load_bundle

            spec = load_bundle(p).stages["detect"]
            if spec.kind != "ltdet":
                raise SystemExit(f"{p}: the detect stage is {spec.kind!r}, not ltdet")
            self.default_threshold = float(spec.config.get("score_threshold", 0.5))
            self.det = build_stage(spec, opts)
        else:
            self.default_threshold = 0.5
            self.det = LTDetDetector(p, LTDetConfig(**opts))
        self.name = name or ("ltdet" if not pyramid else f"ltdet@{pyramid[0]:g}")
        self.det.prepare()

    def __call__(self, bgr: np.ndarray) -> Dets:
        f = self.det.detect(bgr)
        return Dets(np.array([x.box for x in f]).reshape(-1, 4), np.array([x.landmarks for x in f]).reshape(-1, 5, 2),
                    np.array([x.score for x in f]))


class _Mtcnn:
    name = "mtcnn"

    def __init__(self, threads: int):
        from sdk.detect import DetectorConfig, MTCNNDetector

        self.det = MTCNNDetector.from_package(DetectorConfig(threads=threads))
        self.det.prepare()

    def __call__(self, bgr: np.ndarray) -> Dets:
        f = self.det.detect(bgr)
        return Dets(np.array([x.box for x in f]).reshape(-1, 4), np.array([x.landmarks for x in f]).reshape(-1, 5, 2),
                    np.array([x.score for x in f]))


class _Hog:
    """dlib's HOG frontal face detector, 1 upsampling (faces from ~40 px), scores from ``run``."""

    name = "dlib_hog"

    def __init__(self, upsample: int = 1):
        import dlib

        self.det = dlib.get_frontal_face_detector()
        self.up = upsample

    def __call__(self, bgr: np.ndarray) -> Dets:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rects, scores, _ = self.det.run(rgb, self.up, -0.5)
        b = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float32).reshape(-1, 4)
        return Dets(b, None, np.asarray(scores, np.float32))


# ----------------------------------------------------------------------------------------------------------
# matching and metrics


def _size(b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None))


def match_faces(d: Dets, gt: np.ndarray, ignore: np.ndarray, thr: float) -> tuple[np.ndarray, int]:
    """Greedy matching of detections with score >= ``thr``; returns (det index per GT or -1, false positives)."""
    k = np.flatnonzero(d.scores >= thr)
    k = k[np.argsort(-d.scores[k], kind="stable")]
    assign = np.full(len(gt), -1, np.int64)
    fp = 0
    gs, gc = _size(gt), (gt[:, :2] + gt[:, 2:]) / 2
    for i in k:
        b = d.boxes[i]
        bc, bs = (b[:2] + b[2:]) / 2, float(_size(b))
        best, best_q = -1, 0.0
        for g in np.flatnonzero(assign < 0):
            iw = max(0.0, min(b[2], gt[g, 2]) - max(b[0], gt[g, 0]))
            ih = max(0.0, min(b[3], gt[g, 3]) - max(b[1], gt[g, 1]))
            inter = iw * ih
            iou = inter / max((b[2] - b[0]) * (b[3] - b[1]) + (gt[g, 2] - gt[g, 0]) * (gt[g, 3] - gt[g, 1]) - inter, 1e-6)
            near = (np.abs(bc - gc[g]) <= 0.3 * gs[g]).all() and 0.5 <= bs / max(gs[g], 1e-6) <= 2.0
            q = iou if iou >= 0.5 else (0.49 if near else 0.0)
            if q > best_q:
                best, best_q = g, q
        if best >= 0:
            assign[best] = i
        elif not any(ig[0] <= bc[0] <= ig[2] and ig[1] <= bc[1] <= ig[3] for ig in ignore):
            fp += 1
    return assign, fp


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean point error / inter-ocular distance (5-point landmarks, MTCNN order)."""
    io = float(np.linalg.norm(gt[0] - gt[1]))
    return float(np.linalg.norm(pred - gt, axis=1).mean() / max(io, 1e-6))


def _pick_threshold(per_img: list[tuple[Dets, np.ndarray, np.ndarray]], budget: int) -> float:
    """Lowest score threshold whose false positives over ``per_img`` are <= ``budget``."""
    cands = np.unique(np.concatenate([d.scores for d, *_ in per_img] + [np.array([1.01])]))
    lo, hi = 0, len(cands) - 1  # FPs fall as the threshold rises: binary search
    while lo < hi:
        mid = (lo + hi) // 2
        fp = sum(match_faces(d, g, ig, cands[mid])[1] for d, g, ig, _ in per_img)
        if fp <= budget:
            hi = mid
        else:
            lo = mid + 1
    return float(cands[lo])


def summarise(per_img, sizes, thr: float) -> dict:
    """Recall per size bin (and >= 40 px, all), false positives, landmark NME at threshold ``thr``."""
    hit_sz, miss_sz, errs, fp = [], [], [], 0
    for (d, g, ig, lm), s in zip(per_img, sizes):
        a, f = match_faces(d, g, ig, thr)
        fp += f
        for j in range(len(g)):
            (hit_sz if a[j] >= 0 else miss_sz).append(s[j])
            if a[j] >= 0 and d.landmarks is not None:
                errs.append(nme(d.landmarks[a[j]], lm[j]))
    hit_sz, miss_sz = np.array(hit_sz), np.array(miss_sz)
    out = {"threshold": round(thr, 4), "faces": int(len(hit_sz) + len(miss_sz)), "false_positives": int(fp),
           "fp_per_image": round(fp / max(len(per_img), 1), 4)}
    rec = {}
    for lo, hi in BINS + ((40, 1e9), (0, 1e9)):
        h = int(((hit_sz >= lo) & (hit_sz < hi)).sum())
        m = int(((miss_sz >= lo) & (miss_sz < hi)).sum())
        key = f"{lo}-{hi}" if hi < 1e9 else (f">={lo}" if lo else "all")
        rec[key] = {"recall": round(h / max(h + m, 1), 4), "faces": h + m}
    out["recall"] = rec
    if errs:
        out["nme"] = {"mean": round(float(np.mean(errs)), 4), "median": round(float(np.median(errs)), 4),
                      "faces": len(errs)}
    return out


# ----------------------------------------------------------------------------------------------------------


def _real_files(folder: Path, split: str, limit: int) -> list[Path]:
    """Images of ``folder``; with a split file (realmask's ``face_mask_detection.json``: ``files`` rows with
    ``folder``, ``name``, ``part``) only its ``validation`` part of that folder; at most ``limit`` (seeded)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if split:
        rows = json.loads(Path(split).read_text())["files"]
        val = {r["name"] for r in rows if r["folder"] == folder.name and r["part"] == "validation"}
        files = [p for p in files if p.name in val]
    pick = np.random.default_rng(2).permutation(len(files))[:limit]
    return [files[j] for j in sorted(pick)]


def run(args: argparse.Namespace) -> dict:
    from trainer.detector.occlusion import OccluderSampler
    from trainer.detector.scenes import SceneConfig, SceneRenderer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from trainer.detector.data import load_eval_labels
    from trainer.data.realmask_split import read_photo

    labels = load_eval_labels(args.data, args.cache, args.per_identity)
    log.info("evaluation identities: %d images", len(labels))
    occ = OccluderSampler("eval", args.templates or None)
    scfg = SceneConfig(height=480, width=640, faces=(1, 6), size_bins=list(BINS), context=(1.5, 2.2),
                       rotate_deg=10.0, distractors=(0, 3), texture_prob=0.3, grey_prob=0.2, blur_prob=0.1,
                       jpeg_prob=0.2, noise_prob=0.1, flip=False, min_label_px=14.0, background_split="eval")
    rend = SceneRenderer(labels, scfg, occ)
    neg = SceneRenderer(labels, SceneConfig(**{**scfg.__dict__, "faces": (0, 0), "distractors": (1, 5)}), None)
    pyr = [tuple(float(v) for v in p.split(",")) for p in args.ltdet_pyramids]
    dets = [_Ltdet(args.model, args.threads)] + [_Ltdet(args.model, args.threads, p) for p in pyr] \
        + [_Ltdet(m, args.threads, name=f"ltdet[{Path(m).name}]") for m in args.compare] \
        + [_Mtcnn(args.threads), _Hog()]
    conds = {"clean": [], "occluded": [], "negatives": []}
    sizes = {"clean": [], "occluded": [], "negatives": []}
    raw: dict[str, dict[str, list]] = {d.name: {c: [] for c in conds} for d in dets}
    examples = {}
    for k in tqdm(range(args.scenes), desc="scenes", unit="scene"):
        seed = 900_000 + k
        for c, occl in (("clean", False), ("occluded", True)):
            sc = rend.render(seed, occlude=occl)
            conds[c].append(sc)
            sizes[c].append(sc.sizes)
            for d in dets:
                raw[d.name][c].append(d(sc.image))
            if k == 0:
                examples[c] = sc
    for k in tqdm(range(args.negatives), desc="negative scenes", unit="scene"):
        sc = neg.render(950_000 + k)
        conds["negatives"].append(sc)
        sizes["negatives"].append(sc.sizes)
        for d in dets:
            raw[d.name]["negatives"].append(d(sc.image))

    def per_img(name: str, c: str):
        return [(r, s.boxes, s.ignore, s.landmarks) for r, s in zip(raw[name][c], conds[c])]

    res: dict = {"scenes": {}}
    all_conds = ("clean", "occluded", "negatives")
    mt_fp = sum(match_faces(r, g, ig, 0.0)[1] for c in all_conds for r, g, ig, _ in per_img("mtcnn", c))
    for d in dets:
        allimg = [x for c in all_conds for x in per_img(d.name, c)]
        ops = {}
        if d.name == "mtcnn":
            ops["default"] = 0.0
        else:
            ops["at_mtcnn_fp"] = _pick_threshold(allimg, mt_fp)
            if d.name.startswith("ltdet"):
                ops["at_default"] = d.default_threshold
            else:
                ops["default"] = 0.0
        res["scenes"][d.name] = {op: {c: summarise(per_img(d.name, c), sizes[c], t) for c in all_conds}
                                 for op, t in ops.items()}
    res["scenes"]["mtcnn_false_positives_budget"] = int(mt_fp)

    # LFW/CelebA photos with a held-out occluder on the main face
    rng = np.random.default_rng(1)
    pick = rng.permutation(len(labels))[:args.photos]
    lfw = {d.name: {"found": 0, "n": 0, "nme": []} for d in dets}
    thr = {d.name: (res["scenes"][d.name]["at_mtcnn_fp"]["clean"]["threshold"] if d.name != "mtcnn" else 0.0)
           for d in dets}
    for i in tqdm(pick, desc="photos + held-out occluders", unit="img"):
        img = cv2.imread(str(labels.paths[i]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        fb, fl = labels.faces_of(int(i))
        m = int(labels.main[i] - labels.first[i])
        s = occ.draw(img, fl[m], int(i))
        if s is None:
            continue
        gt = fb[m:m + 1]
        for d in dets:
            r = d(s.masked)
            a, _ = match_faces(r, gt, np.zeros((0, 4)), thr[d.name])
            lfw[d.name]["n"] += 1
            if a[0] >= 0:
                lfw[d.name]["found"] += 1
                if r.landmarks is not None:
                    lfw[d.name]["nme"].append(nme(r.landmarks[a[0]], fl[m]))
    res["photos_heldout_occluders"] = {
        k: {"found": v["found"], "images": v["n"], "recall": round(v["found"] / max(v["n"], 1), 4),
            **({"nme_mean": round(float(np.mean(v["nme"])), 4)} if v["nme"] else {})} for k, v in lfw.items()}

    # real photos (masked; optionally unmasked), validation part of the split file when given; face sizes from
    # --real-sizes (tools/label_real_face_sizes.py) for the recall on faces >= 40 px
    sizes: dict[str, float] = {}
    if args.real_sizes:
        doc = json.loads(Path(args.real_sizes).read_text())
        if int(doc.get("setup", {}).get("side", -1)) != args.real_side:
            raise SystemExit(f"--real-sizes {args.real_sizes}: labelled at side {doc.get('setup', {}).get('side')} px, "
                             f"the photos here are downscaled to {args.real_side} px (--real-side)")
        sizes = {n: float(v["face_px"]) for n, v in doc["photos"].items()}
    for key, folder in (("real_masked", args.real), ("real_unmasked", args.real_clean)):
        if not folder or not Path(folder).is_dir():
            continue
        files = _real_files(Path(folder), args.real_split, args.real_max)
        real = {d.name: {"any": 0, "big": 0, "n": 0, "n40": 0, "hit40": 0} for d in dets}
        for f in tqdm(files, desc=key, unit="img"):
            img = read_photo(f, args.real_side)  # every detector sees the same resized photo
            if img is None:
                continue
            px = sizes.get(f"{f.parent.name}/{f.name}", 0.0)  # labelled face side, 0 = unknown / no face
            for d in dets:
                r = d(img)
                k = r.scores >= thr[d.name]
                real[d.name]["n"] += 1
                real[d.name]["any"] += bool(k.any())
                real[d.name]["big"] += bool((_size(r.boxes[k]) >= 0.2 * min(img.shape[:2])).any()) if k.any() else 0
                if px >= 40:  # a labelled face >= 40 px: found when a kept face is at least half its side
                    real[d.name]["n40"] += 1
                    real[d.name]["hit40"] += bool((_size(r.boxes[k]) >= 0.5 * px).any()) if k.any() else 0
        if sizes and key == "real_masked" and not real[dets[0].name]["n40"]:
            log.warning("--real-sizes: no photo of %s has a labelled face >= 40 px (keys are '<folder>/<name>', "
                        "e.g. 'with_mask/0001.jpg')", folder)
        res[key] = {"folder": str(folder), "split": str(args.real_split or ""), "images": real[dets[0].name]["n"],
                    **{k: {"found_any": round(v["any"] / max(v["n"], 1), 4),
                           "found_face_ge_20pct": round(v["big"] / max(v["n"], 1), 4),
                           **({"images_face_ge_40px": v["n40"], "found_face_ge_40px": round(v["hit40"] / v["n40"], 4)}
                              if v["n40"] else {})} for k, v in real.items()}}
    if args.small_negatives and conds["negatives"]:
        crops = small_negative_photos([sc.image for sc in conds["negatives"]], args.small_negatives)
        hits = {d.name: 0 for d in dets}
        for c in tqdm(crops, desc="small photos without a face", unit="img"):
            for d in dets:
                hits[d.name] += bool((d(c).scores >= thr[d.name]).any())
        res["small_negatives"] = {"photos": len(crops), **{k: {"with_detection": v, "share": round(v / len(crops), 4)}
                                                           for k, v in hits.items()}}
    res["setup"] = {"scenes": args.scenes, "negatives": args.negatives, "model": str(args.model),
                    "held_out_occluders": list(__import__("trainer.detector.occlusion", fromlist=["x"]).HELD_OUT_TAGS),
                    "templates": bool(args.templates), "threads": args.threads, "machine": platform.machine(),
                    "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0], "time": time.strftime("%Y-%m-%d %H:%M")}
    (out / "detection_eval.json").write_text(json.dumps(res, indent=1))
    _plot(res, out / "detection_eval.png")
    (out / "detection_eval.md").write_text(markdown(res))
    _examples(examples, dets, thr, out)
    return res


def small_negative_photos(scenes: list[np.ndarray], n: int, seed: int = 3) -> list[np.ndarray]:
    """``n`` crops (longer side 64-320 px, aspect 0.6-1.4) of the face-free ``scenes``, round robin, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        img = scenes[j % len(scenes)]
        H, W = img.shape[:2]
        side = int(rng.integers(64, 321))
        a = float(rng.uniform(0.6, 1.4))
        h, w = min(H, max(24, int(side * min(a, 1.0)))), min(W, max(24, int(side / max(a, 1.0))))
        y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        out.append(np.ascontiguousarray(img[y:y + h, x:x + w]))
    return out


def markdown(res: dict) -> str:
    """The README tables of a result dict: recall by size (clean / occluded), false positives, NME, photos."""
    lines = ["| detector (operating point) | faces | threshold | FP (all scenes) | clean 20-40 | 40-80 | 80-160 | 160-300 | "
             "clean >=40 | occluded 20-40 | 40-80 | 80-160 | 160-300 | occluded >=40 | NME clean | NME occluded |",
             "|---|---|---:|---:|" + "---:|" * 12]
    bins = [f"{lo}-{hi}" for lo, hi in BINS] + [">=40"]
    for name, ops in res["scenes"].items():
        if not isinstance(ops, dict):
            continue
        for op, r in ops.items():
            fp = sum(r[c]["false_positives"] for c in ("clean", "occluded", "negatives"))
            cells = [f"{r[c]['recall'][b]['recall'] * 100:.1f}" if r[c]["recall"][b]["faces"] else "–"
                     for c in ("clean", "occluded") for b in bins]
            nm = [f"{r[c]['nme']['mean']:.3f}" if "nme" in r[c] else "–" for c in ("clean", "occluded")]
            lines.append(f"| {name} ({op}) | {r['clean']['faces']} | {r['clean']['threshold']:g} | {fp} | "
                         + " | ".join(cells + nm) + " |")
    sn = res.get("small_negatives", {})
    n40 = next((v["images_face_ge_40px"] for v in res.get("real_masked", {}).values()
                if isinstance(v, dict) and "images_face_ge_40px" in v), 0)
    lines += ["", "| detector | photos + held-out occluders: found | NME | real masked: found (face >= 20 % of side) "
              f"| real masked, labelled face >= 40 px ({n40}): found | real unmasked: found (>= 20 %) "
              f"| small photos without a face ({sn.get('photos', 0)}): with a detection |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    ph = res.get("photos_heldout_occluders", {})
    for name, v in ph.items():
        rm = res.get("real_masked", {}).get(name, {})
        ru = res.get("real_unmasked", {}).get(name, {})
        f = (lambda d: f"{d['found_any'] * 100:.1f} ({d['found_face_ge_20pct'] * 100:.1f})" if d else "–")
        neg = f"{sn[name]['share'] * 100:.1f} %" if name in sn else "–"
        big = f"{rm['found_face_ge_40px'] * 100:.1f}" if "found_face_ge_40px" in rm else "–"
        lines.append(f"| {name} | {v['recall'] * 100:.1f} % of {v['images']} | {v.get('nme_mean', '–')} | {f(rm)} "
                     f"| {big} | {f(ru)} | {neg} |")
    return "\n".join(lines) + "\n"


def _plot(res: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"{lo}-{hi}" for lo, hi in BINS]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, c in zip(axes, ("clean", "occluded")):
        shown = [("ltdet", "at_mtcnn_fp")] + [(n, "at_mtcnn_fp") for n in res["scenes"] if n.startswith("ltdet[")] \
            + [("mtcnn", "default"), ("dlib_hog", "default")]
        w = 0.8 / len(shown)
        for j, (name, op) in enumerate(shown):
            r = res["scenes"][name][op][c]["recall"]
            ax.bar(np.arange(len(keys)) + (j - (len(shown) - 1) / 2) * w, [r[k]["recall"] for k in keys], w,
                   label=f"{name} ({op})")
        ax.set_xticks(range(len(keys)), [k + " px" for k in keys])
        ax.set_title(f"{c} faces: recall by face size")
        ax.set_ylim(0, 1.02)
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("recall")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def _examples(examples: dict, dets, thr: dict, out: Path) -> None:
    tiles = []
    for c in ("clean", "occluded"):
        sc = examples.get(c)
        if sc is None:
            continue
        row = []
        for d in dets:
            img = sc.image.copy()
            r = d(sc.image)
            for b in sc.boxes:
                cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 255, 0), 1)
            for j in np.flatnonzero(r.scores >= thr[d.name]):
                b = r.boxes[j]
                cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 0, 255), 2)
                if r.landmarks is not None:
                    for x, y in r.landmarks[j]:
                        cv2.circle(img, (int(x), int(y)), 2, (0, 255, 255), -1)
            cv2.putText(img, f"{d.name} ({c})", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
            row.append(cv2.resize(img, (400, 300), interpolation=cv2.INTER_AREA))
        tiles.append(np.concatenate(row, 1))
    if tiles:
        cv2.imwrite(str(out / "detection_examples.png"), np.concatenate(tiles, 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.detector.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="LTDet bundle folder (manifest.json) or .onnx file")
    p.add_argument("--data", default="../shared/data", help="folder with lfw/ and celeba_subset/")
    p.add_argument("--templates", default="", help="MaskTheFace templates folder (held-out N95 template)")
    p.add_argument("--cache", default="out/detector/labels_lfw_celeba.npz", help="MTCNN label file")
    p.add_argument("--per-identity", type=int, default=2, help="images per identity when the labels are built")
    p.add_argument("--real", default="", help="folder of real masked photos (no labels), e.g. .../dataset/with_mask")
    p.add_argument("--real-clean", default="", help="folder of real unmasked photos, e.g. .../dataset/without_mask")
    p.add_argument("--real-split", default="", help="split JSON: use only its 'validation' files of those folders")
    p.add_argument("--real-sizes", default="",
                   help="face-size labels of the real photos (tools/label_real_face_sizes.py; the committed "
                        "trainer/data/splits/face_mask_detection_sizes.json): adds the recall on faces >= 40 px")
    p.add_argument("--real-max", type=int, default=300, help="at most this many real photos per folder")
    p.add_argument("--real-side", type=int, default=640, help="real photos are downscaled to this longest side (px)")
    p.add_argument("--ltdet-pyramids", nargs="*", default=[], metavar="S1,S2",
                   help="extra LTDet runs with these pyramid scales (e.g. 0.75,0.1875), named ltdet@S1")
    p.add_argument("--compare", nargs="*", default=[], metavar="BUNDLE",
                   help="more LTDet bundles (or .onnx files) evaluated in the same run, named ltdet[<folder name>]")
    p.add_argument("--scenes", type=int, default=150, help="640x480 scenes (each clean and occluded)")
    p.add_argument("--negatives", type=int, default=100, help="640x480 scenes without faces")
    p.add_argument("--small-negatives", type=int, default=300,
                   help="small photos without a face (64-320 px crops of the negative scenes); 0: none")
    p.add_argument("--photos", type=int, default=400, help="held-out photos with held-out occluders")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per detector")
    p.add_argument("--out", default="reports/detector", help="output folder (JSON + PNG)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    res = run(args)
    print(json.dumps({k: v for k, v in res.items() if k != "setup"}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
