"""Batched contextual attention (trainer/models/contextual_attention.py) vs the NumPy golden reference
(kernels/contextual_attention/reference.py), a literal per-sample port of DeepFill's TF op sequence,
F.fold, and ONNX Runtime (opset 17).  Bounds: reference.TOLERANCES.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from trainer.models.contextual_attention import (  # noqa: E402
    ContextualAttention,
    attention_offsets,
    contextual_attention,
    fold_as_pad_sum,
)

from _kernel_refs import load_reference  # noqa: E402

ref = load_reference("contextual_attention")
TOL = ref.TOLERANCES


def _t(*arrays):
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def _attn_rows(attn: torch.Tensor) -> np.ndarray:
    """(B, L, hf, wf) -> (B, Pf, L), the reference's layout."""
    return attn.flatten(2).transpose(1, 2).detach().numpy()


# ------------------------------------------------------------------------------------------------
# the two references agree
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    {},
    {"fuse": False},
    {"legacy_mask": True},
    {"rate": 1},
    {"stride": 2},
    {"fuse_k": 5, "softmax_scale": 3.0},
])
@pytest.mark.parametrize("self_attention", [True, False])
def test_vectorized_reference_matches_naive(kw, self_attention):
    size = (8, 8) if kw.get("rate") == 1 else (12, 16)
    f, b, m = ref.make_inputs(4, 3, *size, seed=1, self_attention=self_attention)
    a = ref.reference_naive(f, b, m, return_intermediates=True, **kw)
    v = ref.reference_vectorized(f, b, m, return_intermediates=True, **kw)
    assert a["grid"] == v["grid"]
    np.testing.assert_array_equal(a["valid"], v["valid"])
    for key in ("scores", "fused", "attention", "y"):
        np.testing.assert_allclose(v[key], a[key], rtol=0, atol=TOL["vectorized_vs_naive_fp64"], err_msg=key)


# ------------------------------------------------------------------------------------------------
# the batched torch layer == naive reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"fuse": False}, {"legacy_mask": True}, {"rate": 1}, {"stride": 2},
                                {"export_friendly": False}])
@pytest.mark.parametrize("self_attention", [True, False])
def test_torch_matches_naive_reference(kw, self_attention):
    # batch of 4: rectangle hole, no hole, all hole, another hole + noise (a different mask per sample)
    size = 8 if kw.get("rate") == 1 else 16
    f, b, m = ref.make_inputs(4, 4, size, size, seed=2, self_attention=self_attention)
    rkw = {k: v for k, v in kw.items() if k != "export_friendly"}
    want = ref.reference_naive(f, b, m, return_intermediates=True, **rkw)
    assert want["valid"][1].all() and not want["valid"][2].any()  # mask-free and fully masked samples
    assert 0 < want["valid"][0].sum() < want["valid"].shape[1]
    y, attn = contextual_attention(*_t(f, b, m), return_flow=True, **kw)
    assert y.shape == f.shape and y.dtype == torch.float32
    tol = TOL["torch_fp32_vs_reference"]
    np.testing.assert_allclose(y.numpy(), want["y"], rtol=0, atol=tol)
    np.testing.assert_allclose(_attn_rows(attn), want["attention"], rtol=0, atol=tol)


def test_torch_float64_matches_reference_tightly():
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=3, dtype=np.float64)
    y = contextual_attention(*_t(f, b, m))
    assert y.dtype == torch.float64
    np.testing.assert_allclose(y.numpy(), ref.reference_naive(f, b, m), rtol=0, atol=TOL["torch_fp64_vs_reference"])


def test_foreground_and_background_of_different_sizes():
    rng = np.random.default_rng(4)
    f = rng.uniform(-1, 1, (2, 3, 12, 16)).astype(np.float32)
    b = rng.uniform(-1, 1, (2, 3, 20, 8)).astype(np.float32)
    m = np.zeros((2, 1, 20, 8), np.float32)
    m[0, 0, 4:12, 2:6] = 1
    want = ref.reference_naive(f, b, m)
    y = contextual_attention(*_t(f, b, m))
    assert y.shape == f.shape
    np.testing.assert_allclose(y.numpy(), want, rtol=0, atol=TOL["torch_fp32_vs_reference"])


def test_realistic_size_against_vectorized_reference():
    # DeepFill's attention branch is 128 channels at 64x64 (a 256x256 image); half of that here
    f, b, m = ref.make_inputs(2, 64, 32, 32, seed=5)
    y = contextual_attention(*_t(f, b, m))
    np.testing.assert_allclose(y.numpy(), ref.reference_vectorized(f, b, m), rtol=0,
                               atol=TOL["torch_fp32_vs_reference"])


# ------------------------------------------------------------------------------------------------
# semantics: masks, per-sample independence, edge cases
# ------------------------------------------------------------------------------------------------
def test_invalid_patches_get_zero_attention_and_rows_sum_to_one():
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=6)
    valid = ref.reference_vectorized(f, b, m, return_intermediates=True)["valid"]  # (B, L)
    _, attn = contextual_attention(*_t(f, b, m), return_flow=True)
    rows = _attn_rows(attn)  # (B, Pf, L)
    for n in range(f.shape[0]):
        assert np.all(rows[n][:, ~valid[n]] == 0.0)  # exactly zero
        sums = rows[n].sum(axis=1)
        if valid[n].any():
            np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-6)
        else:
            assert np.all(sums == 0.0)


def test_fully_masked_sample_outputs_zeros_without_nan():
    f, b, _ = ref.make_inputs(2, 4, 16, 16, seed=7)
    m = np.ones((2, 1, 16, 16), np.float32)
    for legacy in (False, True):
        y, attn = contextual_attention(*_t(f, b, m), return_flow=True, legacy_mask=legacy)
        assert torch.isfinite(y).all() and torch.isfinite(attn).all()
        assert torch.count_nonzero(y) == 0 and torch.count_nonzero(attn) == 0


def test_mask_free_equals_no_mask_and_broadcast_mask():
    f, b, m = ref.make_inputs(3, 4, 16, 16, seed=8)
    zeros = np.zeros_like(m)
    y0 = contextual_attention(*_t(f, b, zeros))
    y1 = contextual_attention(*_t(f, b), None)
    np.testing.assert_allclose(y0.numpy(), y1.numpy(), rtol=0, atol=1e-7)
    # a (1, 1, H, W) mask applies to every sample
    one = m[:1]
    yb = contextual_attention(*_t(f, b, one))
    yr = contextual_attention(*_t(f, b, np.repeat(one, 3, axis=0)))
    assert torch.equal(yb, yr)


def test_samples_are_independent():
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=9, self_attention=False)
    y = contextual_attention(*_t(f, b, m))
    for n in range(4):
        yn = contextual_attention(*_t(f[n:n + 1], b[n:n + 1], m[n:n + 1]))
        np.testing.assert_allclose(y[n:n + 1].numpy(), yn.numpy(), rtol=0, atol=1e-6)


def test_self_attention_offsets():
    f, b, m = ref.make_inputs(4, 8, 16, 16, seed=10)
    _, attn = contextual_attention(*_t(f, b, m), return_flow=True)
    off = attention_offsets(attn)
    assert off.shape == (4, 2, 8, 8) and off.dtype == torch.int64
    # without a hole, every location's best match is itself (cosine with its own patch is maximal)
    assert torch.count_nonzero(off[1]) == 0
    # fully masked sample: no attention, offset 0
    assert torch.count_nonzero(off[2]) == 0
    # sample 0: the attended patch is always a valid one
    valid = ref.reference_vectorized(f, b, m, return_intermediates=True)["valid"][0].reshape(8, 8)
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    ty, tx = (ys + off[0, 0]).numpy(), (xs + off[0, 1]).numpy()
    assert valid[ty, tx].all()


# ------------------------------------------------------------------------------------------------
# the original op sequence (per-sample loop, conv2d / eye-conv fuse / conv_transpose2d)
# ------------------------------------------------------------------------------------------------
def _deepfill_literal(f, b, mask, ksize=3, rate=2, fuse_k=3, softmax_scale=10.0):
    """DeepFill v1 contextual_attention (stride 1, rate 2), op for op, one sample at a time.

    The only change from the TF code: ``mm`` comes from each sample's own mask (not sample 0's).
    """
    B, C, H, W = f.shape
    k = 2 * rate
    raw = F.unfold(F.pad(b, (1, 1, 1, 1)), k, stride=rate)  # SAME for k=4, s=2
    raw = raw.view(B, C, k, k, -1).permute(0, 4, 1, 2, 3)  # (B, L, C, k, k)
    fd = F.interpolate(f, scale_factor=1.0 / rate, mode="nearest")
    bd = F.interpolate(b, scale_factor=1.0 / rate, mode="nearest")
    md = F.interpolate(mask, scale_factor=1.0 / rate, mode="nearest")
    hf, wf = fd.shape[2:]
    hb, wb = bd.shape[2:]
    p = ksize // 2
    w = F.unfold(F.pad(bd, (p, p, p, p)), ksize).view(B, C, ksize, ksize, -1).permute(0, 4, 1, 2, 3)
    m = F.unfold(F.pad(md, (p, p, p, p)), ksize)  # (B, k*k, L)
    mm = (m.mean(dim=1) == 0).to(f.dtype).view(B, -1, 1, 1)  # (B, L, 1, 1)
    eye = torch.eye(fuse_k, dtype=f.dtype).view(1, 1, fuse_k, fuse_k)
    out = []
    for i in range(B):
        wi = w[i]
        wi_normed = wi / torch.clamp_min(wi.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt(), 1e-4)
        yi = F.conv2d(fd[i:i + 1], wi_normed, padding=p)  # (1, L, hf, wf)
        yi = yi.view(1, hb * wb, hf * wf).transpose(1, 2).reshape(1, 1, hf * wf, hb * wb)
        yi = F.conv2d(yi, eye, padding=fuse_k // 2)
        yi = yi.view(1, hf, wf, hb, wb).permute(0, 2, 1, 4, 3).reshape(1, 1, hf * wf, hb * wb)
        yi = F.conv2d(yi, eye, padding=fuse_k // 2)
        yi = yi.view(1, wf, hf, wb, hb).permute(0, 2, 1, 4, 3).reshape(1, hf * wf, hb * wb)
        yi = yi.transpose(1, 2).reshape(1, hb * wb, hf, wf)
        yi = yi * mm[i:i + 1]
        yi = F.softmax(yi * softmax_scale, dim=1)
        yi = yi * mm[i:i + 1]
        out.append(F.conv_transpose2d(yi, raw[i], stride=rate, padding=1) / 4.0)
    return torch.cat(out, dim=0)


@pytest.mark.parametrize("amplitude", [1.0, 0.02])
def test_matches_literal_deepfill_port_with_legacy_mask(amplitude):
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=11, self_attention=False)
    f, b = f * np.float32(amplitude), b * np.float32(amplitude)
    ft, bt, mt = _t(f, b, m)
    want = _deepfill_literal(ft, bt, mt)
    got = contextual_attention(ft, bt, mt, legacy_mask=True)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=TOL["torch_fp32_vs_reference"])
    np.testing.assert_allclose(got.numpy(), ref.reference_naive(f, b, m, legacy_mask=True), rtol=0,
                               atol=TOL["torch_fp32_vs_reference"])


def test_legacy_mask_differs_when_scores_are_small():
    # logits near 0: the original lets each invalid patch take exp(0) of the softmax mass (then drops it)
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=18)
    f, b = f * np.float32(0.02), b * np.float32(0.02)
    new = contextual_attention(*_t(f, b, m)).numpy()
    old = contextual_attention(*_t(f, b, m), legacy_mask=True).numpy()
    tol = TOL["torch_fp32_vs_reference"]
    np.testing.assert_allclose(new, ref.reference_naive(f, b, m), rtol=0, atol=tol)
    np.testing.assert_allclose(old, ref.reference_naive(f, b, m, legacy_mask=True), rtol=0, atol=tol)
    assert np.abs(new[0] - old[0]).max() > 100 * tol  # sample 0 has invalid patches
    np.testing.assert_allclose(new[1], old[1], rtol=0, atol=1e-7)  # sample 1 has none: same


# ------------------------------------------------------------------------------------------------
# fold replacement and ONNX export
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_size,kernel,stride,padding", [
    ((16, 16), 4, 2, 1),      # the layer's own case (rate 2)
    ((18, 18), 4, 2, 0),      # the layer as used: full size, no padding, crop afterwards
    ((9, 11), 3, 1, 1),
    ((10, 13), (2, 3), (2, 1), (0, 1)),
    ((7, 7), 3, 3, 0),
    ((12, 10), 5, (3, 2), 2),
])
def test_fold_as_pad_sum_equals_fold(output_size, kernel, stride, padding):
    g = torch.Generator().manual_seed(0)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    nh = (output_size[0] + 2 * ph - kh) // sh + 1
    nw = (output_size[1] + 2 * pw - kw) // sw + 1
    cols = torch.randn(2, 3 * kh * kw, nh * nw, generator=g)
    want = F.fold(cols, output_size, kernel, stride=stride, padding=padding)
    got = fold_as_pad_sum(cols, output_size, kernel, stride=stride, padding=padding)
    assert TOL["fold_as_pad_sum_vs_fold"] == 0.0
    assert torch.equal(got, want)


def test_export_friendly_flag_gives_identical_layer_output():
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=12)
    a = ContextualAttention(export_friendly=True)(*_t(f, b, m))
    c = ContextualAttention(export_friendly=False)(*_t(f, b, m))
    assert torch.equal(a, c)


def _export(module, args, opset, names, out_names):
    buf = io.BytesIO()
    dyn = {n: {0: "batch"} for n in (*names, *out_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, opset_version=opset, dynamo=False, input_names=list(names),
                          output_names=list(out_names), dynamic_axes=dyn)
    return buf.getvalue()


def test_onnx_opset17_export_runs_in_onnxruntime():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=13, self_attention=False)
    module = ContextualAttention(return_flow=True).eval()
    blob = _export(module, _t(f, b, m), 17, ("f", "b", "mask"), ("y", "attention"))
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    ops = {n.op_type for n in model.graph.node}
    assert "Col2Im" not in ops and "Loop" not in ops
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ty, ta = module(*_t(f, b, m))
    oy, oa = sess.run(None, {"f": f, "b": b, "mask": m})
    tol = TOL["onnx_vs_torch_fp32"]
    np.testing.assert_allclose(oy, ty.numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(oa, ta.numpy(), rtol=0, atol=tol)
    # the batch axis is dynamic: another batch size, checked against the reference
    f2, b2, m2 = ref.make_inputs(3, 4, 16, 16, seed=14)
    oy2, _ = sess.run(None, {"f": f2, "b": b2, "mask": m2})
    np.testing.assert_allclose(oy2, ref.reference_vectorized(f2, b2, m2), rtol=0, atol=TOL["torch_fp32_vs_reference"])


def test_onnx_self_attention_single_input_graph():
    ort = pytest.importorskip("onnxruntime")

    class SelfAttn(torch.nn.Module):  # DeepFill's use: contextual_attention(x, x, mask)
        def __init__(self):
            super().__init__()
            self.ca = ContextualAttention()

        def forward(self, x, mask):
            return self.ca(x, x, mask)

    f, _, m = ref.make_inputs(4, 4, 16, 16, seed=15)
    blob = _export(SelfAttn().eval(), _t(f, m), 17, ("x", "mask"), ("y",))
    (oy,) = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"x": f, "mask": m})
    np.testing.assert_allclose(oy, ref.reference_vectorized(f, f, m), rtol=0, atol=TOL["torch_fp32_vs_reference"])


# ------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------
def test_gradients_are_finite_and_reach_f_and_b():
    f, b, m = ref.make_inputs(4, 4, 16, 16, seed=16, self_attention=False)
    b[:, :, 8:, 8:] = 0.0  # all-zero background patches (post-ReLU features): norm clamp, no NaN
    ft = torch.from_numpy(f).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    y = contextual_attention(ft, bt, torch.from_numpy(m))
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    for g in (ft.grad, bt.grad):
        assert g is not None and torch.isfinite(g).all()
    for n in (0, 1, 3):  # samples with valid patches: both inputs get gradient
        assert ft.grad[n].abs().sum() > 0 and bt.grad[n].abs().sum() > 0
    assert ft.grad[2].abs().sum() == 0  # fully masked: constant zero output


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    f = (torch.rand(2, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    b = (torch.rand(2, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    mask[0, :, 2:6, 2:6] = 1

    def fn(f_, b_):
        return contextual_attention(f_, b_, mask, softmax_scale=2.0)

    assert torch.autograd.gradcheck(fn, (f, b), eps=1e-6, atol=1e-5, fast_mode=True)


# ------------------------------------------------------------------------------------------------
# API
# ------------------------------------------------------------------------------------------------
def test_module_api_and_argument_checks():
    f, b, m = ref.make_inputs(2, 4, 16, 16, seed=17)
    ca = ContextualAttention()
    assert list(ca.parameters()) == []
    y = ca(*_t(f, b, m))
    y2, attn = ca.attention(*_t(f, b, m))
    assert torch.equal(y, y2) and attn.shape == (2, 64, 8, 8)
    assert isinstance(ContextualAttention(return_flow=True)(*_t(f, b, m)), tuple)
    with pytest.raises(ValueError):
        ContextualAttention(fuse_k=4)
    with pytest.raises(ValueError):
        ca(*_t(f[:, :, :15, :15], b[:, :, :15, :15], m[:, :, :15, :15]))  # not a multiple of rate
    with pytest.raises(ValueError):
        ca(*_t(f, b, m[:, :, :8]))  # mask shape
