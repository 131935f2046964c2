"""Tests of sdk.detect: the MTCNN face detector (ONNX Runtime; the networks ship in sdk/models/mtcnn)."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from sdk.bundle import BUILTIN_DIR, file_digest, load_bundle
from sdk.detect import PREPROCESS, WEIGHTS_DIR, DetectorConfig, MTCNNDetector
from sdk.errors import ModelFileError
from sdk.types import Face

# Her face in skimage.data.astronaut() (512x512), measured: box ~ (179, 59, 268, 174).
ASTRO_BOX = np.array([179.0, 59.0, 268.0, 174.0])


@pytest.fixture(scope="module")
def det() -> MTCNNDetector:
    d = MTCNNDetector.from_package()
    d.prepare()
    return d


@pytest.fixture(scope="module")
def astro_face(det, astronaut_bgr) -> Face:
    faces = det.detect(astronaut_bgr)
    assert len(faces) == 1
    return faces[0]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _check_geometry(f: Face) -> None:
    """Landmarks inside the box, eyes above nose above mouth, image-left points first."""
    x1, y1, x2, y2 = f.box
    lm = f.landmarks
    assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)), (f.box, lm)
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = lm
    assert max(ley, rey) < ny < min(lmy, rmy)
    assert lex < nx < rex
    assert lex < rex and lmx < rmx


def test_shipped_networks_are_the_bundles_and_the_record_is_the_manifests(det):
    """from_package() loads the files every built-in bundle names (same bytes), and every built-in manifest
    states the networks' input convention (PREPROCESS), which the cascade's normalisation is built from."""
    for name in ("default-v2", "baseline", "default-v1"):  # the MTCNN bundles (the default detects with LTDet)
        spec = load_bundle(name).stages["detect"]
        for role in ("pnet", "rnet", "onet"):
            ref = spec.files[role]
            assert ref.path.resolve() == (WEIGHTS_DIR / f"{role}.onnx").resolve()
            assert file_digest(ref.path) == ref.sha256
        raw = json.loads((BUILTIN_DIR / name / "manifest.json").read_text())
        assert raw["stages"]["detect"]["preprocess"] == PREPROCESS.to_dict()
    assert det.preprocess == PREPROCESS and det.kind == "mtcnn"
    x = np.arange(256, dtype=np.float32)
    np.testing.assert_array_equal(PREPROCESS.normalise(x), ((x - np.float32(127.5)) * np.float32(0.0078125)))


def test_astronaut_one_face(astro_face):
    f = astro_face
    assert isinstance(f, Face)
    assert f.box.dtype == np.float32 and f.box.shape == (4,)
    assert f.landmarks.dtype == np.float32 and f.landmarks.shape == (5, 2)
    assert isinstance(f.score, float) and 0.95 < f.score <= 1.0
    assert _iou(f.box, ASTRO_BOX) > 0.85, f.box
    _check_geometry(f)


def test_astronaut_half_size(det, astronaut_bgr, astro_face):
    half = cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA)
    faces = det.detect(half)
    assert len(faces) == 1 and faces[0].score > 0.95
    f = faces[0]
    _check_geometry(f)
    # same landmarks at half scale (MTCNN's regression jitters a little with scale)
    assert np.abs(f.landmarks * 2 - astro_face.landmarks).max() < 4.0
    assert _iou(f.box * 2, astro_face.box) > 0.8


def test_astronaut_flipped(det, astronaut_bgr, astro_face):
    W = astronaut_bgr.shape[1]
    faces = det.detect(astronaut_bgr[:, ::-1].copy())
    assert len(faces) == 1 and faces[0].score > 0.95
    f = faces[0]
    _check_geometry(f)  # image-left eye still first after the flip
    # mirror the unflipped landmarks and swap left/right: they must land on the flipped ones
    mirrored = astro_face.landmarks[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = W - mirrored[:, 0]
    assert np.abs(f.landmarks - mirrored).max() < 3.0
    mbox = np.array([W - astro_face.box[2], astro_face.box[1], W - astro_face.box[0], astro_face.box[3]])
    assert _iou(f.box, mbox) > 0.8


def test_several_faces_sorted(det, astronaut_bgr):
    small = cv2.resize(astronaut_bgr, (200, 200), interpolation=cv2.INTER_AREA)
    frame = np.full((300, 560, 3), 90, np.uint8)
    frame[0:200, 0:200] = small
    frame[100:300, 360:560] = small
    frame[150:270, 210:330] = cv2.resize(astronaut_bgr, (120, 120), interpolation=cv2.INTER_AREA)
    faces = det.detect(frame)
    assert len(faces) == 3
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    # each copy found where it was pasted (her face is at ASTRO_BOX / 512 of each copy)
    for (x0, y0, side) in [(0, 0, 200), (360, 100, 200), (210, 150, 120)]:
        want = ASTRO_BOX * side / 512 + np.array([x0, y0, x0, y0])
        assert max(_iou(f.box, want) for f in faces) > 0.7
    for f in faces:
        _check_geometry(f)


def test_edge_face_box_clipped(det, astronaut_bgr):
    # her face cut by the top-left corner: the regressed box extends past the frame and is clipped to it
    frame = astronaut_bgr[70:, 190:].copy()
    faces = det.detect(frame)
    assert len(faces) == 1 and faces[0].score > 0.95
    f = faces[0]
    H, W = frame.shape[:2]
    assert f.box[0] == 0.0 and f.box[1] == 0.0
    assert 0 < f.box[2] <= W and 0 < f.box[3] <= H
    _check_geometry(f)


@pytest.mark.parametrize("shape", [(12, 12), (20, 20), (12, 3000), (4000, 16)])
def test_tiny_and_thin_frames(det, shape):
    assert det.detect(np.zeros(shape, np.uint8)) == []


@pytest.mark.parametrize("kind", ["coffee", "grey", "noise"])
def test_no_face(det, kind, coffee_bgr):
    if kind == "coffee":
        frame = coffee_bgr
    elif kind == "grey":
        frame = np.full((240, 320, 3), 128, np.uint8)
    else:
        frame = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    assert det.detect(frame) == []


def test_grey_and_bgra_inputs(det, astronaut_bgr, astro_face, camera_bgr):
    cam = np.ascontiguousarray(camera_bgr[:, :, 0])  # grey 512x512, one face
    ref = det.detect(cv2.cvtColor(cam, cv2.COLOR_GRAY2BGR))
    assert len(ref) == 1 and ref[0].score > 0.95
    for grey in (cam, cam[:, :, None]):
        got = det.detect(grey)
        assert len(got) == 1
        np.testing.assert_array_equal(got[0].box, ref[0].box)
        np.testing.assert_array_equal(got[0].landmarks, ref[0].landmarks)

    bgra = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = 7
    got = det.detect(bgra)
    assert len(got) == 1
    np.testing.assert_array_equal(got[0].box, astro_face.box)
    np.testing.assert_array_equal(got[0].landmarks, astro_face.landmarks)


def test_bad_frames_rejected(det):
    with pytest.raises(TypeError):
        det.detect(None)
    with pytest.raises(TypeError):
        det.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        det.detect(np.zeros((64, 64, 2), np.uint8))


def test_max_side_maps_back_exactly(astronaut_bgr):
    """Detecting on a big frame with max_side == detecting on its INTER_AREA downscale, scaled back."""
    big = cv2.resize(astronaut_bgr, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    got = MTCNNDetector.from_package(DetectorConfig(max_side=512, min_face_size=40)).detect(big)
    small = cv2.resize(big, (512, 512), interpolation=cv2.INTER_AREA)
    ref = MTCNNDetector.from_package(DetectorConfig(max_side=None, min_face_size=20)).detect(small)
    assert len(got) == len(ref) == 1
    np.testing.assert_allclose(got[0].box, np.minimum(ref[0].box * 2, 1024), atol=1e-3)
    np.testing.assert_allclose(got[0].landmarks, ref[0].landmarks * 2, atol=1e-3)
    assert got[0].score == pytest.approx(ref[0].score)


def test_max_side_close_to_full_resolution(astronaut_bgr):
    big = cv2.resize(astronaut_bgr, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    full = MTCNNDetector.from_package(DetectorConfig(max_side=None)).detect(big)
    down = MTCNNDetector.from_package(DetectorConfig(max_side=700)).detect(big)
    assert len(full) == len(down) == 1
    f, d = full[0], down[0]
    # MTCNN's box regression jitters by a few % of the face with the pyramid; landmarks are steadier
    assert np.abs(f.box - d.box).max() < 0.05 * f.width  # ~9 px on this 180 px face
    assert np.abs(f.landmarks - d.landmarks).max() < 0.03 * f.width


def test_config_validation():
    with pytest.raises(ValueError):
        DetectorConfig(min_face_size=0)
    with pytest.raises(ValueError):
        DetectorConfig(thresholds=(0.6, 0.7))
    with pytest.raises(ValueError):
        DetectorConfig(scale_factor=1.0)
    with pytest.raises(ValueError):
        DetectorConfig(max_side=8)


# ---- model files --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_paths():
    return WEIGHTS_DIR / "pnet.onnx", WEIGHTS_DIR / "rnet.onnx", WEIGHTS_DIR / "onet.onnx"


def test_explicit_paths_load(model_paths, astronaut_bgr, astro_face):
    d = MTCNNDetector(*model_paths, config=DetectorConfig(threads=1))
    f = d.detect(astronaut_bgr)
    assert len(f) == 1
    np.testing.assert_allclose(f[0].box, astro_face.box, atol=1e-3)


def test_missing_model_file(model_paths, tmp_path):
    p, r, o = model_paths
    missing = tmp_path / "nope" / "rnet.onnx"
    with pytest.raises(ModelFileError) as e:
        MTCNNDetector(p, missing, o)
    assert str(missing) in str(e.value) and e.value.path == str(missing)


def test_truncated_model_file(model_paths, tmp_path):
    p, r, o = model_paths
    bad = tmp_path / "onet.onnx"
    data = o.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as e:
        MTCNNDetector(p, r, bad)
    assert str(bad) in str(e.value)


def test_foreign_model_files(model_paths, tmp_path, astronaut_bgr):
    p, r, o = model_paths
    jpeg = tmp_path / "pnet.onnx"  # a photo renamed .onnx
    ok, buf = cv2.imencode(".jpg", astronaut_bgr)
    assert ok
    jpeg.write_bytes(buf.tobytes())
    with pytest.raises(ModelFileError) as e:
        MTCNNDetector(jpeg, r, o)
    assert str(jpeg) in str(e.value)

    # a valid ONNX model, but the wrong network for the slot (wrong inputs / outputs)
    for slot in range(3):
        wrong = tmp_path / f"wrong{slot}.onnx"
        shutil.copyfile([r, o, p][slot], wrong)
        args = list(model_paths)
        args[slot] = wrong
        with pytest.raises(ModelFileError) as e:
            MTCNNDetector(*args)
        assert str(wrong) in str(e.value) and "MTCNN" in str(e.value)
