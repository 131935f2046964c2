"""Student checkpoint -> ONNX embedder -> model bundle (``kind: "onnx_embedder"``, read by ``sdk.embed_generic``).

The graph takes what the SDK hands an embedder -- uint8 RGB chips, NHWC, ``(N, 150, 150, 3)``, input ``"chips"``
-- and does the preprocessing itself like dlib's graph (``(x - dlib means) / 256``, inside the network's first
op), returning the raw 128-d ``"descriptor"`` (the SDK L2-normalises).  ResNet-18 / MobileFaceNet students
(``trainer/main.py student --arch resnet18|mobilefacenet``) export the same way on 112x112 ArcFace crops
(``"crop": "arcface112"``, no shape predictor, ``dim`` = their embedding width).  Opset 17, TorchScript exporter
(``dynamo=False``), dynamic batch.  The exporter checks ONNX Runtime against torch on random and real-looking
chips and prints the maximum difference.

The bundle is a copy of the baseline manifest (same MTCNN detector, ``pkg:`` paths) with the embed stage
replaced::

    "embed": {"kind": "onnx_embedder",
              "files": {"model": {"path": "student.onnx", "bytes": N, "sha256": H},
                        "shape_predictor": <the baseline's pkg: path>},
              "config": {"crop": "dlib150", "chip_landmarks": "dlib5", "input": "uint8_nhwc_rgb", "dim": 128,
                         "threads": 1}}

``--fp16-weights`` stores the conv / fc weights as float16 initializers, each followed by a ``Cast`` to float32
(compute stays fp32 and ONNX Runtime's CPU provider runs it), halving the file (22.5 -> ~11.3 MB); input/output
names, dtypes and shapes are unchanged.  ``--segment-from default`` copies another bundle's segment stage, its
file paths rewritten relative to the new bundle (``../default/segmenter.onnx``, same bytes / sha256).

CLI: ``python -m export.onnx_embedder --checkpoint out/student/student.safetensors --out bundles/student_v1``
(``--checkpoint`` also takes a training checkpoint ``ckpt/last.safetensors`` or a dlib ``.dat``).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

# the student -> ONNX graph core lives with the students (the trainer embeds through it too)
from trainer.student.graph import (CHIP, INPUT_NAME, OPSET, OUTPUT_NAME, crop_of, export_onnx_bytes,  # noqa: F401
                                   ort_descriptors, ort_session)


#: ops whose weight input (index 1) is stored as float16 by :func:`to_fp16_weights`.
FP16_WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
FP16_SUFFIX = "_fp16"


def to_fp16_weights(onnx_bytes: bytes, min_size: int = 1024) -> bytes:
    """Store the float32 weight initializers of Conv / MatMul / Gemm (input 1, >= ``min_size`` elements) as
    float16, each followed by a ``Cast`` back to float32 under its original name, so the graph still computes
    in fp32.  Biases, affine scales and the input means stay float32 (they are tiny)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    targets = []
    for node in g.node:
        if node.op_type in FP16_WEIGHT_OPS and len(node.input) > 1:
            name = node.input[1]
            t = inits.get(name)
            if (t is not None and name not in graph_inputs and name not in targets
                    and t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) >= min_size):
                targets.append(name)
    casts = []
    for name in targets:
        t = inits[name]
        w = numpy_helper.to_array(t)
        if np.abs(w).max(initial=0.0) >= 65504.0:
            raise ValueError(f"initializer {name!r} overflows float16 (max |w| = {np.abs(w).max():.3g})")
        t.CopyFrom(numpy_helper.from_array(w.astype(np.float16), name + FP16_SUFFIX))
        casts.append(helper.make_node("Cast", [name + FP16_SUFFIX], [name], name=name + "_to_fp32",
                                      to=TensorProto.FLOAT))
    nodes = casts + list(g.node)  # casts first: the node list stays topologically sorted
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def torch_descriptors(net, chips: np.ndarray) -> np.ndarray:
    """(N, dim) raw fp32 torch descriptors of uint8 RGB crops (N, side, side, 3) (side: 150 dlib, 112 others)."""
    import torch

    with torch.no_grad():
        return net.eval()(torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()).numpy()


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``1 - cos(a_i, b_i)``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - (a * b).sum(1)


def parity(net, onnx_bytes: bytes, chips: np.ndarray | None = None, cosine: bool = False):
    """Max |ORT - torch| over the raw descriptors of ``chips`` (default: 4 random uint8 chips); with
    ``cosine=True`` returns ``(max |diff|, max cosine distance)``."""
    if chips is None:
        side = crop_of(net)[1]
        chips = np.random.default_rng(0).integers(0, 256, (4, side, side, 3), dtype=np.uint8)
    ref = torch_descriptors(net, chips)
    got = ort_descriptors(ort_session(onnx_bytes), chips)
    diff = float(np.abs(ref - got).max())
    return (diff, float(cosine_distance(ref, got).max())) if cosine else diff


def _sha256(path: Path) -> str:
    from sdk.embed import file_digest

    return file_digest(path)


def _copy_stage(src_manifest: Path, stage: str, out: Path) -> dict | None:
    """Stage ``stage`` of the manifest ``src_manifest``, relative file paths rewritten relative to ``out``."""
    import os

    spec = json.loads(src_manifest.read_text()).get("stages", {}).get(stage)
    if spec is None:
        raise ValueError(f"{src_manifest}: no {stage!r} stage to copy")
    spec = copy.deepcopy(spec)
    for role, f in (spec.get("files") or {}).items():
        f = {"path": f} if isinstance(f, str) else f
        p = str(f["path"])
        if not p.startswith("pkg:") and not Path(p).is_absolute():
            f["path"] = Path(os.path.relpath(src_manifest.parent.resolve() / p, out.resolve())).as_posix()
        spec["files"][role] = f
    return spec


def write_bundle(onnx_bytes: bytes, out: str | Path, name: str = "student_v1", description: str | None = None,
                 base: str | None = "baseline", extra_meta: dict | None = None, threads: int = 1,
                 segment_from: str | Path | None = None, crop: str = "dlib150", dim: int = 128) -> Path:
    """Write ``<out>/student.onnx`` and ``<out>/manifest.json`` (baseline manifest, embed stage replaced; with
    ``segment_from``, that bundle's segment stage, its relative paths rewritten to point into it)."""
    from export._preprocess import set_stage_preprocess
    from sdk.bundle import find_manifest
    from trainer.preprocess import graph_input, student_preprocess

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "student.onnx"
    onnx_path.write_bytes(onnx_bytes)
    base_path = find_manifest(base)
    manifest = json.loads(base_path.read_text())
    base_embed = manifest["stages"]["embed"]
    sp = base_embed.get("files", {}).get("shape_predictor")
    if sp is None or not str(sp["path"] if isinstance(sp, dict) else sp).startswith("pkg:"):
        raise ValueError(f"{base_path}: the base bundle's embed stage has no pkg: shape_predictor to reuse")
    files = {"model": {"path": onnx_path.name, "bytes": onnx_path.stat().st_size, "sha256": _sha256(onnx_path)}}
    if crop == "dlib150":
        files["shape_predictor"] = sp
    manifest["name"] = name
    manifest["description"] = description or (
        "Student v1 (no completion): MTCNN detector + a dlib-ResNet-initialised student fine-tuned on synthetic "
        "masked faces to reproduce dlib's relations on the clean faces (relational distillation), run by ONNX Runtime.")
    config = {"crop": crop, "input": "uint8_nhwc_rgb", "dim": int(dim), "threads": int(threads)}
    if crop == "dlib150":
        config["chip_landmarks"] = "dlib5"
    manifest["stages"]["embed"] = {"kind": "onnx_embedder", "files": files, "config": config}
    # the graph takes uint8 RGB crops, NHWC, and normalises inside (the student's record folded in)
    set_stage_preprocess(manifest, "embed", graph_input(student_preprocess(crop)))
    if segment_from is not None:
        manifest["stages"]["segment"] = _copy_stage(find_manifest(segment_from), "segment", out)
    if extra_meta:
        manifest["training"] = extra_meta
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def export(checkpoint: str | Path, out: str | Path, name: str = "student_v1", verbose: bool = True,
           fp16_weights: bool = False, description: str | None = None, segment_from: str | Path | None = None,
           threads: int = 1) -> dict:
    """Checkpoint -> bundle; returns ``{"bundle", "onnx_bytes", "max_abs_diff", "max_cos_dist"}`` (ORT vs torch
    fp32; with ``fp16_weights`` also ``"fp32_onnx_bytes"``, ``"vs_fp32_onnx_max_abs_diff"``,
    ``"vs_fp32_onnx_max_cos_dist"``)."""
    from trainer.student.models import load_student_weights

    net = load_student_weights(checkpoint)
    crop, side = crop_of(net)
    blob32 = export_onnx_bytes(net)
    blob = to_fp16_weights(blob32) if fp16_weights else blob32
    chips = np.random.default_rng(0).integers(0, 256, (4, side, side, 3), dtype=np.uint8)
    try:
        from skimage import data
        import cv2

        face = cv2.resize(data.astronaut()[30:230, 130:330], (side, side))  # RGB
        chips = np.concatenate([chips, face[None]])
    except Exception:  # noqa: BLE001 - scikit-image is optional here
        pass
    diff, cos = parity(net, blob, chips, cosine=True)
    res = {"max_abs_diff": diff, "max_cos_dist": cos}
    if fp16_weights:
        a, b = ort_descriptors(ort_session(blob32), chips), ort_descriptors(ort_session(blob), chips)
        res.update(fp32_onnx_bytes=len(blob32), vs_fp32_onnx_max_abs_diff=float(np.abs(a - b).max()),
                   vs_fp32_onnx_max_cos_dist=float(cosine_distance(a, b).max()))
    meta = {"checkpoint": str(checkpoint), "weights": "float16" if fp16_weights else "float32"}
    # training config: ckpt/<name>.json (a checkpoint's meta) or the run folder's config.json (student.safetensors)
    for cfg in (Path(checkpoint).with_suffix(".json"), Path(checkpoint).parent / "config.json"):
        if cfg.is_file() and cfg.suffix == ".json" and cfg.resolve() != Path(checkpoint).resolve():
            try:
                raw = json.loads(cfg.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(raw, dict) and ("config" in raw or "lr" in raw):
                meta["config"] = raw.get("config", raw)
                break
    # fp16 weights: ~3 significant digits per weight -> ~1e-3 on raw descriptors, ~1e-5 cosine distance
    tol_abs, tol_cos = (2e-2, 5e-3) if fp16_weights else (1e-3, 1e-4)
    if diff > tol_abs or cos > tol_cos:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: max |diff| {diff:.3g} (tolerance {tol_abs:g}), "
                           f"max cosine distance {cos:.3g} (tolerance {tol_cos:g})")
    dim = int(torch_descriptors(net, chips[:1]).shape[1])
    bundle = write_bundle(blob, out, name=name, description=description, extra_meta=meta, threads=threads,
                          segment_from=segment_from, crop=crop, dim=dim)
    if verbose:
        print(f"exported {checkpoint} -> {bundle / 'student.onnx'} ({len(blob) / 1e6:.1f} MB"
              f"{', fp16 weights' if fp16_weights else ''}); ORT vs torch max |diff| = {diff:.3g}, "
              f"max cosine distance = {cos:.3g}")
    return {"bundle": str(bundle), "onnx_bytes": len(blob), **res}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx_embedder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="student weights: student.safetensors, a training checkpoint (ckpt/*.safetensors) or a dlib .dat")
    p.add_argument("--out", required=True, help="bundle folder to write (manifest.json + student.onnx)")
    p.add_argument("--name", default=None, help="bundle name (default: the folder name)")
    p.add_argument("--description", default=None, help="bundle description (default: a generic student v1 one)")
    p.add_argument("--fp16-weights", action="store_true",
                   help="store conv/fc weights as float16 (+ Cast to float32 in the graph): half the file size")
    p.add_argument("--segment-from", default=None,
                   help="copy this bundle's segment stage (built-in name or folder), e.g. default")
    args = p.parse_args(argv)
    r = export(args.checkpoint, args.out, name=args.name or Path(args.out).name, fp16_weights=args.fp16_weights,
               description=args.description, segment_from=args.segment_from)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
