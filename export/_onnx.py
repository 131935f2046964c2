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

__all__ = ["OPSET", "trace_onnx", "to_fp16_weights", "FP16_WEIGHT_OPS", "ort_runner", "fold_pads_into_convs"]

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


def fold_pads_into_convs(onnx_bytes: bytes) -> tuple[bytes, int]:
    """``(graph, folded)``: ``onnx_bytes`` with every zero ``Pad`` of the spatial axes that feeds only a ``Conv`` merged
    into that Conv's ``pads`` attribute (asymmetric pads included: TensorFlow's 'SAME' padding of a stride-2
    conv), and the number of Pads removed. Same results, fewer passes over memory: in LTDet (ported from TFLite,
    whose graphs pad before convolving) the Pads and the layout reorders around them took ~40% of the CPU time.

    The pad amounts must be constants: the graph is first constant-folded by ONNX Runtime's basic (standard-ONNX)
    optimiser, which resolves the shape arithmetic torch's exporter writes for ``F.pad``. Zero Pads that only add
    channels become identity 1x1 convolutions (:func:`_channel_pads_to_convs`); reflect / edge pads and Pads with
    other consumers are kept.
    """
    import os
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import helper

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "basic.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = path
        so.log_severity_level = 3
        ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        model = onnx.load(path)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    outputs = {o.name for o in g.output}
    folded = 0
    for node in list(g.node):
        pads = _zero_pad_amounts(node, inits)
        if pads is None or any(pads[i] for i in (0, 1, 4, 5)):
            continue  # NCHW only, nothing on the batch / channel axes
        consumers = users.get(node.output[0], [])
        if node.output[0] in outputs or len(consumers) != 1 or consumers[0].op_type != "Conv":
            continue
        conv = consumers[0]
        if conv.input[0] != node.output[0]:
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and helper.get_attribute_value(attrs["auto_pad"]) not in (b"NOTSET", "NOTSET"):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        for name in ("pads", "auto_pad"):
            if name in attrs:
                conv.attribute.remove(attrs[name])
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = node.input[0]
        g.node.remove(node)
        folded += 1
    folded += _channel_pads_to_convs(model, inits)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model.SerializeToString(), folded


def _zero_pad_amounts(node, inits: dict) -> list[int] | None:
    """The 8 constant, non-negative pad amounts of a 4-D zero ``Pad`` node (ONNX order: begins of N, C, H, W, then
    ends), or ``None`` for any other node (another op, mode, fill value, rank, or pads computed at run time)."""
    from onnx import helper, numpy_helper

    if node.op_type != "Pad" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
    if mode not in (b"constant", "constant"):
        return None
    if len(node.input) > 2 and node.input[2]:
        value = inits.get(node.input[2])
        if value is None or float(numpy_helper.to_array(value).reshape(-1)[0]) != 0.0:
            return None
    pads = [int(v) for v in numpy_helper.to_array(inits[node.input[1]]).reshape(-1)]
    return pads if len(pads) == 8 and min(pads) >= 0 else None


def _channel_pads_to_convs(model, inits: dict) -> int:
    """Replace zero Pads that only append channels (BlazeFace's residual skips: ``x`` padded from C to C' channels
    before an Add) by a 1x1 convolution with an identity-then-zeros weight: the same tensor, but one ONNX Runtime
    keeps in its blocked layout instead of reordering around a Pad (~10% of LTDet's CPU time). Returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    channels = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            channels[v.name] = int(dims[1].dim_value)
    done = 0
    for node in list(g.node):
        pads = _zero_pad_amounts(node, inits)
        cin = channels.get(node.input[0]) if pads is not None else None
        if cin is None or pads[5] <= 0 or any(pads[i] for i in (0, 1, 2, 3, 4, 6, 7)):
            continue
        w = np.zeros((cin + pads[5], cin, 1, 1), np.float32)
        w[np.arange(cin), np.arange(cin), 0, 0] = 1.0
        name = f"{node.name or node.output[0]}_as_conv"
        g.initializer.append(numpy_helper.from_array(w, name + "_w"))
        conv = helper.make_node("Conv", [node.input[0], name + "_w"], [node.output[0]], name=name, kernel_shape=[1, 1])
        at = list(g.node).index(node)
        g.node.remove(node)
        g.node.insert(at, conv)
        done += 1
    return done


def ort_runner(onnx_bytes: bytes, output_names: Sequence[str], what: str = "the exported graph"):
    """``feeds -> outputs`` of ``onnx_bytes`` on ONNX Runtime's CPU provider (the SDK's own session opener)."""
    from sdk.backends.ort import open_session

    sess = open_session(onnx_bytes, threads=0, what=what)
    return lambda feeds: sess.run(list(output_names), {k: np.ascontiguousarray(v) for k, v in feeds.items()})
