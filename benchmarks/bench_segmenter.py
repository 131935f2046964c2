"""Occlusion segmenter latency on ONNX Runtime (CPU): milliseconds per 112x112 face, batch 1 and 8.

Crops are ArcFace 112x112 crops of scikit-image's astronaut (plus mirrored / noisy copies), cycled to fill a
batch.  Each (threads, batch) case runs ``--rounds`` interleaved rounds of ``--calls`` timed calls after one
warm-up call (so a burst of load on a shared machine hits every case); reported: median and p95 ms per call
and per face, and the 1/5/15-minute load averages before and after.  Target (issue): <= 3 ms per face.

    python benchmarks/bench_segmenter.py --model default --out benchmarks/results/segmenter.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _report import emit  # benchmarks/_report.py (this folder is sys.path[0] when run as a script)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ASTRO_LM = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)


def crops(n: int = 8) -> np.ndarray:
    from skimage import data

    from sdk.align import align

    img = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    base = align(img, ASTRO_LM)
    rng = np.random.default_rng(0)
    out = [base, base[:, ::-1]]
    while len(out) < n:
        out.append(np.clip(base.astype(np.int16) + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.stack(out[:n]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="bundle (built-in name or folder) or a segmenter .onnx file")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--out", type=Path, default=None, help="JSON report path")
    args = p.parse_args(argv)

    from sdk.segment import OnnxSegmenter

    path = Path(args.model)
    if path.suffix != ".onnx":
        from sdk.bundle import load_bundle

        path = load_bundle(args.model).stages["segment"].files["model"].path
    load_before = os.getloadavg()
    segs = {t: OnnxSegmenter(path, threads=t).prepare() for t in args.threads}
    pool = crops(max(args.batches))
    times: dict[tuple[int, int], list[float]] = {(t, b): [] for t in args.threads for b in args.batches}
    for _ in range(args.rounds):
        for (t, b), ts in times.items():
            x = pool[:b]
            segs[t].segment(x)
            for _ in range(args.calls):
                t0 = time.perf_counter()
                segs[t].segment(x)
                ts.append(time.perf_counter() - t0)
    cases = []
    for (t, b), ts in times.items():
        ms = np.array(ts) * 1000
        cases.append({"threads": t, "batch": b, "ms_per_call_median": round(float(np.median(ms)), 3),
                      "ms_per_call_p95": round(float(np.percentile(ms, 95)), 3),
                      "ms_per_face_median": round(float(np.median(ms)) / b, 3),
                      "ms_per_face_p95": round(float(np.percentile(ms, 95)) / b, 3)})
    import onnxruntime as ort

    report = {"model": str(path), "model_bytes": path.stat().st_size, "onnxruntime": ort.__version__,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
              "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()], "target_ms_per_face": 3.0, "cases": cases}
    emit(report, args.out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
