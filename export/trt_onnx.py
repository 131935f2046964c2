"""Inpainter -> ONNX for TensorRT: the contextual attention layer as ONE custom node.

``export.onnx_inpainter`` writes the pure-ONNX graph (ONNX Runtime, opset 17): there the attention is ~60 standard
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

CLI::

    python -m export.trt_onnx --generator out/inpainter/id --out inpainter_trt.onnx
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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

        from trainer.models.contextual_attention import contextual_attention

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.trt_onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, type=Path,
                   help="inpainter run folder with generator.safetensors + config.json (trainer inpainter --out)")
    p.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    p.add_argument("--static-batch", action="store_true", help="fix the batch at 1 (default: dynamic)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from trainer.models.inpainter import load_checkpoint

    gen, _ = load_checkpoint(args.generator)
    out = export_trt_onnx(gen, args.out, dynamic_batch=not args.static_batch)
    log.info("wrote %s (%.2f MB): contextual attention as %s::%s", out, out.stat().st_size / 1e6, DOMAIN, OP_TYPE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
