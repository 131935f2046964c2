"""export/trt_onnx.py: the inpainter's ONNX graph for TensorRT, its contextual attention as one
lookthrough::ContextualAttention node (the TensorRT plugin's op)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _kernel_refs import load_reference

ref = load_reference("contextual_attention")


@pytest.fixture(scope="module")
def generator(torch):
    from trainer.models.inpainter import Generator, InpainterConfig

    torch.manual_seed(0)
    return Generator(InpainterConfig(width=4)).eval()


@pytest.fixture(scope="module")
def trt_model(generator):
    import onnx

    from export import trt_onnx

    return onnx.load_from_string(trt_onnx.export_trt_onnx_bytes(generator))


def test_the_layer_is_one_node_with_the_plugin_attributes(trt_model, generator):
    from export import trt_onnx

    nodes = trt_onnx.custom_nodes(trt_model)
    assert len(nodes) == 1
    node = nodes[0]
    att = generator.attention
    assert trt_onnx.node_attributes(node) == {
        "ksize": att.ksize, "stride": att.stride, "rate": att.rate, "fuse_k": att.fuse_k,
        "softmax_scale": pytest.approx(att.softmax_scale), "fuse": 1, "plugin_version": "1",
        "plugin_namespace": "lookthrough"}
    assert len(node.input) == 3 and node.input[0] == node.input[1]  # DeepFill: f is b
    assert ("lookthrough", 1) in [(o.domain, o.version) for o in trt_model.opset_import]
    ops = {n.op_type for n in trt_model.graph.node}
    assert not ops & {"Softmax", "MatMul", "Col2Im"}  # the unfold / matmul / softmax formulation is gone
    assert [i.name for i in trt_model.graph.input] == ["image", "mask"]
    assert [o.name for o in trt_model.graph.output] == ["completed"]
    assert trt_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_exporting_leaves_the_model_unchanged(generator, torch):
    from export import trt_onnx

    x = torch.rand(1, 3, 112, 112) * 2 - 1
    m = torch.zeros(1, 1, 112, 112)
    m[:, :, 60:100, 30:80] = 1
    with torch.no_grad():
        before = generator(x, m)
        with trt_onnx.attention_as_custom_op(generator) as n:
            assert n == 1
            during = generator(x, m)  # the custom op computes with the torch layer
        after = generator(x, m)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert "forward" not in vars(generator.attention)


def test_the_node_replaced_by_the_reference_reproduces_torch(trt_model, generator, torch):
    """ONNX Runtime runs the TensorRT graph with the node implemented by the golden reference (onnxruntime-extensions
    PyOp): the result equals the torch generator's."""
    ox = pytest.importorskip("onnxruntime_extensions")
    import onnx
    import onnxruntime as ort

    from export import trt_onnx
    from export._parity import tolerance_for
    from export.families.inpainter import parity_inputs, torch_completed

    model = onnx.ModelProto()
    model.CopyFrom(trt_model)
    for node in trt_onnx.custom_nodes(model):
        node.domain = "ai.onnx.contrib"
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("ai.onnx.contrib", 1)])
    D = ox.PyCustomOpDef
    calls = []

    @ox.onnx_op(op_type="ContextualAttention", inputs=[D.dt_float] * 3, outputs=[D.dt_float],
                attrs={"ksize": D.dt_int64, "stride": D.dt_int64, "rate": D.dt_int64, "fuse_k": D.dt_int64,
                       "softmax_scale": D.dt_float, "fuse": D.dt_int64, "plugin_version": D.dt_string,
                       "plugin_namespace": D.dt_string})
    def contextual_attention(f, b, mask, **kw):
        calls.append(f.shape)
        return ref.reference_vectorized(f, b, mask, ksize=kw["ksize"], stride=kw["stride"], rate=kw["rate"],
                                        fuse_k=kw["fuse_k"], softmax_scale=kw["softmax_scale"],
                                        fuse=bool(kw["fuse"])).astype(np.float32)

    so = ort.SessionOptions()
    so.register_custom_ops_library(ox.get_library_path())
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    crops, holes = parity_inputs(n_random=2, seed=1)
    want = torch_completed(generator, crops, holes)
    from sdk.complete import to_model_input

    (got,) = sess.run(["completed"], {"image": to_model_input(crops),
                                       "mask": np.ascontiguousarray(holes[:, None], dtype=np.float32)})
    assert calls and calls[0][0] == len(crops)  # the node ran, on the whole batch
    assert np.abs(got - want).max() <= tolerance_for("inpainter").max_abs


def test_cli_writes_the_graph(inpainter_run_dir, tmp_path):
    import onnx

    from export import trt_onnx

    out = tmp_path / "inpainter_trt.onnx"
    assert trt_onnx.main(["--generator", str(inpainter_run_dir), "--out", str(out)]) == 0  # the older name
    assert len(trt_onnx.custom_nodes(onnx.load(str(out)))) == 1
    side = json.loads((tmp_path / "inpainter_trt.onnx.json").read_text())  # every artifact carries its metadata
    assert side["export"]["format"] == "trt-onnx" and side["plugin"]["name"] == "ContextualAttention"
    assert side["preprocess"]["layout"] == "nchw" and len(side["export"]["source"]["sha256"]) == 64
    assert side["file"]["bytes"] == out.stat().st_size and side["export"]["opset"] == 17
    if side["export"]["parity"]:  # onnxruntime-extensions installed: the graph ran with the node computed by torch
        assert side["export"]["parity"][0]["passed"]
