"""Harvested real occluders (cut with the SDK's detector + segmenter, pasted with pose-aware warps) and the
deterministic harvest / validation split of real photos. Uses images the test renders: the astronaut wearing the
demo's drawn surgical mask (sdk/occluders.py)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sdk.occluders import draw_surgical_mask
from trainer.data.occluders import OccluderConfig, OccluderSynthesizer
from trainer.data.occluders.harvest import CutoutBank, harvest_files, harvest_photo, paste_cutout
from trainer.data.realmask_split import build_split, dhash, group_files, load_split, name_stem, save_split, split_files


@pytest.fixture(scope="module")
def stages():
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle

    b = load_bundle("default")
    return build_stage(b.stages["detect"]), build_stage(b.stages["segment"])


@pytest.fixture(scope="module")
def masked_astronaut(astronaut_bgr, stages):
    det, _ = stages
    face = max(det.detect(astronaut_bgr), key=lambda f: f.width * f.height)
    masked, occ = draw_surgical_mask(astronaut_bgr, face.landmarks)
    return masked, occ, np.asarray(face.landmarks, np.float64)


def _iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def test_harvest_cuts_the_mask_and_pastes_it_back(masked_astronaut, astronaut_bgr, stages):
    det, seg = stages
    masked, occ, lm = masked_astronaut
    rgba, facts = harvest_photo(masked, det, seg)
    assert rgba is not None, facts
    assert rgba.dtype == np.uint8 and rgba.shape[2] == 4
    assert facts["mouth_coverage"] > 0.9 and facts["occluded_prob"] > 0.5
    # paste it back onto the same clean face: it lands where the drawn mask was
    from trainer.data.occluders.appearance import read_face
    from trainer.data.occluders.harvest import Cutout, CutoutMeta
    from trainer.data.occluders.surface import estimate_head_pose

    pose = estimate_head_pose(lm)
    out, m = astronaut_bgr.copy(), np.zeros(astronaut_bgr.shape[:2], np.uint8)
    meta = CutoutMeta("x.png", "rendered", "0" * 40, "harvest", 0, 0, 40, 1, 1, 0)
    painted = paste_cutout(Cutout(rgba, meta), astronaut_bgr, out, m, lm, pose, read_face(astronaut_bgr, pose),
                           np.random.default_rng(1), match=False)
    assert painted
    assert _iou(m, occ) > 0.6  # the cutout's shape is the segmenter's, cut off at the ear loops / crop bottom
    changed = (out != astronaut_bgr).any(2)
    assert not (changed & (m == 0)).any()
    # and it carries the drawn mask's colour, not the face's
    assert np.abs(out[m > 0].mean(0) - masked[occ > 0].mean(0)).max() < 25


def test_unoccluded_face_is_not_harvested(astronaut_bgr, stages):
    det, seg = stages
    rgba, facts = harvest_photo(astronaut_bgr, det, seg)
    assert rgba is None and facts["reason"] == "not_occluded"
    rgba, facts = harvest_photo(np.full((200, 200, 3), 127, np.uint8), det, seg)
    assert rgba is None and facts["reason"] == "no_face"


def test_cutout_bank_feeds_the_synthesizer(tmp_path, masked_astronaut, astronaut_bgr, stages):
    det, seg = stages
    masked, _, lm = masked_astronaut
    photo = tmp_path / "masked.png"
    cv2.imwrite(str(photo), masked)
    for part in ("harvest", "validation"):
        st = harvest_files([(photo, "ab" * 20)], tmp_path / "cut", part, det, seg, progress=False)
        assert st.kept == 1 and st.photos == 1
    bank = CutoutBank(tmp_path / "cut", "harvest")
    assert len(bank) == 1 and bank.get(0).rgba.shape[2] == 4
    train = OccluderSynthesizer(OccluderConfig(split="train", cutouts_dir=tmp_path / "cut"))
    assert "harvested" in train.available() and "real_val" not in train.available()
    s = train(astronaut_bgr, lm, 0, family="harvested")
    assert s.mask.sum() > 500 and s.kind.startswith("harvested:")
    with pytest.raises(ValueError, match="not allowed"):
        train(astronaut_bgr, lm, 0, family="real_val")
    held = OccluderSynthesizer(OccluderConfig(split="heldout", cutouts_dir=tmp_path / "cut"))
    assert held(astronaut_bgr, lm, 0, family="real_val").mask.sum() > 500
    with pytest.raises(FileNotFoundError):
        CutoutBank(tmp_path / "nowhere", "harvest")


# ------------------------------------------------------------------------------------------------ split
def test_name_stems_and_groups():
    assert name_stem("0_0_0 copy 12.jpg") == name_stem("0_0_0 copy.jpg") == name_stem("0_0_0.jpg") == "0_0_0"
    assert name_stem("Screenshot (364).png") != name_stem("Screenshot (365).png")
    g = group_files(["a.jpg", "a copy 2.jpg", "b.jpg", "c.jpg", "d.jpg"], ["1", "2", "3", "3", "5"],
                    [0, 0xFFFF, 0xFFFF << 40, None, (0xFFFF << 40) | 1])
    assert g[0] == g[1]  # name stem
    assert g[2] == g[3]  # same bytes
    assert g[4] == g[2]  # dHash within 4 bits
    assert len(set(g)) == 2


def test_split_is_deterministic_and_keeps_copies_together(tmp_path, astronaut_bgr, camera_bgr, coffee_bgr):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for folder in ("with_mask", "without_mask"):
        (root / folder).mkdir(parents=True)
        for i in range(12):
            img = np.clip(rng.normal(128, 60, (64, 64, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / folder / f"{folder[:2]}{i}.png"), img)
    cv2.imwrite(str(root / "with_mask" / "astro.jpg"), astronaut_bgr)
    cv2.imwrite(str(root / "with_mask" / "astro copy 3.jpg"), cv2.flip(astronaut_bgr, 1))  # an augmented copy
    cv2.imwrite(str(root / "without_mask" / "cam.png"), camera_bgr)
    cv2.imwrite(str(root / "without_mask" / "cam_again.png"), camera_bgr)  # same bytes, other name
    a = build_split(root, validation_fraction=0.5)
    b = build_split(root, validation_fraction=0.5)
    assert a == b
    parts = {(e["folder"], e["name"]): e["part"] for e in a["files"]}
    assert parts[("with_mask", "astro.jpg")] == parts[("with_mask", "astro copy 3.jpg")]
    assert parts[("without_mask", "cam.png")] == parts[("without_mask", "cam_again.png")]
    assert {"harvest", "validation"} == set(parts.values())
    path = save_split(a, tmp_path / "split.json")
    json.loads(path.read_text())  # valid JSON
    assert len(load_split(path)) == 28
    val = split_files(root, "validation", "with_mask", path)
    har = split_files(root, "harvest", "with_mask", path)
    assert val and har and not ({p for p, _ in val} & {p for p, _ in har})
    cv2.imwrite(str(root / "with_mask" / val[0][0].name), coffee_bgr)  # a changed file is refused
    with pytest.raises(ValueError, match="SHA-1"):
        split_files(root, "validation", "with_mask", path)
    assert isinstance(dhash(astronaut_bgr), int)


def test_committed_split_file_is_consistent():
    from trainer.data.realmask_split import DEFAULT_SPLIT

    entries = load_split(DEFAULT_SPLIT)
    assert len(entries) > 3000
    groups: dict[int, set[str]] = {}
    for e in entries:
        groups.setdefault(e.group, set()).add(e.part)
        assert len(e.sha1) == 40 and e.folder in ("with_mask", "without_mask")
    assert all(len(p) == 1 for p in groups.values())  # a duplicate group never straddles the parts
    n_val = sum(e.part == "validation" for e in entries)
    assert 0.2 < n_val / len(entries) < 0.4
