"""Latency of the face inpainter (112x112, contextual attention) per back-end, against OpenCV's Telea inpainting.

Cases (median / p95 wall ms over repeated runs after warm-up; a real face: scikit-image's astronaut, aligned
roughly, with a lower-face hole like a surgical mask, 21% of the crop):

* ``torch_cpu_b1``: the PyTorch generator, eager, batch 1 (``--threads`` intra-op threads);
* ``ort_cpu_b1`` / ``ort_cpu_b8``: the exported ONNX graph (opset 17) on ONNX Runtime's CPU provider;
* ``cuda_b1`` / ``cuda_b32`` (+ ``_fp16`` autocast): PyTorch on the GPU, synchronised, only when CUDA is present;
* baseline ``telea_b1``: ``cv2.inpaint(..., INPAINT_TELEA)`` on the same crop and hole.

``ratio_vs_telea`` = case / Telea (per face).  Weights: ``--generator`` (a run folder from
``trainer/main.py inpainter``); random weights when omitted (same cost).  Prints JSON or writes ``--out``::

    python benchmarks/bench_inpainter.py --out benchmarks/results/inpainter.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from _report import emit  # benchmarks/_report.py (this folder is sys.path[0] when run as a script)


def _time(fn, warmup: int, repeats: int, budget_s: float, sync=None) -> dict:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    ts = []
    t_end = time.perf_counter() + budget_s
    while len(ts) < repeats and (len(ts) < 5 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    a = np.array(ts)
    return {"median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3), "runs": len(ts)}


def face_and_hole(size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 (size, size, 3) face crop, uint8 hole mask (size, size)) from scikit-image's astronaut."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    crop = cv2.resize(img[30:250, 130:350], (size, size), interpolation=cv2.INTER_AREA)
    hole = np.zeros((size, size), np.uint8)
    hole[int(0.62 * size):int(0.95 * size), int(0.18 * size):int(0.82 * size)] = 1
    return crop, hole


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_inpainter.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", type=Path, help="inpainter run folder (ckpt/last.*; older generator.safetensors "
                                                  "+ config.json folders too) or checkpoint")
    p.add_argument("--out", type=Path, help="write the JSON here instead of printing it")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime (default 1)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=3.0, help="stop a case after this long (>= 5 runs)")
    args = p.parse_args(argv)

    import torch

    from trainer.inpainter_train import to_tensor
    from trainer.models.inpainter import Generator, count_flops, count_params, export_onnx, load_checkpoint

    torch.set_num_threads(args.threads)
    gen = load_checkpoint(args.generator)[0] if args.generator else Generator().eval()
    crop, hole = face_and_hole()
    x, m = to_tensor(crop[None], hole[None].astype(np.float32))
    res: dict = {"meta": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                          "processor": platform.processor(), "cpu_count": os.cpu_count(), "threads": args.threads,
                          "generator": str(args.generator) if args.generator else "random weights",
                          "params": count_params(gen), "gflops_112": round(count_flops(gen) / 1e9, 3),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "hole_fraction": round(float(hole.mean()), 3)},
                 "cases": {}}
    cases = res["cases"]
    telea = _time(lambda: cv2.inpaint(crop, hole, 3, cv2.INPAINT_TELEA), args.warmup, args.repeats, args.budget_s)
    cases["telea_b1"] = {**telea, "per_face_ms": telea["median_ms"]}
    with torch.no_grad():
        t = _time(lambda: gen(x, m), args.warmup, args.repeats, args.budget_s)
        cases["torch_cpu_b1"] = {**t, "per_face_ms": t["median_ms"]}
        try:
            import onnxruntime as ort

            with tempfile.TemporaryDirectory() as td:
                path = export_onnx(gen, Path(td) / "inpainter.onnx")
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            xn, mn = x.numpy(), m.numpy()
            got = sess.run(None, {"image": xn, "mask": mn})[0]
            ref = gen(x, m).numpy()
            res["meta"]["ort_vs_torch_max_abs_diff"] = float(np.abs(got - ref).max())
            for b in (1, 8):
                xb, mb = np.repeat(xn, b, 0), np.repeat(mn, b, 0)
                t = _time(lambda: sess.run(None, {"image": xb, "mask": mb}), args.warmup, args.repeats, args.budget_s)
                cases[f"ort_cpu_b{b}"] = {**t, "per_face_ms": round(t["median_ms"] / b, 3)}
        except Exception as e:  # ORT or the exporter missing: say so, keep the other numbers
            res["meta"]["ort_error"] = f"{type(e).__name__}: {e}"
        if torch.cuda.is_available():
            g = gen.cuda()
            for b in (1, 32):
                xb, mb = x.repeat(b, 1, 1, 1).cuda(), m.repeat(b, 1, 1, 1).cuda()
                t = _time(lambda: g(xb, mb), 10, args.repeats, args.budget_s, sync=torch.cuda.synchronize)
                cases[f"cuda_b{b}"] = {**t, "per_face_ms": round(t["median_ms"] / b, 4)}

                def half():
                    with torch.autocast("cuda", dtype=torch.float16):
                        return g(xb, mb)
                t = _time(half, 10, args.repeats, args.budget_s, sync=torch.cuda.synchronize)
                cases[f"cuda_b{b}_fp16"] = {**t, "per_face_ms": round(t["median_ms"] / b, 4)}
    for c in cases.values():
        c["ratio_vs_telea"] = round(c["per_face_ms"] / max(telea["median_ms"], 1e-9), 3)
    emit(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
