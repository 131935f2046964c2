"""The whole pipeline on each backend: the torch CUDA backend (fp16, with and without CUDA graphs) vs ONNX Runtime on
the CPU, one JSON document, ratios against the ONNX Runtime CPU baseline measured in the same run.

Two measurements per backend configuration (a :class:`sdk.RecognizerConfig`: ``backend`` x ``device`` x
``cuda_graphs``), same bundle, same inputs:

* **faces/s at batch 1, 8, 32** -- ``Recognizer.embed_faces(frame, faces)`` on a 1920x1080 frame holding that many
  masked faces (the face stages: segment -> complete -> align -> embed, every face as one batch; detection excluded:
  the faces are found once beforehand), median of ``--repeats`` timed calls after a warm-up;
* **frames/s of 4 simulated 1080p streams** -- 4 threads share one Recognizer and each calls ``identify`` on its own
  1920x1080 frames holding ``--faces-per-frame`` masked faces (detection included: MTCNN on ONNX Runtime, on the CPU
  unless this onnxruntime has CUDA), for ``--stream-seconds``; total frames/s and per-stream frames/s.

The bundle: ``--bundle B`` (its stages need torch weights for the torch rows: ``python -m export torch ...``), or by
default one built here with the production sizes -- segmenter width 24, inpainter width 12 (untrained: random
weights, the speed does not depend on them) and the dlib-ResNet embedder from the packaged ``.dat`` -- exported in the
``torch`` format (ONNX + safetensors) into a temporary folder; its segment threshold and ``min_occlusion`` are 0, so
every face is completed (the heaviest path). Faces: the astronaut (scikit-image) under the surgical mask
``sdk.occluders`` draws, resized and tiled into the frame.

    python benchmarks/bench_backends.py --out benchmarks/results/backends.json                 # GPU machine
    python benchmarks/bench_backends.py --device cpu --batches 1,8 --repeats 2 --stream-seconds 5   # CPU dry run
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _report import emit  # noqa: E402  benchmarks/_report.py

log = logging.getLogger("bench_backends")
W, H = 1920, 1080


# ---------------------------------------------------------------------------------------------- the bundle
def build_bundle(out: Path) -> Path:
    """The production-size bench bundle (see the module docstring) in ``out``."""
    import torch

    from export.exporter import ExportConfig, export
    from export.families import StageOptions
    from trainer.checkpoints import save_checkpoint
    from trainer.models.dlib_resnet import default_dat_path
    from trainer.models.inpainter import Generator, InpainterConfig
    from trainer.models.segmenter import OcclusionSegmenter, SegmenterConfig

    torch.manual_seed(0)
    gen = Generator(InpainterConfig()).eval()
    save_checkpoint(out / "inpainter" / "ckpt" / "last", {"generator": gen},
                    {"kind": "inpainter", "models": {"generator": gen.config.to_dict()}, "step": 0})
    seg = OcclusionSegmenter(SegmenterConfig()).eval()
    save_checkpoint(out / "segmenter" / "ckpt" / "last", {"model": seg},
                    {"kind": "segmenter", "models": {"model": seg.config.to_dict()}, "step": 0})
    bundle = out / "bundle"
    export(ExportConfig("torch", "inpainter", out / "inpainter", bundle, base="default-v1",
                        options=StageOptions(min_occlusion=0.0)))
    export(ExportConfig("torch", "segmenter", out / "segmenter", bundle, base=str(bundle),
                        options=StageOptions(threshold=0.0)))
    export(ExportConfig("torch", "embedder", default_dat_path(), bundle, base=str(bundle), name="bench-backends"))
    return bundle


# ---------------------------------------------------------------------------------------------- inputs
def masked_face() -> np.ndarray:
    """The astronaut's head and shoulders (BGR) under the surgical mask the SDK's occluders draw."""
    from skimage import data

    from sdk import Recognizer
    from sdk.occluders import draw_surgical_mask

    astro = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    face = Recognizer("baseline").detect(astro)[0]
    masked, _ = draw_surgical_mask(astro, face.landmarks)
    return masked[0:300, 100:400]  # 300x300 around the face


def frame_with_faces(n: int, tile: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 1920x1080 BGR frame with ``n`` copies of ``tile`` on a grid (scaled to fit), over noise."""
    import cv2

    rng = np.random.default_rng(seed)
    frame = rng.integers(40, 90, (H, W, 3), dtype=np.uint8)
    cols = int(np.ceil(np.sqrt(n * W / H)))
    rows = int(np.ceil(n / cols))
    side = min(W // cols, H // rows, 300)
    t = cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA)
    for k in range(n):
        y, x = (k // cols) * (H // rows), (k % cols) * (W // cols)
        frame[y:y + side, x:x + side] = t
    return frame


# ---------------------------------------------------------------------------------------------- measurements
def faces_per_second(rec, frame: np.ndarray, faces: list, repeats: int) -> dict:
    rec.embed_faces(frame, faces)  # warm-up (and CUDA graph capture)
    times, stage = [], {}
    for _ in range(repeats):
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        rec.embed_faces(frame, faces, timings=t)
        times.append(time.perf_counter() - t0)
        for k, v in t.items():
            stage.setdefault(k, []).append(v)
    med = statistics.median(times)
    return {"faces": len(faces), "median_s": med, "faces_per_s": len(faces) / med,
            "stage_ms": {k: 1e3 * statistics.median(v) for k, v in stage.items()}}


def streams(rec, frames: list[np.ndarray], n_streams: int, seconds: float) -> dict:
    """``n_streams`` threads calling ``identify`` on their own frames for ``seconds``."""
    counts = [0] * n_streams
    faces = [0] * n_streams
    errors: list[BaseException] = []
    rec.identify(frames[0])  # warm-up
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        try:
            k = 0
            while time.perf_counter() < stop:
                faces[i] += len(rec.identify(frames[(i + k) % len(frames)]))
                counts[i] += 1
                k += 1
        except BaseException as e:  # noqa: BLE001 - reported in the JSON
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = {"streams": n_streams, "seconds": wall, "frames": sum(counts), "frames_per_s": sum(counts) / wall,
           "per_stream_frames_per_s": [c / wall for c in counts], "faces_per_frame": sum(faces) / max(sum(counts), 1)}
    if errors:
        out["error"] = repr(errors[0])
    return out


def configs(device: str, graphs: bool) -> dict[str, dict]:
    """Backend configurations to compare (ONNX Runtime on the CPU first: the baseline)."""
    rows = {"ort-cpu": dict(backend="ort", device="cpu")}
    if device == "cuda":
        rows["torch-cuda-fp16"] = dict(backend="torch", device="cuda", precision="fp16")
        if graphs:
            rows["torch-cuda-fp16-graphs"] = dict(backend="torch", device="cuda", precision="fp16", cuda_graphs=True)
        rows["torch-cuda-fp32"] = dict(backend="torch", device="cuda", precision="fp32")
    else:
        rows["torch-cpu-fp32"] = dict(backend="torch", device="cpu", precision="fp32")
    return rows


def machine(device: str) -> dict:
    import onnxruntime as ort
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "onnxruntime": ort.__version__,
            "onnxruntime_providers": ort.get_available_providers()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        from sdk import _cuda_ops

        info["cuda_contextual_attention_kernel"] = bool(_cuda_ops.available())
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="bundle with torch weights (default: build the bench bundle)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where the torch rows run (auto: cuda when torch sees one)")
    p.add_argument("--batches", default="1,8,32", help="faces per call (default 1,8,32)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per batch (median; default 10)")
    p.add_argument("--streams", type=int, default=4, help="simulated 1080p streams (default 4)")
    p.add_argument("--faces-per-frame", type=int, default=4, help="faces in each stream frame (default 4)")
    p.add_argument("--stream-seconds", type=float, default=20.0, help="seconds of streaming per row (default 20)")
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA graphs row")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch CPU threads (torch.set_num_threads; default 1: OpenMP spinning across a busy machine's "
                        "cores costs far more than it gives; ONNX Runtime keeps the bundle's thread counts)")
    p.add_argument("--out", type=Path, help="JSON file (default: stdout)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    import sdk

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.set_num_threads(max(1, args.torch_threads))
    batches = [int(b) for b in args.batches.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="bench_backends_")
    t0 = time.perf_counter()
    bundle = args.bundle or build_bundle(Path(tmp.name))
    build_s = time.perf_counter() - t0
    tile = masked_face()
    base = sdk.Recognizer(bundle, config=sdk.RecognizerConfig(backend="ort", device="cpu"))
    batch_frames = {}
    for b in batches:
        frame = frame_with_faces(b, tile)
        faces = base.detect(frame)
        if len(faces) < b:
            log.warning("batch %d: the detector found %d faces in the grid frame", b, len(faces))
        batch_frames[b] = (frame, faces)
    stream_frames = [frame_with_faces(args.faces_per_frame, tile, seed=s) for s in range(8)]

    command = " ".join(["benchmarks/bench_backends.py", *(sys.argv[1:] if argv is None else argv)])
    built = "built: segmenter w24 + inpainter w12 (random weights) + dlib ResNet, torch format"
    report: dict = {"benchmark": "bench_backends", "command": command,
                    "machine": {**machine(device), "torch_threads": torch.get_num_threads(),
                                "load_average": list(os.getloadavg())},
                    "bundle": str(args.bundle or built), "bundle_build_s": build_s, "rows": {}}
    for name, kw in configs(device, not args.no_graphs).items():
        log.info("%s ...", name)
        rec = sdk.Recognizer(bundle, config=sdk.RecognizerConfig(**kw))
        row: dict = {"config": kw, "engines": rec.engines, "batch": {}}
        for b, (frame, faces) in batch_frames.items():
            row["batch"][str(b)] = faces_per_second(rec, frame, faces, args.repeats)
            log.info("  batch %d: %.1f faces/s", b, row["batch"][str(b)]["faces_per_s"])
        row["streams"] = streams(rec, stream_frames, args.streams, args.stream_seconds)
        log.info("  %d streams: %.2f frames/s", args.streams, row["streams"]["frames_per_s"])
        report["rows"][name] = row
    ref = report["rows"]["ort-cpu"]
    for row in report["rows"].values():
        row["speedup_vs_ort_cpu"] = {
            **{f"batch_{b}": row["batch"][b]["faces_per_s"] / ref["batch"][b]["faces_per_s"] for b in row["batch"]},
            "streams": row["streams"]["frames_per_s"] / ref["streams"]["frames_per_s"]}
    emit(report, args.out)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
