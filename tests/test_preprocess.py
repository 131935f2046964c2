"""The one Preprocess record: parsing, refusal of bad fields, and what apply() produces."""
import numpy as np
import pytest

from sdk.errors import BundleError
from sdk.preprocess import Preprocess, pm1, raw_uint8


@pytest.fixture
def crops():
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)


def test_pm1_nchw_rgb_matches_hand_formula(crops):
    p = pm1("arcface112", colour="rgb")
    x = p.apply(crops)
    want = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    assert x.dtype == np.float32 and x.shape == (2, 3, 4, 5) and x.flags.c_contiguous
    np.testing.assert_allclose(x, want, atol=1e-6)


def test_raw_uint8_bgr_is_identity(crops):
    x = raw_uint8("dlib150").apply(crops)
    assert x.dtype == np.uint8 and np.array_equal(x, crops)


def test_per_channel_mean_std_in_graph_order(crops):
    p = Preprocess("arcface112", "rgb", "float32", scale=(1 / 58.4, 1 / 57.1, 1 / 57.4),
                   offset=(-123.7 / 58.4, -116.3 / 57.1, -103.5 / 57.4), layout="nhwc")
    x = p.apply(crops)
    rgb = crops[..., ::-1].astype(np.float32)
    np.testing.assert_allclose(x[..., 0], (rgb[..., 0] - 123.7) / 58.4, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x[..., 2], (rgb[..., 2] - 103.5) / 57.4, rtol=1e-5, atol=1e-5)


def test_grey_one_channel(crops):
    p = Preprocess("arcface112", "grey", "float16", scale=1 / 255, layout="nchw")
    x = p.apply(crops)
    assert x.shape == (2, 1, 4, 5) and x.dtype == np.float16
    b, g, r = (crops[..., i].astype(np.float32) for i in range(3))
    np.testing.assert_allclose(x[:, 0].astype(np.float32), np.rint(0.299 * r + 0.587 * g + 0.114 * b) / 255, atol=2e-3)


def test_round_trip_through_dict():
    p = Preprocess("dlib150", "rgb", "float32", scale=(0.5, 0.25, 1.0), offset=-1.0, layout="nchw")
    d = p.to_dict()
    assert d["scale"] == [0.5, 0.25, 1.0]
    assert Preprocess.from_dict(d) == p


@pytest.mark.parametrize("raw, word", [
    ({"crop": "arcface96"}, "crop"),
    ({"colour": "yuv"}, "colour"),
    ({"dtype": "int8"}, "dtype"),
    ({"layout": "chw"}, "layout"),
    ({"dtype": "float32", "scale": "big"}, "scale"),
    ({"dtype": "float32", "offset": [1, 2]}, "offset"),
    ({"dtype": "float32", "scale": float("nan")}, "scale"),
    ({"dtype": "uint8", "scale": 2.0}, "uint8"),
    ({"colour": "grey", "dtype": "float32", "scale": [1, 1, 1]}, "grey"),
    ({"mean": 1}, "unknown"),
])
def test_bad_fields_are_refused_by_name(raw, word):
    with pytest.raises(BundleError, match=word):
        Preprocess.from_dict(raw, where="stage 'embed'")


def test_apply_refuses_wrong_dtype_and_shape(crops):
    p = pm1("arcface112")
    with pytest.raises(TypeError, match="uint8"):
        p.apply(crops.astype(np.float32))
    with pytest.raises(ValueError, match="N, H, W, 3"):
        p.apply(crops[0])
