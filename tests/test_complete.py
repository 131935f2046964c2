"""Complete stage: inpainter ONNX export -> bundle, OnnxInpainter runtime, paste-back geometry, Recognizer wiring.

Fast (no ../shared data, no trained weights): a width-4 Generator with random weights is saved as a run folder
and exported by the one exporter (``python -m export onnx --family inpainter``) into a bundle built from the built-in
``default`` bundle.
Faces are 112x112 ArcFace crops of scikit-image's astronaut (BGR).
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import cv2
import numpy as np
import pytest

from sdk.align import ARCFACE_112, ARCFACE_CROP, similarity_to_template, warp
from sdk.errors import BundleError, ModelFileError

#: MTCNN landmarks of the astronaut in skimage.data.astronaut() (the default detector's output).
ASTRO_LM = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)
S = ARCFACE_CROP.width


@pytest.fixture(scope="module")
def exported(inpainter_run_dir, tmp_path_factory):
    from export.exporter import ExportConfig, export

    out = tmp_path_factory.mktemp("bundles") / "inpainter_test"
    return out, export(ExportConfig("onnx", "inpainter", inpainter_run_dir, out, base="default"))


@pytest.fixture(scope="module")
def inpainter(exported):
    from sdk.complete import OnnxInpainter

    return OnnxInpainter(exported[0] / "inpainter.onnx").prepare()


@pytest.fixture(scope="module")
def crops_holes(astronaut_bgr):
    """(4, 112, 112, 3) uint8 BGR crops (astronaut, mirrored, 2 noise) and (4, 112, 112) uint8 {0, 1} holes."""
    from export.families.inpainter import parity_inputs

    crops, holes = parity_inputs(n_random=2, seed=1)
    assert crops.shape == (4, S, S, 3) and holes.shape == (4, S, S)
    np.testing.assert_array_equal(crops[0], warp(astronaut_bgr, similarity_to_template(ASTRO_LM, ARCFACE_112), (S, S)))
    return crops, holes


def test_export_summary_and_bundle(exported):
    from sdk.bundle import find_manifest, load_bundle
    from sdk.embed import file_digest

    out, result = exported
    assert result.parity[0].worst_abs <= 1e-3 and result.mode == "deocclusion"
    b = load_bundle(out)  # checks bytes + sha256 of every file
    assert b.mode == "deocclusion" and b.name == "inpainter_test"
    spec = b.stages["complete"]
    assert spec.kind == "onnx_inpainter"
    assert spec.config == {"threads": 1, "min_occlusion": 0.5, "dilate": 1}  # crop / colour: the preprocess record's
    assert spec.preprocess.crop == "arcface112" and spec.preprocess.colour == "bgr"
    ref = spec.files["model"]
    assert ref.path == out / "inpainter.onnx" and ref.bytes == result.onnx_bytes == ref.path.stat().st_size
    assert ref.sha256 == file_digest(ref.path)
    # the other stages are the default bundle's: same files (relative path rewritten), bytes and sha256
    default = load_bundle("default")
    raw = json.loads((out / "manifest.json").read_text())
    src = json.loads(find_manifest("default").read_text())
    assert raw["stages"]["segment"]["files"]["model"]["path"] != "segmenter.onnx"  # rewritten relative to out
    for st in ("detect", "segment", "embed"):
        assert b.stages[st].kind == default.stages[st].kind
        for role, f in default.stages[st].files.items():
            assert b.stages[st].files[role].path.resolve() == f.path.resolve()
            assert raw["stages"][st]["files"][role]["sha256"] == src["stages"][st]["files"][role]["sha256"]
    assert raw["inpainter_training"]["step"] == 0 and raw["inpainter_training"]["weights"] == "float32"


def test_sdk_preprocessing_matches_trainer(crops_holes, torch):
    from sdk.complete import from_model_output, to_model_input
    from trainer.inpainter_train import to_tensor, to_u8

    crops, _ = crops_holes
    x = to_model_input(crops)
    assert x.dtype == np.float32 and x.shape == (4, 3, S, S)
    # the trainer and the SDK apply the same Preprocess record (x / 127.5 - 1): bit-identical
    from trainer.preprocess import INPAINTER

    np.testing.assert_array_equal(to_tensor(crops).numpy(), INPAINTER.apply(crops))
    np.testing.assert_array_equal(x, to_tensor(crops).numpy())  # BGR kept, same scaling
    y = torch.rand(2, 3, S, S) * 2.2 - 1.1
    np.testing.assert_array_equal(from_model_output(y.numpy()), to_u8(y))


def test_complete_output_known_pixels_and_holes(inpainter, inpainter_run_dir, crops_holes):
    from export.families.inpainter import torch_completed
    from sdk.complete import from_model_output
    from trainer.models.inpainter import load_checkpoint

    crops, holes = crops_holes
    keep = crops.copy()
    out = inpainter.complete(crops, holes)
    assert out.dtype == np.uint8 and out.shape == crops.shape
    np.testing.assert_array_equal(crops, keep)  # input untouched
    known = holes == 0
    np.testing.assert_array_equal(out[known], crops[known])  # known pixels bit-exact
    hole = holes == 1
    assert (out != crops).any(-1)[hole].mean() > 0.5  # holes are filled with something else
    # what the torch generator computes, through the same pre/post-processing (within 1 grey level)
    gen, _ = load_checkpoint(inpainter_run_dir)
    ref = from_model_output(torch_completed(gen, crops, holes))
    assert np.abs(out.astype(int) - ref.astype(int))[hole].max() <= 1
    # mask dtypes: bool, uint8 {0, 1}, float probabilities (>= 0.5 is a hole) give the same answer
    np.testing.assert_array_equal(inpainter.complete(crops, holes.astype(bool)), out)
    np.testing.assert_array_equal(inpainter.complete(crops, np.where(hole, 0.9, 0.2).astype(np.float32)), out)
    # batch splitting (dynamic batch axis) does not change the result
    cfg = inpainter.config
    try:
        inpainter.config = dataclasses.replace(cfg, batch_size=3)
        np.testing.assert_array_equal(inpainter.complete(crops, holes), out)
    finally:
        inpainter.config = cfg
    # an empty hole returns the crop unchanged
    np.testing.assert_array_equal(inpainter.complete(crops[:1], np.zeros((1, S, S), np.uint8)), crops[:1])


@pytest.mark.parametrize("crops, masks, exc, match", [
    (np.zeros((1, S, S, 3), np.float32), np.zeros((1, S, S)), TypeError, "uint8"),
    (np.zeros((1, 100, 100, 3), np.uint8), np.zeros((1, 100, 100)), ValueError, r"\(N, 112, 112, 3\)"),
    (np.zeros((1, S, S, 4), np.uint8), np.zeros((1, S, S)), ValueError, "got shape"),
    (np.zeros((S, S, 3), np.uint8), np.zeros((S, S)), ValueError, "batch axis"),
    (np.zeros((2, S, S, 3), np.uint8), np.zeros((1, S, S)), ValueError, "masks must be"),
    (np.zeros((1, S, S, 3), np.uint8), np.zeros((1, S, S, 1)), ValueError, "masks must be"),
    (np.zeros((0, S, S, 3), np.uint8), np.zeros((0, S, S)), ValueError, "empty batch"),
    (np.zeros((1, S, S, 3), np.uint8), np.full((1, S, S), np.nan), ValueError, "NaN"),
    ([np.zeros((S, S, 3), np.uint8)], np.zeros((1, S, S)), TypeError, "numpy"),
])
def test_complete_rejects_bad_inputs(inpainter, crops, masks, exc, match):
    with pytest.raises(exc, match=match):
        inpainter.complete(crops, masks)


def test_bad_model_files(exported, tmp_path):
    from sdk.bundle import load_bundle
    from sdk.complete import OnnxInpainter

    out, _ = exported
    bad = tmp_path / "inpainter.onnx"
    data = (out / "inpainter.onnx").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="inpainter.onnx") as e:
        OnnxInpainter(bad)
    assert e.value.path == str(bad)
    with pytest.raises(ModelFileError, match="not found"):
        OnnxInpainter(tmp_path / "missing.onnx")
    seg = load_bundle("default").stages["segment"].files["model"].path
    with pytest.raises(ModelFileError, match="not a face inpainter"):
        OnnxInpainter(seg)
    # the bundle catches the truncation from the manifest's byte count
    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["stages"]["segment"]["files"]["model"]["path"] = str(seg)  # the relative path pointed out of `out`
    (copy / "manifest.json").write_text(json.dumps(raw))
    load_bundle(copy)
    (copy / "inpainter.onnx").write_bytes(data[:-10])
    with pytest.raises(ModelFileError, match="truncated"):
        load_bundle(copy)


def test_manifest_validation(exported, tmp_path):
    from sdk import _registry
    from sdk.bundle import load_bundle

    out, _ = exported
    raw = json.loads((out / "manifest.json").read_text())
    for k, f in raw["stages"]["complete"]["files"].items():
        f["path"] = str(out / f["path"])
    raw["stages"]["segment"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="needs a 'segment' stage"):
        load_bundle(tmp_path)
    spec = load_bundle(out).stages["complete"]
    with pytest.raises(BundleError, match="only 'bgr'"):
        _registry.build_stage(spec, {"input": "rgb"})
    assert "onnx_inpainter" in _registry.kinds("complete")


def test_paste_back_geometry(astronaut_bgr):
    from sdk.complete import paste_back

    frame = astronaut_bgr
    before = frame.copy()
    m = similarity_to_template(ASTRO_LM, ARCFACE_112)
    crop = warp(frame, m, (S, S))
    hole = np.zeros((S, S), np.uint8)
    hole[60:100, 25:90] = 1
    filled = crop.copy()
    filled[hole == 1] = (0, 255, 0)
    out = paste_back(frame, filled, hole, m)
    np.testing.assert_array_equal(frame, before)  # the frame is never modified
    assert out.shape == frame.shape and out.dtype == np.uint8 and out is not frame
    # the hole warped back into frame pixels, computed independently over the whole frame
    H, W = frame.shape[:2]
    wm = cv2.warpAffine(hole.astype(np.float32), cv2.invertAffineTransform(m), (W, H), flags=cv2.INTER_LINEAR) >= 0.5
    assert wm.sum() > 0.5 * hole.sum()  # the face is larger in the frame than in the crop
    np.testing.assert_array_equal(out[~wm], frame[~wm])  # outside the warped mask: exactly the original frame
    assert (out[wm] == (0, 255, 0)).all(-1).mean() > 0.9  # inside: the crop's pixels
    # cutting the crop again gives the filled pixels back in the hole's interior
    inner = cv2.erode(hole, np.ones((3, 3), np.uint8), iterations=2) == 1
    again = warp(out, m, (S, S))
    assert np.abs(again[inner].astype(int) - filled[inner].astype(int)).max() <= 2
    # writing into a given array; an empty hole changes nothing
    dst = frame.copy()
    assert paste_back(frame, filled, hole, m, out=dst) is dst
    np.testing.assert_array_equal(dst, out)
    np.testing.assert_array_equal(paste_back(frame, filled, np.zeros_like(hole), m), frame)
    with pytest.raises(ValueError, match="must match"):
        paste_back(frame, filled, hole[:50], m)


def test_recognizer_completes_occluded_faces(exported, astronaut_bgr, camera_bgr):
    from sdk.occluders import draw_surgical_mask
    from sdk.recognizer import Recognizer

    out, _ = exported
    rec = Recognizer(out)
    assert rec.bundle.mode == "deocclusion" and rec.completer is not None
    rec.prepare()
    rec.enroll("astronaut", astronaut_bgr)
    timings: dict[str, float] = {}
    [clean] = rec.identify(astronaut_bgr, timings=timings)
    assert clean.identity == "astronaut" and clean.occlusion < 0.5 and not clean.completed
    assert "complete" in timings

    face = rec.detect(astronaut_bgr)[0]
    masked, _ = draw_surgical_mask(astronaut_bgr, face.landmarks)
    keep = masked.copy()
    [m] = rec.identify(masked)
    np.testing.assert_array_equal(masked, keep)  # the caller's frame is never modified
    assert m.occlusion >= 0.5 and m.completed and m.to_dict()["completed"] is True
    assert np.isfinite(m.similarity) and m.candidates and m.candidates[0][0] == "astronaut"
    # the embedder saw the completed frame: skipping completion (threshold above 1) changes the embedding
    cfg = rec.completer.config
    rec.completer.config = dataclasses.replace(cfg, min_occlusion=1.01)
    try:
        [raw] = rec.identify(masked)
    finally:
        rec.completer.config = cfg
    assert not raw.completed and raw.similarity != m.similarity
    assert all(not x.completed for x in rec.identify(camera_bgr))  # unoccluded stranger: no completion
