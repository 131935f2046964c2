"""Operator tasks on a gallery file: list, check, backup / restore, export / import, encrypt / decrypt.

Used by ``python -m sdk gallery ...`` (:mod:`sdk.gallery_cli`); every function is also a Python API.

* **Backup** (:func:`backup`) is SQLite's online backup: a consistent copy while the gallery is in use (searches
  continue, writers wait), one self-contained file with mode 0600. **Restore** (:func:`restore`) checks the
  backup (a gallery, SQLite ``integrity_check`` passes) and copies it into the target in one transaction;
  processes that hold the target open see it after :meth:`Gallery.refresh` or on reopening.
* **Export** (:func:`export_rows`) writes JSON lines: a header (format, model id, dimension, encryption) and one
  row per template ``{"name", "template", "source", "created"}``, ``template`` being the stored bytes in base64
  (float32 little-endian, or the AES-GCM blob when the gallery is encrypted: an export of an encrypted gallery
  needs the same key to import). **Import** (:func:`import_rows`) validates every row before writing any, then adds
  them in one transaction (into a gallery made by the same embedding model).
"""
from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdk.crypto import TemplateCipher, decode_salt, key_from_env
from sdk.errors import GalleryError
from sdk.gallery import Gallery, create_private_file, read_header

log = logging.getLogger(__name__)

EXPORT_FORMAT = "lookthrough.gallery-export"
EXPORT_VERSION = 1


def identities(g: Gallery) -> list[dict[str, Any]]:
    """``[{"name", "embeddings", "first_enrolled", "last_enrolled"}]`` (UNIX seconds), sorted by name."""
    with g._locked_db() as db:
        rows = db.execute("SELECT name, COUNT(*), MIN(created), MAX(created) FROM entries "
                          "GROUP BY name ORDER BY name").fetchall()
    return [{"name": r[0], "embeddings": r[1], "first_enrolled": r[2], "last_enrolled": r[3]} for r in rows]


def integrity_check(g: Gallery) -> list[str]:
    """Problems found (empty when healthy): SQLite's ``PRAGMA integrity_check``, then every stored row against
    the in-memory search matrix (same ids and names, right dimension, finite, decrypts under the key)."""
    with g._locked_db() as db:
        problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        rows = db.execute("SELECT id, name, embedding FROM entries ORDER BY id").fetchall()
        s = g._snap
    if [r[0] for r in rows] != s.ids.tolist():
        problems.append(f"{len(rows)} rows in the file, {s.n} in memory (another process wrote: refresh())")
        return problems
    for (row_id, name, blob), mem_name, vec in zip(rows, s.names[:s.n], s.matrix):
        try:
            stored = g.stored_template(row_id, name, blob)
        except GalleryError as e:
            problems.append(str(e))
            continue
        if name != mem_name or not np.allclose(stored / max(np.linalg.norm(stored), 1e-12), vec, atol=1e-6):
            problems.append(f"row {row_id}: memory and file differ")
    return problems


def _sqlite_check(path: Path) -> tuple[dict[str, str], int]:
    """``(meta, rows)`` of a gallery file opened read-only after SQLite's integrity check passes."""
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            ok = db.execute("PRAGMA integrity_check").fetchone()[0]
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            n = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise GalleryError(f"{path}: not a LookThrough gallery file ({e})") from None
    if ok != "ok":
        raise GalleryError(f"{path}: fails SQLite's integrity check ({ok})")
    if "model_id" not in meta or "dim" not in meta:
        raise GalleryError(f"{path}: not a LookThrough gallery file (no model_id / dim)")
    return meta, n


def backup(g: Gallery, dest: str | Path, overwrite: bool = False) -> Path:
    """Write a consistent copy of ``g`` to ``dest`` (mode 0600; encrypted templates stay encrypted).

    Raises:
        GalleryError: ``dest`` exists (without ``overwrite``), is the gallery itself, or the copy fails.
    """
    dest = Path(dest)
    if g.path is not None and dest.resolve() == g.path.resolve():
        raise GalleryError(f"backup {dest}: that is the gallery itself")
    if dest.exists() and not overwrite:
        raise GalleryError(f"backup {dest} exists (overwrite=True / --force replaces it)")
    if not dest.parent.is_dir():
        raise GalleryError(f"backup {dest}: folder {dest.parent} does not exist")
    tmp = dest.with_name(dest.name + ".partial")
    tmp.unlink(missing_ok=True)
    create_private_file(tmp)
    try:
        with g._locked_db() as db:
            out = sqlite3.connect(str(tmp))
            try:
                db.backup(out)
                out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                out.close()
        _sqlite_check(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    log.info("backed up gallery %s to %s", g.path or ":memory:", dest)
    return dest


def restore(source: str | Path, target: str | Path, force: bool = False) -> dict[str, Any]:
    """Replace the gallery ``target`` (created if missing) by the backup ``source``, in one transaction.

    Refuses a source that is not a healthy gallery, and (without ``force``) a target of another embedding model.
    Returns ``{"model_id", "dim", "rows"}`` of the restored gallery.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise GalleryError(f"restore: no backup file {source}")
    if target.exists() and source.resolve() == target.resolve():
        raise GalleryError(f"restore: {source} is the target itself")
    meta, n = _sqlite_check(source)
    if target.exists() and target.stat().st_size > 0:
        model_id, dim = read_header(target)
        if (model_id, str(dim)) != (meta["model_id"], meta["dim"]) and not force:
            raise GalleryError(f"restore: {target} belongs to model {model_id!r} (dim {dim}), the backup to "
                               f"{meta['model_id']!r} (dim {meta['dim']}); --force replaces it anyway")
    elif not target.parent.is_dir():
        raise GalleryError(f"restore: folder {target.parent} does not exist")
    create_private_file(target)
    try:
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
        dst = sqlite3.connect(str(target), isolation_level=None)
        try:
            dst.execute("PRAGMA busy_timeout=10000")
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")
            ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            src.close()
            dst.close()
    except sqlite3.Error as e:
        raise GalleryError(f"restore {source} -> {target} failed ({e}); the target is unchanged") from None
    if ok != "ok":
        raise GalleryError(f"restore: {target} fails SQLite's integrity check after the copy ({ok})")
    log.info("restored %s (%d rows) into %s", source, n, target)
    return {"model_id": meta["model_id"], "dim": int(meta["dim"]), "rows": n}


def export_rows(g: Gallery, out: str | Path, overwrite: bool = False) -> int:
    """Write every stored template of ``g`` to ``out`` as JSON lines (mode 0600); returns the number of rows.

    The templates are written as stored: an encrypted gallery's export stays encrypted under its key.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise GalleryError(f"export {out} exists (overwrite=True / --force replaces it)")
    with g._locked_db() as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        rows = db.execute("SELECT name, embedding, source, created FROM entries ORDER BY id").fetchall()
    header = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model_id": g.model_id, "dim": g.dim,
              "rows": len(rows), "exported": time.time(), "cipher": meta.get("cipher", ""),
              "salt": meta.get("salt", ""), "key_check": meta.get("key_check", "")}
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    create_private_file(tmp)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for name, blob, src, created in rows:
            f.write(json.dumps({"name": name, "template": base64.b64encode(blob).decode("ascii"),
                                "source": src, "created": created}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return len(rows)


def _read_export(path: Path, key: str | None) -> tuple[dict[str, Any], list[str], np.ndarray, list, list]:
    """Validated ``(header, names, templates (N, dim), sources, created)`` of an export file."""
    if not path.is_file():
        raise GalleryError(f"import: no such file {path}")
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            header = json.loads(f.readline())
        except (ValueError, RecursionError) as e:
            raise GalleryError(f"import {path}: not a gallery export (first line is not JSON: {e})") from None
        if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
            raise GalleryError(f"import {path}: not a gallery export (format must be {EXPORT_FORMAT!r})")
        if header.get("version") != EXPORT_VERSION:
            raise GalleryError(f"import {path}: export version {header.get('version')!r} is not supported")
        dim, model_id = header.get("dim"), header.get("model_id")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536 or not isinstance(model_id, str):
            raise GalleryError(f"import {path}: header needs a model_id string and a dim in [1, 65536]")
        cipher = None
        if header.get("cipher"):
            if key is None:
                raise GalleryError(f"import {path}: the export is encrypted: set the key in $LOOKTHROUGH_GALLERY_KEY")
            cipher = TemplateCipher(key, decode_salt(header.get("salt", "")))
            if not cipher.matches(str(header.get("key_check", ""))):
                raise GalleryError(f"import {path}: wrong key: $LOOKTHROUGH_GALLERY_KEY does not decrypt this export")
        names, vecs, sources, created = [], [], [], []
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, blob = row["name"], base64.b64decode(row["template"], validate=True)
                src, t = row.get("source"), float(row.get("created", time.time()))
            except (ValueError, KeyError, TypeError, RecursionError, AttributeError) as e:
                raise GalleryError(f"import {path}: line {lineno} is not a template row ({type(e).__name__}: {e})") from None
            if not isinstance(name, str) or (src is not None and not isinstance(src, str)):
                raise GalleryError(f"import {path}: line {lineno}: name must be a string")
            if cipher is not None:
                blob = cipher.decrypt(blob, name.encode("utf-8"))
                if blob is None:
                    raise GalleryError(f"import {path}: line {lineno} ({name!r}) does not decrypt: altered or moved")
            if len(blob) != 4 * dim:
                raise GalleryError(f"import {path}: line {lineno}: template has {len(blob)} bytes, expected {4 * dim}")
            names.append(name)
            vecs.append(np.frombuffer(blob, np.float32))
            sources.append(src)
            created.append(t)
    if header.get("rows") is not None and header.get("rows") != len(names):
        raise GalleryError(f"import {path}: the header announces {header.get('rows')} rows, the file has {len(names)}"
                           " (truncated?)")
    mat = np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)
    return header, names, mat, sources, created


def import_rows(path: str | Path, target: str | Path | Gallery, skip_existing: bool = False) -> dict[str, int]:
    """Add every template of the export ``path`` to ``target`` (a gallery, or a file: created for the export's
    model if missing) in one transaction; nothing is written if any row is invalid.

    ``skip_existing`` leaves out names the gallery already has. Returns ``{"rows", "identities", "skipped"}``.
    """
    header, names, mat, sources, created = _read_export(Path(path), key_from_env())
    own = not isinstance(target, Gallery)
    g = Gallery(target, header["model_id"], header["dim"]) if own else target
    try:
        if (g.model_id, g.dim) != (header["model_id"], header["dim"]):
            raise GalleryError(f"import {path}: the export is from model {header['model_id']!r} (dim {header['dim']}), "
                               f"the gallery from {g.model_id!r} (dim {g.dim})")
        keep = [i for i, nm in enumerate(names) if not (skip_existing and g.count(nm))]
        if keep:
            g.add_many([names[i] for i in keep], mat[keep], [sources[i] for i in keep], [created[i] for i in keep])
        return {"rows": len(keep), "identities": len({names[i] for i in keep}), "skipped": len(names) - len(keep)}
    finally:
        if own:
            g.close()
