"""Enrollment gallery: SQLite (WAL) on disk, an in-memory float32 matrix for search.

(Size: past 600 lines on purpose: the snapshot buffers, the writer lock and the transactions that feed them are one
invariant -- "a reader never sees a name without its row" -- and are easier to review in one class. Operator
tasks (backup, restore, export, import, checks) live in :mod:`sdk.gallery_admin`.)

One row per enrolled embedding; an identity may have several (different photos). The file records the
embedding model id and dimension; opening it with another model raises :class:`GalleryError` instead of
returning meaningless matches. Search is cosine similarity over unit-norm rows, in the C++ core
(``sdk._core.topk_cosine``) by default, or in an approximate HNSW index for large galleries
(``index="hnsw"`` / ``"auto"``, :mod:`sdk.ann`); an identity's score is the best score of its rows.

**Thread safety.** One ``Gallery`` may be shared by any number of threads:

* Readers (:meth:`search`, :attr:`names`, :meth:`count`, ``len``, :attr:`matrix`) work on an immutable snapshot
  taken with one attribute read at the start of the call: a search never sees half of an ``add`` or ``remove``
  (names and rows always belong together), never waits for a writer (exact search), and searches run in
  parallel (the C++ search releases the GIL). A search that overlaps a write sees the gallery before or after it.
* Writers (:meth:`add`, :meth:`add_many`, :meth:`remove`, :meth:`set_index`, :meth:`set_key`, :meth:`refresh`,
  :meth:`close`, and :mod:`sdk.gallery_admin`'s backup / export) are serialized by one lock; each is one SQLite
  transaction and is published to readers only after it has committed.
* Several processes may open the same file: SQLite's locking keeps it consistent (writers wait up to
  :data:`BUSY_TIMEOUT_MS`); another process's changes become visible after :meth:`refresh` or on reopening.

**Crash safety.** WAL journal with ``synchronous=FULL``: a committed ``add`` / ``remove`` survives a killed
process or a power cut; an interrupted one leaves no trace (``tests/test_gallery_crash.py`` kills a writer 60
times). **At rest**: new gallery files are created with mode 0600; with a key (``$LOOKTHROUGH_GALLERY_KEY`` or
``key=``) templates are stored AES-GCM encrypted (:mod:`sdk.crypto`); templates are never logged.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from sdk import _native
from sdk.ann import AUTO_MIN_ROWS, INDEX_KINDS, REBUILD_DEAD_FRACTION, HnswIndex, HnswParams
from sdk.crypto import TemplateCipher, decode_salt, encode_salt, key_from_env, new_salt
from sdk.errors import GalleryError

log = logging.getLogger(__name__)

#: Schema of plain galleries (readable by every SDK version).
SCHEMA_VERSION = 1
#: Schema of encrypted galleries (an SDK without encryption refuses them as "newer").
SCHEMA_VERSION_ENCRYPTED = 2
#: How long a write waits for another process's transaction on the same file, in milliseconds.
BUSY_TIMEOUT_MS = 10_000
#: Longest identity name accepted, in characters.
MAX_NAME_CHARS = 256
CIPHER_NAME = "aes256gcm-scrypt"
#: Default of ``key=``: read the key from ``$LOOKTHROUGH_GALLERY_KEY``.
KEY_FROM_ENV: Any = object()


@dataclass(frozen=True)
class Hit:
    """One identity in a search result: name and cosine similarity in [-1, 1]."""

    name: str
    similarity: float


@dataclass(frozen=True)
class _Snapshot:
    """What a reader sees: rows ``[0, n)`` of the writer's buffers, which are never written again once published.

    ``names`` is the writer's append-only list (only its first ``n`` entries belong to this snapshot);
    ``id_name`` maps row id -> name for the ANN index (shared; entries are only ever added or deleted, a row's
    name never changes).
    """

    ids: np.ndarray
    names: list
    matrix: np.ndarray
    counts: Mapping[str, int]
    ann: HnswIndex | None = None
    id_name: dict | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"_Snapshot({self.n} rows, {len(self.counts)} identities, ann={self.ann is not None})"


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; returns True when this call created it."""
    try:
        fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    os.chmod(path, 0o600)  # umask cannot widen 0600, but be explicit
    return True



def check_name(name: object) -> str:
    """Return ``name`` if it can be stored as an identity: a non-empty string of at most
    :data:`MAX_NAME_CHARS` characters without NUL; else raise :class:`GalleryError` saying why."""
    if not isinstance(name, str) or not name.strip():
        raise GalleryError(f"name must be a non-empty string, got {name!r:.80}")
    if len(name) > MAX_NAME_CHARS:
        raise GalleryError(f"name must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    if "\x00" in name:
        raise GalleryError(f"name {name!r:.80} contains a NUL character")
    return name

class Gallery:
    """Persistent set of ``(name, embedding)`` rows for one embedding model.

    Args:
        path: SQLite file (created with mode 0600 if missing), or ``None`` / ``":memory:"`` for a gallery that
            lives only in memory.
        model_id: id of the embedding model whose vectors go in (``Embedder.model_id``).
        dim: embedding dimension.
        index: ``"exact"`` (C++ brute force), ``"hnsw"`` (approximate, FAISS), ``"auto"`` (HNSW from
            :data:`sdk.ann.AUTO_MIN_ROWS` rows on) or ``None``: what the file records (default ``"exact"``).
        key: encryption key for the stored templates (str); default: ``$LOOKTHROUGH_GALLERY_KEY``; ``None``: no
            key. A new file gets encrypted when a key is given. Ignored for in-memory galleries.

    Raises:
        GalleryError: the file is not a LookThrough gallery, is from a newer schema, was made by another embedding
            model or dimension, is encrypted and the key is missing or wrong, or is not encrypted while a key is set.
    """

    def __init__(self, path: str | Path | None, model_id: str, dim: int, *, index: str | None = None,
                 key: Any = KEY_FROM_ENV):
        self.path = None if path in (None, ":memory:") else Path(path)
        self.model_id = model_id
        self.dim = int(dim)
        if self.dim < 1:
            raise GalleryError(f"gallery dimension must be >= 1, got {dim}")
        if index is not None and index not in INDEX_KINDS:
            raise GalleryError(f"unknown gallery index {index!r}; known: {list(INDEX_KINDS)}")
        self._wlock = threading.RLock()
        self._closed = False
        self._cipher: TemplateCipher | None = None
        self._data_version = None
        self._index_kind, self._hnsw_params = "exact", HnswParams()
        key = key_from_env() if key is KEY_FROM_ENV else key
        target = ":memory:" if self.path is None else str(self.path)
        if self.path is not None and self.path.parent and not self.path.parent.exists():
            raise GalleryError(f"gallery {self.path}: folder {self.path.parent} does not exist")
        if self.path is not None and self.path.is_dir():
            raise GalleryError(f"gallery {self.path} is a folder, not a gallery file")
        created = self.path is not None and create_private_file(self.path)
        try:
            self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if self.path is not None:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise GalleryError(f"gallery {target}: cannot switch to WAL journaling (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._init_or_check(key if self.path is not None else None)
            self._load()
            self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            self._close_quietly()
            if "locked" in str(e) or "busy" in str(e):
                raise GalleryError(f"gallery {target}: locked by another process for over "
                                   f"{BUSY_TIMEOUT_MS / 1000:.0f} s ({e})") from None
            raise GalleryError(f"gallery {target}: not a LookThrough gallery file ({e})") from None
        except BaseException:
            self._close_quietly()
            raise
        if self.path is not None and not created:
            self._warn_if_readable_by_others()
        if index is not None and index != self._index_kind:
            self.set_index(index, persist=False)
        else:
            self._apply_index()

    @classmethod
    def open(cls, path: str | Path, *, index: str | None = None, key: Any = KEY_FROM_ENV) -> "Gallery":
        """Open an existing gallery file with the model id and dimension it records (for tools and operators).

        Raises:
            GalleryError: no such file, or not a gallery.
        """
        model_id, dim = read_header(path)
        return cls(path, model_id, dim, index=index, key=key)

    # -- schema ---------------------------------------------------------------------------------------------
    def _init_or_check(self, key: str | None) -> None:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            meta = {"schema_version": str(SCHEMA_VERSION), "model_id": self.model_id, "dim": str(self.dim),
                    "created": str(time.time())}
            cipher = TemplateCipher(key, new_salt()) if key is not None else None
            if cipher is not None:
                meta.update(self._cipher_meta(cipher))
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]:
                db.execute("ROLLBACK")  # another process created it meanwhile: check it like any existing file
                return self._init_or_check(key)
            self._cipher = cipher
            try:
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute(
                    "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, "
                    "embedding BLOB NOT NULL, source TEXT, created REAL NOT NULL)"
                )
                db.execute("CREATE INDEX entries_name ON entries(name)")
                db.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return
        if not {"meta", "entries"} <= tables:
            raise GalleryError(f"gallery {self.path}: SQLite file without LookThrough tables (has {sorted(tables)})")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            raise GalleryError(f"gallery {self.path}: damaged meta table (schema_version {meta.get('schema_version')!r})") from None
        if version > SCHEMA_VERSION_ENCRYPTED:
            raise GalleryError(f"gallery {self.path}: schema version {version} is newer than this SDK's {SCHEMA_VERSION_ENCRYPTED}")
        if meta.get("model_id") != self.model_id or meta.get("dim") != str(self.dim):
            raise GalleryError(
                f"gallery {self.path} was made by embedding model {meta.get('model_id')!r} (dim {meta.get('dim')}); "
                f"this recognizer embeds with {self.model_id!r} (dim {self.dim}). Embeddings of different models "
                "cannot be compared: re-enroll into a new gallery, or open it with the bundle that made it."
            )
        self._read_index_meta(meta)
        if meta.get("cipher"):
            if meta["cipher"] != CIPHER_NAME:
                raise GalleryError(f"gallery {self.path}: unknown cipher {meta['cipher']!r}")
            if key is None:
                raise GalleryError(f"gallery {self.path} is encrypted: set the key in $LOOKTHROUGH_GALLERY_KEY "
                                   "(or pass key=...)")
            cipher = TemplateCipher(key, decode_salt(meta.get("salt", "")))
            if not cipher.matches(meta.get("key_check", "")):
                raise GalleryError(f"gallery {self.path}: wrong key: the key given ($LOOKTHROUGH_GALLERY_KEY or key=) "
                                   "does not decrypt this gallery")
            self._cipher = cipher
        elif key is not None:
            raise GalleryError(
                f"gallery {self.path} is not encrypted but a key is set ($LOOKTHROUGH_GALLERY_KEY or key=). "
                f"Encrypt it with `python -m sdk gallery encrypt --gallery {self.path}`, or unset the key.")

    @staticmethod
    def _cipher_meta(cipher: TemplateCipher | None) -> dict[str, str]:
        if cipher is None:
            return {"schema_version": str(SCHEMA_VERSION), "cipher": "", "salt": "", "key_check": ""}
        return {"schema_version": str(SCHEMA_VERSION_ENCRYPTED), "cipher": CIPHER_NAME,
                "salt": encode_salt(cipher.salt), "key_check": cipher.key_check()}

    def _read_index_meta(self, meta: Mapping[str, str]) -> None:
        raw = meta.get("index")
        if not raw:
            return
        try:
            spec = json.loads(raw)
            kind = spec.pop("kind")
            params = HnswParams(**spec)
        except (ValueError, TypeError, KeyError, AttributeError, GalleryError) as e:
            log.warning("gallery %s: ignoring unreadable index setting %r (%s); using exact search", self.path, raw, e)
            return
        if kind in INDEX_KINDS:
            self._index_kind, self._hnsw_params = kind, params

    def _decode(self, row_id: int, name: str, blob: bytes) -> np.ndarray:
        if self._cipher is not None:
            plain = self._cipher.decrypt(bytes(blob), name.encode("utf-8"))
            if plain is None:
                raise GalleryError(f"gallery {self.path}: row {row_id} ({name!r}) does not decrypt under this key: "
                                   "the file was altered or the row moved to another name")
            blob = plain
        if len(blob) != 4 * self.dim:
            raise GalleryError(f"gallery {self.path}: stored embeddings do not have dimension {self.dim} (row {row_id})")
        vec = np.frombuffer(blob, np.float32)
        if not np.all(np.isfinite(vec)):
            raise GalleryError(f"gallery {self.path}: row {row_id} ({name!r}) holds NaN or infinity (file damaged?)")
        return vec

    def _encode(self, name: str, vec: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(vec, np.float32).tobytes()
        return raw if self._cipher is None else self._cipher.encrypt(raw, name.encode("utf-8"))

    def _load(self) -> None:
        rows = self._db.execute("SELECT id, name, embedding FROM entries ORDER BY id").fetchall()
        n = len(rows)
        cap = max(64, n + n // 4)
        self._ids_buf = np.zeros(cap, np.int64)
        self._mat_buf = np.zeros((cap, self.dim), np.float32)
        self._names_buf: list[str] = []
        counts: dict[str, int] = {}
        for i, (row_id, name, blob) in enumerate(rows):
            if not isinstance(blob, bytes) or not isinstance(name, str):
                raise GalleryError(f"gallery {self.path}: row {row_id} is damaged (name or embedding of the wrong type)")
            self._mat_buf[i] = self._decode(row_id, name, blob)
            self._ids_buf[i] = row_id
            self._names_buf.append(name)
            counts[name] = counts.get(name, 0) + 1
        self._snap = _Snapshot(self._ids_buf[:n], self._names_buf, self._mat_buf[:n], counts)

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except Exception:  # noqa: BLE001 - best effort while reporting another error
            pass

    def _warn_if_readable_by_others(self) -> None:
        try:
            mode = self.path.stat().st_mode
        except OSError:
            return
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("gallery %s has mode %o: biometric templates readable by other users (chmod 600 it)",
                        self.path, stat.S_IMODE(mode))

    # -- writes ---------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One serialized write: the writer lock, ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error);
        SQLite errors become :class:`GalleryError`. Publish in-memory changes after the ``with`` block."""
        if self._closed:
            raise GalleryError(f"gallery {self.path or ':memory:'} is closed")
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise GalleryError(f"gallery {self.path or ':memory:'}: cannot start a write ({e})") from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as e:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.Error):
                raise GalleryError(f"gallery {self.path or ':memory:'}: write failed, nothing written ({e})") from None
            raise

    def _validate_rows(self, names: Sequence[str], embeddings: np.ndarray, sources: Sequence[str | None] | None
                       ) -> tuple[list[str], np.ndarray, list[str | None]]:
        try:
            emb = np.asarray(embeddings, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise GalleryError(f"embeddings must be a (K, {self.dim}) array of numbers ({e})") from None
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.dim or emb.shape[0] == 0:
            raise GalleryError(f"embeddings must have shape (K>0, {self.dim}), got {emb.shape}")
        if not np.all(np.isfinite(emb)):
            raise GalleryError("embeddings contain NaN or infinity")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if np.any(norms < 1e-12):
            raise GalleryError("embeddings contain an all-zero row (no direction to compare)")
        emb = np.ascontiguousarray(emb / norms, np.float32)
        names = [names] * len(emb) if isinstance(names, str) else list(names)
        if len(names) != len(emb):
            raise GalleryError(f"{len(names)} names for {len(emb)} embeddings")
        for nm in set(names):
            check_name(nm)
        srcs = list(sources) if sources is not None else [None] * len(emb)
        if len(srcs) != len(emb):
            raise GalleryError(f"{len(srcs)} sources for {len(emb)} embeddings")
        srcs = [None if s is None else str(s) for s in srcs]
        return names, emb, srcs

    def add(self, name: str, embeddings: np.ndarray, sources: Sequence[str] | None = None) -> int:
        """Store ``embeddings`` ((K, dim) float, rows re-normalised) under ``name`` in one transaction.

        Returns the number of rows added. On any error nothing is written.
        """
        if not isinstance(name, str) or not name.strip():
            raise GalleryError("name must be a non-empty string")
        return self.add_many(name, embeddings, sources)

    def add_many(self, names: str | Sequence[str], embeddings: np.ndarray, sources: Sequence[str | None] | None = None,
                 created: Sequence[float] | None = None) -> int:
        """Store row ``i`` of ``embeddings`` ((K, dim)) under ``names[i]`` (or all under one ``names`` string):
        many identities in one transaction (imports, bulk enrollment). ``created``: per-row UNIX times (default:
        now). Nothing is written on error."""
        names, emb, srcs = self._validate_rows(names, embeddings, sources)
        now = time.time()
        times = [now] * len(emb) if created is None else [float(t) for t in created]
        if len(times) != len(emb):
            raise GalleryError(f"{len(times)} creation times for {len(emb)} embeddings")
        with self._wlock:
            blobs = [self._encode(nm, v) for nm, v in zip(names, emb)]
            with self._transaction() as db:
                ids = [db.execute("INSERT INTO entries (name, embedding, source, created) VALUES (?, ?, ?, ?)",
                                  (nm, blob, src, t)).lastrowid for nm, blob, src, t in zip(names, blobs, srcs, times)]
            self._append(np.array(ids, np.int64), names, emb)
        return len(emb)

    def _append(self, ids: np.ndarray, names: list[str], emb: np.ndarray) -> None:
        """Publish committed rows: write them past the current snapshot's end, then swap in a longer snapshot."""
        s, k = self._snap, len(ids)
        n = s.n
        if n + k > len(self._ids_buf):
            cap = max(64, 2 * len(self._ids_buf), n + k)
            mat, idb = np.zeros((cap, self.dim), np.float32), np.zeros(cap, np.int64)
            mat[:n], idb[:n] = self._mat_buf[:n], self._ids_buf[:n]
            self._mat_buf, self._ids_buf = mat, idb
        self._mat_buf[n:n + k] = emb
        self._ids_buf[n:n + k] = ids
        self._names_buf.extend(names)
        counts = dict(s.counts)
        for nm in names:
            counts[nm] = counts.get(nm, 0) + 1
        ann, id_name = s.ann, s.id_name
        if ann is not None:
            id_name.update(zip(ids.tolist(), names))
            ann.add(ids, emb)
        self._snap = _Snapshot(self._ids_buf[:n + k], self._names_buf, self._mat_buf[:n + k], counts, ann, id_name)
        if ann is None and self._index_kind == "auto" and n + k >= AUTO_MIN_ROWS:
            self._apply_index()

    def remove(self, name: str) -> int:
        """Delete every embedding of ``name`` in one transaction; returns how many were removed."""
        if not isinstance(name, str):
            raise GalleryError(f"name must be a string, got {type(name).__name__}")
        with self._wlock:
            with self._transaction() as db:
                n_del = db.execute("DELETE FROM entries WHERE name = ?", (name,)).rowcount
            s = self._snap
            if name not in s.counts:
                return n_del
            keep = np.fromiter((nm != name for nm in s.names[:s.n]), bool, s.n)
            kept = int(keep.sum())
            cap = max(64, kept + kept // 4)
            self._ids_buf, self._mat_buf = np.zeros(cap, np.int64), np.zeros((cap, self.dim), np.float32)
            self._ids_buf[:kept], self._mat_buf[:kept] = s.ids[keep], s.matrix[keep]
            self._names_buf = [nm for nm in s.names[:s.n] if nm != name]
            counts = {nm: c for nm, c in s.counts.items() if nm != name}
            ann, id_name = s.ann, s.id_name
            if ann is not None:
                dead = s.ids[~keep]
                ann.mark_dead(dead)
                for i in dead.tolist():
                    id_name.pop(i, None)
            self._snap = _Snapshot(self._ids_buf[:kept], self._names_buf, self._mat_buf[:kept], counts, ann, id_name)
            if ann is not None and (ann.dead_fraction > REBUILD_DEAD_FRACTION
                                    or (self._index_kind == "auto" and kept < AUTO_MIN_ROWS // 2)):
                self._apply_index()
        return n_del

    # -- index --------------------------------------------------------------------------------------------
    @property
    def index(self) -> str:
        """The search index setting: ``"exact"``, ``"hnsw"`` or ``"auto"``."""
        return self._index_kind

    @property
    def index_active(self) -> str:
        """What searches use right now: ``"exact"`` or ``"hnsw"``."""
        return "exact" if self._snap.ann is None else "hnsw"

    def set_index(self, kind: str, params: HnswParams | None = None, *, persist: bool = True) -> None:
        """Switch the search index (``"exact"``, ``"hnsw"``, ``"auto"``); builds the HNSW index now if needed.

        ``persist`` records the setting in the file, so later opens (e.g. by a ``Recognizer``) use it too.
        """
        if kind not in INDEX_KINDS:
            raise GalleryError(f"unknown gallery index {kind!r}; known: {list(INDEX_KINDS)}")
        if params is not None and not isinstance(params, HnswParams):
            raise GalleryError(f"params must be sdk.ann.HnswParams, got {type(params).__name__}")
        with self._wlock:
            old = (self._index_kind, self._hnsw_params)
            self._index_kind, self._hnsw_params = kind, params or self._hnsw_params
            try:
                if persist and self.path is not None:
                    spec = {"kind": kind, "m": self._hnsw_params.m, "ef_construction": self._hnsw_params.ef_construction,
                            "ef_search": self._hnsw_params.ef_search}
                    with self._transaction() as db:
                        db.execute("INSERT OR REPLACE INTO meta VALUES ('index', ?)", (json.dumps(spec),))
                self._apply_index(rebuild=True)
            except BaseException:
                self._index_kind, self._hnsw_params = old
                raise

    def _apply_index(self, rebuild: bool = True) -> None:
        """(Re)build or drop the ANN index to match the setting and the size; publish it with the rows."""
        s = self._snap
        want = self._index_kind == "hnsw" or (self._index_kind == "auto" and s.n >= AUTO_MIN_ROWS)
        if not want:
            if s.ann is not None:
                self._snap = _Snapshot(s.ids, s.names, s.matrix, s.counts)
            return
        if s.ann is not None and not rebuild:
            return
        id_name = dict(zip(s.ids.tolist(), s.names[:s.n]))
        ann = HnswIndex.build(self.dim, s.ids, s.matrix, self._hnsw_params)
        self._snap = _Snapshot(s.ids, s.names, s.matrix, s.counts, ann, id_name)

    # -- reads ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of stored embeddings (not identities)."""
        return self._snap.n

    @property
    def names(self) -> list[str]:
        """Sorted distinct enrolled names."""
        return sorted(self._snap.counts)

    @property
    def matrix(self) -> np.ndarray:
        """(N, dim) float32 copy of the stored unit-norm embeddings, in insertion order."""
        return self._snap.matrix.copy()

    @property
    def encrypted(self) -> bool:
        """Are the templates stored encrypted?"""
        return self._cipher is not None

    def count(self, name: str) -> int:
        """Number of embeddings stored for ``name``."""
        return self._snap.counts.get(name, 0)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        try:
            q = np.asarray(queries, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise GalleryError(f"queries must be a (Q, {self.dim}) array of numbers ({e})") from None
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise GalleryError(f"queries must have shape (Q, {self.dim}) or ({self.dim},), got {np.shape(queries)}")
        if not np.all(np.isfinite(q)):
            raise GalleryError("queries contain NaN or infinity")
        return np.ascontiguousarray(q)

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Best ``k`` distinct identities for each query row.

        Args:
            queries: (Q, dim) or (dim,) float32 unit-norm embeddings.
            k: number of identities to return per query.

        Returns:
            Q lists of :class:`Hit`, best first (empty lists for an empty gallery).
        """
        q = self._queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise GalleryError(f"k must be an int, got {type(k).__name__}")
        s = self._snap  # the one read of shared state: everything below uses this snapshot
        if s.n == 0 or k <= 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        want = min(int(k), len(s.counts))
        if s.ann is not None:
            hits = self._search_ann(s, q, want)
            if hits is not None:
                return hits
        return self._search_exact(s, q, want)

    @staticmethod
    def _distinct(labels: np.ndarray, scores: np.ndarray, name_of: Any, want: int) -> list[Hit] | None:
        """First ``want`` distinct names along one ranked row, or ``None`` if the row has fewer."""
        seen: dict[str, float] = {}
        for i, sc in zip(labels.tolist(), scores.tolist()):
            nm = name_of(i)
            if nm is not None and nm not in seen:
                seen[nm] = float(sc)
                if len(seen) == want:
                    return [Hit(n, v) for n, v in seen.items()]
        return None

    def _search_exact(self, s: _Snapshot, q: np.ndarray, want: int) -> list[list[Hit]]:
        names, n = s.names, s.n
        kk = min(n, max(4 * want, want))
        while True:
            idx, scores = _native.topk_cosine(s.matrix, q, kk)
            results = [self._distinct(ri, rs, names.__getitem__, want) for ri, rs in zip(idx, scores)]
            if all(r is not None for r in results) or kk >= n:
                # kk == n: every row was ranked, so every identity of the snapshot is in each list
                return [r if r is not None else [] for r in results]
            kk = min(n, kk * 4)

    def _search_ann(self, s: _Snapshot, q: np.ndarray, want: int) -> list[list[Hit]] | None:
        id_name, size = s.id_name, len(s.ann)
        kk = min(size, max(4 * want, 16))
        while True:
            labels, scores = s.ann.search(q, kk)
            results = [self._distinct(rl, rs, lambda i: id_name.get(i) if i >= 0 else None, want)
                       for rl, rs in zip(labels, scores)]
            if all(r is not None for r in results):
                return results
            if kk >= min(size, 4096):
                return None  # identities crowded out or removed: let exact search answer
            kk = min(size, kk * 4)

    # -- maintenance ------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Reload from the file if another connection (process) changed it; returns True when it reloaded."""
        with self._wlock:
            if self._closed or self.path is None:
                return False
            try:
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
                if version == self._data_version:
                    return False
                self._load()
            except sqlite3.Error as e:
                raise GalleryError(f"gallery {self.path}: cannot reload ({e})") from None
            self._data_version = version
            self._apply_index()
            return True

    def set_key(self, key: str | None) -> None:
        """Re-encrypt every stored template under ``key`` (``None``: store them in plain) in one transaction.

        Encrypts a plain gallery, decrypts an encrypted one, or rotates the key.
        """
        if self.path is None:
            raise GalleryError("an in-memory gallery has nothing at rest to encrypt")
        with self._wlock:
            cipher = None if key is None else TemplateCipher(key, new_salt())
            old, self._cipher = self._cipher, cipher
            try:
                with self._transaction() as db:
                    s = self._snap
                    for row_id, name, vec in zip(s.ids.tolist(), s.names[:s.n], s.matrix):
                        db.execute("UPDATE entries SET embedding = ? WHERE id = ?", (self._encode(name, vec), row_id))
                    for k, v in self._cipher_meta(cipher).items():
                        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))
            except BaseException:
                self._cipher = old
                raise

    @contextmanager
    def _locked_db(self) -> Iterator[sqlite3.Connection]:
        """The SQLite connection under the writer lock (no transaction), for :mod:`sdk.gallery_admin`."""
        with self._wlock:
            if self._closed:
                raise GalleryError(f"gallery {self.path or ':memory:'} is closed")
            try:
                yield self._db
            except sqlite3.Error as e:
                raise GalleryError(f"gallery {self.path or ':memory:'}: {e}") from None

    def stored_template(self, row_id: int, name: str, blob: bytes) -> np.ndarray:
        """(dim,) float32 template of a row as stored in the file (decrypted when the gallery is encrypted).

        Raises:
            GalleryError: wrong size, NaN/inf, or (encrypted) the blob does not authenticate for ``name``.
        """
        return self._decode(row_id, name, blob).copy()

    def close(self) -> None:
        """Close the SQLite connection (the in-memory matrix stays searchable; writes raise GalleryError)."""
        with self._wlock:
            self._closed = True
            self._db.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self._snap
        return (f"Gallery({str(self.path) if self.path else ':memory:'}, {len(s.counts)} identities, {s.n} embeddings, "
                f"model={self.model_id}, index={self.index_active}{', encrypted' if self.encrypted else ''})")


def read_header(path: str | Path) -> tuple[str, int]:
    """``(model_id, dim)`` recorded in an existing gallery file, read-only.

    Raises:
        GalleryError: the file does not exist or is not a LookThrough gallery.
    """
    p = Path(path)
    if not p.is_file():
        raise GalleryError(f"gallery {p}: no such file")
    try:
        db = sqlite3.connect(p.resolve().as_uri() + "?mode=rw", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
    except sqlite3.Error as e:
        raise GalleryError(f"gallery {p}: not a LookThrough gallery file ({e})") from None
    try:
        return str(meta["model_id"]), int(meta["dim"])
    except (KeyError, ValueError):
        raise GalleryError(f"gallery {p}: not a LookThrough gallery file (no model_id / dim in its meta table)") from None
