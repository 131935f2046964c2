"""The approximate (FAISS HNSW) gallery index behind the same search API: agrees with exact search, forgets removed
people, rebuilds, switches automatically, persists its setting. Skipped cleanly without faiss-cpu."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

import sdk.gallery as gallery_mod  # noqa: E402
from sdk.ann import HnswParams  # noqa: E402
from sdk.errors import GalleryError  # noqa: E402
from sdk.gallery import Gallery  # noqa: E402


def people(n_ids, per_id=3, d=64, noise=0.35, seed=0):
    """Identity-structured unit vectors (a centre per person + photo noise) and one fresh probe per person."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d)).astype(np.float32)

    def around(c, k):
        x = c[:, None, :] + noise * rng.normal(size=(len(c), k, d)).astype(np.float32) * np.sqrt(1 / d) * 8
        x = x.reshape(-1, d)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return around(centres, per_id), around(centres, 1)


def test_hnsw_matches_exact_search():
    rows, probes = people(2000)
    names = [f"p{i}" for i in range(2000) for _ in range(3)]
    exact = Gallery(None, "m", 64)
    exact.add_many(names, rows)
    ann = Gallery(None, "m", 64, index="hnsw")
    ann.add_many(names, rows)
    assert ann.index_active == "hnsw" and exact.index_active == "exact"
    e, a = exact.search(probes, 5), ann.search(probes, 5)
    top1 = np.mean([x[0].name == y[0].name for x, y in zip(e, a)])
    assert top1 >= 0.99, f"recall@1 vs exact {top1:.3f}"
    same = [(x[0].name, round(x[0].similarity, 5)) == (y[0].name, round(y[0].similarity, 5)) for x, y in zip(e, a)]
    assert np.mean(same) >= 0.99  # HNSW's scores are exact inner products of the rows it finds
    assert all(len(h) == 5 and len({x.name for x in h}) == 5 for h in a)


def test_removed_people_are_never_returned_and_the_index_rebuilds():
    rows, probes = people(400, per_id=2, seed=1)
    names = [f"p{i}" for i in range(400) for _ in range(2)]
    g = Gallery(None, "m", 64, index="hnsw")
    g.add_many(names, rows)
    first = g._snap.ann
    for i in range(0, 80):
        g.remove(f"p{i}")
    assert g._snap.ann is first and 0 < first.dead_fraction <= 0.25  # tombstones, no rebuild yet
    hits = g.search(probes[:80], 3)
    assert all(h.name not in {f"p{i}" for i in range(80)} for row in hits for h in row)
    for i in range(80, 130):
        g.remove(f"p{i}")
    rebuilt = g._snap.ann  # rebuilt once more than 25% of the entries were dead
    assert rebuilt is not first and len(g) == 540 and len(rebuilt) * (1 - rebuilt.dead_fraction) == 540
    assert [h[0].name for h in g.search(probes[130:], 1)] == [f"p{i}" for i in range(130, 400)]
    g.add("new", probes[0])
    assert g.search(probes[0], 1)[0][0].name == "new"


def test_auto_switches_at_the_threshold(monkeypatch):
    monkeypatch.setattr(gallery_mod, "AUTO_MIN_ROWS", 300)
    rows, probes = people(200, per_id=2, seed=2)
    names = [f"p{i}" for i in range(200) for _ in range(2)]
    g = Gallery(None, "m", 64, index="auto")
    g.add_many(names[:200], rows[:200])
    assert g.index_active == "exact"
    g.add_many(names[200:], rows[200:])
    assert g.index_active == "hnsw" and g.search(probes[150], 1)[0][0].name == "p150"
    for i in range(130):  # below half the threshold: back to exact
        g.remove(f"p{i}")
    assert g.index_active == "exact" and len(g) == 140


def test_index_setting_is_persisted(tmp_path):
    rows, _ = people(50, seed=3)
    path = tmp_path / "g.db"
    with Gallery(path, "m", 64, key=None) as g:
        g.add_many([f"p{i // 3}" for i in range(150)], rows)
        g.set_index("hnsw", HnswParams(m=16, ef_construction=40, ef_search=32))
    with Gallery(path, "m", 64, key=None) as g:  # e.g. a Recognizer opening it: no argument needed
        assert g.index == "hnsw" and g.index_active == "hnsw" and g._snap.ann.params.m == 16
    with Gallery(path, "m", 64, key=None, index="exact") as g:  # an explicit argument wins, not persisted
        assert g.index_active == "exact"
    with pytest.raises(GalleryError, match="unknown gallery index"):
        Gallery(path, "m", 64, key=None, index="lsh")
    with pytest.raises(GalleryError, match="ef_search"):
        HnswParams(ef_search=0)
