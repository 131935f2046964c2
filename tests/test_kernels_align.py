"""Parity of the C++ alignment kernels (sdk._core) with the golden references in kernels/align.

warp_affine must match cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT 0) to <= 1 grey level with
< 2 % of values differing at all; estimate_similarity must match Umeyama's SVD formula to 1e-9.
"""
from __future__ import annotations


import numpy as np
import pytest

from sdk import _native
from sdk._native import core

from _kernel_refs import load_reference  # noqa: E402

ref = load_reference("align")

# ArcFace 112x112 five-point template (x, y): eyes, nose tip, mouth corners.
ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                    [41.5493, 92.3655], [70.7299, 92.2041]])


def _cv2_warp_is_float() -> bool:
    """True when cv2.warpAffine maps coordinates in float (OpenCV 5). Older builds quantise them to
    1/32 px (fixed point), which moves results on pixel noise by up to ~4 grey levels: the
    <= 1 level parity bound is defined against the float warp. Probe: sample at x = 1/64 px."""
    out = ref.warp_affine(np.array([[0, 255]], np.uint8), np.array([[1, 0, -1 / 64], [0, 1, 0]]), 1, 1)
    return int(out[0, 0]) == 4  # 255/64 rounded; the fixed-point warp gives 8 (x = 1/32)


needs_float_cv2 = pytest.mark.skipif(
    not _cv2_warp_is_float(),
    reason="this OpenCV's warpAffine quantises coordinates to 1/32 px; parity needs OpenCV 5's float warp")


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _assert_close_image(out: np.ndarray, want: np.ndarray) -> None:
    assert out.shape == want.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"max abs diff {diff.max()}"
    assert (diff > 0).mean() < 0.02, f"{(diff > 0).mean():.4f} of values differ"


# ---------------------------------------------------------------- estimate_similarity

@pytest.mark.parametrize("seed", range(10))
def test_similarity_matches_umeyama_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    src = rng.uniform(0, 640, (n, 2))
    dst = rng.uniform(0, 112, (n, 2))
    got = _native.estimate_similarity(src, dst)
    want = ref.estimate_similarity(src, dst)
    assert got.shape == (2, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_similarity_recovers_known_transform_from_5_points(seed):
    rng = np.random.default_rng(100 + seed)
    m_true = _similarity(rng.uniform(0.2, 3), rng.uniform(-np.pi, np.pi), *rng.uniform(-300, 300, 2))
    src = ARCFACE * rng.uniform(1, 4) + rng.uniform(0, 500, 2)
    got = _native.estimate_similarity(src, _apply(m_true, src))
    np.testing.assert_allclose(got, m_true, rtol=0, atol=1e-9)


def test_similarity_never_reflects():
    src = ARCFACE.copy()
    dst = src * [-1.0, 1.0]  # a mirror image: the best proper similarity is not a reflection
    got = _native.estimate_similarity(src, dst)
    a, b = got[0, 0], got[1, 0]
    np.testing.assert_allclose(got[:, :2], [[a, -b], [b, a]], atol=1e-12)
    np.testing.assert_allclose(got, ref.estimate_similarity(src, dst), atol=1e-9)


def test_similarity_accepts_float32_and_int_points():
    src32 = (ARCFACE * 3).astype(np.float32)
    m64 = _native.estimate_similarity(src32.astype(np.float64), ARCFACE)
    np.testing.assert_array_equal(_native.estimate_similarity(src32, ARCFACE), m64)
    np.testing.assert_array_equal(core.estimate_similarity(src32, ARCFACE), m64)
    ints = np.array([[0, 0], [10, 0], [0, 10]])
    np.testing.assert_allclose(core.estimate_similarity(ints, ints), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


@pytest.mark.parametrize("src, dst, exc", [
    (np.zeros((5, 3)), np.zeros((5, 3)), ValueError),            # not (N, 2)
    (np.ones((1, 2)), np.ones((1, 2)), ValueError),              # N < 2
    (ARCFACE, ARCFACE[:4], ValueError),                          # N mismatch
    (np.ones((5, 2)), ARCFACE, ValueError),                      # all source points equal
    (np.full((5, 2), np.nan), ARCFACE, ValueError),              # not finite
    (np.array([["a", "b"], ["c", "d"]]), ARCFACE[:2], TypeError),  # not numbers
    (ARCFACE.astype(np.complex128), ARCFACE, TypeError),
])
def test_similarity_bad_input(src, dst, exc):
    with pytest.raises(exc):
        core.estimate_similarity(src, dst)


# ---------------------------------------------------------------- warp_affine

def _random_case(rng, channels):
    h, w = (int(v) for v in rng.integers(8, 400, 2))
    shape = (h, w) if channels == 0 else (h, w, channels)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    out_h, out_w = (int(v) for v in rng.integers(1, 200, 2))
    m = _similarity(rng.uniform(0.25, 4), rng.uniform(-np.pi, np.pi),
                    rng.uniform(-1.5 * out_w, 1.5 * out_w), rng.uniform(-1.5 * out_h, 1.5 * out_h))
    return img, m, out_h, out_w


@needs_float_cv2
@pytest.mark.parametrize("channels", [0, 1, 3, 4])  # 0: a 2-D (H, W) image
@pytest.mark.parametrize("seed", range(12))
def test_warp_matches_cv2_random(channels, seed):
    rng = np.random.default_rng(1000 * channels + seed)
    img, m, out_h, out_w = _random_case(rng, channels)
    out = _native.warp_affine(img, m, (out_w, out_h))
    _assert_close_image(out, ref.warp_affine(img, m, out_h, out_w))


@needs_float_cv2
@pytest.mark.parametrize("size", [(112, 112), (150, 150), (96, 112)])
@pytest.mark.parametrize("seed", range(4))
def test_warp_face_crops_from_hd_frame(size, seed):
    rng = np.random.default_rng(7 + seed)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    template = ARCFACE * (size[0] / 112.0)
    # landmarks somewhere in the frame, sometimes partly outside it
    face = ARCFACE * rng.uniform(0.5, 3) + rng.uniform([-100, -100], [1250, 700])
    angle = rng.uniform(-0.6, 0.6)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    face = (face - face.mean(0)) @ rot.T + face.mean(0)
    m = _native.estimate_similarity(face, template)
    out = _native.warp_affine(frame, m, size)
    _assert_close_image(out, ref.warp_affine(frame, m, size[1], size[0]))


@needs_float_cv2
@pytest.mark.parametrize("seed", range(6))
def test_warp_general_affine_and_out_of_frame(seed):
    rng = np.random.default_rng(50 + seed)
    img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    m = np.array([[rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-150, 150)],
                  [rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-150, 150)]])
    if abs(np.linalg.det(m[:, :2])) < 0.05:
        m[:, :2] += np.eye(2)
    out = core.warp_affine(img, m, 130, 170)
    _assert_close_image(out, ref.warp_affine(img, m, 130, 170))


def test_warp_identity_and_integer_shift_are_exact():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (31, 47, 3), dtype=np.uint8)
    np.testing.assert_array_equal(core.warp_affine(img, np.eye(2, 3), 31, 47), img)
    shifted = core.warp_affine(img, [[1, 0, 5], [0, 1, -3]], 31, 47)
    np.testing.assert_array_equal(shifted[:28, 5:], img[3:, :42])
    assert not shifted[:, :5].any() and not shifted[28:].any()


def test_warp_fully_outside_is_black():
    img = np.full((20, 20, 3), 255, np.uint8)
    out = core.warp_affine(img, [[1, 0, 1000], [0, 1, 1000]], 16, 16)
    assert out.shape == (16, 16, 3) and not out.any()


@needs_float_cv2
def test_warp_views_and_channel_order_pass_through():
    rng = np.random.default_rng(11)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    m = _similarity(0.7, 0.3, -20, 10)
    crop = frame[40:200, 60:300]           # padded rows: used without a copy
    rgb = frame[:, :, ::-1]                # reversed channels: copied
    fortran = np.asfortranarray(frame)     # column-major: copied
    for view in (crop, rgb, fortran):
        out = _native.warp_affine(view, m, (112, 112))
        _assert_close_image(out, ref.warp_affine(np.ascontiguousarray(view), m, 112, 112))
    np.testing.assert_array_equal(_native.warp_affine(rgb, m, (112, 112)),
                                  _native.warp_affine(frame, m, (112, 112))[:, :, ::-1])


@needs_float_cv2
@pytest.mark.parametrize("channels", [0, 1, 3, 4])
@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2), (2, 5)])
def test_warp_tiny_images(channels, hw):
    rng = np.random.default_rng(hw[0] * 10 + hw[1] + channels)
    shape = hw if channels == 0 else (*hw, channels)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    for m in (np.eye(2, 3), _similarity(3, 0.2, 1, 1), _similarity(0.7, -2.0, 4, 3)):
        got = core.warp_affine(img, m, 7, 6)
        want = ref.warp_affine(img, m, 7, 6)
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("image, m, out_h, out_w, exc", [
    (np.zeros((8, 8, 3), np.float32), np.eye(2, 3), 4, 4, TypeError),     # float image
    (np.zeros((8, 8, 3), np.uint16), np.eye(2, 3), 4, 4, TypeError),
    ([[0, 1], [2, 3]], np.eye(2, 3), 4, 4, TypeError),                    # not an ndarray
    (np.zeros((8, 8, 2), np.uint8), np.eye(2, 3), 4, 4, ValueError),      # 2 channels
    (np.zeros((8,), np.uint8), np.eye(2, 3), 4, 4, ValueError),           # 1-D
    (np.zeros((2, 8, 8, 3), np.uint8), np.eye(2, 3), 4, 4, ValueError),   # 4-D
    (np.zeros((0, 8, 3), np.uint8), np.eye(2, 3), 4, 4, ValueError),      # empty
    (np.zeros((8, 8, 3), np.uint8), np.eye(3), 4, 4, ValueError),         # 3x3 matrix
    (np.zeros((8, 8, 3), np.uint8), np.zeros((2, 3)), 4, 4, ValueError),  # singular
    (np.zeros((8, 8, 3), np.uint8), np.full((2, 3), np.nan), 4, 4, ValueError),
    (np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), 0, 4, ValueError),      # bad sizes
    (np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), 4, -1, ValueError),
    (np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), 16385, 4, ValueError),
])
def test_warp_bad_input(image, m, out_h, out_w, exc):
    with pytest.raises(exc):
        core.warp_affine(image, m, out_h, out_w)


def test_warp_python_api_checks_size_pair():
    img = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError):
        _native.warp_affine(img, np.eye(2, 3), (4, 4, 4))
    with pytest.raises(TypeError):
        _native.warp_affine(img, np.eye(2, 3), (4.0, 4))
    with pytest.raises(TypeError):
        _native.warp_affine(img.astype(np.float64), np.eye(2, 3), (4, 4))


# ---------------------------------------------------------------- CUDA

def test_cuda_info_shape():
    info = _native.cuda_info()
    assert set(info) == {"compiled", "device_count", "error"}
    assert isinstance(info["compiled"], bool) and isinstance(info["device_count"], int)
    if info["device_count"] == 0:
        assert isinstance(info["error"], str) and info["error"]
        with pytest.raises(RuntimeError, match="built without CUDA|no CUDA device"):
            core.warp_affine_cuda(np.zeros((4, 4, 3), np.uint8), np.eye(2, 3), 4, 4)


@pytest.mark.gpu
@pytest.mark.skipif(_native.cuda_info()["device_count"] == 0,
                    reason="no CUDA device: " + str(_native.cuda_info()["error"]))
@pytest.mark.parametrize("channels", [0, 1, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_warp_cuda_matches_cpu(channels, seed):
    rng = np.random.default_rng(5000 + 10 * channels + seed)
    img, m, out_h, out_w = _random_case(rng, channels)
    gpu = _native.warp_affine_cuda(img, m, (out_w, out_h))
    cpu = _native.warp_affine(img, m, (out_w, out_h))
    assert gpu.shape == cpu.shape and gpu.dtype == np.uint8
    assert np.abs(gpu.astype(np.int16) - cpu.astype(np.int16)).max() <= 1
    crop = img[3:, 5:]  # padded rows go through cudaMemcpy2D
    gpu = _native.warp_affine_cuda(crop, m, (out_w, out_h)).astype(np.int16)
    assert np.abs(gpu - _native.warp_affine(crop, m, (out_w, out_h))).max() <= 1
