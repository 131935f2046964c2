"""Masked-face synthesis (trainer.data.synthesis): exact occlusion maps, face regions, determinism, templates.

Procedural occluders are always tested. Template checks run when LOOKTHROUGH_DATA points to the shared data
folder (the one holding ``mask_templates/``) or to the templates folder itself; otherwise they are skipped.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.data import CATEGORIES, MaskSynthesizer, SynthesisConfig, estimate_pose, estimate_yaw, load_templates

try:
    from sdk.align import ARCFACE_112
except ImportError:  # the C++ core is not built: same constant as sdk.align.ARCFACE_112
    ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                            [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)

ASTRONAUT_LM = np.array([[203, 101], [246, 103], [224, 128], [201, 139], [244, 141]], np.float64)


def _templates_dir() -> Path | None:
    root = os.environ.get("LOOKTHROUGH_DATA")
    if not root:
        return None
    for d in (Path(root) / "mask_templates", Path(root)):
        if (d / "anchors.cfg").is_file():
            return d
    return None


TEMPLATES = _templates_dir()
needs_templates = pytest.mark.skipif(TEMPLATES is None, reason="set LOOKTHROUGH_DATA to the data folder holding "
                                                                "mask_templates/ to run the template checks")


def _turned(lm: np.ndarray, amount: float) -> np.ndarray:
    """Landmarks of the same face turned sideways: the nose tip (and a little the mouth) moves by ``amount``
    eye distances towards the image-right (negative: left), the eyes stay."""
    lm = np.asarray(lm, np.float64).copy()
    e = np.linalg.norm(lm[1] - lm[0])
    lm[2, 0] += amount * e
    lm[3:, 0] += 0.3 * amount * e
    return lm


@pytest.fixture(scope="module")
def crop112(astronaut_bgr) -> np.ndarray:
    m, _ = cv2.estimateAffinePartial2D(ASTRONAUT_LM, ARCFACE_112.astype(np.float64))
    return cv2.warpAffine(astronaut_bgr, m, (112, 112))


@pytest.fixture(scope="module")
def faces(crop112, astronaut_bgr):
    """name -> (image, landmarks)."""
    arc = ARCFACE_112.astype(np.float64)
    return {"crop": (crop112, arc), "crop_left": (crop112, _turned(arc, -0.5)),
            "crop_right": (crop112, _turned(arc, 0.5)), "frame": (astronaut_bgr, ASTRONAUT_LM)}


@pytest.fixture(scope="module")
def synth() -> MaskSynthesizer:
    return MaskSynthesizer()


@pytest.fixture(scope="module")
def tsynth() -> MaskSynthesizer:
    if TEMPLATES is None:
        pytest.skip("LOOKTHROUGH_DATA not set")
    return MaskSynthesizer(SynthesisConfig(templates_dir=TEMPLATES, template_prob=1.0))


def _below_eyes(lm: np.ndarray, shape) -> tuple[np.ndarray, float, float]:
    """Per-pixel signed distance below the eye line (px), the eye distance, and the mouth's distance."""
    lm = np.asarray(lm, np.float64)
    eye_c, mouth_c = lm[:2].mean(0), lm[3:].mean(0)
    r = lm[1] - lm[0]
    e = float(np.linalg.norm(r))
    down = np.array([-r[1], r[0]]) / e
    if np.dot(down, mouth_c - eye_c) < 0:
        down = -down
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    v = (xx - eye_c[0]) * down[0] + (yy - eye_c[1]) * down[1]
    return v, e, float(np.dot(mouth_c - eye_c, down))


def _check_invariants(s, image, before, lm):
    assert np.array_equal(image, before), "input modified"
    assert np.array_equal(s.clean, before)
    assert s.masked.shape == image.shape and s.masked.dtype == np.uint8
    assert s.mask.shape == image.shape[:2] and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask).tolist()) <= {0, 1}
    assert s.mask.any(), f"empty M for {s.category} {s.kind}"
    changed = np.any(s.masked != s.clean, axis=2)
    assert not changed[s.mask == 0].any(), "pixels changed outside M"
    # M is what was painted: nearly all of it really changed (a painted pixel may equal the face by chance)
    assert changed[s.mask == 1].mean() > 0.9


def _check_region(s, lm):
    v, e, m = _below_eyes(lm, s.mask.shape)
    vm = v[s.mask == 1]
    kinds = s.kind.split("|")
    if s.category in ("simple", "complex", "human_body", "scarf") or (
            s.category == "hybrid" and not any(k.startswith("sunglasses") for k in kinds)):
        assert vm.min() >= -0.05 * e, f"{s.kind}: M reaches {vm.min():.1f} px above the eye line"
    if s.category in ("simple", "complex"):
        mouth = np.round(np.asarray(lm)[3:].mean(0)).astype(int)
        if 0 <= mouth[1] < s.mask.shape[0] and 0 <= mouth[0] < s.mask.shape[1]:
            assert s.mask[mouth[1], mouth[0]], f"{s.kind} does not cover the mouth"
    if s.category == "scarf":
        assert s.mask[-1].any(), "scarf does not reach the image bottom"
        assert vm.min() > 0.2 * e  # starts below the eyes, around the nose
    if s.category == "sunglasses":
        assert vm.max() < m, "sunglasses reach the mouth"
        assert abs(float(vm.mean())) < 0.2 * e, "sunglasses not centred on the eye line"
        for x, y in np.round(np.asarray(lm)[:2]).astype(int):
            assert s.mask[y, x], "an eye is not covered"
    if s.category == "hybrid" and any(k.startswith("sunglasses") for k in kinds):
        assert (vm < 0.1 * e).any() and (vm > 0.6 * m).any(), "hybrid should cover eyes and lower face"


@pytest.mark.parametrize("face", ["crop", "crop_left", "crop_right", "frame"])
@pytest.mark.parametrize("category", [c for c in CATEGORIES if c != "block"])
def test_every_category_paints_exactly_m_in_its_region(synth, faces, face, category):
    image, lm = faces[face]
    before = image.copy()
    for seed in range(4):
        s = synth(image, lm, seed, category)
        assert s.category == category
        _check_invariants(s, image, before, lm)
        _check_region(s, lm)


@pytest.mark.parametrize("face", ["crop", "frame"])
def test_block_is_an_exact_white_square(synth, faces, face):
    image, lm = faces[face]
    h, w = image.shape[:2]
    m = int(round(48 / 128 * min(h, w)))
    for seed in range(5):
        s = synth(image, lm, seed, "block")
        assert s.kind == f"block{m}"
        ys, xs = np.nonzero(s.mask)
        assert s.mask.sum() == m * m
        assert ys.max() - ys.min() + 1 == m and xs.max() - xs.min() + 1 == m
        assert (s.masked[s.mask == 1] == 255).all()
        assert np.array_equal(s.masked[s.mask == 0], image[s.mask == 0])


def test_block_48_on_128(synth, astronaut_bgr):
    m, _ = cv2.estimateAffinePartial2D(ASTRONAUT_LM, ARCFACE_112.astype(np.float64) * 128 / 112)
    face = cv2.warpAffine(astronaut_bgr, m, (128, 128))
    s = synth(face, ARCFACE_112 * 128 / 112, 7, "block")
    assert s.kind == "block48" and s.mask.sum() == 48 * 48


def test_deterministic_per_seed_and_seeds_differ(synth, faces):
    image, lm = faces["crop"]
    for category in CATEGORIES:
        a, b = synth(image, lm, 123, category), synth(image, lm, 123, category)
        assert np.array_equal(a.masked, b.masked) and np.array_equal(a.mask, b.mask) and a.kind == b.kind
        others = [synth(image, lm, seed, category) for seed in (1, 2, 3)]
        assert any(not np.array_equal(a.masked, o.masked) for o in others), category
    # a Generator works too, and the sampled category is part of the determinism
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    a, b = synth(image, lm, g1), synth(image, lm, g2)
    assert a.category == b.category and np.array_equal(a.masked, b.masked)


def test_category_sampling_follows_weights(faces):
    image, lm = faces["crop"]
    syn = MaskSynthesizer(SynthesisConfig(weights={"sunglasses": 1.0, "block": 1.0}))
    seen = {syn(image, lm, seed).category for seed in range(30)}
    assert seen == {"sunglasses", "block"}
    with pytest.raises(ValueError):
        MaskSynthesizer(SynthesisConfig(weights={"glasses": 1.0}))
    with pytest.raises(ValueError):
        syn(image, lm, 0, category="nope")


def test_grey_input_gets_grey_occluders(synth, faces):
    image, lm = faces["crop"]
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    for category in ("simple", "complex", "human_body", "sunglasses"):
        s = synth(grey, lm, 3, category)
        assert (s.masked[..., 0] == s.masked[..., 1]).all() and (s.masked[..., 1] == s.masked[..., 2]).all()


def test_yaw_estimate_sign_and_pickling(synth, faces):
    arc = ARCFACE_112.astype(np.float64)
    assert abs(estimate_yaw(arc)) < 3.0
    assert estimate_yaw(_turned(arc, 0.3)) > 15.0 and estimate_yaw(_turned(arc, -0.3)) < -15.0
    pose = estimate_pose(arc)
    np.testing.assert_allclose(pose.project(np.array([[-0.5, 0.0], [0.5, 0.0]]), z=0.0), arc[:2], atol=1.5)
    clone = pickle.loads(pickle.dumps(synth))
    image, lm = faces["crop"]
    assert np.array_equal(clone(image, lm, 9, "complex").masked, synth(image, lm, 9, "complex").masked)


# ------------------------------------------------------------------------------------------------- templates
@needs_templates
@pytest.mark.parametrize("face", ["crop", "crop_left", "crop_right", "frame"])
@pytest.mark.parametrize("category", ["simple", "complex", "hybrid"])
def test_templates_paint_exactly_m_in_the_lower_face(tsynth, faces, face, category):
    image, lm = faces[face]
    before = image.copy()
    kinds = set()
    for seed in range(6):
        s = tsynth(image, lm, seed, category)
        _check_invariants(s, image, before, lm)
        _check_region(s, lm)
        kinds.add(s.kind.split("|")[0].split(":")[0])
    assert "template" in kinds


@needs_templates
def test_template_anchor_b_lands_on_the_nose_bridge(tsynth, faces):
    """Each face gets the view its yaw asks for; that view's anchors land where they belong."""
    for face, view in (("crop", "front"), ("frame", "front"), ("crop_left", "left"), ("crop_right", "right")):
        image, lm = faces[face]
        lm = np.asarray(lm, np.float64)
        e = np.linalg.norm(lm[1] - lm[0])
        bridge = lm[:2].mean(0) + 0.47 * (lm[2] - lm[:2].mean(0))  # between the eyes and the nose tip
        chin_dir = lm[3:].mean(0) - lm[:2].mean(0)
        for family, views in load_templates(TEMPLATES).items():
            t = views[view]
            H, _ = tsynth.fit_template(t, lm)
            pts = cv2.perspectiveTransform(t.anchors[None].astype(np.float64), H)[0]
            assert np.linalg.norm(pts[1] - bridge) < 0.15 * e, (face, t.name)
            # e (the chin) well below the mouth
            assert np.dot(pts[4] - lm[:2].mean(0), chin_dir) > 1.2 * np.dot(chin_dir, chin_dir), (face, t.name)
            assert pts[0, 0] < pts[1, 0] < pts[2, 0]  # a left of b left of c


@needs_templates
def test_yaw_picks_the_side_view(tsynth, faces):
    image, _ = faces["crop"]
    arc = ARCFACE_112.astype(np.float64)
    for amount, suffix in ((0.5, "_right"), (-0.5, "_left")):
        kinds = [tsynth(image, _turned(arc, amount), seed, "simple").kind for seed in range(6)]
        assert all(k.split("+")[0].endswith(suffix) for k in kinds), kinds
    front = [tsynth(image, arc, seed, "simple").kind.split("+")[0] for seed in range(6)]
    assert not any(k.endswith(("_left", "_right")) for k in front), front
