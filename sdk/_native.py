"""Typed Python face of the C++ core (``sdk._core``, built from ``kernels/`` by ``pip install``).

Everything here is a thin wrapper: it fixes lossless dtype / layout issues (e.g. float32 or int
landmarks -> float64) and forwards to C++, which validates again and raises

* ``TypeError`` for a wrong dtype (images must be uint8, embeddings float32),
* ``ValueError`` for a wrong shape, size or value,
* ``RuntimeError`` when a CUDA function is called without a usable GPU.

Conventions: pixel coordinates are ``(x, y)`` = (column, row) in pixels with integer values at
pixel centres (the OpenCV convention); images are interleaved ``(H, W)`` or ``(H, W, C)`` uint8 and
their channel order (BGR, RGB, ...) is passed through untouched; sizes are ``(width, height)``
like ``cv2.warpAffine``'s ``dsize``.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np

try:
    from sdk import _core
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "LookThrough's C++ core (sdk._core) is not built or cannot be loaded "
        f"({exc}). Build it with `make setup` (or `pip install -e .` from the repository root)."
    ) from exc

core = _core
__version__: str = _core.__version__

__all__ = ["core", "estimate_similarity", "warp_affine", "warp_affine_cuda", "topk_cosine",
           "contextual_attention", "cuda_info", "build_info"]


def _points(a: Any) -> np.ndarray:
    """Real-valued points as C-contiguous float64; other dtypes go to C++ unchanged (TypeError)."""
    arr = np.asarray(a)
    if arr.dtype.kind in "fiu":
        return np.ascontiguousarray(arr, dtype=np.float64)
    return arr


def _size(size: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` -> ``(out_h, out_w)`` as ints (ValueError if not a pair of ints)."""
    try:
        w, h = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be a (width, height) pair, got {size!r}") from None
    if not (isinstance(w, (int, np.integer)) and isinstance(h, (int, np.integer))):
        raise TypeError(f"size must hold ints, got {size!r}")
    return int(h), int(w)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` points.

    Rotation + uniform scale + translation, never a reflection (Umeyama 1991 closed form).

    Args:
        src: (N, 2) ``(x, y)`` points in pixels (any real dtype), N >= 2, not all equal.
        dst: (N, 2) ``(x, y)`` points in pixels, same N.

    Returns:
        (2, 3) float64 ``M`` with ``dst ~= M @ [x, y, 1]``, i.e. ``[[a, -b, tx], [b, a, ty]]``.
    """
    return _core.estimate_similarity(_points(src), _points(dst))


def warp_affine(image: np.ndarray, M: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear affine warp with a black (0) border, like ``cv2.warpAffine`` (within 1 grey level).

    Args:
        image: uint8 ``(H, W)`` or ``(H, W, C)`` with C in {1, 3, 4}; views (crops, flipped
            channels) are fine. Other dtypes raise ``TypeError`` (no silent conversion).
        M: (2, 3) matrix mapping SOURCE pixel coordinates to DESTINATION (crop) coordinates,
            the matrix ``estimate_similarity(frame_points, crop_template)`` returns.
        size: output ``(width, height)`` in pixels, each in [1, 16384].

    Returns:
        uint8 ``(height, width)`` or ``(height, width, C)``, same channel layout and order as
        ``image``.
    """
    out_h, out_w = _size(size)
    return _core.warp_affine(image, _points(M), out_h, out_w)


def warp_affine_cuda(image: np.ndarray, M: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """:func:`warp_affine` computed on the current CUDA device (copies in and out per call).

    Raises:
        RuntimeError: ``"built without CUDA"`` or ``"no CUDA device: ..."``.
    """
    out_h, out_w = _size(size)
    return _core.warp_affine_cuda(image, _points(M), out_h, out_w)


def topk_cosine(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine search.

    Args:
        gallery: float32 (N, D) L2-normalised embeddings (N may be 0). float16 is widened
            losslessly; float64 raises ``TypeError`` (cast it yourself: the cast is lossy).
        queries: float32 (Q, D) L2-normalised embeddings, same D.
        k: hits wanted per query, >= 1.

    Returns:
        ``(indices, scores)``: int64 (Q, k') gallery rows and float32 (Q, k') cosine scores,
        ``k' = min(k, N)``, each row sorted by score descending, ties by lower index.
    """
    return _core.topk_cosine(_widen_half(gallery), _widen_half(queries), operator.index(k))


def _widen_half(a: Any) -> Any:
    """float16 -> float32 (lossless); everything else unchanged for C++ to check."""
    if isinstance(a, np.ndarray) and a.dtype == np.float16:
        return a.astype(np.float32)
    return a


def contextual_attention(f: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, *,
                         ksize: int = 3, stride: int = 1, rate: int = 2, fuse_k: int = 3,
                         softmax_scale: float = 10.0, fuse: bool = True
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Contextual attention (DeepFill v1) on the CPU, spec ``kernels/contextual_attention/README.md``.

    Args:
        f: float32 (B, C, Hf, Wf) foreground; ``b``: float32 (B, C, Hb, Wb) background. Other
            dtypes raise ``TypeError``. Spatial sizes must be multiples of ``rate``.
        mask: (B or 1, 1, Hb, Wb) hole mask of ``b`` (nonzero = hole) or None; a non-float32
            mask is converted with ``mask != 0``.
        ksize, stride, rate, fuse_k (odd), softmax_scale, fuse: as in the reference.

    Returns:
        ``(y, attention)``: float32 (B, C, Hf, Wf) and float32 (B, L, Hf/rate, Wf/rate).
    """
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.float32:
            if m.dtype.kind not in "biuf":
                raise TypeError(f"mask must hold real numbers or bools, got dtype {m.dtype}")
            mask = (m != 0).astype(np.float32)
    return _core.contextual_attention(f, b, mask, operator.index(ksize), operator.index(stride),
                                      operator.index(rate), operator.index(fuse_k),
                                      float(softmax_scale), bool(fuse))


def cuda_info() -> dict:
    """``{"compiled": bool, "device_count": int, "error": str | None}`` for the CUDA back end.

    ``error`` explains a zero ``device_count`` (e.g. no driver) and is ``None`` when all is well.
    """
    return dict(_core.cuda_info())


def build_info() -> dict:
    """``{"cuda": bool, "cuda_architectures": str, "openmp": bool}`` for the built core."""
    return dict(_core.build_info())
