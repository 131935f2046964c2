"""Per-stage latency benchmark of the Recognizer, with same-run baselines; JSON out.

Stages timed inside ``Recognizer.identify`` (detect, [segment, complete,] align, embed, match; returned per call
through its ``timings`` argument) over N frames, p50/p95 in ms.
Baselines measured in the same run on the same frames, reported as ratios (baseline / ours):
  * detect: the bundle's detector (``detect_ours``; LTDet in the default, its kind in ``detector``) vs MTCNN (our
    cascade on ONNX Runtime, the ``baseline`` bundle's: the reference users compare against) and dlib's HOG frontal
    detector (ships inside dlib; no 5 landmarks);
  * align: ``cv2.warpAffine`` vs our C++ warp (same matrices, same output size);
  * match: NumPy ``matmul + argpartition`` vs our C++ top-k over the same gallery.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from sdk import _native
from sdk.occluders import draw_surgical_mask
from sdk.recognizer import Recognizer

log = logging.getLogger(__name__)


def _stats(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3), "n": int(a.size)}


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_frames() -> dict[str, np.ndarray]:
    """Benchmark frames (BGR): the astronaut 512x512, masked, and a 1280x720 scene with 3 faces."""
    from skimage import data

    astro = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    scene = np.full((720, 1280, 3), 90, np.uint8)
    x0 = 30
    for s in (0.45, 0.6, 0.8):  # 230, 307 and 410 px wide copies side by side
        small = cv2.resize(astro, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        scene[100:100 + small.shape[0], x0:x0 + small.shape[1]] = small
        x0 += small.shape[1] + 30
    return {"astronaut_512": astro, "scene_1280x720_3faces": scene}


def machine_info() -> dict[str, object]:
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda": _native.cuda_info()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    return info


def run_bench(frames: int = 60, gallery_size: int = 10000, model: str | None = None, seed: int = 0,
              progress: bool = True) -> dict:
    """Run the benchmark; returns the JSON-ready report."""
    rec = Recognizer(model).prepare()
    base = bench_frames()
    astro = base["astronaut_512"]
    rec.enroll("astronaut", astro)
    masked, _ = draw_surgical_mask(astro, rec.detect(astro)[0].landmarks)
    base["astronaut_masked_512"] = masked
    rng = np.random.default_rng(seed)
    filler = rng.normal(size=(max(gallery_size - 1, 0), rec.template_dim)).astype(np.float32)
    if len(filler):
        rec.gallery.add("distractor", filler)  # one identity with many rows: worst case for the search
    names = list(base)
    per_stage: dict[str, list[float]] = {}
    per_frame: dict[str, list[float]] = {n: [] for n in names}
    for i in tqdm(range(frames), desc="identify", unit="frame", disable=not progress):
        name = names[i % len(names)]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        rec.identify(base[name], timings=timings)
        per_frame[name].append(time.perf_counter() - t0)
        for st, sec in timings.items():
            per_stage.setdefault(st, []).append(sec)

    # same-run baselines -------------------------------------------------------------------------------
    import dlib

    from sdk._registry import build_stage
    from sdk.bundle import load_bundle

    hog = dlib.get_frontal_face_detector()
    mtcnn = build_stage(load_bundle("baseline").stages["detect"]).prepare()
    reps = max(10, frames // len(names))
    det_ours, det_mtcnn, det_hog = [], [], []
    for name in names:  # interleaved per frame size, so load bursts hit every detector
        rgb = np.ascontiguousarray(base[name][:, :, ::-1])
        det_ours += _time(lambda f=base[name]: rec.detector.detect(f), reps)
        det_mtcnn += _time(lambda f=base[name]: mtcnn.detect(f), reps)
        det_hog += _time(lambda f=rgb: hog(f, 0), reps)
    face = rec.detect(astro)[0]
    from sdk.align import ARCFACE_112, similarity_to_template

    mat = similarity_to_template(face.landmarks, ARCFACE_112)
    warp_ours = _time(lambda: _native.warp_affine(astro, mat, (112, 112)), 200)
    warp_cv2 = _time(lambda: cv2.warpAffine(astro, mat, (112, 112), flags=cv2.INTER_LINEAR), 200)
    gmat = rec.gallery.matrix
    q = rec.embed_faces(astro, [face])

    def numpy_topk() -> None:
        s = gmat @ q[0]
        k = min(5, len(s))
        idx = np.argpartition(-s, k - 1)[:k]
        idx[np.argsort(-s[idx])]

    match_ours = _time(lambda: _native.topk_cosine(gmat, q, 5), 200)
    match_np = _time(numpy_topk, 200)
    s = {k: _stats(v) for k, v in per_stage.items()}
    base_stats = {"detect_ours": _stats(det_ours), "detect_mtcnn": _stats(det_mtcnn), "detect_dlib_hog": _stats(det_hog),
                  "align_cv2_warpAffine": _stats(warp_cv2), "align_cpp_ours": _stats(warp_ours),
                  "match_numpy": _stats(match_np), "match_cpp_ours": _stats(match_ours)}
    ratio = lambda a, b: round(base_stats[a]["p50_ms"] / max(base_stats[b]["p50_ms"], 1e-9), 3)  # noqa: E731
    return {
        "command": "python -m sdk bench",
        "load_average_1m_5m_15m": list(os.getloadavg()),
        "bundle": rec.bundle.name, "detector": getattr(rec.detector, "kind", type(rec.detector).__name__),
        "frames": frames, "gallery_rows": len(rec.gallery),
        "machine": machine_info(),
        "stages": s,
        "total_per_frame": {n: _stats(v) for n, v in per_frame.items() if v},
        "baselines": base_stats,
        "ratios_baseline_over_ours_p50": {
            "detect (MTCNN / ours)": ratio("detect_mtcnn", "detect_ours"),
            "detect (dlib HOG / ours)": ratio("detect_dlib_hog", "detect_ours"),
            "align (cv2 / C++)": ratio("align_cv2_warpAffine", "align_cpp_ours"),
            "match (numpy / C++)": ratio("match_numpy", "match_cpp_ours"),
        },
    }


def write_report(report: dict, out: Path | None) -> str:
    text = json.dumps(report, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
