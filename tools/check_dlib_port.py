"""Compare the PyTorch port of dlib's face ResNet (trainer/models/dlib_resnet.py) against dlib itself.

Chips are cut with dlib's own pipeline (frontal face detector, 5-point shape predictor,
``dlib.get_face_chip(img, shape, 150, 0.25)``) from scikit-image's astronaut and its flipped /
rescaled versions, plus noisy copies of those chips and a few non-face chips (uniform noise, a
coffee-cup crop); ``--data DIR`` adds faces from every image under DIR.  Both sides get exactly the
same uint8 chips; dlib runs ``compute_face_descriptor(chip)`` (num_jitters=0).

Prints one JSON object: max / mean absolute difference per component, max cosine distance, max
relative L2 error, the ONNX (opset 17, onnxruntime CPU) difference, and milliseconds per face for
dlib and torch at batch 1 and 16 (torch with ``--threads`` intra-op threads, default 2).

    python tools/check_dlib_port.py [--data DIR] [--limit 64] [--threads 2] [--no-onnx]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm"}


def dlib_chips(rgb: np.ndarray, detector, predictor, upsample: int = 1) -> list[np.ndarray]:
    """All faces dlib finds in an RGB uint8 image, as dlib's own 150x150 aligned chips."""
    import dlib

    rgb = np.ascontiguousarray(rgb)
    out = []
    for rect in detector(rgb, upsample):
        shape = predictor(rgb, rect)
        out.append(np.asarray(dlib.get_face_chip(rgb, shape, 150, 0.25)))
    return out


def default_chips(seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Astronaut-based chips (dlib pipeline) and variants, plus non-face chips. Returns (chips, labels)."""
    import cv2
    import dlib
    import face_recognition_models as frm
    from skimage import data

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rng = np.random.default_rng(seed)
    img = data.astronaut()
    chips, labels = [], []

    def add(cs, label):
        for i, c in enumerate(cs):
            chips.append(np.ascontiguousarray(c, dtype=np.uint8))
            labels.append(f"{label}#{i}")

    add(dlib_chips(img, det, sp), "astronaut")
    add(dlib_chips(img[:, ::-1], det, sp), "astronaut_flipped")
    for s in (0.6, 1.4):
        r = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        add(dlib_chips(r, det, sp), f"astronaut_x{s}")
    base = list(chips)
    for sigma in (4.0, 16.0):
        noisy = [np.clip(c.astype(np.float32) + rng.normal(0, sigma, c.shape), 0, 255).round().astype(np.uint8)
                 for c in base[:2]]
        add(noisy, f"noise_sigma{sigma:g}")
    add([c[:, ::-1] for c in base[:2]], "chip_mirrored")
    add([rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)], "uniform_noise")
    add([np.full((150, 150, 3), 255, np.uint8), np.zeros((150, 150, 3), np.uint8)], "constant")
    coffee = data.coffee()
    add([cv2.resize(coffee[50:350, 150:450], (150, 150), interpolation=cv2.INTER_AREA)], "coffee")
    return chips, labels


def folder_chips(root: Path, limit: int) -> tuple[list[np.ndarray], list[str]]:
    import dlib
    import face_recognition_models as frm
    from skimage import io as skio

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    chips, labels = [], []
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        if len(chips) >= limit:
            break
        try:
            img = skio.imread(f)
        except Exception:  # unreadable file: skip it, the rest still count
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
        for i, c in enumerate(dlib_chips(img, det, sp)):
            chips.append(c)
            labels.append(f"{f.relative_to(root)}#{i}")
    return chips[:limit], labels[:limit]


def _per_face_ms(fn, n_faces: int, min_s: float = 1.0, min_reps: int = 3) -> float:
    fn()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < min_s:
        fn()
        reps += 1
    return (time.perf_counter() - t0) / reps / n_faces * 1e3


def compare(ref: np.ndarray, out: np.ndarray) -> dict:
    d = np.abs(out - ref)
    cos = 1 - (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    rel = np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "max_cosine_distance": float(cos.max()), "max_rel_l2": float(rel.max()),
            "worst_chip": int(d.max(1).argmax())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="folder of images; faces found by dlib are added")
    ap.add_argument("--limit", type=int, default=64, help="max faces taken from --data")
    ap.add_argument("--model", type=Path, help="dlib .dat (default: the one in face_recognition_models)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads for the timings")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX export check")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import dlib
    import torch

    from trainer.models.dlib_resnet import DlibResNet, default_dat_path, preprocess

    torch.set_num_threads(args.threads)
    model_path = args.model or default_dat_path()
    chips, labels = default_chips(args.seed)
    if args.data:
        c2, l2 = folder_chips(args.data, args.limit)
        chips += c2
        labels += l2

    rec = dlib.face_recognition_model_v1(str(model_path))
    ref = np.array([np.array(rec.compute_face_descriptor(c, 0)) for c in chips], dtype=np.float64)

    t0 = time.perf_counter()
    model = DlibResNet.from_dat(model_path)
    load_s = time.perf_counter() - t0
    x = preprocess(np.stack(chips))
    with torch.inference_mode():
        out = model(x).double().numpy()
    res = {"n_chips": len(chips), "sources": sorted({lb.split("#")[0] for lb in labels}),
           "model": str(model_path), "torch": torch.__version__, "dlib": dlib.__version__,
           "load_dat_s": round(load_s, 3), **compare(ref, out)}
    res["worst_chip"] = labels[res["worst_chip"]]
    res["ref_abs_max"] = float(np.abs(ref).max())

    if not args.no_onnx:
        try:
            import onnxruntime as ort

            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, x[:1], buf, opset_version=17, dynamo=False,
                                  input_names=["chips"], output_names=["descriptors"],
                                  dynamic_axes={"chips": {0: "n"}, "descriptors": {0: "n"}})
            sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
            onnx_out = sess.run(None, {"chips": x.numpy()})[0].astype(np.float64)
            o = compare(ref, onnx_out)
            res["onnx"] = {"opset": 17, "bytes": len(buf.getvalue()),
                           **{k: v for k, v in o.items() if k != "worst_chip"}}
        except Exception as e:  # e.g. the onnx package missing: say so, keep the rest
            res["onnx"] = {"skipped": f"{type(e).__name__}: {e}"}

    if not args.no_timing:
        reps16 = (chips * (16 // len(chips) + 1))[:16]
        x1, x16 = preprocess(chips[0]), preprocess(np.stack(reps16))

        def torch_run(t):
            with torch.inference_mode():
                model(t)

        res["timing_ms_per_face"] = {
            "dlib_b1": _per_face_ms(lambda: rec.compute_face_descriptor(chips[0], 0), 1),
            "dlib_b16": _per_face_ms(lambda: rec.compute_face_descriptor(reps16, 0), 16),
            "torch_b1": _per_face_ms(lambda: torch_run(x1), 1),
            "torch_b16": _per_face_ms(lambda: torch_run(x16), 16),
        }
        res["timing_ms_per_face"] = {k: round(v, 2) for k, v in res["timing_ms_per_face"].items()}
        res["torch_threads"] = torch.get_num_threads()
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
