"""``export._onnx.fold_pads_into_convs``: TensorFlow-style 'SAME' pads folded into convolutions and channel pads turned
into identity 1x1 convolutions give the same outputs with no Pad left (the LTDet speed-up, issue #14)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


class _TFStyleBlock(torch.nn.Module):
    """A BlazeFace-like block: asymmetric 'SAME' pad + stride-2 depthwise conv, pointwise conv to more channels,
    a max-pooled skip padded with zero channels, add, relu; then a symmetric pad + conv."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.dw = torch.nn.Conv2d(4, 4, 5, stride=2, groups=4)
        self.pw = torch.nn.Conv2d(4, 6, 1)
        self.c3 = torch.nn.Conv2d(6, 3, 3)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        h = self.pw(self.dw(torch.nn.functional.pad(x, (1, 2, 1, 2))))
        skip = torch.nn.functional.max_pool2d(x, 2, 2)
        skip = torch.nn.functional.pad(skip, (0, 0, 0, 0, 0, 2))
        y = torch.relu(h + skip)
        return self.c3(torch.nn.functional.pad(y, (1, 1, 1, 1)))


def test_folded_graph_has_no_pads_and_the_same_outputs():
    import io

    import onnxruntime as ort

    from export._onnx import fold_pads_into_convs

    buf = io.BytesIO()
    torch.onnx.export(_TFStyleBlock().eval(), (torch.zeros(1, 4, 32, 32),), buf, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}})
    before = buf.getvalue()
    after, n = fold_pads_into_convs(before)
    ops = [node.op_type for node in onnx.load_from_string(after).graph.node]
    assert n == 3 and "Pad" not in ops
    assert sum(node.op_type == "Pad" for node in onnx.load_from_string(before).graph.node) == 3
    a, b = (ort.InferenceSession(m, providers=["CPUExecutionProvider"]) for m in (before, after))
    rng = np.random.default_rng(1)
    for hw in ((32, 32), (64, 96)):  # the fold holds for every input size of the dynamic graph
        x = rng.normal(size=(1, 4, *hw)).astype(np.float32)
        np.testing.assert_allclose(b.run(None, {"x": x})[0], a.run(None, {"x": x})[0], atol=1e-5)


def test_shipped_ltdet_graph_is_folded():
    from sdk.bundle import load_bundle

    spec = load_bundle("ltdet-v1").stages["detect"]
    ops = {node.op_type for node in onnx.load(str(spec.files["model"].path)).graph.node}
    assert "Pad" not in ops
