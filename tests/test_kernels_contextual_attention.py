"""Parity of the C++ contextual attention (sdk._core.contextual_attention) with
kernels/contextual_attention/reference.py (spec: kernels/contextual_attention/README.md)."""
from __future__ import annotations


import numpy as np
import pytest

_native = pytest.importorskip("sdk._native")
if not hasattr(_native.core, "contextual_attention"):  # pragma: no cover - stale build
    pytest.skip("sdk._core built without contextual_attention", allow_module_level=True)

from _kernel_refs import load_reference  # noqa: E402

ref = load_reference("contextual_attention")
TOL = ref.TOLERANCES["kernel_fp32_vs_reference"]


def _check(f, b, mask, *, naive=False, **kw):
    B, C, Hf, Wf = f.shape
    rate = kw.get("rate", 2)
    y, att = _native.contextual_attention(f, b, mask, **kw)
    fn = ref.reference_naive if naive else ref.reference_vectorized
    r = fn(f, b, mask, return_intermediates=True, **kw)
    gh, gw = r["grid"]
    hf, wf = Hf // rate, Wf // rate
    assert y.shape == (B, C, Hf, Wf) and y.dtype == np.float32
    assert att.shape == (B, gh * gw, hf, wf) and att.dtype == np.float32
    assert np.isfinite(y).all() and np.isfinite(att).all()
    want_att = r["attention"].transpose(0, 2, 1).reshape(B, gh * gw, hf, wf)
    np.testing.assert_allclose(y, r["y"], rtol=0, atol=TOL)
    np.testing.assert_allclose(att, want_att, rtol=0, atol=TOL)
    # invalid patches get exactly 0; samples without a valid patch are exactly 0
    valid = r["valid"]  # (B, L)
    for n in range(B):
        assert (att[n][~valid[n]] == 0).all()
        if not valid[n].any():
            assert (att[n] == 0).all() and (y[n] == 0).all()
        else:
            np.testing.assert_allclose(att[n].sum(axis=0), 1.0, rtol=0, atol=1e-5)
    return y, att, r


@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("rate", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (16, 16), (12, 16)])
def test_matches_naive_reference(self_attention, fuse, rate, size):
    H, W = size
    f, b, m = ref.make_inputs(4, 4, H, W, rate=rate, seed=1, self_attention=self_attention)
    _, _, r = _check(f, b, m, naive=True, rate=rate, fuse=fuse)
    # the batch covers a rectangle hole, no hole, all hole and scattered holes
    assert r["valid"][1].all() and not r["valid"][2].any()


@pytest.mark.parametrize("channels", [1, 3, 32, 128])
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("rate", [1, 2])
def test_matches_vectorized_reference(channels, fuse, rate):
    f, b, m = ref.make_inputs(4, channels, 32, 24, rate=rate, seed=channels, self_attention=False)
    _check(f, b, m, rate=rate, fuse=fuse)


def test_realistic_size():
    f, b, m = ref.make_inputs(4, 128, 64, 64, rate=2, seed=3, self_attention=True)
    _check(f, b, m)


@pytest.mark.parametrize("kw", [dict(ksize=5), dict(fuse_k=5), dict(fuse_k=1), dict(stride=2),
                                dict(softmax_scale=3.0), dict(ksize=1, rate=1)])
def test_other_parameters(kw):
    f, b, m = ref.make_inputs(4, 8, 16, 16, rate=kw.get("rate", 2), seed=5, self_attention=False)
    _check(f, b, m, **kw)


def test_different_foreground_and_background_sizes():
    rng = np.random.default_rng(7)
    f = rng.uniform(-1, 1, (2, 6, 12, 20)).astype(np.float32)
    b = rng.uniform(-1, 1, (2, 6, 16, 8)).astype(np.float32)
    m = np.zeros((2, 1, 16, 8), np.float32)
    m[0, 0, 4:10, 2:6] = 1
    _check(f, b, m, naive=True)


def test_mask_none_shared_and_dtypes():
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=2)
    y0, a0 = _native.contextual_attention(f, b, None)
    y1, a1 = _native.contextual_attention(f, b, np.zeros_like(m))
    assert np.array_equal(y0, y1) and np.array_equal(a0, a1)
    _check(f, b, None)
    # one mask for the whole batch
    _check(f, b, m[:1])
    # soft / bool / float64 masks: nonzero = hole
    ys, as_ = _native.contextual_attention(f, b, m * 0.5)
    yb, ab = _native.contextual_attention(f, b, m != 0)
    yd, ad = _native.contextual_attention(f, b, m.astype(np.float64))
    y, a = _native.contextual_attention(f, b, m)
    for yy, aa in ((ys, as_), (yb, ab), (yd, ad)):
        assert np.array_equal(yy, y) and np.array_equal(aa, a)


def test_non_contiguous_inputs():
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=4, self_attention=False)
    fv = np.ascontiguousarray(f[:, ::-1])[:, ::-1]  # negative-stride view of f
    assert not fv.flags.c_contiguous
    y0, a0 = _native.contextual_attention(f, b, m)
    y1, a1 = _native.contextual_attention(fv, b, m)
    assert np.array_equal(y0, y1) and np.array_equal(a0, a1)


def test_deterministic_and_empty_batch():
    f, b, m = ref.make_inputs(4, 16, 32, 32, seed=6)
    y0, a0 = _native.contextual_attention(f, b, m)
    y1, a1 = _native.contextual_attention(f, b, m)
    assert np.array_equal(y0, y1) and np.array_equal(a0, a1)
    y, a = _native.contextual_attention(f[:0], b[:0], None)
    assert y.shape == (0, 16, 32, 32) and a.shape == (0, 256, 16, 16)


def test_bad_inputs_raise():
    f, b, m = ref.make_inputs(2, 4, 16, 16)
    ca = _native.contextual_attention
    with pytest.raises(TypeError):
        ca(f.astype(np.float64), b, m)
    with pytest.raises(TypeError):
        ca(f, b.astype(np.float16), m)
    with pytest.raises(TypeError):
        ca(f, b, m.astype(str))
    with pytest.raises(TypeError):
        _native.core.contextual_attention(f, b, m.astype(np.float64))
    with pytest.raises(ValueError):
        ca(f[0], b, m)  # 3-D
    with pytest.raises(ValueError):
        ca(f, b[:1], m)  # batch mismatch
    with pytest.raises(ValueError):
        ca(f, b[:, :3], m)  # channel mismatch
    with pytest.raises(ValueError):
        ca(f[:, :, :15, :15], b, m)  # not a multiple of rate
    with pytest.raises(ValueError):
        ca(f, b, m, rate=3)
    with pytest.raises(ValueError):
        ca(f, b, m[:, :, :8])  # mask shape
    with pytest.raises(ValueError):
        ca(f, b, np.concatenate([m, m], axis=1))
    with pytest.raises(ValueError):
        ca(f, b, np.concatenate([m, m, m]))  # mask batch 6
    with pytest.raises(ValueError):
        ca(f, b, m, fuse_k=2)
    for kw in (dict(ksize=0), dict(stride=0), dict(rate=0), dict(softmax_scale=float("nan"))):
        with pytest.raises(ValueError):
            ca(f, b, m, **kw)
    with pytest.raises(ValueError):
        ca(f[:, :0], b[:, :0], m)  # C = 0
