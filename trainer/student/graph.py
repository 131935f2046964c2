"""A student as an ONNX graph in memory, run by ONNX Runtime: the trainer's fast CPU path and the exporter's core.

:func:`export_onnx_bytes` wraps a student so the graph takes what the SDK hands an embedder -- uint8 RGB crops,
NHWC, input ``"chips"`` -- and returns the raw descriptors ``"descriptor"`` (opset 17, TorchScript exporter,
dynamic batch).  The trainer embeds the dlib teacher / student through it (bit-compatible with torch to ~1e-6 and
~5x faster on CPU than eager torch); ``python -m export onnx --family embedder`` writes the same bytes into bundles.
"""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np

from sdk.nets.graphs import EmbedderGraph
from trainer.student.models import student_arch

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OPSET", "CHIP", "crop_of", "export_onnx_bytes", "ort_session",
           "ort_descriptors"]

INPUT_NAME = "chips"
OUTPUT_NAME = "descriptor"
OPSET = 17
CHIP = 150


def crop_of(net) -> tuple[str, int]:
    """``(crop name, side)`` a student takes: dlib students 150x150 dlib chips, the others (ResNet-18 /
    MobileFaceNet, :class:`trainer.student.models.ArcInput`) 112x112 ArcFace crops."""
    return ("dlib150", CHIP) if student_arch(net) == "dlib" else ("arcface112", 112)


def export_onnx_bytes(net) -> bytes:
    """Serialised ONNX model of ``net`` (a :class:`trainer.models.dlib_resnet.DlibResNet`, or a ResNet-18 /
    MobileFaceNet student whose module does its own normalisation): uint8 NHWC RGB crops of the student's side."""
    import torch

    net = copy.deepcopy(net).float().eval()
    model = EmbedderGraph(net).eval()  # uint8 NHWC RGB chips in: the graph the SDK's torch backend runs too
    side = crop_of(net)[1]
    dummy = torch.zeros((2, side, side, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buf, opset_version=OPSET, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "n"}, OUTPUT_NAME: {0: "n"}},
                          do_constant_folding=True)
    return buf.getvalue()


def ort_session(model: bytes | str | Path, threads: int = 0):
    """An ONNX Runtime CPU session of ``model`` (bytes or a file); ``threads`` intra-op threads (0: one per core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def ort_descriptors(sess, chips: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, D) raw descriptors of uint8 RGB chips (N, S, S, 3) from an ORT session of an exported student graph."""
    out = [sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chips[i:i + batch])})[0]
           for i in range(0, len(chips), batch)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 128), np.float32)
