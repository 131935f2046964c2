"""Biometric data at rest: AES-GCM templates with a key from the environment, 0600 files, nothing logged."""
from __future__ import annotations

import logging
import os
import sqlite3
import stat

import numpy as np
import pytest

from sdk.errors import GalleryError
from sdk.gallery import Gallery

KEY = "correct horse battery staple"


def unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_new_gallery_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        g = Gallery(tmp_path / "g.db", "m", 16, key=None)
        g.add("alice", unit(np.random.default_rng(0), 2))
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["g.db", "g.db-shm", "g.db-wal"]
        for p in tmp_path.iterdir():  # SQLite gives the WAL and shared-memory files the database's mode
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        g.close()
    finally:
        os.umask(old)


def test_encrypted_gallery_roundtrip_and_wrong_key(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    a = unit(rng, 3)
    path = tmp_path / "g.db"
    monkeypatch.setenv("LOOKTHROUGH_GALLERY_KEY", KEY)
    with Gallery(path, "m", 16) as g:
        assert g.encrypted
        g.add("alice", a)
    raw = path.read_bytes() + (tmp_path / "g.db-wal").read_bytes() if (tmp_path / "g.db-wal").exists() else path.read_bytes()
    for row in a:  # the plaintext floats are nowhere in the file
        assert row.tobytes()[:16] not in raw
    meta = dict(sqlite3.connect(path).execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == "2" and meta["cipher"] == "aes256gcm-scrypt"
    with Gallery(path, "m", 16) as g:
        np.testing.assert_allclose(g.matrix, a, atol=1e-6)
        assert g.search(a[1], 1)[0][0].name == "alice"
    monkeypatch.setenv("LOOKTHROUGH_GALLERY_KEY", "not the key")
    with pytest.raises(GalleryError, match="wrong key"):
        Gallery(path, "m", 16)
    monkeypatch.delenv("LOOKTHROUGH_GALLERY_KEY")
    with pytest.raises(GalleryError, match="is encrypted.*LOOKTHROUGH_GALLERY_KEY"):
        Gallery(path, "m", 16)
    with pytest.raises(GalleryError, match="wrong key"):
        Gallery(path, "m", 16, key="also wrong")


def test_plain_gallery_with_a_key_set_is_refused_not_silently_mixed(tmp_path, monkeypatch):
    path = tmp_path / "g.db"
    with Gallery(path, "m", 16, key=None) as g:
        g.add("alice", unit(np.random.default_rng(2), 1))
    monkeypatch.setenv("LOOKTHROUGH_GALLERY_KEY", KEY)
    with pytest.raises(GalleryError, match="not encrypted but a key is set.*gallery encrypt"):
        Gallery(path, "m", 16)
    with Gallery(path, "m", 16, key=None) as g:  # encrypt in place, then it opens with the key
        g.set_key(KEY)
    with Gallery(path, "m", 16) as g:
        assert g.encrypted and g.names == ["alice"]
        g.set_key("a new key")  # rotation
    with pytest.raises(GalleryError, match="wrong key"):
        Gallery(path, "m", 16)
    with Gallery(path, "m", 16, key="a new key") as g:
        assert g.names == ["alice"]


def test_tampered_or_moved_rows_do_not_decrypt(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "g.db"
    with Gallery(path, "m", 16, key=KEY) as g:
        g.add("alice", unit(rng, 1))
        g.add("bob", unit(rng, 1))
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET name = 'bob' WHERE name = 'alice'")  # an attacker relabels alice's template
    db.commit()
    with pytest.raises(GalleryError, match="does not decrypt"):
        Gallery(path, "m", 16, key=KEY)
    db.execute("UPDATE entries SET name = 'alice' WHERE id = 1")
    blob = bytearray(db.execute("SELECT embedding FROM entries WHERE id = 2").fetchone()[0])
    blob[-1] ^= 1
    db.execute("UPDATE entries SET embedding = ? WHERE id = 2", (bytes(blob),))
    db.commit()
    db.close()
    with pytest.raises(GalleryError, match="row 2 .*does not decrypt"):
        Gallery(path, "m", 16, key=KEY)


def test_in_memory_gallery_ignores_the_key(monkeypatch):
    monkeypatch.setenv("LOOKTHROUGH_GALLERY_KEY", KEY)
    g = Gallery(None, "m", 16)
    assert not g.encrypted
    with pytest.raises(GalleryError, match="in-memory"):
        g.set_key(KEY)


def test_templates_are_never_logged(tmp_path, caplog, recognizer, astronaut_bgr):
    """Debug logging of a whole enroll / identify / gallery session shows no template values."""
    from sdk.gallery_admin import backup, export_rows

    caplog.set_level(logging.DEBUG)
    emb = recognizer.embed_largest(astronaut_bgr)
    g = Gallery(tmp_path / "g.db", recognizer.gallery.model_id, recognizer.gallery.dim, key=KEY)
    g.add("astronaut", emb[None])
    g.search(emb, 3)
    backup(g, tmp_path / "b.db")
    export_rows(g, tmp_path / "e.jsonl")
    with pytest.raises(GalleryError) as e:
        g.add("x", np.full((1, g.dim), np.nan))
    recognizer.identify(astronaut_bgr)
    text = caplog.text + repr(g) + str(e.value) + repr(recognizer.gallery)
    assert "astronaut" in caplog.text or caplog.records, "nothing was logged: the check would be empty"
    for v in emb[:16]:
        for s in (f"{v:.6f}", repr(float(v))[:9], repr(np.float32(v))[:9]):
            assert s not in text, f"template value {s} was logged"
