"""Contextual attention (Yu et al. 2018, "Generative Image Inpainting with Contextual Attention"), batched.

The DeepFill v1 layer (``contextual_attention(f, b, mask, ksize=3, stride=1, rate=2)``) without its
per-sample Python loop: every sample of a batch has its own mask, and the whole layer is a handful of
tensor ops (unfold, batched matmul, softmax, fold) that export to ONNX opset 17.

Shapes (NCHW): ``f`` (B, C, Hf, Wf) foreground, ``b`` (B, C, Hb, Wb) background, ``mask`` (B or 1, 1,
Hb, Wb) or None -- nonzero = hole / missing, 0 = known.  All spatial sizes are multiples of ``rate``.
In DeepFill ``f is b`` (self-attention over one feature map).  Output ``y`` has ``f``'s shape.

Steps (the exact math, index by index, is in kernels/contextual_attention/README.md):

1. downscale f, b and mask by ``rate`` (nearest = keep the top-left pixel of each rate x rate block);
2. ``ksize x ksize`` patches of the downscaled background (TF 'SAME' zero padding, stride ``stride``),
   each divided by ``max(||patch||, 1e-4)``; a patch is *valid* iff it holds no hole pixel;
3. scores = every foreground ``ksize x ksize`` patch (stride 1, SAME) dotted with every normalised
   background patch -> (B, Pf, L), Pf = hf*wf foreground locations, L background patches;
4. fuse (``fuse_k = 3``): add the scores along the diagonal of the (Pf, L) matrix, then transpose both
   index spaces (row-major -> column-major) and do it again -- DeepFill's identity-kernel conv, twice;
5. softmax over the L background patches of ``softmax_scale * score``, restricted to valid patches
   (invalid ones get -inf-equivalent before and exactly 0 after);
6. reconstruction = transposed conv of the attention with the raw background patches
   (``2*rate x 2*rate`` at full resolution, stride ``rate``), divided by 4.

A foreground location with no valid background patch at all (a fully masked sample) gets an all-zero
attention row, so its output is 0 (no NaN).  A mask-free sample (mask all 0 or ``mask=None``) attends
everywhere.

Deviations from the TF original (all deliberate, see the README):

* per-sample masks (the original uses the mask of sample 0 for the whole batch);
* invalid patches are excluded from the softmax (-inf) instead of entering it with logit 0
  (``legacy_mask=True`` restores the original ``softmax(s * mm) * mm``);
* the patch norm is ``sqrt(max(sum sq, 1e-8))`` -- the same value as ``max(sqrt(sum sq), 1e-4)`` but
  with a finite gradient for all-zero patches (post-ReLU features), where the original gives NaN;
* ``stride > 1`` fuses over the background patch grid (the original reshapes with the downscaled
  image size and only works for stride 1);
* the attention map is returned instead of the colour-coded flow image (see :func:`attention_offsets`).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ContextualAttention",
    "contextual_attention",
    "fold_as_pad_sum",
    "attention_offsets",
    "same_pads",
    "NORM_EPS",
]

#: Background patches are divided by max(||patch||_2, NORM_EPS) (DeepFill: 1e-4).
NORM_EPS = 1e-4


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TensorFlow 'SAME' padding: ``(pad_before, pad_after, n_out)``, ``n_out = ceil(size / s)``."""
    n_out = -(-size // s)
    total = max((n_out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, n_out


def _patches(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TF ``extract_image_patches(..., padding='SAME')`` in F.unfold layout: (B, C*k*k, L)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    pt, pb, _ = same_pads(h, k, s)
    pl, pr, _ = same_pads(w, k, s)
    if pt or pb or pl or pr:
        x = F.pad(x, (pl, pr, pt, pb))
    return F.unfold(x, kernel_size=k, stride=s)


def fold_as_pad_sum(cols: torch.Tensor, output_size, kernel_size, stride=1, padding=0) -> torch.Tensor:
    """``F.fold`` (dilation 1) as a sum of ``k*k`` shifted ``F.pad`` copies -- exports at ONNX opset 17.

    ``F.fold`` exports as ``Col2Im``, which needs opset 18.  Here every kernel tap ``(i, j)`` takes its
    (B, C, nh, nw) slice of ``cols``, spreads it by ``stride`` (zero insertion, also a pad), pads it to
    its place in the padded output, and the copies are added in the order ``F.fold``'s col2im adds them
    (tap by tap, row-major), so the result is bitwise identical to ``F.fold`` on CPU.

    Args:
        cols: (B, C*kh*kw, L) with L = nh*nw blocks, as for ``F.fold``.
        output_size, kernel_size, stride, padding: int or pair, as for ``F.fold``.
    Returns:
        (B, C, H, W).
    """
    H, W = _pair(output_size)
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    Hp, Wp = H + 2 * ph, W + 2 * pw
    nh, nw = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    if cols.dim() != 3 or int(cols.shape[1]) % (kh * kw) or int(cols.shape[2]) != nh * nw:
        raise ValueError(f"cols {tuple(cols.shape)} does not fit output {H}x{W}, kernel {kh}x{kw}, "
                         f"stride {sh}x{sw}, padding {ph}x{pw} ({nh}x{nw} blocks)")
    C = int(cols.shape[1]) // (kh * kw)
    x = cols.reshape(-1, C, kh, kw, nh, nw)
    # spread the block grid by the stride: (nh, nw) -> ((nh-1)*sh+1, (nw-1)*sw+1), zeros in between
    eh, ew = (nh - 1) * sh + 1, (nw - 1) * sw + 1
    if sh > 1 or sw > 1:
        x = x.reshape(-1, C, kh, kw, nh, 1, nw, 1)
        x = F.pad(x, (0, sw - 1, 0, 0, 0, sh - 1))
        x = x.reshape(-1, C, kh, kw, nh * sh, nw * sw)[..., :eh, :ew]
    out = None
    for i in range(kh):
        for j in range(kw):
            piece = F.pad(x[:, :, i, j], (j, Wp - j - ew, i, Hp - i - eh))
            out = piece if out is None else out + piece
    if ph or pw:
        out = out[:, :, ph:ph + H, pw:pw + W]
    return out


def _diag_sum(s: torch.Tensor, half: int) -> torch.Tensor:
    """out[:, p, q] = sum_{|d| <= half} s[:, p+d, q+d], zero outside: DeepFill's eye(k) conv (SAME)."""
    out = s
    for d in range(1, half + 1):
        out = out + F.pad(s[:, :-d, :-d], (d, 0, d, 0)) + F.pad(s[:, d:, d:], (0, d, 0, d))
    return out


def _fuse(s: torch.Tensor, fg: tuple[int, int], grid: tuple[int, int], fuse_k: int) -> torch.Tensor:
    """DeepFill's fuse on scores (B, Pf, L): diagonal sum in row-major, then in column-major indices."""
    hf, wf = fg
    gh, gw = grid
    half = fuse_k // 2
    s = _diag_sum(s, half)
    s = s.reshape(-1, hf, wf, gh, gw).permute(0, 2, 1, 4, 3).reshape(-1, hf * wf, gh * gw)
    s = _diag_sum(s, half)
    return s.reshape(-1, wf, hf, gw, gh).permute(0, 2, 1, 4, 3).reshape(-1, hf * wf, gh * gw)


def contextual_attention(f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, *,
                         ksize: int = 3, stride: int = 1, rate: int = 2, fuse_k: int = 3,
                         softmax_scale: float = 10.0, fuse: bool = True, export_friendly: bool = True,
                         legacy_mask: bool = False, return_flow: bool = False):
    """Batched contextual attention; see the module docstring.

    Returns ``y`` (B, C, Hf, Wf), or ``(y, attention)`` with ``return_flow``: attention (B, L, hf, wf),
    channel ``q = Y*gw + X`` is background patch (Y, X) of the (gh, gw) patch grid (for ``stride=1``,
    the downscaled background pixel (Y, X)); ``attention[:, :, y, x]`` sums to 1 (or 0 where nothing
    is valid).
    """
    if f.dim() != 4 or b.dim() != 4 or f.shape[:2] != b.shape[:2]:
        raise ValueError(f"f and b must be (B, C, H, W) with equal B, C; got {tuple(f.shape)}, {tuple(b.shape)}")
    if fuse_k % 2 != 1:
        raise ValueError(f"fuse_k must be odd, got {fuse_k}")
    C = int(f.shape[1])
    Hf, Wf = int(f.shape[2]), int(f.shape[3])
    Hb, Wb = int(b.shape[2]), int(b.shape[3])
    if Hf % rate or Wf % rate or Hb % rate or Wb % rate:
        raise ValueError(f"spatial sizes must be multiples of rate={rate}: f {Hf}x{Wf}, b {Hb}x{Wb}")
    hf, wf, hb, wb = Hf // rate, Wf // rate, Hb // rate, Wb // rate
    kr = 2 * rate
    gh, gw = same_pads(hb, ksize, stride)[2], same_pads(wb, ksize, stride)[2]

    # 1. nearest downscale (top-left pixel of each block, = TF resize_nearest_neighbor by 1/rate)
    fd = f[:, :, ::rate, ::rate]
    bd = b[:, :, ::rate, ::rate]

    # 2. normalised background patches (B, C*k*k, L); sqrt(max(ss, eps^2)) == max(sqrt(ss), eps)
    w = _patches(bd, ksize, stride)
    w = w / torch.sqrt(torch.clamp_min((w * w).sum(dim=1, keepdim=True), NORM_EPS * NORM_EPS))

    # 3. cosine scores (B, Pf, L)
    fu = _patches(fd, ksize, 1)
    scores = torch.matmul(fu.transpose(1, 2), w)

    # 4. fuse
    if fuse:
        scores = _fuse(scores, (hf, wf), (gh, gw), fuse_k)

    # 5. masked softmax over background patches
    logits = scores * softmax_scale
    if mask is None:
        attn = torch.softmax(logits, dim=-1)
    else:
        if mask.dim() != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (Hb, Wb):
            raise ValueError(f"mask must be (B or 1, 1, {Hb}, {Wb}); got {tuple(mask.shape)}")
        hole = (mask[:, :, ::rate, ::rate] != 0).to(scores.dtype)
        valid = _patches(hole, ksize, stride).sum(dim=1, keepdim=True) == 0  # (B|1, 1, L)
        validf = valid.to(scores.dtype)
        if legacy_mask:
            attn = torch.softmax(logits * validf, dim=-1) * validf
        else:
            # -inf-equivalent (finite: a row with no valid patch becomes uniform, then 0 -- no NaN)
            neg = torch.finfo(scores.dtype).min
            attn = torch.softmax(torch.where(valid, logits, neg), dim=-1) * validf

    # 6. paste raw 2r x 2r patches: transposed conv = (B, C*kr*kr, L) @ (B, L, Pf), then fold
    raw = _patches(b, kr, rate * stride)
    cols = torch.matmul(raw, attn.transpose(1, 2))  # (B, C*kr*kr, Pf)
    full = ((hf - 1) * rate + kr, (wf - 1) * rate + kr)
    if export_friendly:
        y = fold_as_pad_sum(cols, full, kr, stride=rate)
    else:
        y = F.fold(cols, full, kernel_size=kr, stride=rate)
    ct, cl = same_pads(Hf, kr, rate)[0], same_pads(Wf, kr, rate)[0]  # conv2d_transpose 'SAME' crop
    y = y[:, :, ct:ct + Hf, cl:cl + Wf] / 4.0
    if return_flow:
        return y, attn.transpose(1, 2).reshape(-1, gh * gw, hf, wf)
    return y


def attention_offsets(attention: torch.Tensor, grid: tuple[int, int] | None = None, *,
                      stride: int = 1) -> torch.Tensor:
    """Argmax displacement of an attention map, DeepFill's "offset flow" before colour coding.

    Args:
        attention: (B, L, hf, wf) from ``return_flow=True``.
        grid: background patch grid (gh, gw); default (hf, wf) (``f`` and ``b`` of one size, stride 1).
        stride: the layer's ``stride`` (patch (Y, X) sits at downscaled pixel (Y*stride, X*stride)).
    Returns:
        int64 (B, 2, hf, wf): (dy, dx) in downscaled pixels from each foreground location to the
        background patch it attends most; 0 where the attention row is all zero.
    """
    B, L, hf, wf = attention.shape
    gh, gw = grid if grid is not None else (hf, wf)
    if gh * gw != L:
        raise ValueError(f"grid {gh}x{gw} does not match {L} attention channels")
    idx = attention.argmax(dim=1)  # (B, hf, wf)
    ys = torch.arange(hf, device=attention.device).view(1, hf, 1)
    xs = torch.arange(wf, device=attention.device).view(1, 1, wf)
    dy = (idx // gw) * stride - ys
    dx = (idx % gw) * stride - xs
    any_attn = attention.amax(dim=1) > 0
    return torch.stack([dy * any_attn, dx * any_attn], dim=1)


class ContextualAttention(nn.Module):
    """DeepFill v1 contextual attention as a module (no parameters); ``forward(f, b, mask)``.

    Args:
        ksize: matching patch size (3).
        stride: background patch stride in the downscaled map (1).
        rate: downscale factor for matching; reconstruction uses 2*rate patches at full size (2).
        fuse_k: fuse kernel size, odd (3).
        softmax_scale: softmax temperature multiplier (10).
        fuse: apply the fuse step (True).
        export_friendly: fold via :func:`fold_as_pad_sum` (ONNX opset 17); False uses ``F.fold``
            (``Col2Im``, opset >= 18).  Same numbers either way.
        legacy_mask: reproduce DeepFill's ``softmax(s * mm) * mm`` masking (invalid patches enter
            the softmax with logit 0) instead of excluding them (False).
        return_flow: ``forward`` also returns the attention map (B, L, hf, wf).
    """

    def __init__(self, ksize: int = 3, stride: int = 1, rate: int = 2, fuse_k: int = 3,
                 softmax_scale: float = 10.0, fuse: bool = True, export_friendly: bool = True,
                 legacy_mask: bool = False, return_flow: bool = False):
        super().__init__()
        if ksize < 1 or stride < 1 or rate < 1 or fuse_k < 1 or fuse_k % 2 != 1:
            raise ValueError("ksize, stride, rate >= 1 and fuse_k odd")
        self.ksize, self.stride, self.rate, self.fuse_k = ksize, stride, rate, fuse_k
        self.softmax_scale = float(softmax_scale)
        self.fuse, self.export_friendly = fuse, export_friendly
        self.legacy_mask, self.return_flow = legacy_mask, return_flow

    def _kw(self) -> dict:
        return dict(ksize=self.ksize, stride=self.stride, rate=self.rate, fuse_k=self.fuse_k,
                    softmax_scale=self.softmax_scale, fuse=self.fuse,
                    export_friendly=self.export_friendly, legacy_mask=self.legacy_mask)

    def forward(self, f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None):
        return contextual_attention(f, b, mask, return_flow=self.return_flow, **self._kw())

    def attention(self, f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None):
        """``(y, attention)`` regardless of ``return_flow`` (for visualisation)."""
        return contextual_attention(f, b, mask, return_flow=True, **self._kw())

    def extra_repr(self) -> str:
        return (f"ksize={self.ksize}, stride={self.stride}, rate={self.rate}, fuse_k={self.fuse_k}, "
                f"softmax_scale={self.softmax_scale}, fuse={self.fuse}, "
                f"export_friendly={self.export_friendly}, legacy_mask={self.legacy_mask}")
