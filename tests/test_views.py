"""Mask-aware matching (issue #9, item 4; ``sdk/views.py``): the upper-face view, the two-view templates and the
queries that score a clean probe on the full face and an occluded one on both views, in the SDK, the gallery
search, the evaluation and the calibration alike."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sdk import views
from sdk.bundle import load_bundle
from sdk.errors import BundleError, GalleryError
from sdk.recognizer import Recognizer
from sdk.views import MaskAwareConfig


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_upper_view_paints_below_the_cut_and_keeps_the_rest():
    chips = np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)
    lm = np.array([[50, 60], [100, 60], [75, 90], [55, 110], [95, 110]], np.float32)
    lms = np.stack([lm, lm + [0, 10]])
    cfg = MaskAwareConfig(upper_cut=0.5, fill=77)
    out = views.upper_view(chips, lms, cfg)
    assert out.shape == chips.shape and out.dtype == np.uint8
    # cut = eyes_y + 0.5 * (nose_y - eyes_y): 75 for the first chip, 85 for the second
    for i, cut in enumerate((75, 85)):
        np.testing.assert_array_equal(out[i, :cut], chips[i, :cut])
        assert (out[i, cut:] == 77).all()
    assert not (chips[:, 100:] == 77).all()  # the input is not modified
    with_nan = views.upper_view(chips[:1], np.full((1, 5, 2), np.nan, np.float32), cfg)
    np.testing.assert_array_equal(with_nan, chips[:1])  # no landmarks, no cut


def test_chip_landmarks_follow_the_matrix():
    m = np.array([[2.0, 0.0, 5.0], [0.0, 2.0, -3.0]])
    lm = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_allclose(views.chip_landmarks(lm, m), lm * 2 + [5, -3])


def test_templates_and_queries_give_the_documented_scores():
    rng = np.random.default_rng(1)
    f, u, f2, u2 = (_unit(rng, 6, 16) for _ in range(4))
    cfg = MaskAwareConfig(occluded_weight=0.3)
    t, t2 = views.templates(f, u), views.templates(f2, u2)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-6)
    rf, ru = views.split(t)
    np.testing.assert_allclose(rf, f, atol=1e-6)
    np.testing.assert_allclose(ru, u, atol=1e-6)
    occ = np.array([0, 1, 0, 1, 1, 0], bool)
    s = np.einsum("nd,nd->n", views.queries(t, occ, cfg), t2)
    want = np.where(occ, 0.7 * (f * f2).sum(1) + 0.3 * (u * u2).sum(1), (f * f2).sum(1))
    np.testing.assert_allclose(s, want, atol=1e-6)
    # a pair scores the same whichever face is the probe, and clean pairs are plain full-face cosines
    ps = views.pair_scores(t, t2, occ, np.zeros(6, bool), cfg)
    np.testing.assert_allclose(ps, views.pair_scores(t2, t, np.zeros(6, bool), occ, cfg), atol=1e-6)
    np.testing.assert_allclose(ps, want, atol=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        views.queries(t, occ[:3], cfg)
    with pytest.raises(ValueError, match="both be"):
        views.templates(f, u[:2])


@pytest.mark.parametrize("block, msg", [
    ({"upper_cut": 2.0}, "upper_cut"), ({"fill": 300}, "fill"), ({"fill": 1.5}, "fill"),
    ({"occluded_weight": -0.1}, "occluded_weight"), ({"cut": 0.8}, "unknown keys"), ([0.8], "must be an object"),
])
def test_bad_mask_aware_blocks_are_refused(manifest_copy, block, msg):
    folder, raw = manifest_copy("maskaware-v1")
    raw["match"]["mask_aware"] = block
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=msg):
        load_bundle(folder)


def test_maskaware_bundle_matches_clean_faces_like_its_full_face_twin(astronaut_bgr, masked_astronaut_bgr):
    ma, full = Recognizer("maskaware-v1"), Recognizer("default-v1")
    assert ma.mask_aware == MaskAwareConfig(upper_cut=0.8, fill=128, occluded_weight=0.75)
    assert ma.template_dim == 2 * full.template_dim and ma.template_id.startswith(full.template_id + "+upper")
    for rec in (ma, full):
        rec.enroll("astronaut", astronaut_bgr)
    probe = np.ascontiguousarray(astronaut_bgr[:, ::-1])
    [a], [b] = ma.identify(probe), full.identify(probe)
    assert a.operating_point == b.operating_point == "clean"
    assert a.similarity == pytest.approx(b.similarity, abs=1e-5)  # clean probes: the full-face cosine, unchanged
    # an occluded probe is scored 0.25 full + 0.75 upper view, computed here by hand from the two views
    [m] = ma.identify(masked_astronaut_bgr)
    assert m.operating_point == "probe_occluded" and m.identity == "astronaut"
    g_full, g_up = views.split(ma.gallery.matrix[:1])
    p_full, p_up = views.split(ma.embed_faces(masked_astronaut_bgr, ma.detect(masked_astronaut_bgr)[:1]))
    want = 0.25 * float(g_full[0] @ p_full[0]) + 0.75 * float(g_up[0] @ p_up[0])
    assert m.similarity == pytest.approx(want, abs=1e-5)
    [mf] = full.identify(masked_astronaut_bgr)
    assert mf.similarity == pytest.approx(float(g_full[0] @ p_full[0]), abs=1e-5)
    v = ma.verify(astronaut_bgr, masked_astronaut_bgr)
    assert v.operating_point == "probe_occluded" and v.similarity == pytest.approx(want, abs=1e-5)


def test_galleries_of_full_face_and_mask_aware_bundles_do_not_mix(tmp_path, astronaut_bgr):
    path = tmp_path / "people.db"
    with Recognizer("default", gallery=path) as rec:
        rec.enroll("astronaut", astronaut_bgr)
    with pytest.raises(GalleryError, match="model|dim"):
        Recognizer("maskaware-v1", gallery=path)
    assert len(Recognizer("default", gallery=path).gallery) == 1  # nothing lost


def test_calibration_and_evaluation_score_pairs_as_the_sdk_does():
    from trainer.calibrate import calibrate_states, state_pair_scores
    from trainer.evaluate import bundle_pair_scores

    rng = np.random.default_rng(2)
    n, d = 40, 8
    ids = [f"p{i // 2}" for i in range(n)]
    cfg = MaskAwareConfig(occluded_weight=0.5)
    clean = views.templates(_unit(rng, n, d), _unit(rng, n, d))
    occl = views.templates(_unit(rng, n, d), _unit(rng, n, d))
    pairs = state_pair_scores(clean, occl, ids, cfg)
    i, j = 3, 10  # (clean i) vs (occluded j): the probe_occluded scores, row-major over i != j
    k = i * (n - 1) + (j - 1)
    assert pairs["probe_occluded"][0][k] == pytest.approx(
        float(views.pair_scores(clean[i:i + 1], occl[j:j + 1], [False], [True], cfg)[0]), abs=1e-6)
    assert pairs["clean"][0][0] == pytest.approx(
        float(bundle_pair_scores(clean[:1], clean[1:2], False, False, cfg)[0]), abs=1e-6)
    both = bundle_pair_scores(occl[:1], occl[1:2], True, True, cfg)[0]
    assert pairs["both_occluded"][0][0] == pytest.approx(float(both), abs=1e-6)
    # per-pair occlusion flags (the evaluation's --occlusion predicted) give each pair its own state's score
    flags_a, flags_b = np.array([False, True, False]), np.array([True, True, False])
    mixed = bundle_pair_scores(occl[:3], occl[3:6], flags_a, flags_b, cfg)
    for k in range(3):
        assert mixed[k] == pytest.approx(float(bundle_pair_scores(occl[k:k + 1], occl[3 + k:4 + k], flags_a[k],
                                                                  flags_b[k], cfg)[0]), abs=1e-9)
    states = calibrate_states(clean, occl, ids, 0.05, cfg)
    assert set(states) == {"clean", "probe_occluded", "both_occluded"}
