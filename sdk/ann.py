"""Approximate nearest-neighbour index for large galleries: FAISS HNSW (inner product = cosine on unit rows).

:class:`sdk.gallery.Gallery` keeps exact search as the default; ``Gallery(..., index="hnsw")`` (or ``"auto"``,
which switches at :data:`AUTO_MIN_ROWS`) searches this index instead, behind the same ``search`` API.
``benchmarks/bench_gallery.py`` measures recall@1 against exact search and the latency of both at 10k-1M rows
(results and the crossover in the README).

Labels are the gallery's SQLite row ids (int64, never reused). Removal marks labels dead (FAISS HNSW cannot
delete); the gallery skips dead labels at search time and rebuilds the index when more than
:data:`REBUILD_DEAD_FRACTION` of it is dead. Thread safety: any number of concurrent :meth:`HnswIndex.search`
calls, serialized against :meth:`HnswIndex.add` by a readers-writer lock (FAISS indexes are not safe to search
while they are being modified).
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from sdk.errors import GalleryError

log = logging.getLogger(__name__)

#: ``index="auto"`` uses HNSW from this many stored embeddings on (the measured crossover; README).
AUTO_MIN_ROWS = 50_000
#: Rebuild the index once more than this fraction of its entries belong to removed rows.
REBUILD_DEAD_FRACTION = 0.25
INDEX_KINDS = ("exact", "hnsw", "auto")


@dataclass(frozen=True)
class HnswParams:
    """HNSW graph parameters.

    Attributes:
        m: neighbours per node (memory ~ ``m * 8`` bytes per row on top of the vectors).
        ef_construction: candidate list size while building (higher: better graph, slower build).
        ef_search: candidate list size per query (higher: better recall, slower search; raised to ``k`` if lower).
    """

    m: int = 32
    ef_construction: int = 80
    ef_search: int = 96

    def __post_init__(self) -> None:
        for name in ("m", "ef_construction", "ef_search"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 2 <= int(v) <= 4096:
                raise GalleryError(f"HNSW parameter {name} must be an int in [2, 4096], got {v!r}")


def faiss_available() -> bool:
    """Is the ``faiss`` package (``faiss-cpu``) importable?"""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    try:
        import faiss
    except ImportError:
        raise GalleryError("index 'hnsw' needs the faiss-cpu package (pip install faiss-cpu; it is in "
                           "requirements/runtime.txt)") from None
    return faiss


class RWLock:
    """Readers-writer lock: many readers or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class HnswIndex:
    """FAISS ``IndexHNSWFlat`` over unit-norm float32 rows with int64 labels.

    Args:
        dim: embedding dimension.
        params: graph parameters.
    """

    def __init__(self, dim: int, params: HnswParams = HnswParams()):
        faiss = _faiss()
        self.dim = int(dim)
        self.params = params
        self._index = faiss.IndexHNSWFlat(self.dim, int(params.m), faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = int(params.ef_construction)
        self._labels = np.zeros(0, np.int64)  # FAISS position -> label
        self._dead: set[int] = set()
        self._lock = RWLock()

    @classmethod
    def build(cls, dim: int, labels: np.ndarray, vectors: np.ndarray, params: HnswParams = HnswParams()) -> "HnswIndex":
        """A new index holding ``vectors`` ((N, dim) float32 unit rows) under ``labels`` ((N,) int64)."""
        t0 = time.perf_counter()
        index = cls(dim, params)
        index.add(labels, vectors)
        if len(labels) >= 10_000:
            log.info("built HNSW index of %d rows in %.1f s (m=%d, ef_construction=%d)", len(labels),
                     time.perf_counter() - t0, params.m, params.ef_construction)
        return index

    def __len__(self) -> int:
        """Entries in the index, dead ones included."""
        return len(self._labels)

    @property
    def dead_fraction(self) -> float:
        """Fraction of entries whose rows were removed."""
        return len(self._dead) / max(1, len(self._labels))

    def set_ef_search(self, ef_search: int) -> None:
        """Change the per-query candidate list size (recall / latency trade-off) without rebuilding."""
        self.params = HnswParams(self.params.m, self.params.ef_construction, ef_search)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Append ``vectors`` ((K, dim) float32) under ``labels`` ((K,) int64)."""
        labels = np.asarray(labels, np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, self.dim)
        if len(labels) != len(vectors):
            raise GalleryError(f"{len(labels)} labels for {len(vectors)} vectors")
        if not len(labels):
            return
        with self._lock.write():
            self._index.add(vectors)
            self._labels = np.concatenate([self._labels, labels])

    def mark_dead(self, labels: np.ndarray) -> None:
        """Record that ``labels`` were removed (searches skip them through the gallery's label map)."""
        with self._lock.write():
            self._dead.update(int(x) for x in np.asarray(labels).reshape(-1))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, scores)``: int64 (Q, k) and float32 (Q, k), best first; ``-1`` labels pad short rows.

        Dead labels may be among them (the caller filters them).
        """
        faiss = _faiss()
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        k = max(1, int(k))
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(int(self.params.ef_search), k)
        with self._lock.read():
            n = len(self._labels)
            if n == 0:
                return np.full((len(q), k), -1, np.int64), np.full((len(q), k), -np.inf, np.float32)
            scores, pos = self._index.search(q, min(k, n), params=params)
            labels = np.where(pos >= 0, self._labels[np.clip(pos, 0, n - 1)], -1)
        return labels, scores
