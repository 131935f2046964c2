"""Segmenter checkpoint -> ONNX occlusion segmenter -> model bundle (``kind: "onnx_segmenter"``, read by
``sdk.segment.OnnxSegmenter``).

The graph takes what the SDK's aligner gives -- uint8 **BGR** 112x112 ArcFace crops, NHWC, ``(N, 112, 112, 3)``,
input ``"crops"`` -- and does the preprocessing itself (``x / 127.5 - 1``, NHWC -> NCHW; the network was trained
on BGR, so there is no channel flip). Outputs: ``"mask_prob"`` ``(N, 1, 112, 112)`` float32 in [0, 1] (per-pixel
occlusion probability, M) and ``"occluded_prob"`` ``(N,)`` float32 in [0, 1] (any occluder present). Opset 17,
TorchScript exporter (``dynamo=False``), dynamic batch. The exporter checks ONNX Runtime against torch and
prints the maximum differences.

The bundle is a copy of the baseline manifest (same detect and embed stages, ``pkg:`` paths, bytes, sha256)
with the segment stage set::

    "segment": {"kind": "onnx_segmenter",
                "files": {"model": {"path": "segmenter.onnx", "bytes": N, "sha256": H}},
                "config": {"threshold": 0.5, "crop": "arcface112", "input": "uint8_nhwc_bgr", "threads": 1}}

CLI::

    python -m export.onnx_segmenter --checkpoint out/segmenter/v1 --out bundles/segmenter_v1

The stage carries the graph's :class:`sdk.preprocess.Preprocess` record (``"preprocess"``: uint8 BGR NHWC of the
ArcFace crop), derived from the record in the checkpoint.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

INPUT_NAME = "crops"
OUTPUTS = ("mask_prob", "occluded_prob")
OPSET = 17
SIZE = 112


def _wrapper(net):
    import torch
    from torch import nn

    class UInt8BGR(nn.Module):
        """uint8 NHWC BGR crops -> (mask_prob (N,1,H,W), occluded_prob (N,))."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, crops):
            x = crops.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
            logits, occ = self.net(x)
            return torch.sigmoid(logits), torch.sigmoid(occ)

    return UInt8BGR(net).eval()


def export_onnx_bytes(net) -> bytes:
    """Serialised ONNX model of ``net`` (a :class:`trainer.models.segmenter.OcclusionSegmenter`)."""
    import torch

    model = _wrapper(copy.deepcopy(net).float().eval())
    dummy = torch.zeros((2, SIZE, SIZE, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buf, opset_version=OPSET, dynamo=False, input_names=[INPUT_NAME],
                          output_names=list(OUTPUTS),
                          dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUTS[0]: {0: "n"}, OUTPUTS[1]: {0: "n"}},
                          do_constant_folding=True)
    return buf.getvalue()


def torch_outputs(net, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask_prob (N,1,112,112), occluded_prob (N,)) of uint8 BGR crops through the torch model."""
    import torch

    with torch.no_grad():
        m, o = _wrapper(copy.deepcopy(net).float().eval())(torch.from_numpy(np.ascontiguousarray(crops)))
    return m.numpy(), o.numpy()


def parity(net, onnx_bytes: bytes, crops: np.ndarray | None = None) -> dict[str, float]:
    """Max |ORT - torch| per output over ``crops`` (default: 4 random uint8 crops)."""
    import onnxruntime as ort

    if crops is None:
        crops = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    ref = torch_outputs(net, crops)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUTS), {INPUT_NAME: np.ascontiguousarray(crops)})
    return {name: float(np.abs(r - g).max()) for name, r, g in zip(OUTPUTS, ref, got)}


def write_bundle(onnx_bytes: bytes, out: str | Path, name: str = "segmenter_v1", description: str | None = None,
                 base: str | None = None, extra_meta: dict | None = None, threads: int = 1,
                 threshold: float = 0.5, preprocess=None) -> Path:
    """Write ``<out>/segmenter.onnx`` and ``<out>/manifest.json`` (base manifest, segment stage set).

    ``preprocess``: the model's :class:`sdk.preprocess.Preprocess` record (from its checkpoint; default the
    segmenter's, :data:`trainer.preprocess.SEGMENTER`); the manifest gets the graph's (uint8 BGR NHWC: the graph
    applies the record inside)."""
    from export._preprocess import set_stage_preprocess
    from sdk.bundle import find_manifest
    from sdk.embed import file_digest
    from trainer.preprocess import SEGMENTER, graph_input

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "segmenter.onnx"
    onnx_path.write_bytes(onnx_bytes)
    manifest = json.loads(find_manifest(base or "baseline").read_text())
    manifest["name"] = name
    manifest["description"] = description or (
        "Baseline recognition (MTCNN + dlib ResNet on ONNX Runtime) plus an occlusion segmenter: a tiny UNet on "
        "the 112x112 ArcFace crop predicting the occlusion map M and a per-face occlusion probability "
        "(Match.occlusion). No completion stage yet.")
    manifest["stages"]["segment"] = {
        "kind": "onnx_segmenter",
        "files": {"model": {"path": onnx_path.name, "bytes": onnx_path.stat().st_size,
                            "sha256": file_digest(onnx_path)}},
        "config": {"threshold": float(threshold), "crop": "arcface112", "input": "uint8_nhwc_bgr",
                   "threads": int(threads)},
    }
    set_stage_preprocess(manifest, "segment", graph_input(preprocess or SEGMENTER))
    if extra_meta:
        manifest["segmenter_training"] = extra_meta
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def export(checkpoint: str | Path, out: str | Path, name: str = "segmenter_v1", base: str | None = None,
           verbose: bool = True) -> dict:
    """Segmenter run folder or checkpoint (``trainer.checkpoints``; older ``model.safetensors`` + ``config.json``
    folders too) -> bundle; returns a summary dict."""
    from trainer.models.segmenter import load_checkpoint

    net, cfg = load_checkpoint(checkpoint)
    data = export_onnx_bytes(net)
    diffs = parity(net, data)
    if max(diffs.values()) > 1e-4:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: {diffs}")
    ev = cfg.get("eval") or {}
    meta = {"step": cfg.get("step"), "params": cfg.get("params"), "gflops": cfg.get("gflops"),
            "miou_per_category": {c: r.get("miou") for c, r in ev.get("per_category", {}).items() if "miou" in r},
            "presence_acc": ev.get("presence_acc")} if cfg.get("step") is not None else None
    from sdk.preprocess import Preprocess

    pre = (cfg.get("preprocess") or {}).get("model")
    path = write_bundle(data, out, name=name, base=base, extra_meta=meta,
                        preprocess=Preprocess.from_dict(pre) if pre else None)
    summary = {"bundle": str(path), "onnx_bytes": len(data), "max_abs_diff": diffs}
    if verbose:
        print(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx_segmenter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="segmenter run folder (its ckpt/last.*) or checkpoint from trainer/main.py segmenter "
                        "(older model.safetensors + config.json folders load too)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write (manifest.json + segmenter.onnx)")
    p.add_argument("--name", default="segmenter_v1", help="bundle name (default segmenter_v1)")
    p.add_argument("--base", default=None, help="bundle whose detect/embed stages are copied (default: baseline)")
    args = p.parse_args(argv)
    export(args.checkpoint, args.out, name=args.name, base=args.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
