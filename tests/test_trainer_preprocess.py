"""The trainer builds model inputs from the same :class:`sdk.preprocess.Preprocess` record the SDK reads:
``trainer.preprocess.apply_torch`` is bit-identical to ``Preprocess.apply``, and each model's record is the one its
checkpoints and bundles carry."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdk.preprocess import Preprocess, pm1, raw_uint8  # noqa: E402
from trainer.preprocess import INPAINTER, SEGMENTER, apply_torch, graph_input, student_preprocess  # noqa: E402

RECORDS = [
    pm1("arcface112", "bgr", "nchw"), pm1("arcface112", "rgb", "nhwc"), raw_uint8("dlib150", "rgb"),
    raw_uint8("arcface112", "bgr", "nchw"), student_preprocess("dlib150"),
    Preprocess("arcface112", "rgb", "float32", scale=(1 / 58.4, 1 / 57.1, 1 / 57.4),
               offset=(-123.7 / 58.4, -116.3 / 57.1, -103.5 / 57.4), layout="nchw"),
    Preprocess("arcface112", "grey", "float16", scale=1 / 255, layout="nchw"),
    Preprocess("dlib150", "bgr", "float16", scale=0.5, offset=3.0, layout="nhwc"),
]


@pytest.mark.parametrize("pre", RECORDS, ids=lambda p: f"{p.colour}-{p.dtype}-{p.layout}")
def test_torch_mirror_is_bit_identical_to_numpy(pre):
    crops = np.random.default_rng(7).integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    want = pre.apply(crops)
    got = apply_torch(pre, torch.from_numpy(crops)).numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # the same crops handed over in RGB order give the same input
    rgb = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1]))
    np.testing.assert_array_equal(apply_torch(pre, rgb, colour_in="rgb").numpy(), want)


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="uint8"):
        apply_torch(SEGMENTER, torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match="N, H, W, 3"):
        apply_torch(SEGMENTER, torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="colour_in"):
        apply_torch(SEGMENTER, torch.zeros(1, 4, 4, 3, dtype=torch.uint8), colour_in="grey")


def test_model_records():
    from trainer.inpainter_train import to_tensor
    from trainer.models.segmenter import preprocess as seg_preprocess
    from trainer.student.models import to_input

    crops = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(seg_preprocess(torch.from_numpy(crops)).numpy(), SEGMENTER.apply(crops))
    np.testing.assert_array_equal(to_tensor(crops).numpy(), INPAINTER.apply(crops))
    rgb = np.ascontiguousarray(crops[..., ::-1])  # students get RGB chips
    np.testing.assert_array_equal(to_input(torch.from_numpy(rgb)).numpy(), student_preprocess("dlib150").apply(crops))
    # exported graphs fold the record in: uint8 crops of the same colour order, NHWC
    assert graph_input(SEGMENTER) == raw_uint8("arcface112", "bgr", "nhwc")
    assert graph_input(student_preprocess("arcface112")) == raw_uint8("arcface112", "rgb", "nhwc")
