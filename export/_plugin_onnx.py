"""Inpainter -> ONNX for TensorRT (the ``trt-onnx`` format): the contextual attention layer as ONE custom node.

The ``onnx`` format writes the pure-ONNX graph (ONNX Runtime, opset 17): there the attention is ~60 standard
ops (unfold, matmul, the fuse as shifted adds, softmax, a pad-sum fold) and the Pf x L score matrix is a tensor.
For TensorRT this module writes the same graph with that layer replaced by a single node::

    lookthrough::ContextualAttention(f, b, mask) -> y
        ksize, stride, rate, fuse_k (int), softmax_scale (float), fuse (int 0/1),
        plugin_version = "1", plugin_namespace = "lookthrough" (how TensorRT's ONNX parser finds the plugin)

which TensorRT's ONNX parser maps (plugin fallback: op type = plugin name) to the ``ContextualAttention`` IPluginV3 of
``liblookthrough_trt_plugin.so`` (kernels/contextual_attention/trt_plugin/), i.e. the fused CUDA kernel. Inputs and
outputs are those of the ONNX Runtime graph: ``image`` (N, 3, 112, 112) float32 in [-1, 1] (BGR ArcFace crop),
``mask`` (N, 1, 112, 112) float32 {0, 1} (1 = hole) -> ``completed`` (N, 3, 112, 112); dynamic batch, opset 17.
ONNX Runtime cannot run this graph without a kernel for the custom node (the tests give it one through
onnxruntime-extensions); keep using the pure-ONNX export for ONNX Runtime.

The ``trt-onnx`` format of ``python -m export`` (:func:`export_format`): the file plus its sidecar
``<file>.json`` (the export record: source checkpoint SHA-256, exporter version, opset, the plugin's name / version /
namespace and node attributes, the image input's preprocess record, and the parity check: ONNX Runtime running the
graph with the node computed by the torch layer through onnxruntime-extensions, vs torch).

CLI: ``python -m export trt-onnx --family inpainter --checkpoint out/inpainter/id --out inpainter_trt.onnx``
(``python -m export.trt_onnx --generator ...``, the older name, is an alias).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

DOMAIN = "lookthrough"
OP_TYPE = "ContextualAttention"
PLUGIN_VERSION = "1"
SIZE = 112
INPUTS = ("image", "mask")
OUTPUT = "completed"

_FUNCTION: Any = None


def _function():
    """The autograd.Function whose ONNX symbolic is the custom node (built on first use: torch is imported lazily)."""
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        from sdk.nets.contextual_attention import contextual_attention

        class ContextualAttentionOp(torch.autograd.Function):
            @staticmethod
            def forward(ctx, f, b, mask, ksize, stride, rate, fuse_k, softmax_scale, fuse):
                return contextual_attention(f, b, mask, ksize=ksize, stride=stride, rate=rate, fuse_k=fuse_k,
                                            softmax_scale=softmax_scale, fuse=fuse)

            @staticmethod
            def symbolic(g, f, b, mask, ksize, stride, rate, fuse_k, softmax_scale, fuse):
                inputs = [f, b] if mask is None else [f, b, mask]
                y = g.op(f"{DOMAIN}::{OP_TYPE}", *inputs, ksize_i=int(ksize), stride_i=int(stride),
                         rate_i=int(rate), fuse_k_i=int(fuse_k), softmax_scale_f=float(softmax_scale),
                         fuse_i=int(bool(fuse)), plugin_version_s=PLUGIN_VERSION, plugin_namespace_s=DOMAIN)
                y.setType(f.type())  # y has f's shape and dtype
                return y

        _FUNCTION = ContextualAttentionOp
    return _FUNCTION


def _custom_forward(self, f, b, mask=None):
    if self.legacy_mask or self.return_flow:
        raise ValueError("the TensorRT plugin implements the default mask semantics without return_flow; "
                         f"this layer has legacy_mask={self.legacy_mask}, return_flow={self.return_flow}")
    return _function().apply(f, b, mask, self.ksize, self.stride, self.rate, self.fuse_k, self.softmax_scale,
                             self.fuse)


@contextlib.contextmanager
def attention_as_custom_op(model: Any) -> Iterator[int]:
    """Within the block, every ``ContextualAttention`` layer of ``model`` computes with its torch code but traces
    (``torch.onnx.export``) as one ``lookthrough::ContextualAttention`` node. Yields the number of layers."""
    layers = [m for m in model.modules() if type(m).__name__ == "ContextualAttention" and hasattr(m, "fuse_k")]
    if any("forward" in vars(m) for m in layers):
        raise RuntimeError("a contextual attention layer already has an instance-level forward "
                           "(sdk._cuda_ops.use_cuda_kernel?); undo that before exporting")
    import types

    for m in layers:
        m.forward = types.MethodType(_custom_forward, m)
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.forward


def export_trt_onnx(generator: Any, path: str | Path, size: int = SIZE, dynamic_batch: bool = True) -> Path:
    """Write ``forward(image, mask) -> completed`` of a :class:`trainer.models.inpainter.Generator` to ``path``
    (ONNX opset 17 + domain ``lookthrough`` v1, TorchScript exporter), its attention as the custom node.

    Raises:
        ValueError: the generator has no contextual attention layer, or one with legacy masking.
    """
    import copy

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = copy.deepcopy(generator).float().eval()
    x = torch.zeros(1, 3, size, size)
    m = torch.zeros(1, 1, size, size)
    axes = {"image": {0: "batch"}, "mask": {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
    with attention_as_custom_op(gen) as n, warnings.catch_warnings(), torch.no_grad():
        if n == 0:
            raise ValueError("the model has no ContextualAttention layer to export as a plugin node")
        warnings.simplefilter("ignore")
        torch.onnx.export(gen, (x, m), str(path), input_names=list(INPUTS), output_names=[OUTPUT], opset_version=17,
                          dynamo=False, dynamic_axes=axes, custom_opsets={DOMAIN: 1})
    return path


def export_trt_onnx_bytes(generator: Any, size: int = SIZE) -> bytes:
    """:func:`export_trt_onnx` into memory."""
    with tempfile.TemporaryDirectory() as tmp:
        return export_trt_onnx(generator, Path(tmp) / "inpainter_trt.onnx", size=size).read_bytes()


def custom_nodes(model: Any) -> list:
    """The ``lookthrough::ContextualAttention`` nodes of an ``onnx.ModelProto``."""
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def node_attributes(node: Any) -> dict:
    """Attributes of one custom node as a plain dict (ints, floats, strings)."""
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) if a.type != onnx.AttributeProto.STRING
            else a.s.decode() for a in node.attribute}


def export_format(cfg: Any, fam: Any, loaded: Any, graph: Any) -> tuple[dict[str, Path], list, dict]:
    """The ``trt-onnx`` format for :func:`export.exporter.export`: writes the graph file and its sidecar; returns
    ``(files by role, parity results, the export record)``."""
    from export._bundle import export_record, write_sidecar
    from export._onnx import OPSET

    import onnx

    path = export_trt_onnx(loaded.net, cfg.out, dynamic_batch=cfg.dynamic_batch)
    model = onnx.load(str(path))
    nodes = custom_nodes(model)
    parity = [p for p in (_parity(model, fam, graph),) if p is not None]
    record = export_record("trt-onnx", fam.name, loaded.weights, cfg.checkpoint, parity=parity, opset=OPSET,
                           dynamic_batch=bool(cfg.dynamic_batch))
    if not parity:
        record["parity_skipped"] = "onnxruntime-extensions is not installed (pip install onnxruntime-extensions)"
    from export._bundle import file_record

    sidecar_doc = {"format": "lookthrough.trt_onnx", "format_version": 1, "file": file_record(path, path.parent),
                   "stage": fam.stage, "kind": fam.kind, "family": fam.name,
                   "preprocess": fam.graph_preprocess(loaded).to_dict(), "inputs": list(INPUTS), "outputs": [OUTPUT],
                   "plugin": {"name": OP_TYPE, "version": PLUGIN_VERSION, "namespace": DOMAIN,
                              "library": "liblookthrough_trt_plugin.so (kernels/contextual_attention/trt_plugin)",
                              "nodes": [node_attributes(n) for n in nodes]},
                   "export": record}
    sidecar = write_sidecar(path, sidecar_doc)
    log.info("wrote %s (%.2f MB): contextual attention as %s::%s (%d node%s) + %s", path, path.stat().st_size / 1e6,
             DOMAIN, OP_TYPE, len(nodes), "" if len(nodes) == 1 else "s", sidecar.name)
    return {"model": path, "sidecar": sidecar}, parity, record


#: op type the parity check gives the plugin node inside ONNX Runtime (its own name: no clash with other PyOps)
_REFERENCE_OP = "LookThroughContextualAttentionTorch"


def _parity(model: Any, fam: Any, graph: Any):
    """ONNX Runtime with the plugin node computed by the torch layer (onnxruntime-extensions) vs the torch graph;
    ``None`` when onnxruntime-extensions is not installed."""
    try:
        import onnxruntime_extensions as ox
    except ImportError:
        return None
    import onnx

    from export._parity import check, tolerance_for

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in custom_nodes(model):
        node.domain, node.op_type = "ai.onnx.contrib", _REFERENCE_OP
    kept = [o for o in model.opset_import if o.domain not in (DOMAIN, "ai.onnx.contrib")]
    del model.opset_import[:]
    model.opset_import.extend(kept + [onnx.helper.make_opsetid("ai.onnx.contrib", 1)])
    _register_reference_op(ox)
    import onnxruntime as ort

    so = ort.SessionOptions()  # the parity check's own session: the SDK's opener loads no custom-op library
    so.register_custom_ops_library(ox.get_library_path())
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return check(fam.torch_reference(graph), lambda feeds: sess.run([OUTPUT], dict(feeds)), fam.parity_feeds(graph),
                 fam.outputs, tolerance_for(fam.name, "float32"), names=("torch", "onnxruntime+plugin-node-in-torch"))


_REGISTERED: list[bool] = []


def _register_reference_op(ox: Any) -> None:
    """Register the torch-computed plugin node with onnxruntime-extensions, once per process (a second
    registration of the same op type is refused by ONNX Runtime: "Conflicting with a registered kernel")."""
    if _REGISTERED:
        return
    import numpy as np
    import torch

    from sdk.nets.contextual_attention import contextual_attention

    D = ox.PyCustomOpDef

    @ox.onnx_op(op_type=_REFERENCE_OP, inputs=[D.dt_float] * 3, outputs=[D.dt_float],
                attrs={"ksize": D.dt_int64, "stride": D.dt_int64, "rate": D.dt_int64, "fuse_k": D.dt_int64,
                       "softmax_scale": D.dt_float, "fuse": D.dt_int64, "plugin_version": D.dt_string,
                       "plugin_namespace": D.dt_string})
    def _node(f, b, mask, **kw):
        with torch.no_grad():
            y = contextual_attention(torch.from_numpy(f), torch.from_numpy(b), torch.from_numpy(mask),
                                     ksize=int(kw["ksize"]), stride=int(kw["stride"]), rate=int(kw["rate"]),
                                     fuse_k=int(kw["fuse_k"]), softmax_scale=float(kw["softmax_scale"]),
                                     fuse=bool(kw["fuse"]))
        return y.numpy().astype(np.float32)

    _REGISTERED.append(True)
