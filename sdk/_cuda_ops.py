"""CUDA operators on torch tensors that already live on the GPU (no host copies, no extra device copies).

The C++ core (``sdk._core``) takes device addresses (``tensor.data_ptr()``) and the CUDA stream handle
(``torch.cuda.current_stream().cuda_stream``); this module checks the tensors first and turns every mistake into
one clear :class:`CudaOpError`. torch is imported lazily, inside the functions: importing ``sdk`` (or this
module) never imports torch, and the SDK's CPU / ONNX Runtime paths never need it.

* :func:`contextual_attention` -- the fused DeepFill v1 contextual attention forward
  (``kernels/contextual_attention/cuda/``; spec and golden reference in ``kernels/contextual_attention/``),
  float32 or float16 storage (float32 arithmetic), per-sample masks, no Pf x L score matrix in global memory.
* :func:`use_cuda_kernel` -- route the contextual attention layers of a torch model (the inpainter generator)
  through that kernel for inference on the GPU; anything else (CPU tensors, autograd, legacy masking) keeps the
  layer's own torch code.
* :func:`available` -- whether the core was built with CUDA and a device is visible.
"""
from __future__ import annotations

import math
import operator
import types
from typing import Any

from sdk.errors import LookThroughError

__all__ = ["CudaOpError", "CudaUnavailableError", "available", "contextual_attention", "use_cuda_kernel",
           "kernel_applies"]


class CudaOpError(LookThroughError, ValueError):
    """A tensor or parameter given to a CUDA operator is unusable (device, dtype, layout, shape); the message
    names the argument and the fix."""


class CudaUnavailableError(LookThroughError, RuntimeError):
    """The C++ core was built without CUDA, or no CUDA device is visible."""


def _core():
    from sdk import _native

    return _native.core


def available() -> bool:
    """True when ``sdk._core`` was built with CUDA and at least one CUDA device is visible."""
    info = _core().cuda_info()
    return bool(info["compiled"]) and int(info["device_count"]) > 0


_DTYPES = {"torch.float32": "float32", "torch.float16": "float16"}


def _tensor(name: str, t: Any, torch) -> Any:
    if not isinstance(t, torch.Tensor):
        raise CudaOpError(f"{name} must be a torch.Tensor on a CUDA device, got {type(t).__name__}")
    if not t.is_cuda:
        raise CudaOpError(f"{name} is on {t.device}, the kernel needs a CUDA tensor (move it with .cuda(); the CPU "
                          "kernel is sdk._native.contextual_attention)")
    if t.dim() != 4:
        raise CudaOpError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise CudaOpError(f"{name} must be C-contiguous (NCHW); call .contiguous() first")
    return t


def kernel_applies(f: Any, b: Any, mask: Any = None) -> bool:
    """Whether :func:`contextual_attention` can take these tensors as they are (CUDA, float32 / float16, same
    dtype and device, no gradient wanted) -- what :func:`use_cuda_kernel` checks before each call."""
    import torch

    ts = [t for t in (f, b, mask) if t is not None]
    if not all(isinstance(t, torch.Tensor) for t in ts):
        return False
    if not all(t.is_cuda and t.device == f.device for t in ts) or str(f.dtype) not in _DTYPES:
        return False
    if b.dtype != f.dtype or f.dim() != 4 or b.dim() != 4:
        return False
    return not (torch.is_grad_enabled() and (f.requires_grad or b.requires_grad))


def contextual_attention(f: Any, b: Any, mask: Any = None, *, ksize: int = 3, stride: int = 1, rate: int = 2,
                         fuse_k: int = 3, softmax_scale: float = 10.0, fuse: bool = True,
                         return_attention: bool = False):
    """DeepFill v1 contextual attention on the GPU (forward only), same contract as
    ``trainer.models.contextual_attention.contextual_attention`` with ``legacy_mask=False``.

    Args:
        f: foreground (B, C, Hf, Wf), CUDA, float32 or float16, C-contiguous.
        b: background (B, C, Hb, Wb), same device and dtype. Spatial sizes are multiples of ``rate``.
        mask: hole mask of ``b`` (B or 1, 1, Hb, Wb), nonzero = hole, any real or bool dtype (converted to
            ``f``'s dtype on the device), or None (no hole).
        ksize, stride, rate, fuse_k (odd), softmax_scale, fuse: as in the spec
            (``kernels/contextual_attention/README.md``).
        return_attention: also return the attention (B, L, Hf/rate, Wf/rate) -- this materialises the Pf x L
            matrix the kernel otherwise never writes; use it for tests and visualisation only.

    Returns:
        y (B, C, Hf, Wf) in ``f``'s dtype, or ``(y, attention)``. Enqueued on the current CUDA stream of
        ``f``'s device (asynchronous, like any torch op).

    Raises:
        CudaOpError: a tensor is on the CPU / another device, has the wrong dtype, layout or shape, needs
            gradients (the kernel has no backward: use the torch layer for training), or the sizes are outside
            what the kernel supports (the message says which).
        CudaUnavailableError: the core was built without CUDA.
    """
    import torch

    core = _core()
    if not core.build_info()["cuda"]:
        raise CudaUnavailableError("sdk._core was built without CUDA (rebuild with nvcc on PATH: make setup)")
    f = _tensor("f", f, torch)
    b = _tensor("b", b, torch)
    if b.device != f.device:
        raise CudaOpError(f"f is on {f.device} but b is on {b.device}; both must be on one device")
    dtype = _DTYPES.get(str(f.dtype))
    if dtype is None:
        raise CudaOpError(f"f has dtype {f.dtype}; the kernel takes float32 or float16")
    if b.dtype != f.dtype:
        raise CudaOpError(f"f is {f.dtype} but b is {b.dtype}; both must have one dtype")
    if torch.is_grad_enabled() and (f.requires_grad or b.requires_grad):
        raise CudaOpError("the CUDA contextual attention is forward-only and f / b require gradients: call it "
                          "under torch.no_grad() (inference) or use the torch layer for training")
    B, C, Hf, Wf = (int(v) for v in f.shape)
    Bb, Cb, Hb, Wb = (int(v) for v in b.shape)
    if (Bb, Cb) != (B, C):
        raise CudaOpError(f"f {tuple(f.shape)} and b {tuple(b.shape)} must have equal batch and channels")
    mask_batch, mask_ptr = 0, 0
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise CudaOpError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.device != f.device:
            raise CudaOpError(f"mask is on {mask.device} but f is on {f.device}")
        if mask.dim() != 4 or int(mask.shape[1]) != 1 or tuple(int(v) for v in mask.shape[2:]) != (Hb, Wb) \
                or int(mask.shape[0]) not in (1, B):
            raise CudaOpError(f"mask must be (B or 1, 1, Hb, Wb) = (.., 1, {Hb}, {Wb}); got {tuple(mask.shape)}")
        if mask.dtype != f.dtype or not mask.is_contiguous():
            mask = (mask != 0).to(f.dtype).contiguous()
        mask_batch, mask_ptr = int(mask.shape[0]), mask.data_ptr()
    prm = dict(ksize=operator.index(ksize), stride=operator.index(stride), rate=operator.index(rate),
               fuse_k=operator.index(fuse_k), fuse=bool(fuse))
    scale = float(softmax_scale)
    if not math.isfinite(scale):
        raise CudaOpError(f"softmax_scale must be finite, got {softmax_scale!r}")
    try:
        sizes = core.contextual_attention_cuda_sizes(B, C, Hf, Wf, Hb, Wb, mask_batch, dtype, **prm)
    except ValueError as exc:
        raise CudaOpError(f"contextual attention on CUDA: {exc}") from None
    y = torch.empty_like(f)
    att = None
    if return_attention:
        hf, wf = sizes["fg_grid"]
        att = torch.empty((B, int(sizes["patches"]), int(hf), int(wf)), dtype=f.dtype, device=f.device)
    ws = torch.empty(max(int(sizes["workspace_bytes"]), 1), dtype=torch.uint8, device=f.device)
    device = f.device.index if f.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(f.device).cuda_stream
    try:
        core.contextual_attention_cuda(
            f.data_ptr(), b.data_ptr(), mask_ptr, y.data_ptr(), 0 if att is None else att.data_ptr(),
            ws.data_ptr(), int(sizes["workspace_bytes"]), B, C, Hf, Wf, Hb, Wb, mask_batch, dtype,
            softmax_scale=scale, stream=int(stream), device=int(device), **prm)
    except ValueError as exc:
        raise CudaOpError(f"contextual attention on CUDA: {exc}") from None
    except RuntimeError as exc:
        if "built without CUDA" in str(exc) or "no CUDA device" in str(exc):
            raise CudaUnavailableError(str(exc)) from None
        raise
    return (y, att) if return_attention else y


_ATTRS = ("ksize", "stride", "rate", "fuse_k", "softmax_scale", "fuse", "legacy_mask", "return_flow")


def _is_attention_layer(module: Any) -> bool:
    return type(module).__name__ == "ContextualAttention" and all(hasattr(module, a) for a in _ATTRS)


def _kernel_forward(self, f, b, mask=None):
    """Replacement ``forward`` installed by :func:`use_cuda_kernel` (falls back to the layer's own code)."""
    if self.legacy_mask or self.return_flow or not kernel_applies(f, b, mask):
        return type(self).forward(self, f, b, mask)
    return contextual_attention(f, b, mask, ksize=self.ksize, stride=self.stride, rate=self.rate,
                                fuse_k=self.fuse_k, softmax_scale=self.softmax_scale, fuse=self.fuse)


def use_cuda_kernel(model: Any, enable: bool = True) -> int:
    """Route (``enable=True``) or un-route the contextual attention layers of a torch model through the CUDA
    kernel; returns how many layers were changed.

    Each ``ContextualAttention`` layer (``trainer.models.contextual_attention``) gets an instance-level ``forward``
    that calls :func:`contextual_attention` when :func:`kernel_applies` (CUDA float32/float16 tensors, no gradient
    wanted) and the layer uses the default mask semantics (``legacy_mask=False``) without ``return_flow``;
    otherwise the layer's own torch code runs. The module tree, parameters and ``state_dict`` are unchanged (the
    layer has no parameters), so checkpoints and ONNX export (CPU tensors) behave exactly as before.
    """
    n = 0
    for module in model.modules():
        if not _is_attention_layer(module):
            continue
        has = "forward" in vars(module)
        if enable and not has:
            module.forward = types.MethodType(_kernel_forward, module)
            n += 1
        elif not enable and has:
            del module.forward
            n += 1
    return n
