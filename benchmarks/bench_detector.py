"""Face-detector throughput: LTDet (ONNX Runtime) vs MTCNN (the SDK's cascade) vs dlib HOG, same run, same frames.

Frames are scenes composed by the detector's own compositor from scikit-image's astronaut (no data folder):
640x480 with 1 face and with 4 faces, and 1280x720 with 4 faces (face sizes 40-200 px); plus a small photo, the masked
astronaut cut tight (160x160), where LTDet's passes for small photos run (``--compare`` a bundle without them to
see their cost). Each detector runs
with ``--threads`` ONNX Runtime threads (dlib HOG is single-threaded, 1 upsampling: faces from ~40 px, the
setting the evaluation uses). Each case runs ``--rounds`` interleaved rounds of ``--calls`` calls after a
warm-up (so a burst of load on a shared machine hits every detector), and reports the median ms per frame,
images/s and the ratio to MTCNN, plus the 1-minute load average before and after.

    python benchmarks/bench_detector.py --model sdk/models/ltdet-v1 --out benchmarks/results/detector.json
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


def frames() -> dict[str, np.ndarray]:
    from trainer.detector.scenes import SceneConfig, SceneRenderer
    from trainer.detector.data import astronaut_labels

    ls, table = astronaut_labels()
    out = {}
    for name, (h, w, n) in {"640x480_1face": (480, 640, 1), "640x480_4faces": (480, 640, 4),
                            "1280x720_4faces": (720, 1280, 4)}.items():
        r = SceneRenderer(ls, SceneConfig(height=h, width=w, faces=(n, n), face_px=(40, 200), distractors=(1, 1),
                                          flip=False, background_split="eval"),
                          image_loader=lambda p: table[str(p)])
        out[name] = r.render(3).image
    out["160x160_tight_masked"] = tight_masked_photo()
    return out


def tight_masked_photo(side: int = 160) -> np.ndarray:
    """The astronaut with a drawn surgical mask, cut to a square 0.7x her face box (forehead and chin off the edge)
    and resized to ``side`` px: a small photo, where LTDet's ``upscale_below`` / ``pad_below`` passes run."""
    from skimage.data import astronaut

    from sdk.demo import tight_crop
    from sdk.detect import MTCNNDetector
    from sdk.occluders import draw_surgical_mask

    img = np.ascontiguousarray(astronaut()[..., ::-1])
    face = MTCNNDetector.from_package().detect(img)[0]
    return tight_crop(draw_surgical_mask(img, face.landmarks)[0], face.box, 0.7, side)


def detectors(model: str, threads: int, pyramids: list[str], compare: list[str] = ()) -> dict:
    import dlib

    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from sdk.detect import DetectorConfig, MTCNNDetector

    spec = load_bundle(model).stages["detect"]
    out = {}
    for p in [None] + pyramids:
        opt = {"threads": threads} if p is None else {"threads": threads, "pyramid": [float(v) for v in p.split(",")]}
        lt = build_stage(spec, opt)
        lt.prepare()
        out["ltdet" if p is None else f"ltdet@{float(p.split(',')[0]):g}"] = lt.detect
    for other in compare:  # another LTDet bundle (e.g. the graph before an optimisation), its own settings
        lt = build_stage(load_bundle(other).stages["detect"], {"threads": threads})
        lt.prepare()
        out[f"ltdet[{Path(other).name}]"] = lt.detect
    mt = MTCNNDetector.from_package(DetectorConfig(threads=threads))
    hog = dlib.get_frontal_face_detector()
    mt.prepare()
    return {**out, "mtcnn": mt.detect, "dlib_hog": lambda f: hog(f[..., ::-1].copy(), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "sdk" / "models" / "ltdet-v1"), help="bundle with an ltdet stage")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--pyramids", nargs="*", default=["0.75,0.1875", "0.5,0.125"], metavar="S1,S2",
                   help="extra LTDet pyramid settings timed as ltdet@S1")
    p.add_argument("--compare", nargs="*", default=[], metavar="BUNDLE",
                   help="more LTDet bundles timed in the same run as ltdet[<folder name>] (e.g. an older graph)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = p.parse_args(argv)
    fr = frames()
    dets = detectors(args.model, args.threads, args.pyramids, args.compare)
    load0 = os.getloadavg()
    times: dict[tuple[str, str], list[float]] = {}
    found: dict[tuple[str, str], int] = {}
    for _ in range(args.rounds):
        for fname, f in fr.items():
            for dname, fn in dets.items():
                fn(f)  # warm-up of this size
                for _ in range(args.calls):
                    t = time.perf_counter()
                    r = fn(f)
                    times.setdefault((fname, dname), []).append(time.perf_counter() - t)
                found[(fname, dname)] = len(r)
    cases = {}
    for fname in fr:
        mt = float(np.median(times[(fname, "mtcnn")]))
        cases[fname] = {}
        for dname in dets:
            ms = float(np.median(times[(fname, dname)]))
            cases[fname][dname] = {"ms_median": round(ms * 1e3, 2),
                                   "ms_p95": round(float(np.percentile(times[(fname, dname)], 95)) * 1e3, 2),
                                   "images_per_s": round(1.0 / ms, 2), "speedup_vs_mtcnn": round(mt / ms, 2),
                                   "faces_found": found[(fname, dname)]}
    emit({"benchmark": "detector", "threads": args.threads, "model": args.model, "cases": cases,
          "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "load_avg_before": load0,
                      "load_avg_after": os.getloadavg()}, "time": time.strftime("%Y-%m-%d %H:%M")}, args.out)
    for fname, c in cases.items():
        print(f"{fname:18s} " + "  ".join(f"{d}: {v['ms_median']:7.1f} ms ({v['speedup_vs_mtcnn']:.2f}x)"
                                          for d, v in c.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
