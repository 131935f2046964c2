"""PyTorch port of dlib's face recognition ResNet: the .dat reader, and parity with dlib itself.

The reader tests need only numpy; everything touching the port skips cleanly when torch is not installed.
"""
from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import pytest

frm = pytest.importorskip("face_recognition_models")

from sdk.models.dlib_dat import read_dat  # noqa: E402

try:
    import torch

    from trainer.models.dlib_resnet import DlibResNet, _add_prev, preprocess
except ModuleNotFoundError as e:  # torch is a trainer-only dependency (requirements/train.txt)
    if e.name != "torch":
        raise
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (requirements/train.txt)")
#: parameters of anet_type: 29 conv (weights + biases), 29 affine (gamma + beta), fc 256x128
N_PARAMS = 5_614_592

# Observed on this project's CPU machines: max |port - dlib| = 1.8e-6 per component (worst: an all-black
# chip; faces ~4e-7), descriptor components up to ~0.44.  Both sides are float32 with different conv
# kernels and summation orders, so the bound keeps a ~5x margin over what was seen.
MAX_ABS = 1e-5
MAX_COS = 1e-9


@pytest.fixture(scope="module")
def dat_path():
    from pathlib import Path

    return Path(frm.face_recognition_model_location())


@pytest.fixture(scope="module")
def parsed(dat_path):
    return read_dat(dat_path)


@pytest.fixture(scope="module")
def model(dat_path):
    return DlibResNet.from_dat(dat_path)


@pytest.fixture(scope="module")
def chips_and_ref(dat_path):
    """dlib's own pipeline on the astronaut (face + a false-positive patch), mirrored, noisy, and pure noise."""
    dlib = pytest.importorskip("dlib")
    from skimage import data

    img = data.astronaut()
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rects = det(img, 1)
    assert len(rects) >= 1
    chips = [np.asarray(dlib.get_face_chip(img, sp(img, r), 150, 0.25)) for r in rects]
    rng = np.random.default_rng(0)
    face = chips[0]
    chips.append(np.ascontiguousarray(face[:, ::-1]))
    chips.append(np.clip(face + rng.normal(0, 12, face.shape), 0, 255).astype(np.uint8))
    chips.append(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    rec = dlib.face_recognition_model_v1(str(dat_path))
    ref = np.array([np.array(rec.compute_face_descriptor(c, 0)) for c in chips])
    return chips, ref


def test_reader_layer_inventory(parsed):
    kinds = Counter(layer.kind for layer in parsed.layers)
    assert kinds == {"con": 29, "affine": 29, "relu": 29, "add_prev": 14, "avg_pool": 5, "max_pool": 1,
                     "fc": 1, "tag_or_skip": 22}
    assert parsed.input["kind"] == "input_rgb_image_sized"
    assert (parsed.input["nr"], parsed.input["nc"]) == (150, 150)
    assert parsed.input["avg_red"] == pytest.approx(122.782, abs=1e-4)
    assert parsed.input["avg_blue"] == pytest.approx(104.298, abs=1e-4)
    assert parsed.loss["kind"] == "loss_metric_2"
    first = parsed.layers[0]
    assert first.kind == "con" and first.params["weight"].shape == (32, 3, 7, 7)
    assert (first.attrs["stride_y"], first.attrs["padding_y"]) == (2, 0)
    fc = parsed.of_kind("fc")[0]
    assert fc.params["weight"].reshape(256, 128).dtype == np.float32 and "bias" not in fc.params
    convs = parsed.of_kind("con")
    assert sum(c.params["weight"].size + c.params["bias"].size for c in convs) + 256 * 128 + 2 * sum(
        a.params["gamma"].size for a in parsed.of_kind("affine")) == N_PARAMS
    assert all(np.isfinite(p).all() for layer in parsed.layers for p in layer.params.values())


@pytest.mark.slow
@needs_torch
def test_port_matches_dlib(model, chips_and_ref):
    chips, ref = chips_and_ref
    with torch.inference_mode():
        out = model(preprocess(np.stack(chips))).double().numpy()
    assert out.shape == (len(chips), 128)
    diff = np.abs(out - ref).max()
    cos = 1 - (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    assert diff <= MAX_ABS, f"max abs diff {diff:.3g}"
    assert cos.max() <= MAX_COS
    with torch.inference_mode():  # batch of one gives the same answer; embed() is unit length
        one = model(preprocess(chips[0])).double().numpy()[0]
        emb = model.embed(preprocess(chips[0])).numpy()[0]
    assert np.abs(one - ref[0]).max() <= MAX_ABS
    assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
@needs_torch
def test_port_is_differentiable(model, chips_and_ref):
    x = preprocess(chips_and_ref[0][0]).requires_grad_(True)
    model(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@needs_torch
def test_add_prev_zero_pads_like_dlib():
    a = torch.arange(1 * 2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    b = torch.ones(1, 4, 4, 4)
    s = _add_prev(a, b)
    assert s.shape == (1, 4, 4, 4)
    assert torch.equal(s[:, :2, :3, :3], a + 1)
    assert torch.equal(s[:, 2:], torch.ones(1, 2, 4, 4))
    assert torch.equal(s[:, :2, 3, :], torch.ones(1, 2, 4)) and torch.equal(s[:, :2, :, 3], torch.ones(1, 2, 4))


@needs_torch
def test_safetensors_roundtrip(model, tmp_path):
    pytest.importorskip("safetensors")
    p = tmp_path / "dlib_resnet.safetensors"
    model.save_safetensors(p)
    again = DlibResNet.load(p)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.slow
@needs_torch
def test_onnx_export_matches_dlib(model, chips_and_ref):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    chips, ref = chips_and_ref
    x = preprocess(np.stack(chips))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x[:1], buf, opset_version=17, dynamo=False, input_names=["chips"],
                          output_names=["descriptors"], dynamic_axes={"chips": {0: "n"}, "descriptors": {0: "n"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"chips": x.numpy()})[0]
    assert np.abs(out - ref).max() <= MAX_ABS


def test_truncated_file_names_the_file(dat_path, tmp_path):
    data = dat_path.read_bytes()
    for cut in (3, 1000, len(data) // 2, len(data) - 5):
        p = tmp_path / f"cut_{cut}.dat"
        p.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(p.name)):
            read_dat(p)
    p = tmp_path / "trailing.dat"
    p.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        read_dat(p)


def test_foreign_files_rejected(tmp_path):
    from skimage import io as skio

    png = tmp_path / "face.png"
    skio.imsave(png, np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="face.png"):
        read_dat(png)
    sp = frm.pose_predictor_five_point_model_location()  # a dlib file, but not a DNN
    with pytest.raises(ValueError, match="shape_predictor_5"):
        read_dat(sp)
    with pytest.raises(ValueError, match="missing.dat"):
        read_dat(tmp_path / "missing.dat")
    with pytest.raises(ValueError, match="mmod_human_face_detector"):
        read_dat(frm.cnn_face_detector_model_location())  # a dlib DNN, but another network


@needs_torch
def test_param_count_and_wrong_network(parsed):
    assert sum(p.numel() for p in DlibResNet().parameters()) == N_PARAMS
    import dataclasses

    broken = dataclasses.replace(parsed, layers=parsed.layers[:-3] + parsed.layers[-2:])  # drop a relu
    with pytest.raises(ValueError, match="anet_type"):
        DlibResNet().load_dlib(broken)
