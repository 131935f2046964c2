"""Realistic occluder synthesis (trainer.data.occluders): pose, surface warps, appearance matching, every family, the
held-out registry. Runs on skimage's astronaut only (no shared data)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from trainer.data.occluders import FAMILIES, HELDOUT_MIX, OccluderConfig, OccluderSynthesizer, families, is_heldout
from trainer.data.occluders.appearance import estimate_blur, estimate_jpeg_quality, read_face
from trainer.data.occluders.surface import (LM3D, _rotate, estimate_head_pose, inverse_surface_map, mask_surface,
                                            sample_image_to_texture, TextureGrid)

ASTRONAUT_LM = np.array([[203, 101], [246, 103], [224, 128], [201, 139], [244, 141]], np.float64)
PROCEDURAL = [f for f, v in FAMILIES.items() if v.needs is None]


@pytest.fixture(scope="module")
def face(astronaut_bgr):
    """(crop BGR 220x220 around the astronaut's face, its landmarks)."""
    return np.ascontiguousarray(astronaut_bgr[40:260, 110:330]), ASTRONAUT_LM - [110, 40]


def _landmarks(yaw_deg: float, pitch_deg: float, scale: float = 40.0, roll_deg: float = 10.0) -> np.ndarray:
    c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    A = scale * np.array([[c, -s], [s, c]])
    t = _rotate(LM3D, math.radians(yaw_deg), math.radians(pitch_deg))[:, :2]
    return t @ A.T + [110.0, 80.0]


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (25, 0), (-40, 10), (15, -20)])
def test_head_pose_recovers_yaw_and_pitch(yaw, pitch):
    p = estimate_head_pose(_landmarks(yaw, pitch))
    assert abs(p.yaw_deg - yaw) <= 2.5 and abs(p.pitch_deg - pitch) <= 2.5
    assert p.residual < 0.02
    assert abs(p.eye_dist - 40.0 * math.cos(math.radians(yaw))) < 3.0


def test_head_pose_rejects_degenerate_landmarks():
    with pytest.raises(ValueError):
        estimate_head_pose(np.zeros((5, 2)))
    with pytest.raises(ValueError):
        estimate_head_pose(np.full((5, 2), np.nan))


@pytest.mark.parametrize("yaw", [0.0, 30.0, -45.0])
def test_surface_warp_reprojects_exactly_and_is_not_a_homography(yaw):
    pose = estimate_head_pose(_landmarks(yaw, 5.0, scale=50.0))
    surf = mask_surface()
    box = (40, 60, 200, 200)
    x, y, vis = inverse_surface_map(pose, surf, 0.0, box)
    assert vis.mean() > 0.5
    ys, xs = np.nonzero(vis > 0)
    back = pose.project_surface(np.stack([x[ys, xs], y[ys, xs]], 1), surf)
    assert np.abs(back - np.stack([xs + box[0] + 0.5, ys + box[1] + 0.5], 1)).max() < 0.1  # px
    # a straight canonical line across the cheeks bends in the image (a homography keeps lines straight)
    line = pose.project_surface(np.stack([np.linspace(-1.0, 1.0, 21), np.full(21, 1.0)], 1), surf)
    d = line - line[0]
    u = (line[-1] - line[0]) / np.linalg.norm(line[-1] - line[0])
    bend = np.abs(d[:, 0] * u[1] - d[:, 1] * u[0]).max()
    assert bend > 1.0


def test_texture_round_trip(face):
    img, lm = face
    pose = estimate_head_pose(lm)
    grid = TextureGrid(res=48.0)
    tex, vis = sample_image_to_texture(img, grid, pose, mask_surface())
    assert tex.shape[:2] == grid.shape and vis.mean() > 0.3
    from trainer.data.occluders.surface import warp_texture_to_image

    box = (70, 70, 150, 150)  # the lower face
    back, _ = warp_texture_to_image(np.concatenate([tex, vis[..., None]], -1), grid, pose, mask_surface(), 0.0, box)
    sel = back[..., 3] > 0.99
    err = np.abs(back[..., :3][sel] - img[70:150, 70:150][sel].astype(np.float32))
    assert sel.mean() > 0.7 and float(np.median(err)) < 8.0  # (under the chin the surface turns away)


@pytest.mark.parametrize("family", PROCEDURAL)
def test_every_procedural_family_paints_an_exact_mask(face, family):
    img, lm = face
    synth = OccluderSynthesizer(OccluderConfig(split="all"))
    s = synth(img, lm, 3, family=family)
    assert s.masked.shape == img.shape and s.masked.dtype == np.uint8 and s.mask.dtype == np.uint8
    assert s.category == family and s.kind
    m = s.mask.astype(bool)
    assert 0.005 < m.mean() < 0.9, (family, m.mean())
    changed = (s.masked != img).any(2)
    assert not (changed & ~m).any(), "pixels outside M changed"
    assert changed[m].mean() > 0.5, "M marks pixels that were not painted"
    assert np.array_equal(s.clean, img)
    eye_y = lm[:2, 1].mean()
    e = np.linalg.norm(lm[1] - lm[0])
    ys = np.nonzero(m)[0]
    if FAMILIES[family].region == "lower":  # the body below the eyes (thin ear loops / head straps may go higher)
        assert np.mean(ys > eye_y) > 0.95, family
    if FAMILIES[family].region == "upper":
        assert ys.max() < eye_y + 0.8 * e, family


@pytest.mark.parametrize("family", ["surgical", "bandana", "hand", "sunglasses"])
def test_reproducible_per_seed(face, family):
    img, lm = face
    synth = OccluderSynthesizer(OccluderConfig(split="all"))
    a, b, c = synth(img, lm, 11, family=family), synth(img, lm, 11, family=family), synth(img, lm, 12, family=family)
    assert np.array_equal(a.masked, b.masked) and np.array_equal(a.mask, b.mask) and a.kind == b.kind
    assert not np.array_equal(a.masked, c.masked)


def test_registry_keeps_heldout_families_out_of_training(face):
    img, lm = face
    train = OccluderSynthesizer()  # split="train" is the default
    assert set(train.available()) <= set(families("train"))
    assert not any(is_heldout(f) for f in families("train"))
    assert {"bandana", "respirator", "neck_gaiter", "face_shield", "real_val", "template_heldout"} <= set(
        families("heldout"))
    assert set(HELDOUT_MIX) <= set(families("heldout"))
    rng = np.random.default_rng(0)
    assert all(not is_heldout(train.pick(rng)) for _ in range(300))
    for fam in families("heldout"):
        with pytest.raises(ValueError, match="not allowed"):
            train(img, lm, 0, family=fam)
    held = OccluderSynthesizer(OccluderConfig(split="heldout"))
    with pytest.raises(ValueError, match="not allowed"):
        held(img, lm, 0, family="surgical")
    with pytest.raises(KeyError):
        train(img, lm, 0, family="no_such_family")
    with pytest.raises(ValueError):
        OccluderSynthesizer(OccluderConfig(split="train", weights={"bandana": 1.0}))
    with pytest.raises(ValueError, match="cutouts"):  # data-backed family without its folder
        train(img, lm, 0, family="harvested")


def test_random_training_draws_cover_the_families_and_second_occluders(face):
    img, lm = face
    synth = OccluderSynthesizer(OccluderConfig(split="train", second_prob=1.0))
    seen = {synth(img, lm, s).category for s in range(40)}
    assert len(seen) >= 6
    s = synth(img, lm, 5, family="surgical")
    assert "|" in s.kind  # a second occluder on top


def test_grey_faces_get_grey_occluders(face):
    img, lm = face
    grey = np.repeat(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None], 3, 2)
    s = OccluderSynthesizer(OccluderConfig(split="all"))(grey, lm, 2, family="bandana")
    assert s.mask.any()
    assert np.array_equal(s.masked[..., 0], s.masked[..., 1]) and np.array_equal(s.masked[..., 1], s.masked[..., 2])


def test_appearance_is_read_off_the_face(face):
    img, lm = face
    pose = estimate_head_pose(lm)
    sharp = read_face(img, pose)
    blurred = read_face(cv2.GaussianBlur(img, (0, 0), 2.5), pose)
    assert blurred.blur_sigma > sharp.blur_sigma + 1.0
    assert 1.5 < blurred.blur_sigma < 4.0
    # light from the image-left: the left half brighter
    ramp = np.linspace(1.3, 0.7, img.shape[1], dtype=np.float32)[None, :, None]
    lit = np.clip(img.astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    assert read_face(lit, pose).light[0] < read_face(img, pose).light[0] - 0.05
    # JPEG quality: a dip at the quality the image was saved with
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:216, :216]
    ok, buf = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 60])
    q = estimate_jpeg_quality(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
    assert q is not None and abs(q - 60) <= 5
    assert estimate_blur(np.zeros((4, 4))) == 0.5


def test_occluder_blur_follows_the_face(face):
    img, lm = face
    synth = OccluderSynthesizer(OccluderConfig(split="all"))
    soft = cv2.GaussianBlur(img, (0, 0), 2.0)

    def edge_energy(s):
        g = cv2.cvtColor(s.masked, cv2.COLOR_BGR2GRAY).astype(np.float32)
        lap = np.abs(cv2.Laplacian(g, cv2.CV_32F))
        return float(lap[s.mask > 0].mean())

    assert edge_energy(synth(soft, lm, 4, family="kn95")) < 0.7 * edge_energy(synth(img, lm, 4, family="kn95"))
