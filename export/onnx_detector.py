"""Detector checkpoint -> ONNX (LTDet) -> model bundle (detect stage ``kind: "ltdet"``, read by
``sdk.detect_onnx.LTDetDetector``).

The graph: input ``"image"`` float32 ``(1, 3, H, W)`` RGB in [-1, 1] (H, W dynamic, multiples of 32), outputs
``"scores"`` ``(1, A)``, ``"boxes"`` ``(1, A, 4)`` (x1, y1, x2, y2 px) and ``"landmarks"`` ``(1, A, 5, 2)``
(px, MTCNN order), anchors decoded in the graph (A depends on H, W). Opset 17, TorchScript exporter
(``dynamo=False``). The exporter checks ONNX Runtime against torch on a 480x640 and a 224x288 input and prints
the maximum differences (scores, and boxes / landmarks of anchors scoring above 0.05).

The bundle copies a base manifest (default: the built-in ``default``: same segment and embed stages) and sets::

    "detect": {"kind": "ltdet", "files": {"model": {"path": "detector.onnx", "bytes": N, "sha256": H}},
               "config": {"score_threshold": T, "nms_iou": 0.4, "pyramid": [1.0, 0.25], "max_side": 1280,
                          "threads": 0},
               "preprocess": {"crop": "frame", "colour": "rgb", "dtype": "float32", "scale": 1/127.5,
                              "offset": -1.0, "layout": "nchw"}}

and ``"format_version": 2`` (:func:`export._bundle.set_stage`). The ``preprocess`` record is the
checkpoint's (the one the net was trained with; older checkpoints: :data:`sdk.detect_onnx.LTDET_PREPROCESS`, what
they were trained with): the graph takes the float input, the SDK normalises the frame by it.

After tracing, the zero Pads torch writes for TensorFlow's 'SAME' padding are folded into their convolutions
(:func:`export._onnx.fold_pads_into_convs`: same outputs to ~1e-7 on scores, ~1.5x faster on ONNX Runtime's CPU
provider). ``--from-onnx`` re-exports an LTDet graph exported earlier without its checkpoint: when the graph is
the BlazeFace-front architecture without a stem, its weights are read back into the torch net
(:func:`trainer.detector.model.net_from_onnx`) and traced again (today's in-graph decoding, ~1 ms less per 640x480
frame than graphs exported before 2026-12-03), else only its pads are folded; the parity check then compares
against the given graph, and the result is re-bundled.

CLI::

    python -m export.onnx_detector --checkpoint out/detector/v1 --out out/bundles/ltdet --bundle-from default
    python -m export.onnx_detector --from-onnx sdk/models/ltdet-v1/detector.onnx --out out/bundles/ltdet \
        --bundle-from sdk/models/ltdet-v1
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
INPUT = "image"
OUTPUTS = ("scores", "boxes", "landmarks")


def export_onnx_bytes(net) -> bytes:
    """Serialised ONNX of a :class:`trainer.detector.model.DetectorNet` (decoding in the graph)."""
    import torch

    from trainer.detector.model import ExportWrapper

    model = ExportWrapper(net).eval()
    dummy = torch.zeros((1, 3, 480, 640))
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buf, opset_version=OPSET, dynamo=False, input_names=[INPUT],
                          output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {2: "h", 3: "w"}, "scores": {1: "a"}, "boxes": {1: "a"},
                                        "landmarks": {1: "a"}},
                          do_constant_folding=True)
    return buf.getvalue()


def _max_diffs(reference, onnx_bytes: bytes, sizes, seed: int) -> dict[str, float]:
    """Max |ORT(onnx_bytes) - reference(x)| over random inputs of ``sizes``; ``reference`` maps an input to the
    three outputs. Scores everywhere, boxes / landmarks on the reference's 200 best-scoring anchors (a trained net
    scores noise low everywhere; the rest are never used)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    out = {"scores": 0.0, "boxes": 0.0, "landmarks": 0.0}
    for h, w in sizes:
        x = rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        ref = reference(x)
        got = sess.run(list(OUTPUTS), {INPUT: x})
        m = np.argsort(-ref[0][0])[:200]
        out["scores"] = max(out["scores"], float(np.abs(ref[0] - got[0]).max()))
        out["boxes"] = max(out["boxes"], float(np.abs(ref[1][0][m] - got[1][0][m]).max()))
        out["landmarks"] = max(out["landmarks"], float(np.abs(ref[2][0][m] - got[2][0][m]).max()))
    return out


def parity(net, onnx_bytes: bytes, sizes=((480, 640), (224, 288)), seed: int = 0) -> dict[str, float]:
    """Max |ORT - torch| over random inputs of ``sizes`` (:func:`_max_diffs`)."""
    import torch

    def reference(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in net.decode(torch.from_numpy(x))]

    return _max_diffs(reference, onnx_bytes, sizes, seed)


def onnx_parity(reference: bytes, onnx_bytes: bytes, sizes=((480, 640), (224, 288)), seed: int = 0
                ) -> dict[str, float]:
    """Max |a - b| of two LTDet graphs on ONNX Runtime over random inputs of ``sizes`` (:func:`_max_diffs`)."""
    import onnxruntime as ort

    ref = ort.InferenceSession(reference, providers=["CPUExecutionProvider"])
    return _max_diffs(lambda x: ref.run(list(OUTPUTS), {INPUT: x}), onnx_bytes, sizes, seed)


def write_bundle(onnx_bytes: bytes, out: Path, base: str = "default", name: str | None = None,
                 config: dict | None = None, description: str | None = None, preprocess=None,
                 refiner_bytes: bytes | None = None) -> Path:
    """Write ``detector.onnx`` and a manifest (base bundle's stages, detect replaced) into ``out``.

    ``preprocess``: the graph's :class:`sdk.preprocess.Preprocess` record (default
    :data:`sdk.detect_onnx.LTDET_PREPROCESS`), written into the detect stage (manifest format version 2).
    ``refiner_bytes``: a landmark refiner graph (O-Net signature), written as ``refiner.onnx`` with file role
    ``refiner``."""
    from export._bundle import set_stage
    from sdk.bundle import BUILTIN_DIR
    from sdk.detect_onnx import LTDET_PREPROCESS

    out.mkdir(parents=True, exist_ok=True)
    base_dir = Path(base) if Path(base).is_dir() else BUILTIN_DIR / base
    raw = json.loads((base_dir / "manifest.json").read_text())
    # files of the base bundle that are relative paths: copy them along
    for st in raw["stages"].values():
        if not st:
            continue
        for ref in st.get("files", {}).values():
            p = ref["path"]
            if not p.startswith("pkg:") and not Path(p).is_absolute() and (base_dir / p).resolve() != (out / p).resolve():
                shutil.copyfile(base_dir / p, out / p)
    (out / "detector.onnx").write_bytes(onnx_bytes)
    cfg = {"score_threshold": 0.5, "nms_iou": 0.4, "pyramid": [1.0, 0.25], "max_side": 1280, "threads": 0}
    cfg.update(config or {})
    files = {"model": {"path": "detector.onnx", "bytes": len(onnx_bytes),
                       "sha256": hashlib.sha256(onnx_bytes).hexdigest()}}
    if refiner_bytes is not None:
        (out / "refiner.onnx").write_bytes(refiner_bytes)
        files["refiner"] = {"path": "refiner.onnx", "bytes": len(refiner_bytes),
                            "sha256": hashlib.sha256(refiner_bytes).hexdigest()}
    set_stage(raw, "detect", {"kind": "ltdet", "files": files, "config": cfg}, preprocess or LTDET_PREPROCESS)
    # the recogniser drops faces scored under match.min_det_score: on LTDet's scale, that is its own threshold
    raw.setdefault("match", {})["min_det_score"] = float(cfg["score_threshold"])
    raw["name"] = name or f"{raw.get('name', base)}+ltdet"
    if description:
        raw["description"] = description
    (out / "manifest.json").write_text(json.dumps(raw, indent=2) + "\n")
    return out


def _refiner_bytes(args: argparse.Namespace, base_dir: Path, base_detect: dict) -> bytes | None:
    """The refiner graph to bundle: ``--refiner`` (file or run folder), else the base LTDet bundle's, else None;
    checked to have O-Net's signature."""
    from sdk.detect import load_mtcnn_session
    from sdk.errors import ModelFileError

    if args.no_refiner:
        return None
    if args.refiner is not None:
        p = args.refiner / "refiner.onnx" if args.refiner.is_dir() else args.refiner
    else:
        ref = (base_detect.get("files") or {}).get("refiner") if base_detect.get("kind") == "ltdet" else None
        if not ref:
            return None
        from sdk.bundle import load_bundle
        from sdk.stages import file_of

        p = file_of(load_bundle(base_dir).stages["detect"], "refiner")  # resolves pkg: references, checks digests
    if not p.is_file():
        raise SystemExit(f"--refiner: {p} is not a file")
    try:
        load_mtcnn_session(p, "onet", 1, ())
    except ModelFileError as e:
        raise SystemExit(f"--refiner: {e}") from None
    return p.read_bytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx_detector", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path,
                     help="detector run folder (its detector.* or ckpt/last.*; older: model.safetensors + "
                          "net_config.json) or checkpoint")
    src.add_argument("--from-onnx", type=Path,
                     help="an LTDet .onnx exported earlier: re-export it (weights read back into the torch net when it "
                          "has no stem, else only its pads folded) and bundle it, no checkpoint")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--bundle-from", default="default", help="base bundle (built-in name or folder)")
    p.add_argument("--name", default=None, help="bundle name in the manifest")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="detection threshold written to the manifest (default: the base bundle's LTDet one, else 0.5)")
    p.add_argument("--no-fold", action="store_true", help="keep the traced graph as it is (no pad folding)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max allowed |ORT - torch| on scores")
    p.add_argument("--refiner", type=Path, default=None,
                   help="landmark refiner: refiner.onnx or the run folder of 'trainer/main.py landmarks' (default: "
                        "the base bundle's refiner, if it has one)")
    p.add_argument("--no-refiner", action="store_true", help="bundle without a landmark refiner")
    p.add_argument("--refine-mirror", choices=("on", "off"), default=None,
                   help="also run the refiner on each mirrored crop and average (LTDetConfig.refine_mirror; default: "
                        "the base bundle's setting)")
    p.add_argument("--upscale-below", type=int, default=None, metavar="PX",
                   help="photos whose longer side is at most PX also run at 2x (LTDetConfig.upscale_below; ltdet-v3: "
                        "320); 0 turns it off (default: the base bundle's setting)")
    p.add_argument("--pad-below", type=int, default=None, metavar="PX",
                   help="photos whose longer side is at most PX also run once centred on a black canvas 1.5x their "
                        "side, at 192 px (LTDetConfig.pad_below: faces that fill the photo; ltdet-v5: 320); 0 turns it "
                        "off (default: the base bundle's setting)")
    args = p.parse_args(argv)
    from export._onnx import fold_pads_into_convs
    from sdk.bundle import BUILTIN_DIR
    from sdk.preprocess import Preprocess

    base_dir = Path(args.bundle_from) if Path(args.bundle_from).is_dir() else BUILTIN_DIR / args.bundle_from
    if not (base_dir / "manifest.json").is_file():
        raise SystemExit(f"--bundle-from {args.bundle_from}: no manifest.json there")
    base_detect = json.loads((base_dir / "manifest.json").read_text())["stages"].get("detect") or {}
    config: dict = {}
    if base_detect.get("kind") == "ltdet":  # re-bundling an LTDet bundle keeps its detection settings
        config.update(base_detect.get("config") or {})
    if args.score_threshold is not None:
        config["score_threshold"] = args.score_threshold
    if args.upscale_below is not None:
        config.pop("upscale_below", None)
        if args.upscale_below > 0:
            config["upscale_below"] = args.upscale_below
    if args.pad_below is not None:
        config.pop("pad_below", None)
        if args.pad_below > 0:
            config["pad_below"] = args.pad_below
    if args.refine_mirror is not None:
        config.pop("refine_mirror", None)
        if args.refine_mirror == "on":
            config["refine_mirror"] = True
    refiner = _refiner_bytes(args, base_dir, base_detect)
    if config.get("refine_mirror") and refiner is None:
        raise SystemExit("--refine-mirror on needs a landmark refiner (--refiner, or a base bundle with one)")
    if args.from_onnx is not None:
        if not args.from_onnx.is_file():
            raise SystemExit(f"--from-onnx {args.from_onnx}: not a file")
        reference = args.from_onnx.read_bytes()
        pre = base_detect.get("preprocess") if base_detect.get("kind") == "ltdet" else None
        data = reference
        try:
            from trainer.detector.model import net_from_onnx

            data = export_onnx_bytes(net_from_onnx(args.from_onnx))
        except (ValueError, ImportError) as e:  # another architecture (a stem), or no .tflite reader: keep its graph
            log.info("%s: graph kept as it is (%s)", args.from_onnx, e)
        if not args.no_fold:
            data = fold_pads_into_convs(data)[0]
        diff = onnx_parity(reference, data)
        against = "the original graph"
    else:
        from trainer.detector.checkpoint import load_detector

        net, meta = load_detector(args.checkpoint)
        pre = (meta.get("preprocess") or {}).get("model")
        data = export_onnx_bytes(net)
        if not args.no_fold:
            data = fold_pads_into_convs(data)[0]
        diff = parity(net, data)
        against = "torch"
    print(json.dumps({"parity_max_abs_diff": diff, "against": against, "megabytes": round(len(data) / 1e6, 3)}))
    if diff["scores"] > args.tolerance:
        raise SystemExit(f"ONNX Runtime differs from {against} by {diff['scores']:.2e} on scores (> {args.tolerance})")
    write_bundle(data, args.out, args.bundle_from, args.name, config, preprocess=Preprocess.from_dict(pre) if pre else None,
                 refiner_bytes=refiner)
    print(f"bundle written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
