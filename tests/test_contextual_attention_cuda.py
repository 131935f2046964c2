"""The CUDA contextual attention on torch tensors (sdk._cuda_ops, sdk._core.contextual_attention_cuda).

Tests marked ``gpu`` run the compiled kernel on a CUDA device against the golden reference
(kernels/contextual_attention/reference.py, tolerances in its TOLERANCES) and skip cleanly elsewhere; the others
check argument handling, which needs no device. The kernel source itself is also exercised without a GPU by
tests/test_contextual_attention_cuda_emu.py.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from _kernel_refs import load_reference

_native = pytest.importorskip("sdk._native")
core = _native.core
if not hasattr(core, "contextual_attention_cuda"):  # pragma: no cover - stale build
    pytest.skip("sdk._core built without contextual_attention_cuda", allow_module_level=True)

ref = load_reference("contextual_attention")
TOL32 = ref.TOLERANCES["kernel_fp32_vs_reference"]
TOL16 = ref.TOLERANCES["kernel_fp16_vs_reference"]


def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or _native.cuda_info()["device_count"] == 0:
        pytest.skip("no CUDA device (torch.cuda and sdk._core both need one)")
    return torch


# ---------------------------------------------------------------------------------------------- no device needed
def test_importing_the_wrapper_does_not_import_torch():
    code = "import sys, sdk, sdk._cuda_ops; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sizes_and_workspace():
    s = core.contextual_attention_cuda_sizes(4, 48, 28, 28, 28, 28, 4, "float32")
    assert s["patches"] == 196 and tuple(s["grid"]) == (14, 14) and tuple(s["fg_grid"]) == (14, 14)
    half = core.contextual_attention_cuda_sizes(4, 48, 28, 28, 28, 28, 4, "float16")["workspace_bytes"]
    assert 0 < half < s["workspace_bytes"]  # the padded copies are stored in the input dtype
    s2 = core.contextual_attention_cuda_sizes(4, 8, 16, 16, 16, 16, 0, "float32", stride=2)
    assert tuple(s2["grid"]) == (4, 4)


@pytest.mark.parametrize("args,kw,match", [
    ((1, 4, 9, 8, 8, 8, 0, "float32"), {}, "multiples of rate=2"),
    ((1, 4, 8, 8, 8, 8, 0, "float32"), dict(fuse_k=4), "odd"),
    ((1, 4, 8, 8, 8, 8, 0, "float32"), dict(fuse_k=9), "fuse_k <= 7"),
    ((1, 4, 4, 4, 4, 4, 0, "float32"), dict(fuse_k=5), "at least 3 patches high"),
    ((2, 4, 8, 8, 8, 8, 3, "float32"), {}, "mask batch must be 1 or B=2"),
    ((1, 4, 8, 8, 8, 8, 0, "bfloat16"), {}, "float32' or 'float16'"),
    ((1, 4, 512, 512, 8, 8, 0, "float32"), {}, "at most 16384 foreground positions"),
])
def test_bad_sizes_are_value_errors(args, kw, match):
    with pytest.raises(ValueError, match=match):
        core.contextual_attention_cuda_sizes(*args, **kw)


def test_raw_binding_validates_before_touching_the_device():
    with pytest.raises(ValueError, match="multiples of rate"):
        core.contextual_attention_cuda(1, 1, 0, 1, 0, 1, 1 << 20, 1, 4, 9, 8, 8, 8, 0, "float32")
    with pytest.raises(ValueError, match="non-null"):
        core.contextual_attention_cuda(0, 1, 0, 1, 0, 1, 1 << 20, 1, 4, 8, 8, 8, 8, 0, "float32")
    with pytest.raises(ValueError, match="mask address exactly when"):
        core.contextual_attention_cuda(1, 1, 0, 1, 0, 1, 1 << 20, 1, 4, 8, 8, 8, 8, 1, "float32")


@pytest.mark.skipif(_native.cuda_info()["device_count"] > 0, reason="a CUDA device is present")
def test_without_a_device_the_error_says_so():
    with pytest.raises(RuntimeError, match="built without CUDA|no CUDA device"):
        core.contextual_attention_cuda(1, 1, 0, 1, 0, 1, 1 << 20, 1, 4, 8, 8, 8, 8, 0, "float32")
    with pytest.raises(RuntimeError, match="built without CUDA|no CUDA device"):
        core.cuda_device_properties()


def test_wrapper_rejects_cpu_tensors_and_non_tensors(torch):
    from sdk import _cuda_ops

    f = torch.zeros(1, 4, 8, 8)
    with pytest.raises(_cuda_ops.CudaOpError, match="f is on cpu.*CUDA tensor"):
        _cuda_ops.contextual_attention(f, f)
    with pytest.raises(_cuda_ops.CudaOpError, match="torch.Tensor"):
        _cuda_ops.contextual_attention(np.zeros((1, 4, 8, 8), np.float32), f)
    assert isinstance(_cuda_ops.CudaOpError("x"), ValueError)
    assert not _cuda_ops.kernel_applies(f, f)


def test_use_cuda_kernel_keeps_cpu_models_unchanged(torch):
    """On CPU tensors the routed layer runs its own torch code: same output, same state_dict; undo restores."""
    from sdk import _cuda_ops
    from trainer.models.inpainter import Generator, InpainterConfig

    torch.manual_seed(0)
    gen = Generator(InpainterConfig(width=4)).eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    m = torch.zeros(2, 1, 112, 112)
    m[:, :, 60:100, 20:90] = 1
    with torch.no_grad():
        before = gen(x, m)
    keys = list(gen.state_dict())
    assert _cuda_ops.use_cuda_kernel(gen) == 1
    assert _cuda_ops.use_cuda_kernel(gen) == 0  # already routed
    with torch.no_grad():
        after = gen(x, m)
    assert torch.equal(before, after) and list(gen.state_dict()) == keys
    assert _cuda_ops.use_cuda_kernel(gen, enable=False) == 1
    assert "forward" not in vars(gen.attention)


# ---------------------------------------------------------------------------------------------- on a CUDA device
def _run(torch, f, b, m, dtype, **kw):
    from sdk import _cuda_ops

    dev = torch.device("cuda")
    tf = torch.from_numpy(f).to(dev, dtype)
    tb = torch.from_numpy(b).to(dev, dtype)
    tm = None if m is None else torch.from_numpy(m).to(dev, dtype)
    with torch.no_grad():
        y, att = _cuda_ops.contextual_attention(tf, tb, tm, return_attention=True, **kw)
    torch.cuda.synchronize()
    return y.float().cpu().numpy().astype(np.float64), att.float().cpu().numpy().astype(np.float64)


def _check(torch, f, b, m, dtype, **kw):
    if dtype == "float16":  # the reference sees the float16-rounded values the kernel sees
        f, b = f.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
    y, att = _run(torch, f, b, m, getattr(torch, dtype), **kw)
    want = ref.reference_vectorized(f, b, m, return_intermediates=True, **kw)
    B, _, Hf, Wf = f.shape
    rate = kw.get("rate", 2)
    gh, gw = want["grid"]
    want_att = want["attention"].transpose(0, 2, 1).reshape(B, gh * gw, Hf // rate, Wf // rate)
    tol = TOL16 if dtype == "float16" else TOL32
    assert np.isfinite(y).all() and np.isfinite(att).all()
    np.testing.assert_allclose(y, want["y"], rtol=0, atol=tol)
    np.testing.assert_allclose(att, want_att, rtol=0, atol=tol)
    rel = np.abs(y - want["y"]).max() / np.abs(want["y"]).max()
    assert rel < ref.TOLERANCES["kernel_fp16_relative" if dtype == "float16" else "kernel_fp32_relative"]
    valid = want["valid"]
    for n in range(B):
        assert (att[n][~valid[n]] == 0).all()
        if not valid[n].any():
            assert (att[n] == 0).all() and (y[n] == 0).all()
        else:
            np.testing.assert_allclose(att[n].sum(axis=0), 1.0, rtol=0, atol=max(tol, 1e-5) * 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("size", [(8, 8), (16, 12), (28, 28), (64, 64)])
def test_gpu_matches_reference(dtype, self_attention, size):
    torch = _cuda_torch()
    torch.backends.cuda.matmul.allow_tf32 = False
    f, b, m = ref.make_inputs(4, 16, *size, rate=2, seed=1, self_attention=self_attention)
    _check(torch, f, b, m, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("kw", [dict(rate=1), dict(stride=2), dict(fuse=False), dict(fuse_k=5), dict(ksize=5),
                                dict(softmax_scale=3.0)], ids=str)
def test_gpu_other_parameters(kw):
    torch = _cuda_torch()
    f, b, m = ref.make_inputs(4, 8, 16, 16, rate=kw.get("rate", 2), seed=5, self_attention=False)
    _check(torch, f, b, m, "float32", **kw)


@pytest.mark.gpu
def test_gpu_realistic_size_and_masks():
    """DeepFill's size (128 channels, 64x64 maps), no mask, one shared mask."""
    torch = _cuda_torch()
    f, b, m = ref.make_inputs(4, 128, 64, 64, rate=2, seed=3, self_attention=True)
    _check(torch, f, b, m, "float32")
    _check(torch, f, b, None, "float32")
    _check(torch, f, b, m[2:3], "float32")  # the fully masked mask for everyone: y = 0


@pytest.mark.gpu
def test_gpu_runs_on_the_current_stream_and_rejects_mixed_inputs():
    torch = _cuda_torch()
    from sdk import _cuda_ops

    f, b, m = ref.make_inputs(2, 8, 16, 16, rate=2, seed=2, self_attention=False)
    tf, tb, tm = (torch.from_numpy(a).cuda() for a in (f, b, m))
    s = torch.cuda.Stream()
    with torch.no_grad(), torch.cuda.stream(s):
        y = _cuda_ops.contextual_attention(tf, tb, tm)
    s.synchronize()
    want = ref.reference_vectorized(f, b, m)
    np.testing.assert_allclose(y.cpu().numpy(), want, rtol=0, atol=TOL32)
    with pytest.raises(_cuda_ops.CudaOpError, match="one dtype"):
        _cuda_ops.contextual_attention(tf, tb.half())
    with pytest.raises(_cuda_ops.CudaOpError, match="contiguous"):
        _cuda_ops.contextual_attention(tf.transpose(2, 3), tb)
    with pytest.raises(_cuda_ops.CudaOpError, match="forward-only"):
        _cuda_ops.contextual_attention(tf.clone().requires_grad_(), tb)
    with pytest.raises(_cuda_ops.CudaOpError, match="mask must be"):
        _cuda_ops.contextual_attention(tf, tb, tm[:, :, :8])
    # bool masks are converted on the device
    with torch.no_grad():
        yb = _cuda_ops.contextual_attention(tf, tb, tm != 0)
    torch.testing.assert_close(yb, y.to(yb.device), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_inpainter_with_the_kernel_matches_torch(dtype):
    """The generator on the GPU with its attention routed through the kernel vs its own torch layer (float32).
    In float16 the whole network runs in half precision: the routed model must be at least as close to the
    float32 model as torch's own float16 model is (torch's float16 layer rounds the scores to float16)."""
    torch = _cuda_torch()
    from sdk import _cuda_ops
    from trainer.models.inpainter import Generator, InpainterConfig

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    gen = Generator(InpainterConfig(width=12)).eval().cuda()
    x = torch.rand(8, 3, 112, 112, device="cuda") * 2 - 1
    m = torch.zeros(8, 1, 112, 112, device="cuda")
    m[:, :, 56:100, 20:92] = 1
    m[3] = 1  # a fully occluded face: the attention has no valid patch
    with torch.no_grad():
        want = gen(x, m)
        if dtype == "float16":
            gen = gen.half()
            x, m = x.half(), m.half()
            torch_half = (gen(x, m).float() - want).abs().max().item()
        assert _cuda_ops.use_cuda_kernel(gen) == 1
        got = gen(x, m).float()
    assert torch.isfinite(got).all()
    err = (got - want).abs().max().item()
    if dtype == "float32":
        assert err < 1e-4  # through the 10 conv layers after the attention
    else:
        assert err <= max(1.5 * torch_half, 1e-2), (err, torch_half)
