"""Inpainter run folder -> ONNX face inpainter -> model bundle with a ``complete`` stage (``kind: "onnx_inpainter"``,
read by ``sdk.complete.OnnxInpainter``).

The graph is ``trainer.models.inpainter.export_onnx``'s: inputs ``"image"`` ``(N, 3, 112, 112)`` float32 in
[-1, 1] (a 112x112 ArcFace crop in **BGR** order -- the inpainter is trained on BGR crops, so there is no channel
flip; the SDK does ``x / 127.5 - 1`` and NHWC -> NCHW) and ``"mask"`` ``(N, 1, 112, 112)`` float32 {0, 1}
(1 = hole); output ``"completed"`` ``(N, 3, 112, 112)`` float32 in [-1, 1], known pixels composited back. Opset 17,
TorchScript exporter (``dynamo=False``), dynamic batch. The exporter checks ONNX Runtime against torch on
real-looking inputs (the astronaut's ArcFace crop and its mirror image under a surgical-mask-shaped hole, plus
noise crops under random holes) and prints the maximum absolute difference (in [-1, 1] units; > 1e-3 raises
for fp32 weights, > 1e-2 for ``--fp16-weights``).

The bundle is a copy of the ``--bundle-from`` bundle's manifest (default: the built-in ``default``: MTCNN +
occlusion segmenter + dlib ResNet), every relative file path rewritten relative to the new folder (``pkg:``
and absolute paths, bytes and sha256 unchanged; the files are referenced, not copied), with the complete
stage set -- so the bundle's mode is ``"deocclusion"``::

    "complete": {"kind": "onnx_inpainter",
                 "files": {"model": {"path": "inpainter.onnx", "bytes": N, "sha256": H}},
                 "config": {"crop": "arcface112", "input": "bgr", "threads": 1, "min_occlusion": 0.5,
                            "dilate": 1}}

At run time, faces whose occlusion probability (segment stage) is >= ``min_occlusion`` have the segmenter's mask
(grown by ``dilate`` px) completed on their crop and pasted back into a copy of the frame before embedding.
``--fp16-weights`` stores the conv weights as float16 (+ a Cast to float32; compute stays fp32), about half the file.

CLI::

    python -m export.onnx_inpainter --generator out/inpainter/id --out bundles/inpainter_v1
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

log = logging.getLogger(__name__)

ONNX_NAME = "inpainter.onnx"
SIZE = 112
#: MTCNN landmarks of the astronaut in ``skimage.data.astronaut()`` (the default detector's output).
ASTRO_LM = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)
#: ORT vs torch tolerance on ``completed`` ([-1, 1] units): fp32 weights, fp16 weights.
TOL_FP32, TOL_FP16 = 1e-3, 1e-2


def export_onnx_bytes(generator) -> bytes:
    """Serialised ONNX model of ``generator`` (a :class:`trainer.models.inpainter.Generator`), fp32, dynamic batch."""
    import copy

    from trainer.models.inpainter import export_onnx

    gen = copy.deepcopy(generator).float().eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(gen, Path(tmp) / ONNX_NAME, size=SIZE, dynamic_batch=True)
        return path.read_bytes()


def parity_inputs(n_random: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(crops, holes)``: (N, 112, 112, 3) uint8 BGR ArcFace crops and (N, 112, 112) uint8 {0, 1} holes.

    The astronaut (scikit-image, when installed) and its mirror image under a surgical-mask-shaped hole drawn
    from the ArcFace template landmarks, then ``n_random`` noise crops under random rectangles."""
    import cv2

    from sdk.align import ARCFACE_112, align
    from sdk.occluders import surgical_mask_polygon

    rng = np.random.default_rng(seed)
    crops, holes = [], []
    mask_hole = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask_hole, [np.round(surgical_mask_polygon(ARCFACE_112)).astype(np.int32)], 1)
    try:
        from skimage import data

        frame = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR
        face = align(frame, ASTRO_LM)
        crops += [face, np.ascontiguousarray(face[:, ::-1])]
        holes += [mask_hole, mask_hole]
    except ImportError:  # scikit-image is optional here
        log.info("scikit-image not installed: parity on noise crops only")
    for _ in range(n_random):
        crops.append(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        h, w = rng.integers(SIZE // 5, SIZE // 2, 2)
        y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
        hole = np.zeros((SIZE, SIZE), np.uint8)
        hole[y:y + h, x:x + w] = 1
        holes.append(hole)
    return np.stack(crops), np.stack(holes)


def torch_completed(generator, crops: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """(N, 3, 112, 112) float32 in [-1, 1]: the torch generator on uint8 BGR crops (the SDK's preprocessing)."""
    import torch

    from sdk.complete import to_model_input

    with torch.no_grad():
        x = torch.from_numpy(to_model_input(crops))
        m = torch.from_numpy(np.ascontiguousarray(holes[:, None], dtype=np.float32))
        return generator.float().eval()(x, m).numpy()


def ort_completed(onnx_bytes: bytes, crops: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """(N, 3, 112, 112) float32: the exported graph on ONNX Runtime (CPU), same inputs as :func:`torch_completed`."""
    from sdk.backends.ort import open_session
    from sdk.complete import OUTPUT, to_model_input

    sess = open_session(onnx_bytes, threads=0, what="the exported inpainter")
    (y,) = sess.run([OUTPUT], {"image": to_model_input(crops),
                               "mask": np.ascontiguousarray(holes[:, None], dtype=np.float32)})
    return y


def write_bundle(onnx_bytes: bytes, out: str | Path, bundle_from: str | Path = "default", name: str | None = None,
                 description: str | None = None, threads: int = 1, min_occlusion: float = 0.5, dilate: int = 1,
                 extra_meta: dict | None = None, preprocess=None) -> Path:
    """Write ``<out>/inpainter.onnx`` and ``<out>/manifest.json``: ``bundle_from``'s manifest, every stage's
    relative paths rewritten relative to ``out``, plus the complete stage. Returns ``out``.

    ``preprocess``: the generator's :class:`sdk.preprocess.Preprocess` record (its checkpoint's; default
    :data:`trainer.preprocess.INPAINTER`: BGR ``x / 127.5 - 1`` NCHW float32, what the graph's ``image`` takes),
    written into the complete stage.

    Raises:
        ValueError: ``bundle_from`` has no segment stage (completion fills the segmenter's holes).
    """
    from export._preprocess import set_stage_preprocess
    from export.onnx_embedder import _copy_stage
    from trainer.preprocess import INPAINTER
    from sdk.bundle import STAGES, find_manifest
    from sdk.embed import file_digest

    out = Path(out)
    src = find_manifest(bundle_from)
    manifest = json.loads(src.read_text())
    if not (manifest.get("stages") or {}).get("segment"):
        raise ValueError(f"{src}: bundle {bundle_from!s} has no segment stage; the complete stage needs one "
                         "(use e.g. --bundle-from default)")
    out.mkdir(parents=True, exist_ok=True)
    stages = {s: (_copy_stage(src, s, out) if manifest["stages"].get(s) else None) for s in STAGES if s != "complete"}
    onnx_path = out / ONNX_NAME
    onnx_path.write_bytes(onnx_bytes)
    stages["complete"] = {
        "kind": "onnx_inpainter",
        "files": {"model": {"path": onnx_path.name, "bytes": onnx_path.stat().st_size,
                            "sha256": file_digest(onnx_path)}},
        "config": {"crop": "arcface112", "input": "bgr", "threads": int(threads),
                   "min_occlusion": float(min_occlusion), "dilate": int(dilate)},
    }
    manifest["stages"] = {s: stages[s] for s in STAGES}
    set_stage_preprocess(manifest, "complete", preprocess or INPAINTER)
    manifest["name"] = name or out.name
    manifest["description"] = description or (
        f"{manifest.get('name')}: the {bundle_from!s} bundle's stages (MTCNN detector, occlusion segmenter, embedder) "
        "plus our GAN face inpainter (DeepFill v1-style generator with contextual attention) on the 112x112 "
        f"ArcFace BGR crop: faces with occlusion probability >= {min_occlusion:g} have the segmenter's mask "
        "completed and pasted back into a copy of the frame before embedding.")
    if extra_meta:
        manifest["inpainter_training"] = extra_meta
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _training_meta(cfg: dict, generator_dir: Path, fp16_weights: bool) -> dict:
    ev = cfg.get("eval") or {}
    return {"run": str(generator_dir), "step": cfg.get("step"), "params": cfg.get("params"),
            "gflops": cfg.get("gflops"), "model": cfg.get("model") or (cfg.get("models") or {}).get("generator"),
            "id_loss": ev.get("id_loss"), "psnr_hole": ev.get("psnr_hole"), "ssim_hole": ev.get("ssim_hole"),
            "telea_psnr_hole": ev.get("telea_psnr_hole"),
            "weights": "float16" if fp16_weights else "float32"}


def _recorded_preprocess(cfg: dict):
    """The generator's Preprocess record in its checkpoint JSON (``None`` for older checkpoints)."""
    from sdk.preprocess import Preprocess

    raw = (cfg.get("preprocess") or {}).get("generator")
    return Preprocess.from_dict(raw) if raw else None


def export(generator_dir: str | Path, out: str | Path, bundle_from: str | Path = "default", name: str | None = None,
           fp16_weights: bool = False, description: str | None = None, threads: int = 1, min_occlusion: float = 0.5,
           dilate: int = 1, verbose: bool = True) -> dict:
    """Inpainter run folder or checkpoint (``trainer.checkpoints``; older ``generator.safetensors`` +
    ``config.json`` folders too) -> bundle folder ``out``.

    Returns ``{"bundle", "onnx_bytes", "max_abs_diff", "mode"}`` (``max_abs_diff``: ORT vs torch on
    ``completed``, [-1, 1] units; with ``fp16_weights`` also ``"fp32_onnx_bytes"`` and
    ``"vs_fp32_onnx_max_abs_diff"``).

    Raises:
        RuntimeError: ONNX Runtime disagrees with torch beyond the tolerance (1e-3; 3e-2 for fp16 weights).
    """
    from trainer.models.inpainter import load_checkpoint

    generator_dir = Path(generator_dir)
    gen, cfg = load_checkpoint(generator_dir)
    blob32 = export_onnx_bytes(gen)
    blob = blob32
    if fp16_weights:
        from export.onnx_embedder import to_fp16_weights

        blob = to_fp16_weights(blob32)
    crops, holes = parity_inputs()
    ref = torch_completed(gen, crops, holes)
    got = ort_completed(blob, crops, holes)
    diff = float(np.abs(ref - got).max())
    res: dict = {"max_abs_diff": diff}
    if fp16_weights:
        res.update(fp32_onnx_bytes=len(blob32),
                   vs_fp32_onnx_max_abs_diff=float(np.abs(ort_completed(blob32, crops, holes) - got).max()))
    tol = TOL_FP16 if fp16_weights else TOL_FP32
    if not diff <= tol:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: max |diff| {diff:.3g} on 'completed' "
                           f"(tolerance {tol:g})")
    bundle = write_bundle(blob, out, bundle_from=bundle_from, name=name, description=description, threads=threads,
                          min_occlusion=min_occlusion, dilate=dilate,
                          extra_meta=_training_meta(cfg, generator_dir, fp16_weights),
                          preprocess=_recorded_preprocess(cfg))
    from sdk.bundle import load_bundle

    mode = load_bundle(bundle).mode  # validates the manifest and every file it names
    if verbose:
        log.info("exported %s -> %s (%.2f MB%s, mode %s); ORT vs torch max |diff| = %.3g", generator_dir,
                 bundle / ONNX_NAME, len(blob) / 1e6, ", fp16 weights" if fp16_weights else "", mode, diff)
    return {"bundle": str(bundle), "onnx_bytes": len(blob), "mode": mode, **res}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx_inpainter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, type=Path,
                   help="inpainter run folder (its ckpt/last.*, trainer/main.py inpainter --out) or checkpoint; "
                        "older generator.safetensors + config.json folders load too")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write (manifest.json + inpainter.onnx)")
    p.add_argument("--bundle-from", default="default",
                   help="bundle whose stages are copied (built-in name or folder; needs a segment stage); "
                        "default: default")
    p.add_argument("--name", default=None, help="bundle name (default: the --out folder name)")
    p.add_argument("--description", default=None, help="bundle description (default: a generic one)")
    p.add_argument("--fp16-weights", action="store_true",
                   help="store conv weights as float16 (+ Cast to float32 in the graph): about half the file size")
    p.add_argument("--min-occlusion", type=float, default=0.5,
                   help="complete faces whose occlusion probability is at least this (default 0.5)")
    p.add_argument("--dilate", type=int, default=1, help="grow the segmenter's mask by this many px (default 1)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads in the bundle (default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    r = export(args.generator, args.out, bundle_from=args.bundle_from, name=args.name, fp16_weights=args.fp16_weights,
               description=args.description, threads=args.threads, min_occlusion=args.min_occlusion,
               dilate=args.dilate)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
