"""Thresholds per occlusion state (issue #9.6): the bundle declares them, the Recognizer applies the one of each
pair's state and says which, and ``python -m trainer.calibrate`` derives them at a target FAR."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sdk.bundle import OCCLUSION_STATES, OperatingPoints, load_bundle
from sdk.errors import BundleError
from sdk.identity import IdentityVote
from sdk.recognizer import Recognizer, RecognizerConfig


def _with_thresholds(manifest_copy, thresholds: dict | None):
    folder, raw = manifest_copy("default")
    if thresholds is not None:
        raw["match"]["thresholds"] = thresholds
    (folder / "manifest.json").write_text(json.dumps(raw))
    return folder


def test_bundle_without_thresholds_uses_its_one_threshold_everywhere():
    b = load_bundle("baseline")  # no segmenter: one calibrated threshold
    ops = b.operating_points
    assert ops == OperatingPoints.single(b.threshold) and ops.far is None
    assert [ops.state(a, c) for a, c in ((0, 0), (1, 0), (0, 1), (1, 1))] == [
        "clean", "probe_occluded", "probe_occluded", "both_occluded"]
    with pytest.raises(ValueError, match="unknown occlusion state"):
        ops.threshold("masked")


@pytest.mark.parametrize("bad, msg", [
    ({"clean": 0.9, "probe_occluded": 0.95}, "keys"),
    ({"clean": 0.9, "probe_occluded": 1.5, "both_occluded": 0.97}, r"thresholds\['probe_occluded'\]"),
    ({"clean": 0.9, "probe_occluded": True, "both_occluded": 0.97}, r"thresholds\['probe_occluded'\]"),
    ({"clean": 0.9, "probe_occluded": 0.95, "both_occluded": 0.97, "far": 0}, "far"),
    ([0.9, 0.95, 0.97], "must be an object"),
])
def test_malformed_thresholds_are_refused(manifest_copy, bad, msg):
    with pytest.raises(BundleError, match=msg):
        load_bundle(_with_thresholds(manifest_copy, bad))


def test_identify_and_verify_apply_the_state_threshold(manifest_copy, astronaut_bgr, masked_astronaut_bgr):
    ops = {"clean": 0.5, "probe_occluded": 0.999, "both_occluded": 0.9999, "far": 0.001}
    rec = Recognizer(_with_thresholds(manifest_copy, ops))
    assert rec.operating_points == OperatingPoints(0.5, 0.999, 0.9999, 0.001) and rec.threshold == 0.5
    rec.enroll("astronaut", astronaut_bgr)
    [clean] = rec.identify(astronaut_bgr[:, ::-1])
    assert (clean.identity, clean.operating_point, clean.threshold) == ("astronaut", "clean", 0.5)
    [masked] = rec.identify(masked_astronaut_bgr)
    assert masked.occlusion >= 0.5 and masked.operating_point == "probe_occluded" and masked.threshold == 0.999
    assert masked.similarity > 0.5 and masked.identity is None  # the same similarity passes clean, not masked
    assert masked.to_dict()["operating_point"] == "probe_occluded"
    v = rec.verify(astronaut_bgr, masked_astronaut_bgr)
    assert (v.operating_point, v.threshold, v.same) == ("probe_occluded", 0.999, v.similarity >= 0.999)
    v = rec.verify(masked_astronaut_bgr, masked_astronaut_bgr[:, ::-1])
    assert (v.operating_point, v.threshold) == ("both_occluded", 0.9999)
    assert rec.verify(astronaut_bgr, astronaut_bgr[:, ::-1]).operating_point == "clean"
    # an explicit threshold overrides every state, and says so
    rec2 = Recognizer(rec.bundle.root, config=RecognizerConfig(threshold=0.5))
    rec2.enroll("astronaut", astronaut_bgr)
    [m] = rec2.identify(masked_astronaut_bgr)
    assert (m.identity, m.operating_point, m.threshold) == ("astronaut", "config", 0.5)


def test_stream_votes_use_the_looks_own_thresholds():
    vote = IdentityVote(0.5)
    for _ in range(3):  # masked looks: similarity 0.8, decided under their stricter 0.9 threshold -> unknown
        decision, _ = vote.add(IdentityVote.observation([("ann", 0.8)], None, 1.0, 0.9, threshold=0.9))
    assert decision.identity is None
    vote = IdentityVote(0.5)
    for _ in range(3):
        decision, _ = vote.add(IdentityVote.observation([("ann", 0.8)], "ann", 1.0, 0.1, threshold=0.5))
    assert decision.identity == "ann"


# ---- calibration ----------------------------------------------------------------------------------------
def _embeddings(n_people: int, per: int, spread: float, rng) -> tuple[np.ndarray, list[str]]:
    centres = rng.normal(size=(n_people, 16))
    x = np.repeat(centres, per, 0) + spread * rng.normal(size=(n_people * per, 16))
    return x / np.linalg.norm(x, axis=1, keepdims=True), [f"p{i}" for i in range(n_people) for _ in range(per)]


def test_calibration_thresholds_hold_the_far_and_rise_with_occlusion(tmp_path):
    from trainer.calibrate import STATES, calibrate_states, pair_scores, shipped_thresholds, write_thresholds

    rng = np.random.default_rng(0)
    clean, ids = _embeddings(150, 2, 0.3, rng)
    # "occlusion": every face drifts toward one shared direction (what a mask does to an embedder)
    shared = rng.normal(size=16)
    occ = clean + 1.2 * shared / np.linalg.norm(shared) + 0.2 * rng.normal(size=clean.shape)
    occ /= np.linalg.norm(occ, axis=1, keepdims=True)
    states = calibrate_states(clean, occ, ids, far=1e-2)
    assert list(states) == list(STATES) == list(OCCLUSION_STATES)
    assert states["clean"].threshold < states["probe_occluded"].threshold < states["both_occluded"].threshold
    for name, (a, b, sym) in {"clean": (clean, clean, True), "probe_occluded": (clean, occ, False),
                              "both_occluded": (occ, occ, True)}.items():
        s, g = pair_scores(a, b, ids, sym)
        far = np.mean(s[~g] >= states[name].threshold)
        assert far <= 1e-2 and far == states[name].achieved_far
        assert states[name].impostor_pairs == (~g).sum() and states[name].genuine_pairs == g.sum() > 0
    assert states["clean"].impostor_pairs == 300 * 299 // 2 - 150
    with pytest.raises(ValueError, match="cannot measure FAR"):
        calibrate_states(clean[:10], occ[:10], ids[:10], far=1e-3)
    # written into a manifest, the bundle loads them back
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "manifest.json"
    manifest.write_text(json.dumps({"match": {"metric": "cosine", "threshold": 0.3}}))
    match = write_thresholds(manifest, states, 1e-2, {"far": 1e-2})
    assert match["threshold"] == match["thresholds"]["clean"] == round(states["clean"].threshold, 4)
    # shipped thresholds never drop as occlusion grows, even where the calibrated ones dip
    dip = dict(states)
    dip["probe_occluded"] = dataclasses.replace(states["probe_occluded"], threshold=states["clean"].threshold - 0.01)
    shipped = shipped_thresholds(dip)
    assert shipped["probe_occluded"] == shipped["clean"] <= shipped["both_occluded"]
    assert json.loads(manifest.read_text())["match"]["calibration"] == {"far": 1e-2}
    match = write_thresholds(manifest, states, 1e-2, {"far": 1e-2}, per_state=False)  # a bundle without a segmenter
    assert "thresholds" not in match and match["threshold"] == round(states["clean"].threshold, 4)


def test_an_exported_embedder_does_not_inherit_the_base_bundles_thresholds(tmp_path, caplog):
    """Replacing a bundle's embedder drops the thresholds calibrated for the old one; the bundle says it is
    uncalibrated (the Recognizer warns) until ``trainer.calibrate --write`` gives it its own."""
    from export.exporter import uncalibrated_match
    from trainer.calibrate import StateCalibration, write_thresholds

    base = load_bundle("default").match
    m = uncalibrated_match(base, "default", tmp_path / "new")
    assert "thresholds" not in m and "calibration" not in m and m["threshold"] == base["threshold"]
    assert "trainer.calibrate" in m["uncalibrated"] and m["metric"] == "cosine"
    keep = uncalibrated_match({"metric": "cosine", "threshold": 0.9, "mask_aware": {"upper_cut": 0.8}}, "b", tmp_path)
    assert keep["mask_aware"] == {"upper_cut": 0.8}
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "manifest.json"
    manifest.write_text(json.dumps({"match": m}))
    state = StateCalibration(0.95, 1e-3, 1000, 10, 0.5)
    written = write_thresholds(manifest, {s: state for s in OCCLUSION_STATES}, 1e-3, {"far": 1e-3})
    assert "uncalibrated" not in written and written["thresholds"]["clean"] == 0.95


def test_recognizer_warns_about_an_uncalibrated_bundle(manifest_copy, caplog):
    folder, raw = manifest_copy("default")
    raw["match"].pop("thresholds")
    raw["match"]["uncalibrated"] = "threshold copied from elsewhere"
    (folder / "manifest.json").write_text(json.dumps(raw))
    with caplog.at_level("WARNING", logger="sdk.recognizer"):
        Recognizer(folder)
    assert any("not calibrated" in r.getMessage() for r in caplog.records)


def test_calibration_images_leave_the_test_people_out(tmp_path):
    import cv2

    from trainer.calibrate import calibration_images

    for person, n in (("Ann_A", 2), ("Bob_B", 1), ("Cy_C", 1)):
        (tmp_path / person).mkdir()
        for i in range(n):
            cv2.imwrite(str(tmp_path / person / f"{person}_{i + 1:04d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "pairs.txt").write_text("1\t1\nBob_B\t1\t2\nCy_C\t1\tDan_D\t1\n")
    paths, ids = calibration_images(tmp_path, tmp_path / "pairs.txt")
    assert ids == ["Ann_A", "Ann_A"] and all("Ann_A" in p for p in paths)
