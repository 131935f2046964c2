"""The one Preprocess record: parsing, refusal of bad fields, and what apply() produces."""
import numpy as np
import pytest

from sdk.errors import BundleError
from sdk.preprocess import Preprocess, legacy_input, pm1, raw_uint8


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


def test_normalise_is_bit_exact_with_the_training_formulas():
    """``x / 127.5 - 1`` (inpainter) and ``(x - 127.5) / 128`` (MTCNN), on every byte value, to the bit."""
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    got = pm1("arcface112", "bgr", "nchw").apply(x)
    want = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    np.testing.assert_array_equal(got, want)
    mtcnn = Preprocess("frame", "rgb", "float32", scale=1 / 128, offset=-127.5 / 128, layout="nwhc")
    f = np.random.default_rng(3).uniform(0, 255, 4096).astype(np.float32)  # resized pixels are not integers
    np.testing.assert_array_equal(mtcnn.normalise(f), (f - np.float32(127.5)) * np.float32(1 / 128))


def test_nwhc_is_width_major(crops):
    p = Preprocess("frame", "rgb", "float32", scale=1 / 128, offset=-1.0, layout="nwhc")
    x = p.apply(crops)
    assert x.shape == (2, 5, 4, 3) == p.input_shape(4, 5, batch=2)
    np.testing.assert_array_equal(x[1, 3, 2], crops[1, 2, 3, ::-1].astype(np.float32) / 128 - 1)


@pytest.mark.parametrize("p", [pm1("arcface112", "bgr", "nchw"), pm1("dlib150", "rgb", "nhwc"),
                               raw_uint8("dlib150", "rgb", "nchw"),
                               Preprocess("arcface112", "rgb", "float32", scale=(1 / 58.4, 1 / 57.1, 1 / 57.4),
                                          offset=(-123.7 / 58.4, -116.3 / 57.1, -103.5 / 57.4), layout="nwhc")])
def test_invert_undoes_apply(crops, p):
    np.testing.assert_array_equal(p.invert(p.apply(crops)), crops)
    lo, hi = p.value_range()
    y = p.apply(crops)
    assert lo <= float(y.min()) and float(y.max()) <= hi


def test_invert_clips_and_rounds_like_the_inpainter():
    y = np.random.default_rng(5).uniform(-1.3, 1.3, (2, 3, 6, 7)).astype(np.float32)
    want = np.rint((np.clip(y, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(pm1("arcface112", "bgr", "nchw").invert(y), want)


def test_legacy_input_strings():
    assert legacy_input("uint8_nhwc_rgb", "dlib150") == raw_uint8("dlib150", "rgb", "nhwc")
    assert legacy_input("uint8_nhwc_bgr", "arcface112") == raw_uint8("arcface112", "bgr", "nhwc")
    for bad in ("bgr", "float_nchw_rgb", "uint8_chw_rgb", ""):
        with pytest.raises(BundleError, match="not a known convention"):
            legacy_input(bad, "dlib150", where="embed stage")
    with pytest.raises(BundleError, match="embed stage.*crop"):
        legacy_input("uint8_nhwc_rgb", "arcface96", where="embed stage")


def test_zero_scale_is_refused():
    with pytest.raises(BundleError, match="non-zero"):
        Preprocess("dlib150", "rgb", "float32", scale=(1.0, 0.0, 1.0))
