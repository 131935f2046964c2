"""Enrollment gallery: SQLite (WAL) on disk, an in-memory float32 matrix for search.

One row per enrolled embedding; an identity may have several (different photos). The file records the
embedding model id and dimension; opening it with another model raises :class:`GalleryError` instead of
returning meaningless matches. Writes are single transactions: a failed ``add`` leaves the file as it was.

Search is cosine similarity over unit-norm rows, in the C++ core (``sdk._core.topk_cosine``); an
identity's score is the best score of its rows.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sdk import _native
from sdk.errors import GalleryError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Hit:
    """One identity in a search result: name and cosine similarity in [-1, 1]."""

    name: str
    similarity: float


class Gallery:
    """Persistent set of ``(name, embedding)`` rows for one embedding model.

    Args:
        path: SQLite file (created if missing), or ``None`` / ``":memory:"`` for a gallery that lives only
            in memory.
        model_id: id of the embedding model whose vectors go in (``Embedder.model_id``).
        dim: embedding dimension.

    Raises:
        GalleryError: the file is not a LookThrough gallery, is from a newer schema, or was made by
            another embedding model or dimension.
    """

    def __init__(self, path: str | Path | None, model_id: str, dim: int):
        self.path = None if path in (None, ":memory:") else Path(path)
        self.model_id = model_id
        self.dim = int(dim)
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None and self.path.parent and not self.path.parent.exists():
            raise GalleryError(f"gallery {self.path}: folder {self.path.parent} does not exist")
        try:
            self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._init_or_check()
            self._load()
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            raise GalleryError(f"gallery {target}: not a LookThrough gallery file ({e})") from None
        except GalleryError:
            self._close_quietly()
            raise

    # -- schema -------------------------------------------------------------------------------------------
    def _init_or_check(self) -> None:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            db.execute("BEGIN")
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, "
                "embedding BLOB NOT NULL, source TEXT, created REAL NOT NULL)"
            )
            db.execute("CREATE INDEX entries_name ON entries(name)")
            db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("model_id", self.model_id),
                ("dim", str(self.dim)), ("created", str(time.time())),
            ])
            db.execute("COMMIT")
            return
        if not {"meta", "entries"} <= tables:
            raise GalleryError(f"gallery {self.path}: SQLite file without LookThrough tables (has {sorted(tables)})")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise GalleryError(f"gallery {self.path}: schema version {version} is newer than this SDK's {SCHEMA_VERSION}")
        if meta.get("model_id") != self.model_id or int(meta.get("dim", -1)) != self.dim:
            raise GalleryError(
                f"gallery {self.path} was made by embedding model {meta.get('model_id')!r} (dim {meta.get('dim')}); "
                f"this recognizer embeds with {self.model_id!r} (dim {self.dim}). Embeddings of different models "
                "cannot be compared: re-enroll into a new gallery, or open it with the bundle that made it."
            )

    def _load(self) -> None:
        rows = self._db.execute("SELECT id, name, embedding FROM entries ORDER BY id").fetchall()
        self._ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._names = [r[1] for r in rows]
        mat = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32) if rows else np.zeros(0, np.float32)
        if mat.size != len(rows) * self.dim:
            raise GalleryError(f"gallery {self.path}: stored embeddings do not have dimension {self.dim}")
        self._matrix = mat.reshape(len(rows), self.dim).copy()

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except Exception:  # noqa: BLE001 - best effort while reporting another error
            pass

    # -- public API -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of stored embeddings (not identities)."""
        return len(self._names)

    @property
    def names(self) -> list[str]:
        """Sorted distinct enrolled names."""
        return sorted(set(self._names))

    @property
    def matrix(self) -> np.ndarray:
        """(N, dim) float32 copy of the stored unit-norm embeddings, in insertion order."""
        return self._matrix.copy()

    def count(self, name: str) -> int:
        """Number of embeddings stored for ``name``."""
        return sum(1 for n in self._names if n == name)

    def add(self, name: str, embeddings: np.ndarray, sources: Sequence[str] | None = None) -> int:
        """Store ``embeddings`` ((K, dim) float, rows re-normalised) under ``name`` in one transaction.

        Returns the number of rows added. On any error nothing is written.
        """
        if not isinstance(name, str) or not name.strip():
            raise GalleryError("name must be a non-empty string")
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.dim or emb.shape[0] == 0:
            raise GalleryError(f"embeddings must have shape (K>0, {self.dim}), got {emb.shape}")
        if not np.all(np.isfinite(emb)):
            raise GalleryError("embeddings contain NaN or infinity")
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        srcs = list(sources) if sources is not None else [None] * len(emb)
        if len(srcs) != len(emb):
            raise GalleryError(f"{len(srcs)} sources for {len(emb)} embeddings")
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = []
            for vec, src in zip(emb, srcs):
                cur = db.execute(
                    "INSERT INTO entries (name, embedding, source, created) VALUES (?, ?, ?, ?)",
                    (name, vec.tobytes(), src, now),
                )
                ids.append(cur.lastrowid)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._ids = np.concatenate([self._ids, np.array(ids, np.int64)])
        self._names.extend([name] * len(emb))
        self._matrix = np.concatenate([self._matrix, emb], axis=0)
        return len(emb)

    def remove(self, name: str) -> int:
        """Delete every embedding of ``name``; returns how many were removed."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute("DELETE FROM entries WHERE name = ?", (name,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        keep = np.array([nm != name for nm in self._names], dtype=bool)
        self._ids, self._matrix = self._ids[keep], self._matrix[keep]
        self._names = [nm for nm in self._names if nm != name]
        return n

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Best ``k`` distinct identities for each query row.

        Args:
            queries: (Q, dim) float32 unit-norm embeddings.
            k: number of identities to return per query.

        Returns:
            Q lists of :class:`Hit`, best first (empty lists for an empty gallery).
        """
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        if len(self) == 0 or k <= 0:
            return [[] for _ in range(len(q))]
        n_ids = len(set(self._names))
        want = min(k, n_ids)
        kk = min(len(self), max(4 * want, want))
        while True:
            idx, scores = _native.topk_cosine(self._matrix, q, kk)
            results, complete = [], True
            for row_i, row_s in zip(idx, scores):
                seen: dict[str, float] = {}
                for i, s in zip(row_i, row_s):
                    nm = self._names[int(i)]
                    if nm not in seen:
                        seen[nm] = float(s)
                        if len(seen) == want:
                            break
                if len(seen) < want and kk < len(self):
                    complete = False
                    break
                results.append([Hit(n, s) for n, s in seen.items()])
            if complete:
                return results
            kk = min(len(self), kk * 4)

    def close(self) -> None:
        """Close the SQLite connection (the in-memory matrix stays readable)."""
        self._db.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({str(self.path) if self.path else ':memory:'}, {len(self.names)} identities, {len(self)} embeddings, model={self.model_id})"
