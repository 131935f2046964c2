"""The CUDA contextual attention kernel source (kernels/contextual_attention/cuda/) run on the CPU emulation in
tests/cuda_emu/ and compared with the golden reference (kernels/contextual_attention/reference.py).

This is how the kernel's indexing (fuse sources, the score ring, the folded paste, tile edges), its barriers
(thread orders forward / reverse / shuffled) and its tile planner (shared-memory limits of different GPUs) are
tested on machines without a GPU; tests/test_contextual_attention_cuda.py runs the compiled kernel on a real device.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import _cuda_emu as emu
from _kernel_refs import load_reference

ref = load_reference("contextual_attention")
TOL32 = ref.TOLERANCES["kernel_fp32_vs_reference"]
TOL16 = ref.TOLERANCES["kernel_fp16_vs_reference"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if emu.compiler() is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    return emu.build(tmp_path_factory.mktemp("cuda_emu"))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LOOKTHROUGH_EMU_UBSAN"),
                    reason="set LOOKTHROUGH_EMU_UBSAN=1 (a ~1 min UBSan build; tools/device_job.sh sets it)")
def test_no_undefined_behaviour(tmp_path_factory, tmp_path):
    """The kernels' index arithmetic under UBSan (signed overflow, bad shifts, misaligned loads)."""
    if emu.compiler() is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    try:
        exe = emu.build(tmp_path_factory.mktemp("cuda_emu_ubsan"), sanitize=True)
    except RuntimeError as exc:  # a toolchain without the UBSan runtime
        pytest.skip(f"UBSan unavailable: {str(exc)[-200:]}")
    f, b, m = ref.make_inputs(4, 3, 12, 12, rate=2, seed=9, self_attention=False)
    _check(exe, tmp_path, f, b, m)
    _check(exe, tmp_path, f, b, m, stride=2, fuse_k=5)
    _check(exe, tmp_path, f, b, m, half=True)


def _check(driver, tmp_path, f, b, m, *, half=False, device=None, **kw):
    rate = kw.get("rate", 2)
    if half:
        f, b = f.astype(np.float16), b.astype(np.float16)
        m = None if m is None else m.astype(np.float16)
    r = emu.run(driver, f, b, m, tmp=tmp_path, device=device, **kw)
    # the reference sees exactly the values the kernel sees (float16-rounded when half)
    want = ref.reference_vectorized(f.astype(np.float64), b.astype(np.float64), m, return_intermediates=True, **kw)
    B, C, Hf, Wf = f.shape
    gh, gw = want["grid"]
    hf, wf = Hf // rate, Wf // rate
    want_att = want["attention"].transpose(0, 2, 1).reshape(B, gh * gw, hf, wf)
    y, att = r.y.astype(np.float64), r.attention.astype(np.float64)
    assert np.isfinite(y).all() and np.isfinite(att).all()
    tol = TOL16 if half else TOL32
    np.testing.assert_allclose(y, want["y"], rtol=0, atol=tol)
    np.testing.assert_allclose(att, want_att, rtol=0, atol=tol)
    valid = want["valid"]
    for n in range(B):
        assert (att[n][~valid[n]] == 0).all(), "invalid patches must get exactly 0"
        if not valid[n].any():
            assert (att[n] == 0).all() and (y[n] == 0).all(), "a fully masked sample must give exactly 0"
    return r, want


@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("size", [(8, 8), (16, 12)])
def test_matches_reference_default_parameters(driver, tmp_path, self_attention, size):
    f, b, m = ref.make_inputs(4, 4, *size, rate=2, seed=1, self_attention=self_attention)
    _, want = _check(driver, tmp_path, f, b, m)
    # one batch holds a rectangle hole, a mask-free sample, a fully masked sample and scattered holes
    assert want["valid"][1].all() and not want["valid"][2].any()


@pytest.mark.parametrize("kw", [dict(rate=1), dict(stride=2), dict(fuse=False), dict(fuse_k=5), dict(ksize=5),
                                dict(softmax_scale=3.0), dict(ksize=1, rate=1), dict(stride=3, ksize=2)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_other_parameters(driver, tmp_path, kw):
    f, b, m = ref.make_inputs(4, 6, 16, 16, rate=kw.get("rate", 2), seed=5, self_attention=False)
    _check(driver, tmp_path, f, b, m, **kw)


def test_different_foreground_and_background_sizes(driver, tmp_path):
    rng = np.random.default_rng(7)
    f = rng.uniform(-1, 1, (2, 5, 12, 20)).astype(np.float32)
    b = rng.uniform(-1, 1, (2, 5, 16, 8)).astype(np.float32)
    m = np.zeros((2, 1, 16, 8), np.float32)
    m[0, 0, 4:10, 2:6] = 1
    _check(driver, tmp_path, f, b, m)


def test_no_mask_and_shared_mask(driver, tmp_path):
    f, b, m = ref.make_inputs(3, 4, 12, 12, rate=2, seed=2, self_attention=False)
    _check(driver, tmp_path, f, b, None)
    _check(driver, tmp_path, f, b, m[:1])  # one mask for the whole batch


@pytest.mark.parametrize("order", ["reverse", "shuffle"])
def test_thread_order_does_not_matter(driver, tmp_path, order):
    """Fibers run between barriers in another order: a missing __syncthreads would change the result."""
    f, b, m = ref.make_inputs(4, 5, 16, 12, rate=2, seed=3, self_attention=False)
    base = emu.run(driver, f, b, m, tmp=tmp_path)
    other = emu.run(driver, f, b, m, tmp=tmp_path, device=emu.Device(order=order, seed=11))
    np.testing.assert_array_equal(other.y, base.y)
    np.testing.assert_array_equal(other.attention, base.attention)


@pytest.mark.parametrize("smem,sms", [(48 * 1024, 16), (99 * 1024, 4), (227 * 1024, 132)],
                         ids=["48KB-16SMs", "99KB-4SMs", "227KB-132SMs"])
def test_tile_plans_of_different_gpus(driver, tmp_path, smem, sms):
    """Different shared memory / SM counts give different tiles (pass 1 and 2), the same numbers."""
    f, b, m = ref.make_inputs(1, 4, 24, 20, rate=2, seed=4, self_attention=False)
    r, _ = _check(driver, tmp_path, f, b, m,
                  device=emu.Device(smem_per_block_optin=smem, smem_per_sm=smem + 1024, sm_count=sms))
    assert '"pass1"' in r.plan and '"pass2"' in r.plan


def test_float16_storage(driver, tmp_path):
    f, b, m = ref.make_inputs(4, 8, 16, 16, rate=2, seed=6, self_attention=False)
    _check(driver, tmp_path, f, b, m, half=True)


@pytest.mark.slow
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_inpainter_layer_size(driver, tmp_path, half):
    """The inpainter's own layer: 48 channels on 28x28 features (4w at 112/4), batch of every mask kind."""
    f, b, m = ref.make_inputs(4, 48, 28, 28, rate=2, seed=8, self_attention=True)
    _check(driver, tmp_path, f, b, m, half=half)


@pytest.mark.parametrize("kw,match", [(dict(fuse_k=9), "fuse_k <= 7"), (dict(rate=3), "multiples of rate=3"),
                                      (dict(fuse_k=4), "odd")])
def test_bad_parameters_are_refused(driver, tmp_path, kw, match):
    f, b, m = ref.make_inputs(1, 2, 8, 8, rate=2, seed=0)
    with pytest.raises(emu.EmuError, match=match):
        emu.run(driver, f, b, m, tmp=tmp_path, **kw)


def test_too_large_for_shared_memory_is_refused(driver, tmp_path):
    f, b, m = ref.make_inputs(1, 1, 128, 128, rate=1, seed=0)
    with pytest.raises(emu.EmuError, match="shared memory"):
        emu.run(driver, f, b, m, tmp=tmp_path, device=emu.Device(smem_per_block_optin=16 * 1024))
