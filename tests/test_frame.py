import numpy as np
import pytest

from sdk.frame import MAX_SIDE, as_bgr, read_image


def test_bgr_passes_through_unchanged(astronaut_bgr):
    out = as_bgr(astronaut_bgr)
    assert out.shape == astronaut_bgr.shape and out.dtype == np.uint8
    assert np.array_equal(out, astronaut_bgr)


def test_grey_and_bgra_are_converted(astronaut_bgr):
    grey = astronaut_bgr[:, :, 1].copy()
    out = as_bgr(grey)
    assert out.shape == (*grey.shape, 3) and np.array_equal(out[:, :, 0], grey) and np.array_equal(out[:, :, 2], grey)
    assert as_bgr(grey[:, :, None]).shape == (*grey.shape, 3)
    bgra = np.dstack([astronaut_bgr, np.full(grey.shape, 7, np.uint8)])
    assert np.array_equal(as_bgr(bgra), astronaut_bgr)


@pytest.mark.parametrize("bad, exc, words", [
    (None, TypeError, "None"),
    ([[1, 2], [3, 4]], TypeError, "numpy.ndarray"),
    (np.zeros((64, 64, 3), np.float32), TypeError, "uint8"),
    (np.zeros((64, 64, 3), np.uint16), TypeError, "uint16"),
    (np.zeros((64, 64, 2), np.uint8), ValueError, "2 channels"),
    (np.zeros((64, 64, 3, 1), np.uint8), ValueError, "shape"),
    (np.zeros((0, 64, 3), np.uint8), ValueError, "empty"),
    (np.zeros((5, 64, 3), np.uint8), ValueError, "at least"),
    (np.zeros((MAX_SIDE + 1, 16, 3), np.uint8), ValueError, "largest side"),
])
def test_bad_frames_raise_clear_errors(bad, exc, words):
    with pytest.raises(exc, match=words):
        as_bgr(bad)


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        read_image(junk)
