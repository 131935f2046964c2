"""Golden reference for the top-k cosine search kernel (used by tests only, never by the SDK).

NumPy only: a float64 matrix product followed by a stable argsort, so equal scores keep the
lower gallery index first and NaN scores sort last.
"""
from __future__ import annotations

import numpy as np


def topk_cosine(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product (cosine for L2-normalised rows).

    Args:
        gallery: (N, D) embeddings.
        queries: (Q, D) embeddings.
        k: number of hits wanted, >= 1; ``k' = min(k, N)`` are returned.

    Returns:
        ``(indices, scores)``: int64 (Q, k') gallery rows and float32 (Q, k') scores, each row
        sorted by score descending, ties by lower index.
    """
    g = np.asarray(gallery, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    kk = min(int(k), g.shape[0])
    scores = q @ g.T  # (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    top = np.take_along_axis(scores, order, axis=1)
    return order.astype(np.int64), top.astype(np.float32)
