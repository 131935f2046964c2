import sqlite3

import numpy as np
import pytest

from sdk.errors import GalleryError
from sdk.gallery import Gallery


def unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_roundtrip_through_sqlite(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "g.db"
    a, b = unit(rng, 3), unit(rng, 2)
    with Gallery(path, "model-A", 16) as g:
        assert g.add("alice", a, ["a1", "a2", "a3"]) == 3
        assert g.add("bob", b) == 2
    with Gallery(path, "model-A", 16) as g2:
        assert len(g2) == 5 and g2.names == ["alice", "bob"] and g2.count("alice") == 3
        np.testing.assert_allclose(g2.matrix, np.concatenate([a, b]), atol=1e-6)
        hits = g2.search(b[1:2], k=2)[0]
        assert hits[0].name == "bob" and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert hits[1].name == "alice" and hits[1].similarity < hits[0].similarity
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_foreign_gallery_is_refused(tmp_path):
    path = tmp_path / "g.db"
    with Gallery(path, "model-A", 16) as g:
        g.add("alice", unit(np.random.default_rng(1), 1))
    with pytest.raises(GalleryError, match="model-A"):
        Gallery(path, "model-B", 16)
    with pytest.raises(GalleryError, match="dim"):
        Gallery(path, "model-A", 32)


def test_not_a_gallery_file(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(GalleryError, match="junk.db"):
        Gallery(junk, "m", 16)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(GalleryError, match="without LookThrough tables"):
        Gallery(other, "m", 16)


def test_failed_add_writes_nothing(tmp_path):
    path = tmp_path / "g.db"
    rng = np.random.default_rng(2)
    with Gallery(path, "m", 16) as g:
        g.add("alice", unit(rng, 2))
        bad = unit(rng, 3)
        bad[2, 0] = np.nan
        for args in [("bob", bad), ("bob", unit(rng, 2, d=8)), ("", unit(rng, 1)), ("bob", np.zeros((0, 16)))]:
            with pytest.raises(GalleryError):
                g.add(*args)
        assert len(g) == 2
    with Gallery(path, "m", 16) as g:
        assert len(g) == 2 and g.names == ["alice"]


def test_search_ranks_identities_by_their_best_row():
    rng = np.random.default_rng(3)
    g = Gallery(None, "m", 16)
    assert g.search(unit(rng, 1), 3) == [[]]
    target = unit(rng, 1)
    g.add("far", -target)
    for i in range(20):  # many rows of one identity must not crowd out the others
        g.add("many", unit(rng, 1))
    g.add("near", target * 0.9 + 0.1 * unit(rng, 1))
    hits = g.search(target, k=3)[0]
    assert [h.name for h in hits][0] == "near"
    assert len({h.name for h in hits}) == 3 and hits[-1].name == "far"
    assert g.remove("many") == 20 and len(g) == 2


def test_sources_length_mismatch():
    g = Gallery(None, "m", 4)
    with pytest.raises(GalleryError, match="sources"):
        g.add("x", np.ones((2, 4)), ["only-one"])
