"""Micro-benchmarks of the C++ core (sdk._core) against the obvious Python baselines.

* align: ``sdk._native.warp_affine`` vs ``cv2.warpAffine`` (INTER_LINEAR, constant border) cutting
  112x112 and 150x150 face crops out of a 1280x720 BGR frame;
* align on the GPU (only where a CUDA device is present): ``sdk._native.warp_affine_cuda`` vs our CPU warp,
  host frame in, host crop out (copies included);
* search: ``sdk._native.topk_cosine`` vs NumPy (matmul + argpartition + sort of the k hits) for
  N in {1000, 100000} gallery rows, D in {128, 512}, Q in {1, 32} queries.

Each case reports the median and 95th percentile wall time (ms, ``time.perf_counter``) after
warm-up runs, and ``ratio_*`` = ours / baseline (below 1 means ours is faster). Prints JSON, or
writes it to ``--out``. Runs in about 30 s on 2 cores.

    python benchmarks/bench_kernels.py --out out/bench_kernels.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from _report import emit  # benchmarks/_report.py (this folder is sys.path[0] when run as a script)

from sdk import _native

# ArcFace 112x112 five-point template (x, y), crop pixels.
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])


SETTLE_S = 0.2  # seconds of idle before each measurement (see _time)


def _time(fn: Callable[[], object], warmup: int, repeats: int, budget_s: float) -> dict:
    """Median / p95 of ``fn()`` wall time in ms: ``warmup`` untimed calls, then up to ``repeats``
    timed calls, stopping early (after at least 5) once ``budget_s`` seconds have been spent.

    Sleeps ``SETTLE_S`` first: thread pools of the previous measurement (OpenBLAS, OpenMP) keep
    spinning for a while and would steal the cores from this one on a small machine."""
    time.sleep(SETTLE_S)
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 5 and time.perf_counter() - start > budget_s:
            break
    ms = np.array(times) * 1e3
    return {"median_ms": round(float(np.median(ms)), 4),
            "p95_ms": round(float(np.percentile(ms, 95)), 4), "runs": len(times)}


def _compare(ours: dict, base: dict) -> dict:
    return {"ratio_median": round(ours["median_ms"] / max(base["median_ms"], 1e-9), 3),
            "ratio_p95": round(ours["p95_ms"] / max(base["p95_ms"], 1e-9), 3)}


def bench_warp(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    # A face about 250 px wide, rotated by 12 degrees, in the middle of the frame.
    a = np.deg2rad(12.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    face = (ARCFACE_112 - 56.0) @ rot.T * 2.2 + [640.0, 360.0]
    results = []
    for side in (112, 150):
        m = _native.estimate_similarity(face, ARCFACE_112 * (side / 112.0))
        ours = _time(lambda: _native.warp_affine(frame, m, (side, side)),
                     args.warmup, args.repeats * 10, args.budget_s)
        base = _time(lambda: cv2.warpAffine(frame, m, (side, side), flags=cv2.INTER_LINEAR,
                                            borderMode=cv2.BORDER_CONSTANT, borderValue=0),
                     args.warmup, args.repeats * 10, args.budget_s)
        diff = np.abs(_native.warp_affine(frame, m, (side, side)).astype(np.int16)
                      - cv2.warpAffine(frame, m, (side, side), flags=cv2.INTER_LINEAR).astype(np.int16))
        results.append({"case": f"{side}x{side}x3 crop from 1280x720x3", "ours": ours,
                        "baseline_cv2_warpAffine": base, **_compare(ours, base),
                        "max_abs_diff": int(diff.max())})
        if _native.cuda_info()["device_count"] > 0:
            # the CUDA warp copies the frame to the device and the crop back on every call: this times the
            # whole round trip (what a caller with a host frame pays), baseline = our CPU warp, same call
            gpu = _time(lambda: _native.warp_affine_cuda(frame, m, (side, side)), args.warmup, args.repeats * 10,
                        args.budget_s)
            gdiff = np.abs(_native.warp_affine_cuda(frame, m, (side, side)).astype(np.int16)
                           - _native.warp_affine(frame, m, (side, side)).astype(np.int16))
            results.append({"case": f"CUDA {side}x{side}x3 crop from 1280x720x3 (host frame, incl. copies)",
                            "ours": gpu, "baseline_cpu_warp": ours, **_compare(gpu, ours),
                            "max_abs_diff_vs_cpu": int(gdiff.max())})
    return results


def _numpy_topk(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ gallery.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_topk(args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    results = []
    for d in (128, 512):
        big = _unit_rows(rng, max(args.sizes), d)
        for n in args.sizes:
            gallery = big[:n]
            for q in (1, 32):
                queries = _unit_rows(rng, q, d)
                k = min(args.k, n)
                ours = _time(lambda: _native.topk_cosine(gallery, queries, k),
                             args.warmup, args.repeats, args.budget_s)
                base = _time(lambda: _numpy_topk(gallery, queries, k),
                             args.warmup, args.repeats, args.budget_s)
                idx, _ = _native.topk_cosine(gallery, queries, k)
                ref_idx, _ = _numpy_topk(gallery, queries, k)
                results.append({"N": n, "D": d, "Q": q, "k": k, "ours": ours,
                                "baseline_numpy": base, **_compare(ours, base),
                                "top1_agreement": float(np.mean(idx[:, 0] == ref_idx[:, 0]))})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the JSON here instead of printing it")
    p.add_argument("--repeats", type=int, default=40,
                   help="timed runs per top-k case (x10 for the warp cases); default 40")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing; default 3")
    p.add_argument("--budget-s", type=float, default=1.0,
                   help="stop timing a case after this many seconds (min 5 runs); default 1.0")
    p.add_argument("--k", type=int, default=10, help="hits per query for top-k; default 10")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000],
                   help="gallery sizes N; default 1000 100000")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    report = {
        "meta": {"python": platform.python_version(), "numpy": np.__version__,
                 "opencv": cv2.__version__, "core_version": _native.__version__,
                 "build": _native.build_info(), "cuda": _native.cuda_info(),
                 "machine": platform.machine(), "processor": platform.processor(),
                 "cpu_count": os.cpu_count(), "cv2_threads": cv2.getNumThreads(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "warp": bench_warp(args, rng),
        "topk": bench_topk(args, rng),
    }
    report["meta"]["total_s"] = round(time.perf_counter() - t0, 1)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
