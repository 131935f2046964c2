"""insightface-convention stages (``scrfd`` detect, ``arcface_onnx`` embed) on tiny graphs of the same
signatures built here with onnx.helper, and the NMS helper. (LTDet itself: tests/test_detector_train.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sdk.detect_onnx import SCRFDConfig, SCRFDDetector, nms
from sdk.errors import ModelFileError

S = 640


def _const_outputs_graph(path, outputs: dict[str, np.ndarray], in_name="input.1", in_shape=(1, 3, S, S)):
    """A graph whose outputs are constants plus 0 * mean(input) (so the input is really used)."""
    nodes = [helper.make_node("ReduceMean", [in_name], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for name, arr in outputs.items():
        inits.append(numpy_helper.from_array(arr.astype(np.float32), f"c_{name}"))
        nodes.append(helper.make_node("Add", [f"c_{name}", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(in_shape))],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _scrfd_outputs(batched: bool, kps: bool = True):
    """insightface order: scores 8/16/32, boxes 8/16/32, kps 8/16/32; one face at stride 8, cell (x=20, y=10),
    anchor 1, and one weak one at stride 32."""
    outs = {}
    n = {st: (S // st) ** 2 * 2 for st in (8, 16, 32)}
    idx8 = (10 * (S // 8) + 20) * 2 + 1
    sc = {st: np.zeros((n[st], 1)) for st in n}
    sc[8][idx8] = 0.95  # above the Recognizer's min_det_score (0.9)
    sc[32][5] = 0.3  # below the threshold
    bx = {st: np.ones((n[st], 4)) for st in n}
    bx[8][idx8] = [2, 3, 4, 5]
    kp = {st: np.zeros((n[st], 10)) for st in n}
    kp[8][idx8] = [-1, -1, 1, -1, 0, 0, -1, 1, 1, 1]
    for name, d in (("score", sc), ("bbox", bx), ("kps", kp)):
        if name == "kps" and not kps:
            continue
        for st in (8, 16, 32):
            outs[f"{name}_{st}"] = d[st][None] if batched else d[st]
    return outs


@pytest.mark.parametrize("batched", [False, True])
def test_scrfd_decodes_insightface_layout(tmp_path, batched):
    path = _const_outputs_graph(tmp_path / "scrfd.onnx", _scrfd_outputs(batched))
    det = SCRFDDetector(path)
    assert det.has_kps and det.strides == (8, 16, 32) and det.num_anchors == 2
    frame = np.full((240, 320, 3), 100, np.uint8)  # letterboxed x2 into 640x640
    faces = det.detect(frame)
    assert len(faces) == 1
    f = faces[0]
    cx, cy = 20 * 8, 10 * 8  # anchor centre (insightface: no half-cell offset), input pixels
    want = np.array([cx - 16, cy - 24, cx + 32, cy + 40]) / 2.0
    np.testing.assert_allclose(f.box, want, atol=1e-4)
    kp = np.array([[-1, -1], [1, -1], [0, 0], [-1, 1], [1, 1]]) * 8
    np.testing.assert_allclose(f.landmarks, (np.array([cx, cy]) + kp) / 2.0, atol=1e-4)
    assert f.score == pytest.approx(0.95)


def test_scrfd_without_kps_and_bad_files(tmp_path):
    det = SCRFDDetector(_const_outputs_graph(tmp_path / "nokps.onnx", _scrfd_outputs(False, kps=False)))
    f = det.detect(np.zeros((640, 640, 3), np.uint8))[0]
    b = f.box
    assert not det.has_kps and (f.landmarks[:, 0] > b[0]).all() and (f.landmarks[:, 1] < b[3]).all()
    bad = _const_outputs_graph(tmp_path / "bad.onnx", {"a": np.zeros((10, 3))})
    with pytest.raises(ModelFileError, match="SCRFD"):
        SCRFDDetector(bad)
    (tmp_path / "trunc.onnx").write_bytes(bad.read_bytes()[:50])
    with pytest.raises(ModelFileError):
        SCRFDDetector(tmp_path / "trunc.onnx")
    with pytest.raises(ModelFileError, match="not found"):
        SCRFDDetector(tmp_path / "missing.onnx")
    with pytest.raises(ValueError):
        SCRFDConfig(input_size=100)


def _arcface_graph(path, W: np.ndarray, batch="N"):
    """input.1 (N, 3, 112, 112) -> global average pool -> (N, 3) @ W (3, D) -> (N, D)."""
    nodes = [helper.make_node("GlobalAveragePool", ["input.1"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "W"], ["683"])]
    g = helper.make_graph(nodes, "arc", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])],
                          [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, W.shape[1]])],
                          [numpy_helper.from_array(W.astype(np.float32), "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("batch", ["N", 1])
def test_arcface_onnx_preprocessing(tmp_path, astronaut_bgr, batch):
    from sdk import align
    from sdk.detect import MTCNNDetector
    from sdk.embed_arcface import ArcFaceOnnxEmbedder

    W = np.random.default_rng(0).normal(size=(3, 16))
    emb = ArcFaceOnnxEmbedder(_arcface_graph(tmp_path / "arc.onnx", W, batch))
    assert emb.dim == 16 and emb.crop_size == (112, 112)
    faces = MTCNNDetector.from_package().detect(astronaut_bgr)[:1]
    faces = faces + faces  # two crops: a fixed-batch-1 graph runs them one by one
    e = emb.embed(astronaut_bgr, faces)
    M = align.similarity_to_template(faces[0].landmarks, align.ARCFACE_CROP.template)
    import cv2

    crop = cv2.warpAffine(astronaut_bgr, M, (112, 112), flags=cv2.INTER_LINEAR)[..., ::-1]  # RGB
    x = (crop.astype(np.float64) - 127.5) / 127.5
    ref = x.reshape(-1, 3).mean(0) @ W
    ref /= np.linalg.norm(ref)
    assert e.shape == (2, 16)
    np.testing.assert_allclose(e[0], ref, atol=0.02)  # our warp vs cv2's: ~1 grey level
    # RGB, not BGR: the swapped order gives a clearly different embedding
    ref_bgr = (((crop[..., ::-1].astype(np.float64) - 127.5) / 127.5).reshape(-1, 3).mean(0) @ W)
    assert np.abs(e[0] - ref_bgr / np.linalg.norm(ref_bgr)).max() > 0.05


def test_arcface_rejects_foreign_graph(tmp_path):
    from sdk.embed_arcface import ArcFaceOnnxEmbedder

    bad = _const_outputs_graph(tmp_path / "x.onnx", {"y": np.zeros((1, 8))}, in_shape=(1, 3, 96, 96))
    with pytest.raises(ModelFileError, match="112"):
        ArcFaceOnnxEmbedder(bad)
    with pytest.raises(ModelFileError, match="width"):
        ArcFaceOnnxEmbedder(_arcface_graph(tmp_path / "a.onnx", np.ones((3, 8))), dim=512)


def test_insightface_bundle_runs_identify(tmp_path, astronaut_bgr):
    """A bundle pointing at an SCRFD file and an ArcFace file (insightface conventions) loads and identifies."""
    import hashlib

    import sdk

    det = _const_outputs_graph(tmp_path / "det_10g.onnx", _scrfd_outputs(False))
    arc = _arcface_graph(tmp_path / "w600k_r50.onnx", np.random.default_rng(1).normal(size=(3, 512)))

    def ref(p):
        b = p.read_bytes()
        return {"path": p.name, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}

    man = {"format": "lookthrough.bundle", "format_version": 1, "name": "insightface-test",
           "stages": {"detect": {"kind": "scrfd", "files": {"model": ref(det)}, "config": {"score_threshold": 0.5}},
                      "segment": None, "complete": None,
                      "embed": {"kind": "arcface_onnx", "files": {"model": ref(arc)}, "config": {"dim": 512}}},
           "match": {"metric": "cosine", "threshold": 0.5}}
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    rec = sdk.Recognizer(str(tmp_path))
    frame = np.ascontiguousarray(astronaut_bgr[:240, :320])
    rec.enroll("a", [frame])
    m = rec.identify(frame)
    assert len(m) == 1 and m[0].identity == "a" and m[0].similarity > 0.999


def test_nms_iou_and_containment():
    b = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [20, 20, 50, 50], [200, 200, 230, 230]], np.float32)
    s = np.array([0.9, 0.8, 0.95, 0.7])
    assert sorted(nms(b, s, 0.4).tolist()) == [0, 2, 3]  # IoU only: the part inside face 0 survives
    keep = nms(b, s, 0.4, contain=0.7)
    assert sorted(keep.tolist()) == [0, 2, 3]  # the part has the higher score: processed first, kept
    s2 = np.array([0.9, 0.8, 0.6, 0.7])
    assert sorted(nms(b, s2, 0.4, contain=0.7).tolist()) == [0, 3]


def test_ltdet_exporter_writes_the_shipped_manifest(tmp_path):
    """``export.onnx_detector.write_bundle`` on the shipped ``ltdet-v1`` graph reproduces its manifest: format version 2,
    the detect stage with its file digest, config and the ``LTDET_PREPROCESS`` record; the graph itself is unchanged
    (its sha256 is the manifest's)."""
    import hashlib

    from export.onnx_detector import write_bundle
    from sdk.bundle import BUILTIN_DIR
    from sdk.detect_onnx import LTDET_PREPROCESS

    shipped = BUILTIN_DIR / "ltdet-v1"
    man = json.loads((shipped / "manifest.json").read_text())
    data = (shipped / "detector.onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == man["stages"]["detect"]["files"]["model"]["sha256"]
    out = write_bundle(data, tmp_path / "ltdet", "default-v1", "ltdet-v1",
                       {"score_threshold": man["stages"]["detect"]["config"]["score_threshold"]}, man["description"])
    got = json.loads((out / "manifest.json").read_text())
    assert got["format_version"] == man["format_version"] == 2
    assert got["stages"]["detect"] == man["stages"]["detect"]
    assert got["stages"]["detect"]["preprocess"] == LTDET_PREPROCESS.to_dict()
    for st in ("segment", "embed"):  # the same models (ltdet-v1 holds copies; default-v1 points into the package)
        strip = lambda spec: {**spec, "files": {k: {**f, "path": Path(f["path"]).name}  # noqa: E731
                                                for k, f in spec["files"].items()}}
        assert strip(got["stages"][st]) == strip(man["stages"][st]), st


def test_ltdet_upscales_small_frames_only(monkeypatch):
    """``upscale_below``: a small photo is also run at 2x (faces of 10-30 px), a camera frame never; the option is
    off by default (``ltdet-v1`` / ``ltdet-v2`` keep their recorded behaviour) and checked."""
    from sdk.bundle import BUILTIN_DIR
    from sdk.detect_onnx import LTDetConfig, LTDetDetector

    model = BUILTIN_DIR / "ltdet-v1" / "detector.onnx"
    det = LTDetDetector(model, LTDetConfig(upscale_below=320, threads=1))
    shapes: list[tuple[int, int]] = []
    real_run = det._run
    monkeypatch.setattr(det, "_run", lambda img: (shapes.append(img.shape[:2]), real_run(img))[1])
    det.detect(np.zeros((150, 200, 3), np.uint8))
    assert shapes == [(300, 400), (150, 200), (38, 50)]
    shapes.clear()
    det.detect(np.zeros((480, 640, 3), np.uint8))
    assert shapes == [(480, 640), (120, 160)]
    plain = LTDetDetector(model, LTDetConfig(threads=1))
    monkeypatch.setattr(plain, "_run", lambda img: (shapes.append(img.shape[:2]), real_run(img))[1])
    shapes.clear()
    plain.detect(np.zeros((150, 200, 3), np.uint8))
    assert shapes == [(150, 200), (38, 50)]
    # pad_below: one more call, the photo centred on a black canvas 1.5x its side, at 192 px; camera frames never
    padded = LTDetDetector(model, LTDetConfig(upscale_below=320, pad_below=320, threads=1))
    monkeypatch.setattr(padded, "_run", lambda img: (shapes.append(img.shape[:2]), real_run(img))[1])
    shapes.clear()
    padded.detect(np.zeros((150, 200, 3), np.uint8))
    assert shapes == [(300, 400), (150, 200), (38, 50), (192, 192)]
    shapes.clear()
    padded.detect(np.zeros((480, 640, 3), np.uint8))
    assert shapes == [(480, 640), (120, 160)]
    for bad in ({"upscale_below": 8}, {"upscale": 1.0}, {"upscale": 5.0}):
        with pytest.raises(ValueError):
            LTDetConfig(**bad)


def test_small_photos_are_enlarged_bilinearly_and_large_ones_shrunk_by_area(monkeypatch):
    """The ``upscale_below`` pass enlarges bilinearly (nearest-neighbour blocks cost real masked photos: ``ltdet-v3``
    found 89.8 vs 90.7% of the validation part); shrinking stays area-averaged."""
    import cv2

    import sdk.detect_onnx as d
    from sdk.bundle import BUILTIN_DIR

    seen = []
    real_resize = cv2.resize

    def spy(img, size, interpolation=None, **kw):
        seen.append((img.shape[1] < size[0], interpolation))
        return real_resize(img, size, interpolation=interpolation, **kw)

    det = d.LTDetDetector(BUILTIN_DIR / "ltdet-v1" / "detector.onnx", d.LTDetConfig(upscale_below=320, threads=1))
    monkeypatch.setattr(d.cv2, "resize", spy)
    det.detect(np.zeros((200, 300, 3), np.uint8))
    assert (True, cv2.INTER_LINEAR) in seen and (False, cv2.INTER_AREA) in seen
    assert all(interp == (cv2.INTER_LINEAR if up else cv2.INTER_AREA) for up, interp in seen)
