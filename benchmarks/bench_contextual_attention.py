"""Contextual attention: the fused CUDA kernel vs the PyTorch layer vs the bytes / FLOPs floor, one JSON document.

For every case (channels C, map side H = W, batch B, dtype) on the device:

* ``torch_ms``  -- ``trainer.models.contextual_attention.contextual_attention`` on the same device and dtype (the
  F.fold formulation, its fastest; TF32 off, as for the parity tests), median of ``--repeats`` runs timed with CUDA
  events (``time.perf_counter`` on the CPU);
* ``kernel_ms`` -- ``sdk._cuda_ops.contextual_attention`` (CUDA only; on the CPU: the C++ CPU kernel, float32);
* ``floor_ms``  -- max(FLOPs / peak FLOP/s, bytes / peak bandwidth) of the layer: FLOPs of the reference formulation
  ``2 B Pf L (C k^2 + C (2 rate)^2)`` (score and paste matmuls), bytes = f, b, mask read once + y written once. Two
  peaks are reported: the card's float32 FMA peak (what the kernel computes with: float32 arithmetic on the CUDA
  cores, also for float16 storage) and, for float16, its dense tensor-core peak. Peaks come from a table by compute
  capability x SMs x clock (``sdk._native.core.cuda_device_properties``), bandwidth from the memory clock and bus;
* ``speedup`` = torch_ms / kernel_ms, ``kernel_vs_floor`` = kernel_ms / floor_ms (float32-FMA floor);
* errors vs the golden reference (``kernels/contextual_attention/reference.py``, float64, on the first
  ``--ref-samples`` samples -- one of each mask kind -- with the inputs rounded to the dtype): max absolute and
  relative (max |err| / max |ref|) for the kernel and the torch layer, checked against ``TOLERANCES``
  ``kernel_fp32_relative`` / ``kernel_fp16_relative`` (``passes``).

``--inpainter`` adds the whole inpainter (112x112 crops, width-12 generator, random weights unless ``--generator``):
faces/s at batch 1, 8, 32 on the device with the torch layer and with the kernel (``sdk._cuda_ops.use_cuda_kernel``),
and ONNX Runtime on the CPU (all cores), same inputs.

    python benchmarks/bench_contextual_attention.py --out benchmarks/results/contextual_attention.json
    python benchmarks/bench_contextual_attention.py --device cpu --sizes 28 --batches 1 --repeats 3   # dry run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _report import emit  # noqa: E402  benchmarks/_report.py

# float32 FMA lanes per SM and dense float16 tensor-core FLOPs per clock per SM, by compute capability
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128,
              (10, 0): 128, (12, 0): 128}
TC_FP16_FLOPS_PER_CLK = {(7, 0): 1024, (7, 5): 1024, (8, 0): 2048, (8, 6): 1024, (8, 7): 1024, (8, 9): 1024,
                         (9, 0): 4096, (10, 0): 8192, (12, 0): 2048}


def device_peaks(core, device: int = 0) -> dict:
    """The card's name and its float32 / float16-tensor FLOP/s and DRAM bytes/s (table x SMs x clock)."""
    p = core.cuda_device_properties(device)
    cc = tuple(p["compute_capability"])
    clock = p["clock_khz"] * 1e3
    lanes = FP32_LANES.get(cc, 128)
    tc = TC_FP16_FLOPS_PER_CLK.get(cc, 1024)
    return {"name": p["name"], "compute_capability": list(cc), "multiprocessors": p["multiprocessors"],
            "clock_ghz": round(clock / 1e9, 3),
            "fp32_flops": 2.0 * lanes * p["multiprocessors"] * clock,
            "fp16_tensor_flops": float(tc) * p["multiprocessors"] * clock,
            "dram_bytes_per_s": 2.0 * p["memory_clock_khz"] * 1e3 * p["memory_bus_width_bits"] / 8,
            "source": "table by compute capability x multiprocessors x clock (cudaDeviceGetAttribute)"}


def layer_cost(B: int, C: int, H: int, W: int, esize: int, ksize=3, rate=2) -> tuple[float, float]:
    """(FLOPs, bytes) of one call with f = b of H x W (reference formulation)."""
    Pf = L = (H // rate) * (W // rate)
    flops = 2.0 * B * Pf * L * (C * ksize * ksize + C * (2 * rate) ** 2)
    nbytes = float(esize) * B * (3 * C * H * W + H * W)
    return flops, nbytes


def time_it(fn, repeats: int, warmup: int, cuda: bool) -> float:
    """Median milliseconds of ``fn()``."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def errors(got: np.ndarray, want: np.ndarray) -> dict:
    err = float(np.abs(got.astype(np.float64) - want).max())
    return {"max_abs": err, "relative": err / max(float(np.abs(want).max()), 1e-30)}


def bench_case(ref, C, H, B, dtype, device, args, peaks, core) -> dict:
    import torch

    from trainer.models.contextual_attention import contextual_attention as torch_layer

    cuda = device.type == "cuda"
    tdt = getattr(torch, dtype)
    f, b, m = ref.make_inputs(B, C, H, H, rate=2, seed=C + H + B, self_attention=True)
    if dtype == "float16":
        f = f.astype(np.float16).astype(np.float32)
    tf = torch.from_numpy(f).to(device, tdt)
    tm = torch.from_numpy(m).to(device, tdt)
    case = {"channels": C, "size": H, "batch": B, "dtype": dtype}
    with torch.no_grad():
        torch_fn = lambda: torch_layer(tf, tf, tm, export_friendly=False)  # noqa: E731
        case["torch_ms"] = time_it(torch_fn, args.repeats, args.warmup, cuda)
        y_torch = torch_fn().float().cpu().numpy()
        if cuda:
            from sdk import _cuda_ops

            kern = lambda: _cuda_ops.contextual_attention(tf, tf, tm)  # noqa: E731
            case["plan"] = json.loads(core.contextual_attention_cuda_plan(B, C, H, H, H, H, B))
        elif dtype == "float32":
            from sdk import _native

            fn32, m32 = np.ascontiguousarray(f), np.ascontiguousarray(m)
            kern = lambda: torch.from_numpy(_native.contextual_attention(fn32, fn32, m32)[0])  # noqa: E731
        else:
            kern = None
        if kern is not None:
            case["kernel_ms"] = time_it(kern, args.repeats, args.warmup, cuda)
            y_kern = kern().float().cpu().numpy()
            case["speedup"] = case["torch_ms"] / case["kernel_ms"]
    n = min(B, args.ref_samples)
    want = ref.reference_vectorized(f[:n].astype(np.float64), f[:n].astype(np.float64), m[:n])
    case["torch_error"] = errors(y_torch[:n], want)
    bound = ref.TOLERANCES["kernel_fp16_relative" if dtype == "float16" else "kernel_fp32_relative"]
    if "kernel_ms" in case:
        case["kernel_error"] = errors(y_kern[:n], want)
        case["passes"] = case["kernel_error"]["relative"] < bound
    flops, nbytes = layer_cost(B, C, H, H, 2 if dtype == "float16" else 4)
    case["gflop"], case["mbytes"] = flops / 1e9, nbytes / 1e6
    if peaks:
        floor = max(flops / peaks["fp32_flops"], nbytes / peaks["dram_bytes_per_s"]) * 1e3
        case["floor_ms"] = floor
        if dtype == "float16":
            case["floor_tensor_ms"] = max(flops / peaks["fp16_tensor_flops"], nbytes / peaks["dram_bytes_per_s"]) * 1e3
        if "kernel_ms" in case:
            case["kernel_vs_floor"] = case["kernel_ms"] / floor
            case["kernel_tflops"] = flops / case["kernel_ms"] / 1e9
    return case


def bench_inpainter(device, args) -> dict:
    """faces/s of the whole inpainter: torch layer vs the kernel on the device, ONNX Runtime on the CPU."""
    import torch

    from export.families.inpainter import FAMILY
    from sdk.backends.ort import open_session
    from trainer.models.inpainter import Generator, InpainterConfig, load_checkpoint

    if args.generator:
        gen, _ = load_checkpoint(args.generator)
    else:
        torch.manual_seed(0)
        gen = Generator(InpainterConfig(width=12)).eval()
    sess = open_session(FAMILY.onnx_bytes(gen), threads=0, what="the inpainter")
    cuda = device.type == "cuda"
    gen = gen.to(device).eval()
    rows = []
    for B in (1, 8, 32):
        x = torch.rand(B, 3, 112, 112) * 2 - 1
        m = torch.zeros(B, 1, 112, 112)
        m[:, :, 56:100, 20:92] = 1
        row = {"batch": B}
        feed = {"image": x.numpy(), "mask": m.numpy()}
        row["ort_cpu_faces_per_s"] = B / (time_it(lambda: sess.run(None, feed), max(3, args.repeats // 4), 1,
                                                  False) / 1e3)
        xd, md = x.to(device), m.to(device)
        with torch.no_grad():
            row["torch_faces_per_s"] = B / (time_it(lambda: gen(xd, md), args.repeats, args.warmup, cuda) / 1e3)
            if cuda:
                from sdk import _cuda_ops

                _cuda_ops.use_cuda_kernel(gen)
                row["kernel_faces_per_s"] = B / (time_it(lambda: gen(xd, md), args.repeats, args.warmup, cuda) / 1e3)
                _cuda_ops.use_cuda_kernel(gen, enable=False)
        rows.append(row)
    return {"generator": str(args.generator) if args.generator else "random weights, width 12", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--sizes", default="28,32,48,64", help="feature-map sides (default 28,32,48,64)")
    p.add_argument("--batches", default="1,32", help="batch sizes (default 1,32)")
    p.add_argument("--channels", default="48", help="channel counts (default 48: the inpainter's layer)")
    p.add_argument("--dtypes", default="float32,float16", help="float32,float16 (CPU: float32 only)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per case (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    p.add_argument("--ref-samples", type=int, default=4, help="samples checked against the float64 reference")
    p.add_argument("--inpainter", action="store_true", help="also time the whole inpainter (faces/s)")
    p.add_argument("--generator", type=Path, help="inpainter run folder (default: random weights)")
    p.add_argument("--out", type=Path, help="JSON file (default: stdout)")
    args = p.parse_args(argv)

    import torch

    from _kernel_refs import load_reference
    from sdk import _native

    ref = load_reference("contextual_attention")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    core = _native.core
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    peaks = device_peaks(core) if device.type == "cuda" else None
    dtypes = [d for d in args.dtypes.split(",") if device.type == "cuda" or d == "float32"]
    cases = []
    for C in (int(v) for v in args.channels.split(",")):
        for H in (int(v) for v in args.sizes.split(",")):
            for B in (int(v) for v in args.batches.split(",")):
                for dt in dtypes:
                    case = bench_case(ref, C, H, B, dt, device, args, peaks, core)
                    cases.append(case)
                    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in case.items()
                                      if k not in ("plan", "torch_error", "kernel_error")}), file=sys.stderr)
    report = {"benchmark": "contextual_attention", "device": str(device), "peaks": peaks,
              "host": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "cases": cases}
    big = [c for c in cases if c["batch"] == max(c2["batch"] for c2 in cases) and c["size"] == 64
           and "kernel_ms" in c]
    if big:
        report["targets"] = {f"{c['dtype']}_C{c['channels']}": {
            "speedup_vs_torch": c["speedup"], "target_speedup": 5.0, "kernel_vs_floor": c.get("kernel_vs_floor"),
            "target_vs_floor": 3.0} for c in big}
    if args.inpainter:
        report["inpainter"] = bench_inpainter(device, args)
    emit(report, args.out)
    return 0 if all(c.get("passes", True) for c in cases) and all(math.isfinite(c["torch_ms"]) for c in cases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
