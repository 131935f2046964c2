"""Operator side of the gallery: backup / restore, export / import, check, and `python -m sdk gallery ...`."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys

import numpy as np
import pytest

from sdk.errors import GalleryError
from sdk.gallery import Gallery
from sdk.gallery_admin import backup, export_rows, identities, import_rows, integrity_check, restore


def unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def people(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "people.db"
    with Gallery(path, "model-A", 16, key=None) as g:
        g.add("alice", unit(rng, 3), ["a1.jpg", "a2.jpg", "a3.jpg"])
        g.add("bob", unit(rng, 2))
        matrix = g.matrix
    return path, matrix


def cli(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "LOOKTHROUGH_GALLERY_KEY"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "sdk", *args], capture_output=True, text=True, timeout=120, env=e)


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_backup_restore_roundtrip(people, tmp_path):
    path, matrix = people
    with Gallery(path, "model-A", 16, key=None) as g:
        dest = backup(g, tmp_path / "bak.db")
        assert mode(dest) == 0o600 and not (tmp_path / "bak.db.partial").exists()
        with pytest.raises(GalleryError, match="exists"):
            backup(g, dest)
        with pytest.raises(GalleryError, match="the gallery itself"):
            backup(g, path, overwrite=True)
        g.add("carol", unit(np.random.default_rng(5), 1))
        g.remove("alice")
    assert restore(dest, path) == {"model_id": "model-A", "dim": 16, "rows": 5}
    with Gallery(path, "model-A", 16, key=None) as g:
        assert g.names == ["alice", "bob"] and integrity_check(g) == []
        np.testing.assert_array_equal(g.matrix, matrix)
    # a restore into a missing file creates it (0600); a running gallery sees it after refresh()
    fresh = tmp_path / "fresh.db"
    restore(dest, fresh)
    assert mode(fresh) == 0o600 and Gallery(fresh, "model-A", 16, key=None).names == ["alice", "bob"]


def test_restore_refuses_bad_backups_and_foreign_targets(people, tmp_path):
    path, _ = people
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    with pytest.raises(GalleryError, match="junk.db"):
        restore(junk, path)
    other = tmp_path / "other.db"
    Gallery(other, "model-B", 16, key=None).close()
    with pytest.raises(GalleryError, match="model-B"):
        restore(other, path)
    with pytest.raises(GalleryError, match="no backup file"):
        restore(tmp_path / "missing.db", path)
    with Gallery(path, "model-A", 16, key=None) as g:  # the refused restores changed nothing
        assert g.names == ["alice", "bob"]
    restore(other, path, force=True)
    with pytest.raises(GalleryError, match="model-B"):
        Gallery(path, "model-A", 16, key=None)


def test_export_import(people, tmp_path):
    path, matrix = people
    out = tmp_path / "x.jsonl"
    with Gallery(path, "model-A", 16, key=None) as g:
        assert export_rows(g, out) == 5
    assert mode(out) == 0o600
    header = json.loads(out.read_text().splitlines()[0])
    assert header["model_id"] == "model-A" and header["rows"] == 5 and not header["cipher"]
    assert import_rows(out, tmp_path / "copy.db") == {"rows": 5, "identities": 2, "skipped": 0}
    with Gallery(tmp_path / "copy.db", "model-A", 16, key=None) as g:
        np.testing.assert_allclose(g.matrix, matrix, atol=1e-6)
        assert [r["embeddings"] for r in identities(g)] == [3, 2]
        assert import_rows(out, g, skip_existing=True)["skipped"] == 5 and len(g) == 5
    # a damaged or truncated export writes nothing
    lines = out.read_text().splitlines()
    for bad, words in [(lines[:-1], "truncated"), (lines[:2] + ["{not json"] + lines[3:], "line 3"),
                       (["{}"] + lines[1:], "not a gallery export")]:
        out.write_text("\n".join(bad) + "\n")
        with pytest.raises(GalleryError, match=words):
            import_rows(out, tmp_path / "copy.db")
    with Gallery(tmp_path / "copy.db", "model-A", 16, key=None) as g:
        assert len(g) == 5
    with pytest.raises(GalleryError, match="model-A"):
        out.write_text("\n".join(lines) + "\n")
        import_rows(out, Gallery(tmp_path / "b.db", "model-B", 16, key=None))


def test_check_finds_a_damaged_row(people):
    path, _ = people
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET embedding = ? WHERE id = 2", (b"\x00" * 12,))
    db.commit()
    db.close()
    with pytest.raises(GalleryError, match="dimension"):
        Gallery(path, "model-A", 16, key=None)
    r = cli("gallery", "check", "--gallery", str(path))
    assert r.returncode == 1 and "problem:" in r.stdout and "dimension" in r.stdout and "FAILED" in r.stdout


def test_cli_list_remove_export_import_backup_restore(people, tmp_path):
    path, _ = people
    r = cli("gallery", "list", "--gallery", str(path))
    assert r.returncode == 0, r.stderr
    assert "alice" in r.stdout and "2 identities, 5 embeddings" in r.stdout and "model-A" in r.stdout
    r = cli("gallery", "list", "--gallery", str(path), "--json")
    people_json = json.loads(r.stdout)["people"]
    assert [(p["name"], p["embeddings"]) for p in people_json] == [("alice", 3), ("bob", 2)]
    r = cli("gallery", "backup", "--gallery", str(path), str(tmp_path / "b.db"))
    assert r.returncode == 0 and "5 embeddings" in r.stdout
    r = cli("gallery", "export", "--gallery", str(path), str(tmp_path / "e.jsonl"))
    assert r.returncode == 0 and "NOT encrypted" in r.stdout
    r = cli("gallery", "remove", "--gallery", str(path), "alice", "zed")
    assert r.returncode == 1 and "removed 3 embeddings of 'alice'" in r.stdout and "'zed' is not enrolled" in r.stdout
    r = cli("gallery", "check", "--gallery", str(path))
    assert r.returncode == 0 and r.stdout.startswith("ok: 2 embeddings")
    r = cli("gallery", "restore", "--gallery", str(path), str(tmp_path / "b.db"))
    assert r.returncode == 0 and "restored 5 embeddings" in r.stdout
    r = cli("gallery", "import", "--gallery", str(tmp_path / "new.db"), str(tmp_path / "e.jsonl"))
    assert r.returncode == 0 and "imported 5 templates of 2 identities" in r.stdout
    r = cli("gallery", "list", "--gallery", str(tmp_path / "missing.db"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = cli("gallery", "--help")
    assert r.returncode == 0 and all(w in r.stdout for w in ("list", "remove", "export", "import", "backup", "restore"))


def test_cli_encrypt_decrypt(people, tmp_path):
    path, matrix = people
    key = {"LOOKTHROUGH_GALLERY_KEY": "correct horse battery staple"}
    r = cli("gallery", "list", "--gallery", str(path), env=key)
    assert r.returncode == 2 and "not encrypted but a key is set" in r.stderr
    r = cli("gallery", "encrypt", "--gallery", str(path), env=key)
    assert r.returncode == 0 and "encrypted 5 templates" in r.stdout
    r = cli("gallery", "list", "--gallery", str(path))
    assert r.returncode == 2 and "is encrypted" in r.stderr
    r = cli("gallery", "list", "--gallery", str(path), env={"LOOKTHROUGH_GALLERY_KEY": "wrong"})
    assert r.returncode == 2 and "wrong key" in r.stderr
    r = cli("gallery", "export", "--gallery", str(path), str(tmp_path / "e.jsonl"), env=key)
    assert r.returncode == 0 and "encrypted" in r.stdout
    r = cli("gallery", "import", "--gallery", str(tmp_path / "n.db"), str(tmp_path / "e.jsonl"))
    assert r.returncode == 2 and "export is encrypted" in r.stderr
    r = cli("gallery", "decrypt", "--gallery", str(path), env=key)
    assert r.returncode == 0 and "decrypted 5" in r.stdout
    with Gallery(path, "model-A", 16, key=None) as g:
        np.testing.assert_array_equal(g.matrix, matrix)


def test_cli_index(people):
    pytest.importorskip("faiss")
    path, _ = people
    r = cli("gallery", "index", "--gallery", str(path), "hnsw", "--ef-search", "64")
    assert r.returncode == 0 and "active now: hnsw" in r.stdout, r.stderr
    with Gallery(path, "model-A", 16, key=None) as g:  # recorded in the file
        assert g.index == "hnsw" and g._snap.ann.params.ef_search == 64
    r = cli("gallery", "index", "--gallery", str(path), "hnsw", "--ef-search", "0")
    assert r.returncode == 2 and "ef_search" in r.stderr
