"""Throughput of the masked-face synthesis (trainer.data.synthesis) on one core.

Synthesizes ``--n`` masked faces per category on a ``--size`` x ``--size`` aligned crop of scikit-image's
astronaut (BGR, ArcFace 5-point layout scaled to the size; a random image if scikit-image is missing), with
seeds 0..n-1, single-threaded (``cv2.setNumThreads(1)``). The baseline is the SDK's procedural
``sdk.occluders.draw_surgical_mask`` on the same crop. Template loading (``--templates``) happens once,
before timing, and is reported separately.

Output (JSON on stdout, and in ``--out`` if given): per category ``faces_per_s``, ``ms_per_face`` (median
of 5 rounds of n/5 faces) and ``ratio_vs_baseline`` (= our faces/s / baseline faces/s; > 1: faster than
the baseline), plus ``"random"`` (category drawn by the default weights).

    python benchmarks/bench_synthesis.py --n 1000 --templates /path/to/mask_templates --out out/bench_synth.json
    python benchmarks/bench_synthesis.py --sheet /tmp/synth_sheet.png    # also write a contact sheet
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from _report import emit  # noqa: E402  (benchmarks/_report.py; this folder is sys.path[0] when run as a script)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdk.occluders import draw_surgical_mask  # noqa: E402
from trainer.data import CATEGORIES, MaskSynthesizer, SynthesisConfig  # noqa: E402

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])
ASTRONAUT_LM = np.array([[203, 101], [246, 103], [224, 128], [201, 139], [244, 141]], np.float64)


def face_crop(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) BGR aligned face and its 5 landmarks (px)."""
    lm = ARCFACE_112 * (size / 112.0)
    try:
        from skimage import data
    except ImportError:
        return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8), lm
    img = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    m, _ = cv2.estimateAffinePartial2D(ASTRONAUT_LM, lm)
    return cv2.warpAffine(img, m, (size, size)), lm


def rate(fn, n: int, rounds: int = 5) -> dict:
    per = max(1, n // rounds)
    for i in range(min(20, per)):  # warm-up
        fn(i)
    times = []
    seed = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per):
            fn(seed)
            seed += 1
        times.append((time.perf_counter() - t0) / per)
    ms = float(np.median(times)) * 1e3
    return {"faces_per_s": round(1e3 / ms, 1), "ms_per_face": round(ms, 4), "faces": per * rounds}


def contact_sheet(synth: MaskSynthesizer, face: np.ndarray, lm: np.ndarray, path: Path, cols: int = 8) -> None:
    rows = []
    for ci, cat in enumerate(CATEGORIES):
        tiles = []
        for j in range(cols):
            s = synth(face, lm, 1000 * ci + j, cat)
            t = cv2.resize(s.masked, (224, 224), interpolation=cv2.INTER_NEAREST)
            cv2.putText(t, s.kind[:34], (2, 219), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 255, 255), 1)
            tiles.append(t)
        rows.append(np.hstack(tiles))
    cv2.imwrite(str(path), np.vstack(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--templates", type=Path, default=None,
                    help="mask templates folder (anchors.cfg + RGBA PNGs); default: procedural masks only")
    ap.add_argument("--n", type=int, default=1000, help="faces per category (default 1000)")
    ap.add_argument("--size", type=int, default=112, help="crop side in px (default 112)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--sheet", type=Path, default=None, help="write a PNG contact sheet (categories x seeds)")
    args = ap.parse_args(argv)

    cv2.setNumThreads(1)
    face, lm = face_crop(args.size)
    t0 = time.perf_counter()
    synth = MaskSynthesizer(SynthesisConfig(templates_dir=args.templates))
    n_templates = sum(len(v) for v in synth.templates.values())
    load_s = time.perf_counter() - t0

    base = rate(lambda seed: draw_surgical_mask(face, lm, seed=seed), args.n)
    results = {}
    for cat in CATEGORIES + ("random",):
        category = None if cat == "random" else cat
        r = rate(lambda seed: synth(face, lm, seed, category), args.n)
        r["ratio_vs_baseline"] = round(r["faces_per_s"] / base["faces_per_s"], 3)
        results[cat] = r
    report = {
        "benchmark": "masked-face synthesis, single thread",
        "image": f"{args.size}x{args.size} BGR aligned crop",
        "templates_dir": str(args.templates) if args.templates else None,
        "template_views_loaded": n_templates,
        "template_load_s": round(load_s, 3),
        "baseline": {"name": "sdk.occluders.draw_surgical_mask", **base},
        "categories": results,
        "min_faces_per_s": min(r["faces_per_s"] for r in results.values()),
        "host": {"python": platform.python_version(), "machine": platform.machine(), "opencv": cv2.__version__,
                 "numpy": np.__version__, "cpu_count": os.cpu_count()},
    }
    emit(report, args.out)
    if args.sheet:
        contact_sheet(synth, face, lm, args.sheet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
