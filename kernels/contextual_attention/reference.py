"""Golden reference for the contextual attention layer (Yu et al. 2018, DeepFill v1) -- NumPy only.

Used by tests only (tests/test_contextual_attention.py today; the C++/CUDA kernels later), never by the
SDK.  Two implementations of one spec (kernels/contextual_attention/README.md):

* :func:`reference_naive` -- explicit per-sample / per-location / per-patch loops in float64.  Slow
  (use feature maps of at most ~16x16 with ``rate=2``), but each line is one line of the spec.
* :func:`reference_vectorized` -- the same math in float64 with array operations (im2col, matmul),
  fast enough for realistic sizes (e.g. 2x128x64x64).  Checked against the naive loops by the tests.

Conventions (NCHW, like PyTorch):

* ``f`` foreground (B, C, Hf, Wf), ``b`` background (B, C, Hb, Wb), ``mask`` (B or 1, 1, Hb, Wb) or
  None; ``mask`` is the hole mask of the *background*: nonzero = hole / missing, 0 = known.
  Hf, Wf, Hb, Wb must be multiples of ``rate``.  In DeepFill ``f is b`` (self-attention).
* Output ``y`` (B, C, Hf, Wf) and, on request, the attention ``(B, L, hf, wf)`` where ``L = gh*gw``
  is the number of background patches (row-major over the patch grid) and ``hf, wf = Hf/rate, Wf/rate``.
* A foreground location with no valid background patch (fully masked sample) gets all-zero attention,
  hence ``y = 0`` there.  No NaN, no inf anywhere.

``TOLERANCES`` below is the single place where the comparison bounds live (absolute, max |a - b|, for
inputs drawn by :func:`make_inputs`; outputs are O(1) there).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "TOLERANCES",
    "NORM_EPS",
    "same_pads",
    "reference_naive",
    "reference_vectorized",
    "make_inputs",
]

#: Max absolute differences allowed between implementations, for inputs from ``make_inputs``.
TOLERANCES: dict[str, float] = {
    # float64 loops vs float64 vectorised: only summation order differs
    "vectorized_vs_naive_fp64": 1e-10,
    # the PyTorch layer (float32, CPU) vs this reference (float64): output y and attention
    "torch_fp32_vs_reference": 1e-5,
    # the same PyTorch layer run in float64
    "torch_fp64_vs_reference": 1e-10,
    # ONNX Runtime (CPU, opset 17, float32) vs the PyTorch layer (float32)
    "onnx_vs_torch_fp32": 1e-5,
    # fold_as_pad_sum vs F.fold: same additions in the same order -> bitwise identical
    "fold_as_pad_sum_vs_fold": 0.0,
    # C++ / CUDA float32 kernels vs this reference (float64); no TF32 (see README)
    "kernel_fp32_vs_reference": 1e-5,
    # CUDA kernel with float16 storage (float32 arithmetic) vs this reference run on the same float16-rounded
    # inputs: rounding y and the attention to float16 dominates (~2.4e-4 at |y| ~ 1, CPU emulation)
    "kernel_fp16_vs_reference": 1e-3,
    # benchmark acceptance (issue #11), relative: max |kernel - reference| / max |reference| on y
    "kernel_fp32_relative": 1e-3,
    "kernel_fp16_relative": 1e-2,
}

#: Background patches are divided by max(||patch||_2, NORM_EPS) (DeepFill: 1e-4).
NORM_EPS = 1e-4


def same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TensorFlow 'SAME' padding for a window ``k`` with stride ``s`` over ``size``.

    Returns ``(pad_before, pad_after, n_out)`` with ``n_out = ceil(size / s)`` and
    ``pad_before = total // 2`` (TF puts the odd pixel at the end).
    """
    n_out = -(-size // s)
    total = max((n_out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, n_out


def _check(f, b, mask, rate):
    f = np.asarray(f, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if f.ndim != 4 or b.ndim != 4 or f.shape[:2] != b.shape[:2]:
        raise ValueError(f"f and b must be (B, C, H, W) with equal B, C; got {f.shape}, {b.shape}")
    for s in (*f.shape[2:], *b.shape[2:]):
        if s % rate:
            raise ValueError(f"spatial sizes must be multiples of rate={rate}; got {f.shape}, {b.shape}")
    if mask is None:
        hole = np.zeros((b.shape[0], 1) + b.shape[2:], dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != b.shape[2:] or mask.shape[0] not in (1, b.shape[0]):
            raise ValueError(f"mask must be (B or 1, 1, Hb, Wb) = (.., 1, {b.shape[2]}, {b.shape[3]}); got {mask.shape}")
        hole = np.broadcast_to(mask != 0, (b.shape[0], 1) + b.shape[2:])
    return f, b, hole


def _softmax_masked(logits: np.ndarray, valid: np.ndarray, legacy_mask: bool) -> np.ndarray:
    """Row softmax over the valid columns; invalid columns get 0; rows without a valid column are all 0.

    ``legacy_mask``: DeepFill's original ``softmax(scale * s * mm) * mm`` -- invalid columns enter the
    softmax with logit 0 (and take probability mass that is then thrown away).
    """
    vf = valid.astype(np.float64)
    if legacy_mask:
        z = logits * vf
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True) * vf
    z = np.where(valid, logits, -np.inf)
    zmax = z.max(axis=-1, keepdims=True)
    zmax = np.where(np.isfinite(zmax), zmax, 0.0)
    e = np.exp(z - zmax) * vf  # exp(-inf) = 0
    den = e.sum(axis=-1, keepdims=True)
    return np.where(den > 0, e / np.where(den > 0, den, 1.0), 0.0)


# --------------------------------------------------------------------------------------------------
# naive loops
# --------------------------------------------------------------------------------------------------
def reference_naive(f, b, mask=None, *, ksize: int = 3, stride: int = 1, rate: int = 2, fuse_k: int = 3,
                    softmax_scale: float = 10.0, fuse: bool = True, legacy_mask: bool = False,
                    return_intermediates: bool = False):
    """Contextual attention with explicit loops (float64).  See the module docstring for shapes.

    Returns ``y`` (B, C, Hf, Wf) float64, or with ``return_intermediates`` a dict with ``y``,
    ``scores`` (B, Pf, L) cosine scores, ``fused`` (B, Pf, L) after the fuse, ``valid`` (B, L) bool,
    ``attention`` (B, Pf, L) -- ``Pf = hf*wf`` foreground locations row-major -- and ``grid`` (gh, gw).
    """
    if fuse_k % 2 != 1:
        raise ValueError("fuse_k must be odd")
    f, b, hole = _check(f, b, mask, rate)
    B, C, Hf, Wf = f.shape
    Hb, Wb = b.shape[2:]
    hf, wf, hb, wb = Hf // rate, Wf // rate, Hb // rate, Wb // rate
    kr = 2 * rate  # raw (reconstruction) patch size
    pt, _, gh = same_pads(hb, ksize, stride)
    pl, _, gw = same_pads(wb, ksize, stride)
    rpt, _, gh_raw = same_pads(Hb, kr, rate * stride)
    rpl, _, gw_raw = same_pads(Wb, kr, rate * stride)
    assert (gh_raw, gw_raw) == (gh, gw)
    fpt = (ksize - 1) // 2  # SAME, stride 1, for the foreground patches
    L, Pf = gh * gw, hf * wf
    half = fuse_k // 2

    ys = np.zeros((B, C, Hf, Wf))
    all_scores = np.zeros((B, Pf, L))
    all_fused = np.zeros((B, Pf, L))
    all_valid = np.zeros((B, L), dtype=bool)
    all_attn = np.zeros((B, Pf, L))
    for n in range(B):
        # 1. nearest downscale by `rate`: keep the top-left pixel of each rate x rate block
        fd = f[n][:, ::rate, ::rate]
        bd = b[n][:, ::rate, ::rate]
        hd = hole[n, 0][::rate, ::rate]

        # 2. background patches (ksize x ksize, zero padded), their norms and validity
        wpatch = np.zeros((L, C, ksize, ksize))
        valid = np.zeros(L, dtype=bool)
        for Y in range(gh):
            for X in range(gw):
                q = Y * gw + X
                any_hole = False
                for i in range(ksize):
                    for j in range(ksize):
                        yy, xx = Y * stride + i - pt, X * stride + j - pl
                        if 0 <= yy < hb and 0 <= xx < wb:
                            wpatch[q, :, i, j] = bd[:, yy, xx]
                            any_hole = any_hole or bool(hd[yy, xx])
                valid[q] = not any_hole
                wpatch[q] /= max(math.sqrt(float(np.sum(wpatch[q] ** 2))), NORM_EPS)

        # 3. raw background patches (2*rate x 2*rate at full resolution, zero padded)
        raw = np.zeros((L, C, kr, kr))
        for Y in range(gh):
            for X in range(gw):
                q = Y * gw + X
                for i in range(kr):
                    for j in range(kr):
                        yy, xx = Y * rate * stride + i - rpt, X * rate * stride + j - rpl
                        if 0 <= yy < Hb and 0 <= xx < Wb:
                            raw[q, :, i, j] = b[n][:, yy, xx]

        # 4. scores: <foreground patch around (y, x), normalised background patch q>
        S = np.zeros((Pf, L))
        for y in range(hf):
            for x in range(wf):
                fp = np.zeros((C, ksize, ksize))
                for i in range(ksize):
                    for j in range(ksize):
                        yy, xx = y + i - fpt, x + j - fpt
                        if 0 <= yy < hf and 0 <= xx < wf:
                            fp[:, i, j] = fd[:, yy, xx]
                for q in range(L):
                    S[y * wf + x, q] = float(np.sum(fp * wpatch[q]))
        all_scores[n] = S

        # 5. fuse: sum along the diagonal in row-major flat indices, then in column-major flat indices
        if fuse:
            S1 = np.zeros_like(S)
            for p in range(Pf):
                for q in range(L):
                    for d in range(-half, half + 1):
                        if 0 <= p + d < Pf and 0 <= q + d < L:
                            S1[p, q] += S[p + d, q + d]

            def pcol(p):  # row-major fg index -> column-major fg index
                return (p % wf) * hf + p // wf

            def qcol(q):
                return (q % gw) * gh + q // gw

            def pcol_inv(pc):  # column-major fg index -> row-major
                return (pc % hf) * wf + pc // hf

            def qcol_inv(qc):
                return (qc % gh) * gw + qc // gh

            S2 = np.zeros_like(S)
            for p in range(Pf):
                for q in range(L):
                    pc, qc = pcol(p), qcol(q)
                    for d in range(-half, half + 1):
                        if 0 <= pc + d < Pf and 0 <= qc + d < L:
                            S2[p, q] += S1[pcol_inv(pc + d), qcol_inv(qc + d)]
            S = S2
        all_fused[n] = S
        all_valid[n] = valid

        # 6. masked softmax over background patches, per foreground location
        A = np.zeros((Pf, L))
        for p in range(Pf):
            A[p] = _softmax_masked(softmax_scale * S[p], valid, legacy_mask)
        all_attn[n] = A

        # 7. paste: each foreground location adds its attention-weighted raw patch at
        #    (y*rate - ct, x*rate - cl), overlap-add, then / 4
        ct, _, _ = same_pads(Hf, kr, rate)  # conv2d_transpose 'SAME' crop: rate // 2 when Hf = hf * rate
        cl, _, _ = same_pads(Wf, kr, rate)
        full = np.zeros((C, (hf - 1) * rate + kr, (wf - 1) * rate + kr))
        for y in range(hf):
            for x in range(wf):
                patch = np.zeros((C, kr, kr))
                for q in range(L):
                    if A[y * wf + x, q] != 0.0:
                        patch += A[y * wf + x, q] * raw[q]
                full[:, y * rate:y * rate + kr, x * rate:x * rate + kr] += patch
        ys[n] = full[:, ct:ct + Hf, cl:cl + Wf] / 4.0

    if return_intermediates:
        return {"y": ys, "scores": all_scores, "fused": all_fused, "valid": all_valid,
                "attention": all_attn, "grid": (gh, gw)}
    return ys


# --------------------------------------------------------------------------------------------------
# vectorised (same math, array operations)
# --------------------------------------------------------------------------------------------------
def _im2col(x: np.ndarray, k: int, s: int, pad: tuple[int, int, int, int]) -> np.ndarray:
    """(B, C, H, W) -> (B, C*k*k, oh*ow), channel-major then (i, j) like torch.nn.functional.unfold."""
    pt, pb, pl, pr = pad
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    B, C, H, W = xp.shape
    oh, ow = (H - k) // s + 1, (W - k) // s + 1
    cols = np.empty((B, C, k, k, oh, ow), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
    return cols.reshape(B, C * k * k, oh * ow)


def _col2im(cols: np.ndarray, C: int, k: int, s: int, grid: tuple[int, int]) -> np.ndarray:
    """Overlap-add of (B, C*k*k, gh*gw) columns onto ((gh-1)*s+k, (gw-1)*s+k), no padding."""
    B = cols.shape[0]
    gh, gw = grid
    c = cols.reshape(B, C, k, k, gh, gw)
    out = np.zeros((B, C, (gh - 1) * s + k, (gw - 1) * s + k), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + s * (gh - 1) + 1:s, j:j + s * (gw - 1) + 1:s] += c[:, :, i, j]
    return out


def _diag_sum(s: np.ndarray, half: int) -> np.ndarray:
    """out[..., p, q] = sum_{|d| <= half} s[..., p+d, q+d] (zero outside)."""
    out = s.copy()
    P, Q = s.shape[-2:]
    for d in range(1, half + 1):
        out[..., d:, d:] += s[..., :P - d, :Q - d]
        out[..., :P - d, :Q - d] += s[..., d:, d:]
    return out


def _fuse_vec(s, fg, grid, fuse_k):
    B = s.shape[0]
    hf, wf = fg
    gh, gw = grid
    half = fuse_k // 2
    s = _diag_sum(s, half)
    s = s.reshape(B, hf, wf, gh, gw).transpose(0, 2, 1, 4, 3).reshape(B, hf * wf, gh * gw)
    s = _diag_sum(s, half)
    return s.reshape(B, wf, hf, gw, gh).transpose(0, 2, 1, 4, 3).reshape(B, hf * wf, gh * gw)


def reference_vectorized(f, b, mask=None, *, ksize: int = 3, stride: int = 1, rate: int = 2,
                         fuse_k: int = 3, softmax_scale: float = 10.0, fuse: bool = True,
                         legacy_mask: bool = False, return_intermediates: bool = False):
    """Same contract as :func:`reference_naive`, with array operations (float64)."""
    if fuse_k % 2 != 1:
        raise ValueError("fuse_k must be odd")
    f, b, hole = _check(f, b, mask, rate)
    B, C, Hf, Wf = f.shape
    Hb, Wb = b.shape[2:]
    hf, wf, hb, wb = Hf // rate, Wf // rate, Hb // rate, Wb // rate
    kr = 2 * rate
    pt, pb, gh = same_pads(hb, ksize, stride)
    pl, pr, gw = same_pads(wb, ksize, stride)
    fp0, fp1, _ = same_pads(hf, ksize, 1)
    fq0, fq1, _ = same_pads(wf, ksize, 1)
    rpt, rpb, _ = same_pads(Hb, kr, rate * stride)
    rpl, rpr, _ = same_pads(Wb, kr, rate * stride)

    fd, bd = f[:, :, ::rate, ::rate], b[:, :, ::rate, ::rate]
    hd = hole[:, :, ::rate, ::rate].astype(np.float64)

    w = _im2col(bd, ksize, stride, (pt, pb, pl, pr))  # (B, C*k*k, L)
    w = w / np.maximum(np.sqrt((w ** 2).sum(axis=1, keepdims=True)), NORM_EPS)
    fu = _im2col(fd, ksize, 1, (fp0, fp1, fq0, fq1))  # (B, C*k*k, Pf)
    scores = np.matmul(fu.transpose(0, 2, 1), w)  # (B, Pf, L)
    fused = _fuse_vec(scores, (hf, wf), (gh, gw), fuse_k) if fuse else scores
    valid = _im2col(hd, ksize, stride, (pt, pb, pl, pr)).sum(axis=1) == 0  # (B, L)
    attn = _softmax_masked(softmax_scale * fused, valid[:, None, :], legacy_mask)

    raw = _im2col(b, kr, rate * stride, (rpt, rpb, rpl, rpr))  # (B, C*kr*kr, L)
    cols = np.matmul(raw, attn.transpose(0, 2, 1))  # (B, C*kr*kr, Pf)
    full = _col2im(cols, C, kr, rate, (hf, wf))
    ct, _, _ = same_pads(Hf, kr, rate)
    cl, _, _ = same_pads(Wf, kr, rate)
    y = full[:, :, ct:ct + Hf, cl:cl + Wf] / 4.0
    if return_intermediates:
        return {"y": y, "scores": scores, "fused": fused, "valid": valid, "attention": attn, "grid": (gh, gw)}
    return y


# --------------------------------------------------------------------------------------------------
# canonical test inputs
# --------------------------------------------------------------------------------------------------
def make_inputs(batch: int = 4, channels: int = 4, height: int = 16, width: int = 16, *, rate: int = 2,
                seed: int = 0, self_attention: bool = True, dtype=np.float32):
    """Deterministic (f, b, mask) for parity tests.  ``self_attention``: b equals f (as in DeepFill),
    else an independent draw.

    Features ~ U(-1, 1).  Masks (B, 1, H, W), one kind per sample, cycling:
    0: a rectangle hole (top-left quadrant-ish), 1: no hole, 2: everything hole, 3: a different,
    off-centre rectangle plus a row of noise holes.  The hole boxes are aligned to ``rate``.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(batch, channels, height, width)).astype(dtype)
    mask = np.zeros((batch, 1, height, width), dtype=dtype)
    for n in range(batch):
        kind = n % 4
        if kind == 0:
            mask[n, 0, rate:height // 2, rate:width // 2 + rate] = 1
        elif kind == 2:
            mask[n] = 1
        elif kind == 3:
            mask[n, 0, height // 2:height - rate, width // 4:width - rate] = 1
            cols = rng.choice(width, size=max(1, width // 4), replace=False)
            mask[n, 0, 0, cols] = 1
    b = x.copy() if self_attention else rng.uniform(-1.0, 1.0, size=x.shape).astype(dtype)
    return x, b, mask
