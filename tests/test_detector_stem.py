"""LTDet's fast stem (issue #14 speed): the ONNX -> torch port of a shipped LTDet graph, the cut backbone, the
stem net, and a tiny distillation run that exports and bundles."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tflite")

ROOT = Path(__file__).resolve().parents[1]
LTDET = ROOT / "sdk" / "models" / "ltdet-v1"


@pytest.fixture(scope="module")
def ltdet_net():
    from trainer.detector.model import net_from_onnx

    return net_from_onnx(LTDET / "detector.onnx")


def test_net_from_onnx_reproduces_the_shipped_graph(ltdet_net, astronaut_bgr):
    """The torch net rebuilt from ``ltdet-v1/detector.onnx`` (pads folded, shared initializers) gives the graph's
    scores, boxes and landmarks."""
    import cv2
    import onnxruntime as ort

    from trainer.detector.data import to_input

    img = cv2.resize(astronaut_bgr, (320, 256))
    x = to_input(img[None])
    sess = ort.InferenceSession(str(LTDET / "detector.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(["scores", "boxes", "landmarks"], {"image": x.contiguous().numpy()})
    with torch.no_grad():
        got = [t.numpy() for t in ltdet_net.decode(x)]
    assert np.abs(got[0] - want[0]).max() < 1e-4
    top = want[0][0] > 0.05
    assert top.any()
    for g, w in zip(got[1:], want[1:]):
        assert np.abs(g[0][top] - w[0][top]).max() < 1e-2


def test_net_from_a_foreign_graph_is_refused():
    from sdk.detect import WEIGHTS_DIR
    from trainer.detector.model import net_from_onnx

    with pytest.raises(ValueError, match="not an LTDet graph"):
        net_from_onnx(WEIGHTS_DIR / "onet.onnx")


def test_stem_net_keeps_everything_after_the_cut(ltdet_net):
    from trainer.detector.model import DetectorNet, NetConfig, with_stem

    net = with_stem(ltdet_net, cut=33, width=16, blocks=1)
    assert net.cfg.stem == {"cut": 33, "width": 16, "blocks": 1, "out": 32, "stride": 4}
    sd, td = net.state_dict(), ltdet_net.state_dict()
    assert all(torch.equal(v, td[k]) for k, v in sd.items() if not k.startswith("stem."))
    assert "backbone.convs.0.weight" not in sd and "backbone.convs.13.weight" not in sd  # before the cut: gone
    assert "backbone.convs.17.weight" in sd
    x = torch.zeros(1, 3, 128, 160)
    with torch.no_grad():
        assert net.stem(x).shape == ltdet_net.backbone(x, until=33).shape
        s, b, lm = net.decode(x)
        s0, _, _ = ltdet_net.decode(x)
    assert s.shape == s0.shape and b.shape[-1] == 4 and lm.shape[-2:] == (5, 2)
    again = DetectorNet(NetConfig.from_json(json.loads(json.dumps(net.cfg.to_json()))))  # the config round-trips
    again.load_state_dict(sd)
    with pytest.raises(ValueError, match="does not separate"):
        from trainer.detector.tflite_port import TFLiteBackbone

        TFLiteBackbone([dict(st) for st in ltdet_net.backbone.steps if st["op"] not in ("conv", "dwconv")],
                       ltdet_net.backbone.features, ltdet_net.backbone.input_id, cut=20)


@pytest.mark.parametrize("hw", [(128, 160), (96, 224)])
def test_stride2_stem_matches_the_cut_and_keeps_full_resolution(ltdet_net, hw):
    """The stride-2 layout: a 3x3 stride-2 first layer (every input pixel seen at stride 2), output the shape of the
    teacher's tensor at the cut; a checkpoint config without ``stride`` (older stem runs) still builds the stride-4
    stem; other strides are refused."""
    from trainer.detector.model import DetectorNet, FastStem, NetConfig, with_stem

    net = with_stem(ltdet_net, cut=33, width=16, blocks=2, stride=2)
    assert net.cfg.stem["stride"] == 2 and net.stem.conv.stride == (2, 2) and net.stem.down is not None
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        assert net.stem(x).shape == ltdet_net.backbone(x, until=33).shape
    old = NetConfig.from_json({**net.cfg.to_json(), "stem": {"cut": 33, "width": 16, "blocks": 1, "out": 32}})
    assert DetectorNet(old).stem.conv.stride == (4, 4)
    with pytest.raises(ValueError, match="stride must be 2 or 4"):
        FastStem(16, 1, 32, stride=3)


def test_decode_equals_per_anchor_decoding_of_the_raw_heads(ltdet_net):
    """``decode`` adds the anchor centres on the channel-first maps and transposes once; the numbers must be those
    of the raw heads (``forward``) decoded anchor by anchor with :func:`anchor_grid` (BlazeFace's order)."""
    from trainer.detector.model import anchor_grid

    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        s, b, lm = ltdet_net.decode(x)
        raw = ltdet_net(x)
    S, B, L = [], [], []
    for (lg, bx, lk), st, a in zip(raw, ltdet_net.cfg.strides, ltdet_net.cfg.anchors):
        anc = torch.from_numpy(anchor_grid(96 // st, 160 // st, st, a))
        c, half = anc[None] + bx[..., :2], 0.5 * bx[..., 2:].abs()
        S.append(torch.sigmoid(lg))
        B.append(torch.cat([c - half, c + half], -1))
        L.append(anc[None, :, None] + lk)
    for got, want in zip((s, b, lm), (torch.cat(S, 1), torch.cat(B, 1), torch.cat(L, 1))):
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-4)
    assert float(b[0, :, 0].std()) > 1.0  # anchors spread over the frame: a transposition would not pass above


@pytest.mark.slow
def test_tiny_stem_run_resumes_exports_and_bundles(tmp_path, astronaut_bgr):
    """2 steps then resumed to 3 on the astronaut: CSV with validation columns, a detector checkpoint that the
    exporter turns into ONNX (parity with torch) and a bundle the SDK runs."""
    import sdk
    from export.onnx_detector import export_onnx_bytes, parity, write_bundle
    from trainer.detector.checkpoint import load_detector
    from trainer.detector.stem import StemConfig, train

    run = tmp_path / "run"
    cfg = dict(teacher=str(LTDET), data="astronaut", out=str(run), batch_size=2, crop=128, workers=0, save_every=1,
               threads=1, val_scenes=2, width=16, blocks=1, progress=False)
    assert train(StemConfig(steps=2, **cfg))["steps"] == 2
    r = train(StemConfig(steps=3, **cfg))
    assert r["steps"] == 3 and 0.0 <= float(r["validation"]["val_agree"]) <= 1.0
    rows = list(csv.DictReader(open(run / "steps.csv")))
    assert [int(x["step"]) for x in rows] == [1, 2, 3] and all(x["val_feat"] for x in rows)
    assert (run / "loss.png").is_file()
    net, meta = load_detector(run)
    assert net.cfg.stem["width"] == 16 and meta["step"] == 3
    data = export_onnx_bytes(net)
    d = parity(net, data, sizes=((128, 160),))
    assert d["scores"] < 1e-4
    b = write_bundle(data, tmp_path / "bundle", "ltdet-v1", "tiny-stem")
    assert isinstance(sdk.Recognizer(str(b)).detect(astronaut_bgr), list)
    # second phase: from that stem, everything after the cut trained too (--init, --tune-rest)
    run2 = tmp_path / "run2"
    train(StemConfig(**{**cfg, "out": str(run2)}, steps=1, init=str(run), tune_rest=0.5))
    net2, _ = load_detector(run2)
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in net2.state_dict().items() if not k.startswith("stem."))
    with pytest.raises(SystemExit, match="not a net with a stem"):
        train(StemConfig(**{**cfg, "out": str(tmp_path / "run3")}, steps=1, init=str(LTDET / "detector.onnx")))
