"""Parity of the C++ top-k cosine search (sdk._core.topk_cosine) with kernels/search/reference.py."""
from __future__ import annotations


import numpy as np
import pytest

from sdk import _native
from sdk._native import core

from _kernel_refs import load_reference  # noqa: E402

ref = load_reference("search")

SCORE_TOL = 1e-5  # float32 accumulation vs the float64 reference


def _unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _check_against_reference(gallery, queries, k, idx, scores):
    n = gallery.shape[0]
    kk = min(k, n)
    assert idx.shape == (queries.shape[0], kk) and idx.dtype == np.int64
    assert scores.shape == (queries.shape[0], kk) and scores.dtype == np.float32
    want_idx, want_scores = ref.topk_cosine(gallery, queries, k)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=SCORE_TOL)
    if kk == 0:
        return
    exact = queries.astype(np.float64) @ gallery.astype(np.float64).T
    np.testing.assert_allclose(np.take_along_axis(exact, idx, 1), scores, rtol=0, atol=SCORE_TOL)
    for row in idx:
        assert len(set(row.tolist())) == kk
    # Where the reference ranking has no near-tie, the indices must agree exactly.
    full = -np.sort(-exact, axis=1)  # every score, descending
    gap = 1e-4
    for qi in range(queries.shape[0]):
        for i in range(kk):
            above = i == 0 or full[qi, i - 1] - full[qi, i] > gap
            below = i + 1 >= n or full[qi, i] - full[qi, i + 1] > gap
            if above and below:
                assert idx[qi, i] == want_idx[qi, i], (qi, i)


@pytest.mark.parametrize("n", [1, 7, 100, 3000])
@pytest.mark.parametrize("d", [1, 3, 17, 128, 512])
@pytest.mark.parametrize("q", [1, 5])
def test_topk_matches_reference_random(n, d, q):
    rng = np.random.default_rng(n * 1000 + d * 10 + q)
    gallery, queries = _unit_rows(rng, n, d), _unit_rows(rng, q, d)
    for k in (1, 5, 50):
        idx, scores = _native.topk_cosine(gallery, queries, k)
        _check_against_reference(gallery, queries, k, idx, scores)


@pytest.mark.parametrize("k", [100, 500, 999, 1000, 5000])
def test_topk_large_k_uses_full_selection(k):
    rng = np.random.default_rng(k)
    gallery, queries = _unit_rows(rng, 1000, 64), _unit_rows(rng, 3, 64)
    idx, scores = core.topk_cosine(gallery, queries, k)
    _check_against_reference(gallery, queries, k, idx, scores)


@pytest.mark.parametrize("k", [1, 3, 8, 40])
def test_topk_ties_prefer_lower_index(k):
    # Values are multiples of 1/4 with small D: every dot product is exact in float32, so the
    # ranking is fully determined and must equal the stable reference, duplicates included.
    rng = np.random.default_rng(k)
    base = rng.integers(-4, 5, (10, 8)).astype(np.float32) / 4
    gallery = np.concatenate([base, base[::-1], base, np.zeros((5, 8), np.float32)])
    queries = np.concatenate([rng.integers(-4, 5, (6, 8)).astype(np.float32) / 4,
                              np.zeros((1, 8), np.float32)])  # all-zero query: everything ties
    idx, scores = core.topk_cosine(gallery, queries, k)
    want_idx, want_scores = ref.topk_cosine(gallery, queries, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(idx[-1], np.arange(min(k, len(gallery))))


def test_topk_k_larger_than_n_and_empty_gallery():
    rng = np.random.default_rng(0)
    gallery, queries = _unit_rows(rng, 4, 16), _unit_rows(rng, 3, 16)
    idx, scores = core.topk_cosine(gallery, queries, 10)
    assert idx.shape == scores.shape == (3, 4)
    _check_against_reference(gallery, queries, 10, idx, scores)

    idx, scores = core.topk_cosine(np.zeros((0, 16), np.float32), queries, 5)
    assert idx.shape == scores.shape == (3, 0)
    assert idx.dtype == np.int64 and scores.dtype == np.float32

    idx, scores = core.topk_cosine(gallery, np.zeros((0, 16), np.float32), 5)
    assert idx.shape == scores.shape == (0, 4)


def test_topk_nan_rows_rank_last():
    rng = np.random.default_rng(1)
    gallery = _unit_rows(rng, 20, 8)
    gallery[[0, 5]] = np.nan
    queries = _unit_rows(rng, 2, 8)
    idx, scores = core.topk_cosine(gallery, queries, 20)
    assert set(idx[:, -2:].ravel().tolist()) == {0, 5}
    assert np.isnan(scores[:, -2:]).all() and np.isfinite(scores[:, :-2]).all()
    idx5, _ = core.topk_cosine(gallery, queries, 5)
    assert not np.isin(idx5, [0, 5]).any()


def test_topk_views_and_half_precision():
    rng = np.random.default_rng(2)
    wide = _unit_rows(rng, 300, 64)
    gallery = wide[:, ::2]                    # strided view: copied to contiguous
    queries = np.asfortranarray(_unit_rows(rng, 4, 32))
    idx, scores = _native.topk_cosine(gallery, queries, 7)
    idx_c, scores_c = _native.topk_cosine(np.ascontiguousarray(gallery), np.ascontiguousarray(queries), 7)
    np.testing.assert_array_equal(idx, idx_c)
    np.testing.assert_array_equal(scores, scores_c)
    idx_h, _ = _native.topk_cosine(gallery.astype(np.float16), queries.astype(np.float16), 7)
    assert idx_h.shape == (4, 7)


def test_topk_batched_equals_one_by_one_and_is_deterministic():
    # N large enough that the queries are processed in several chunks (score budget 2**24).
    rng = np.random.default_rng(3)
    gallery, queries = _unit_rows(rng, 900_000, 4), _unit_rows(rng, 20, 4)
    idx, scores = core.topk_cosine(gallery, queries, 6)
    for i in range(len(queries)):
        one_idx, one_scores = core.topk_cosine(gallery, queries[i: i + 1], 6)
        np.testing.assert_array_equal(idx[i], one_idx[0])
        np.testing.assert_array_equal(scores[i], one_scores[0])
    idx2, scores2 = core.topk_cosine(gallery, queries, 6)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(scores, scores2)


@pytest.mark.parametrize("gallery, queries, k, exc", [
    (np.zeros((5, 8), np.float64), np.zeros((1, 8), np.float32), 1, TypeError),
    (np.zeros((5, 8), np.float32), np.zeros((1, 8), np.float64), 1, TypeError),
    (np.zeros((5, 8), np.int32), np.zeros((1, 8), np.float32), 1, TypeError),
    ([[0.0] * 8] * 5, np.zeros((1, 8), np.float32), 1, TypeError),       # list -> float64
    (np.zeros((5, 8), np.float32), np.zeros(8, np.float32), 1, ValueError),  # 1-D queries
    (np.zeros((5, 8, 1), np.float32), np.zeros((1, 8), np.float32), 1, ValueError),
    (np.zeros((5, 8), np.float32), np.zeros((1, 4), np.float32), 1, ValueError),  # D mismatch
    (np.zeros((5, 0), np.float32), np.zeros((1, 0), np.float32), 1, ValueError),  # D = 0
    (np.zeros((5, 8), np.float32), np.zeros((1, 8), np.float32), 0, ValueError),  # k < 1
    (np.zeros((5, 8), np.float32), np.zeros((1, 8), np.float32), -3, ValueError),
])
def test_topk_bad_input(gallery, queries, k, exc):
    with pytest.raises(exc):
        core.topk_cosine(gallery, queries, k)


def test_topk_python_api_rejects_float_k():
    g = np.zeros((5, 8), np.float32)
    with pytest.raises(TypeError):
        _native.topk_cosine(g, g, 2.5)
