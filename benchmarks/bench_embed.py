"""dlib's face ResNet: dlib itself (baseline) vs the ONNX graph built from the same .dat on ONNX Runtime.

Cases: ``dlib.face_recognition_model_v1.compute_face_descriptor`` (the baseline, as ``DlibResNetEmbedder`` runs
it) and ``DlibOnnxEmbedder.descriptors`` with ``--threads`` intra-op threads, each at ``--batches`` chips per
call.  Chips are dlib's own 150x150 chips of scikit-image's astronaut (plus mirrored / noisy copies), cycled
to fill a batch.  Cases are run in ``--rounds`` interleaved rounds (so a burst of load on a shared machine hits
every case), each round ``--calls`` timed calls after one warm-up call; reported: median and p95 of
milliseconds per call and per face over all rounds, per-round medians, and ``ratio`` = ours / dlib per face
(below 1 means faster) and ``speedup`` = dlib / ours.  Also: the one-off cost of building the graph from the
.dat and of creating the session (median of ``--build-repeats``), parity (max |onnx - dlib|), and the 1/5/15
minute load averages before and after.

    python benchmarks/bench_embed.py --out out/bench_embed.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from _report import emit  # benchmarks/_report.py (this folder is sys.path[0] when run as a script)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SETTLE_S = 0.2  # idle before each case: thread pools of the previous case may still be spinning


def _chips(n: int, sp_path: str) -> list[np.ndarray]:
    import dlib
    from skimage import data

    rgb = data.astronaut()  # RGB, as dlib wants
    sp = dlib.shape_predictor(sp_path)
    faces = [np.asarray(dlib.get_face_chip(rgb, sp(rgb, r), 150, 0.25))
             for r in dlib.get_frontal_face_detector()(rgb, 1)]
    rng = np.random.default_rng(0)
    base = faces + [np.ascontiguousarray(faces[0][:, ::-1])]
    out = []
    for i in range(n):
        c = base[i % len(base)].astype(np.int16) + rng.integers(-8, 9, (150, 150, 3))
        out.append(np.clip(c, 0, 255).astype(np.uint8))
    return out


def _stats(ms: list[float], per: int) -> dict:
    a = np.asarray(ms)
    return {"median_ms_per_call": round(float(np.median(a)), 3), "p95_ms_per_call": round(float(np.percentile(a, 95)), 3),
            "median_ms_per_face": round(float(np.median(a)) / per, 3), "p95_ms_per_face": round(float(np.percentile(a, 95)) / per, 3),
            "calls": int(a.size)}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--model", help="dlib_face_recognition_resnet_model_v1.dat (default: the packaged one)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="ONNX Runtime intra-op threads; default 1 2")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="chips per call; default 1 16")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all cases; default 3")
    p.add_argument("--calls", type=int, default=8, help="timed calls per case per round; default 8")
    p.add_argument("--budget-s", type=float, default=6.0, help="stop a case's round after this many seconds (min 2 calls)")
    p.add_argument("--build-repeats", type=int, default=3, help="graph builds timed; default 3")
    p.add_argument("--no-dlib", action="store_true", help="skip the dlib baseline")
    args = p.parse_args(argv)

    import dlib
    import face_recognition_models as frm
    import onnxruntime as ort

    from sdk.embed import EmbedConfig
    from sdk.embed_onnx import DlibOnnxEmbedder
    from sdk.models.dlib_onnx import build_dlib_onnx

    model = args.model or frm.face_recognition_model_location()
    load_before = _loadavg()
    t_start = time.perf_counter()

    builds, sessions = [], []
    for _ in range(args.build_repeats):
        t0 = time.perf_counter()
        build_dlib_onnx(model)
        builds.append((time.perf_counter() - t0) * 1e3)
    embedders = {}
    for th in args.threads:
        e = DlibOnnxEmbedder(model, None, EmbedConfig(chip_landmarks="mtcnn5", threads=th, batch_size=max(args.batches)))
        sessions.append(e.session_s * 1e3)
        embedders[th] = e
    t0 = time.perf_counter()
    rec = None if args.no_dlib else dlib.face_recognition_model_v1(model)
    dlib_load_ms = (time.perf_counter() - t0) * 1e3

    chips = _chips(max(args.batches), frm.pose_predictor_five_point_model_location())
    cases: dict[str, tuple[Callable[[], object], int]] = {}
    for b in args.batches:
        batch = chips[:b]
        if rec is not None:
            cases[f"dlib/batch{b}"] = ((lambda batch=batch: rec.compute_face_descriptor(batch, 0)), b)
        for th, e in embedders.items():
            bgr = np.stack([c[:, :, ::-1] for c in batch])  # SDK embedders read BGR crops
            cases[f"onnx/threads{th}/batch{b}"] = ((lambda e=e, bgr=bgr: e.descriptors(bgr)), b)

    samples: dict[str, list[float]] = {k: [] for k in cases}
    per_round: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, (fn, _b) in cases.items():
            time.sleep(SETTLE_S)
            fn()  # warm-up
            got, start = [], time.perf_counter()
            while len(got) < args.calls:
                t0 = time.perf_counter()
                fn()
                got.append((time.perf_counter() - t0) * 1e3)
                if len(got) >= 2 and time.perf_counter() - start > args.budget_s:
                    break
            samples[name] += got
            per_round[name].append(round(float(np.median(got)) / _b, 3))

    results = {}
    for name, (_fn, b) in cases.items():
        r = _stats(samples[name], b)
        r["round_medians_ms_per_face"] = per_round[name]
        base = f"dlib/batch{b}"
        if name.startswith("onnx/") and base in samples:
            dl = float(np.median(samples[base])) / b
            r["ratio"] = round(r["median_ms_per_face"] / dl, 4)
            r["speedup"] = round(dl / r["median_ms_per_face"], 2)
        results[name] = r

    parity = None
    if rec is not None:
        ref = np.array([np.array(rec.compute_face_descriptor(c, 0)) for c in chips])
        bgr = np.stack([c[:, :, ::-1] for c in chips])
        parity = {f"threads{th}": float(np.abs(e.descriptors(bgr) - ref).max()) for th, e in embedders.items()}

    report = {
        "meta": {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": ort.__version__,
                 "dlib": getattr(dlib, "__version__", "?"), "dlib_uses_blas": bool(getattr(dlib, "DLIB_USE_BLAS", False)),
                 "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "model": str(model),
                 "rounds": args.rounds, "calls": args.calls,
                 "loadavg_before": load_before, "loadavg_after": _loadavg(),
                 "total_s": round(time.perf_counter() - t_start, 1)},
        "one_off": {"build_graph_ms_median": round(float(np.median(builds)), 1), "build_graph_ms": [round(v, 1) for v in builds],
                    "create_session_ms": [round(v, 1) for v in sessions], "dlib_load_model_ms": round(dlib_load_ms, 1)},
        "max_abs_diff_vs_dlib": parity,
        "results": results,
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
