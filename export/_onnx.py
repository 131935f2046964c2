"""ONNX machinery shared by the formats: tracing a graph into bytes, float16 weight storage, running bytes on ONNX
Runtime.

Every family graph is traced the same way -- TorchScript exporter (``dynamo=False``), opset :data:`OPSET`, dynamic
batch axis -- so the families only say what their example inputs, tensor names and batch-axis name are.
"""
from __future__ import annotations

import copy
import io
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["OPSET", "trace_onnx", "to_fp16_weights", "FP16_WEIGHT_OPS", "ort_runner"]

#: ONNX opset of every exported graph (17: TensorRT 8.6+ and ONNX Runtime 1.14+ read it; ``F.fold`` needs 18, so
#: the contextual attention folds by padded sums instead)
OPSET = 17
#: ops whose weight input (index 1) :func:`to_fp16_weights` stores as float16
FP16_WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
FP16_SUFFIX = "_fp16"


def trace_onnx(graph: Any, example_inputs: tuple, input_names: Sequence[str], output_names: Sequence[str],
               batch_axis: str, *, opset: int = OPSET, constant_folding: bool | None = True,
               custom_opsets: Mapping[str, int] | None = None) -> bytes:
    """Serialized ONNX of ``graph`` (deep-copied, float32, eval mode), the batch axis (axis 0 of every input and
    output) named ``batch_axis``. ``constant_folding=None`` leaves torch's default (folding on)."""
    import torch

    model = copy.deepcopy(graph).float().eval()
    axes = {n: {0: batch_axis} for n in (*input_names, *output_names)}
    kw: dict = {} if constant_folding is None else {"do_constant_folding": bool(constant_folding)}
    if custom_opsets:
        kw["custom_opsets"] = dict(custom_opsets)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example_inputs, buf, opset_version=opset, dynamo=False,
                          input_names=list(input_names), output_names=list(output_names), dynamic_axes=axes, **kw)
    return buf.getvalue()


def to_fp16_weights(onnx_bytes: bytes, min_size: int = 1024) -> bytes:
    """Store the float32 weight initializers of Conv / MatMul / Gemm (input 1, >= ``min_size`` elements) as
    float16, each followed by a ``Cast`` back to float32 under its original name, so the graph still computes
    in fp32 (ONNX Runtime's CPU provider runs it) at about half the file size. Biases, affine scales and the input
    means stay float32 (they are tiny); input / output names, dtypes and shapes are unchanged.

    Raises:
        ValueError: a weight overflows float16 (|w| >= 65504).
    """
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


def ort_runner(onnx_bytes: bytes, output_names: Sequence[str], what: str = "the exported graph"):
    """``feeds -> outputs`` of ``onnx_bytes`` on ONNX Runtime's CPU provider (the SDK's own session opener)."""
    from sdk.backends.ort import open_session

    sess = open_session(onnx_bytes, threads=0, what=what)
    return lambda feeds: sess.run(list(output_names), {k: np.ascontiguousarray(v) for k, v in feeds.items()})
