"""export/trt.py: the TensorRT engine builder. Without TensorRT: the one-line error, bundle stage lookup, the
calibration data and the explicit (Q/DQ) INT8 quantization with entropy calibration, option checks. Tests marked
``tensorrt`` build engines wherever ``import tensorrt`` works and skip cleanly elsewhere."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from export import trt as trt_export


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory, astronaut_bgr):
    """A folder of aligned 112x112 crops: the astronaut (scikit-image), mirrored, shifted, plus noise crops."""
    import cv2

    from sdk.align import align

    lm = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)
    d = tmp_path_factory.mktemp("faces")
    face = align(astronaut_bgr, lm)
    rng = np.random.default_rng(0)
    crops = [face, face[:, ::-1], np.roll(face, 3, axis=0), np.roll(face, -4, axis=1)]
    crops += [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
    for i, c in enumerate(crops):
        cv2.imwrite(str(d / f"face_{i:02d}.png"), np.ascontiguousarray(c))
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_without_tensorrt_the_error_is_one_line():
    r = subprocess.run([sys.executable, "-m", "export", "trt", "--bundle", "default", "--stage", "segment",
                        "--out", "never.plan"], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "TensorRT is not installed" in lines[0] and "ONNX Runtime" in lines[0] and "--model default" in lines[0]
    with pytest.raises(trt_export.TensorRTUnavailableError):
        trt_export.require_tensorrt()


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_without_tensorrt_a_bundle_of_engines_fails_in_one_line_too(tmp_path):
    """``python -m export trt --bundle B --out DIR`` (every stage): the same one line, and nothing half-written."""
    r = subprocess.run([sys.executable, "-m", "export", "trt", "--bundle", "default", "--fp16",
                        "--out", str(tmp_path / "default_trt")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "TensorRT is not installed" in r.stderr
    assert not (tmp_path / "default_trt" / "manifest.json").exists()


def test_stage_lookup_in_bundles():
    from sdk.bundle import BUILTIN_DIR

    src = trt_export.stage_from_bundle("default", "segment")
    assert src.onnx.name == "segmenter.onnx" and src.onnx.is_file() and src.kind == "onnx_segmenter"
    src = trt_export.stage_from_bundle("deocclusion-preview", "complete")
    assert src.onnx.name == "inpainter.onnx" and src.onnx.is_file()
    from sdk.errors import BundleError

    with pytest.raises(BundleError, match="no ONNX model file"):
        trt_export.stage_from_bundle("default-v1", "embed")  # dlib ResNet (.dat): not an ONNX stage
    src = trt_export.stage_from_bundle("default", "embed")  # a pkg: path into another built-in bundle
    assert src.onnx == BUILTIN_DIR / "maskaware-v3" / "student.onnx" and src.kind == "onnx_embedder"
    with pytest.raises(BundleError, match="unknown stage"):
        trt_export.stage_from_bundle("default", "detector")


def test_graph_io_and_assumed_preprocess():
    src = trt_export.stage_from_bundle("deocclusion-preview", "complete")
    inputs, outputs = trt_export.graph_io(src.onnx.read_bytes())
    assert [i.name for i in inputs] == ["image", "mask"] and [o.name for o in outputs] == ["completed"]
    assert inputs[0].dynamic_batch and inputs[0].shape[1:] == [3, 112, 112] and inputs[0].dtype == "float32"
    pre = trt_export.assumed_preprocess(inputs[0])
    assert pre["layout"] == "nchw" and pre["crop"] == "arcface112" and pre["offset"] == -1.0


def test_calibration_batches_from_a_face_folder(faces_dir):
    faces = trt_export.load_faces(faces_dir, (112, 112))
    assert faces.shape == (6, 112, 112, 3) and faces.dtype == np.uint8
    src = trt_export.stage_from_bundle("deocclusion-preview", "complete")
    inputs, _ = trt_export.graph_io(src.onnx.read_bytes())
    pre = trt_export.assumed_preprocess(inputs[0])
    batches = list(trt_export.calibration_batches(faces, inputs, pre, batch=4, max_batches=3))
    assert len(batches) == 3
    for b in batches:
        assert b["image"].shape == (4, 3, 112, 112) and b["image"].dtype == np.float32
        assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
        assert b["mask"].shape == (4, 1, 112, 112) and set(np.unique(b["mask"])) <= {0.0, 1.0}
        assert 0.05 < b["mask"].mean() < 0.6  # real occluders, not empty
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trt_export.load_faces(faces_dir / "missing", (112, 112))
    (faces_dir.parent / "empty").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="no readable image"):
        trt_export.load_faces(faces_dir.parent / "empty", (112, 112))


def test_qdq_int8_with_entropy_calibration(faces_dir, tmp_path):
    """The explicit-quantization INT8 path (any TensorRT version): Q/DQ with symmetric, entropy-calibrated scales;
    the quantized segmenter still runs (ONNX Runtime) and agrees with float32 on the calibration faces."""
    import onnx
    import onnxruntime as ort

    src = trt_export.stage_from_bundle("default", "segment")
    inputs, outputs = trt_export.graph_io(src.onnx.read_bytes())
    pre = src.preprocess or trt_export.assumed_preprocess(inputs[0])
    faces = trt_export.load_faces(faces_dir, (112, 112))
    batches = list(trt_export.calibration_batches(faces, inputs, pre, batch=2, max_batches=3))
    out = trt_export.quantize_qdq(src.onnx, tmp_path / "seg.qdq.onnx", batches)
    q = onnx.load(str(out))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all((z == 0).all() for z in zps)  # symmetric, as TensorRT requires
    feed = batches[0]
    f32 = ort.InferenceSession(str(src.onnx), providers=["CPUExecutionProvider"]).run(None, feed)
    i8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)
    for name, a, b in zip([o.name for o in outputs], f32, i8):  # probabilities in [0, 1]
        assert np.abs(np.asarray(a, np.float64) - b).max() < 0.05, f"INT8 {name} drifted from float32"


@pytest.mark.parametrize("kw,match", [
    (dict(int8=True), "needs --calib"), (dict(batch=(8, 4, 32)), "MIN <= OPT <= MAX"),
    (dict(dla_core=0), "needs --fp16 or --int8"), (dict(int8_mode="implicit", int8=True, calib="x"), "int8-mode")])
def test_bad_options_are_refused(kw, match, tmp_path):
    src = trt_export.stage_from_bundle("default", "segment")
    with pytest.raises(ValueError, match=match):
        trt_export.BuildConfig(source=src, out=tmp_path / "e.plan", **kw).validate()


def test_cli_reports_option_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export", "trt", "--bundle", "default", "--stage", "segment", "--int8",
                        "--out", str(tmp_path / "e.plan")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --int8 needs --calib FOLDER "
                                                                   "(aligned face crops for entropy calibration)"]


# ---------------------------------------------------------------------------------------------- with TensorRT
@pytest.mark.tensorrt
@pytest.mark.parametrize("fp16", [False, True])
def test_build_segmenter_engine(fp16, tmp_path):
    pytest.importorskip("tensorrt")
    src = trt_export.stage_from_bundle("default", "segment")
    cfg = trt_export.BuildConfig(source=src, out=tmp_path / "seg.plan", fp16=fp16, batch=(1, 4, 8),
                                 timing_cache=tmp_path / "timing.cache")
    m = trt_export.build_engine(cfg)
    assert (tmp_path / "seg.plan").stat().st_size == m["engine"]["bytes"] > 0
    assert (tmp_path / "timing.cache").stat().st_size > 0
    saved = json.loads((tmp_path / "seg.plan.json").read_text())
    assert saved["stage"] == "segment" and saved["builder"]["precision"] == ("fp16" if fp16 else "fp32")
    assert saved["inputs"][0]["profile"]["max"][0] == 8 and saved["tensorrt_version"]


@pytest.mark.tensorrt
def test_build_int8_engine(faces_dir, tmp_path):
    pytest.importorskip("tensorrt")
    src = trt_export.stage_from_bundle("default", "segment")
    cfg = trt_export.BuildConfig(source=src, out=tmp_path / "seg8.plan", int8=True, calib=faces_dir, calib_batch=2,
                                 calib_batches=3, batch=(1, 2, 4))
    m = trt_export.build_engine(cfg)
    assert m["builder"]["precision"] == "int8" and m["builder"]["int8_calibration"]["method"] == "entropy"
