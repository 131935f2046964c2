"""The face list builder (every readable clean face, labels where they exist, failures counted) and the identity
overlap check (thresholds calibrated on the test set, chance matches reported), on rendered data."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from trainer.data.facelist import (DETECTED, UNDETECTED, UNREADABLE, detect_entries, lfw_pair_people, list_sources,
                                   read_face_list, summarize, write_face_list, write_pack)
from trainer.eval.overlap import LfwTestSet, centroids, impostor_threshold, max_similarity, overlap_report


@pytest.fixture(scope="module")
def sources(tmp_path_factory, astronaut_bgr, camera_bgr, coffee_bgr):
    root = tmp_path_factory.mktemp("sources")
    celeba = root / "celeba"
    (celeba / "id_1").mkdir(parents=True)
    cv2.imwrite(str(celeba / "id_1" / "a.jpg"), astronaut_bgr)
    cv2.imwrite(str(celeba / "id_1" / "b.jpg"), cv2.flip(astronaut_bgr, 1))
    lfw = root / "lfw"
    for name, img in (("In_Pairs", camera_bgr), ("Not_In_Pairs", camera_bgr), ("Other_Side", camera_bgr)):
        (lfw / name).mkdir(parents=True)
        cv2.imwrite(str(lfw / name / f"{name}_0001.jpg"), img)
    (lfw / "pairs.txt").write_text("1\t1\nIn_Pairs\t1\t1\nIn_Pairs\t1\tOther_Side\t1\n")
    flat = root / "utk"
    flat.mkdir()
    cv2.imwrite(str(flat / "1_0_0_x.jpg.chip.jpg"), cv2.resize(astronaut_bgr[20:300, 100:360], (200, 200)))
    cv2.imwrite(str(flat / "coffee.jpg"), coffee_bgr)  # no face
    (flat / "broken.jpg").write_bytes(b"not a jpeg")  # unreadable
    return celeba, lfw, flat


def test_face_list_counts_and_labels(sources, tmp_path):
    celeba, lfw, flat = sources
    assert lfw_pair_people(lfw / "pairs.txt") == {"In_Pairs", "Other_Side"}
    entries = list_sources(celeba, lfw, flat)
    assert {e.identity for e in entries if e.source == "lfw-nonpair"} == {"lfw:Not_In_Pairs"}
    assert {e.identity for e in entries if e.source == "celeba"} == {"celeba:id_1"}
    assert all(e.identity is None for e in entries if e.source == "utkface")
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle

    det = build_stage(load_bundle("baseline").stages["detect"], {"max_side": None, "min_face_size": 40})
    cache = tmp_path / "det.jsonl"
    got = detect_entries(entries, det, cache=cache, progress=False)
    status = {e.path.rsplit("/", 1)[-1]: e.status for e in got}
    assert status["broken.jpg"] == UNREADABLE and status["coffee.jpg"] == UNDETECTED
    assert status["a.jpg"] == status["1_0_0_x.jpg.chip.jpg"] == DETECTED
    assert all(e.landmarks is not None and len(e.landmarks) == 5 for e in got if e.status == DETECTED)
    s = summarize(got)
    assert s["sources"]["utkface"] == {"images": 3, "detected": 1, "no_face": 1, "unreadable": 1, "labelled": 0,
                                       "identities": 0}
    assert s["labelled"] == s["detected"] - 1 and s["identities"] == 2
    summary = write_face_list(got, tmp_path / "fl")
    assert json.loads((tmp_path / "fl" / "summary.json").read_text()) == summary
    assert [e.path for e in read_face_list(tmp_path / "fl" / "faces.jsonl")] == [e.path for e in got]
    pack = write_pack(got, tmp_path / "fl" / "faces.npz", progress=False)
    from trainer.data.pack import load_face_pack

    faces = load_face_pack(pack)
    assert faces.crops.shape == (s["detected"], 112, 112, 3)
    assert "" in faces.identities and "celeba:id_1" in faces.identities  # unlabelled faces: identity ""
    z = np.load(pack)
    assert z["labelled"].sum() == s["labelled"] and set(z["sources"]) == {"celeba", "lfw-nonpair", "utkface"}


def test_face_list_detection_cache_resumes(sources, tmp_path):
    celeba, _, _ = sources
    entries = list_sources(celeba)

    class Counting:
        config = "fake"
        calls = 0

        def detect(self, img):
            Counting.calls += 1
            return []

    cache = tmp_path / "c.jsonl"
    first = detect_entries(entries, Counting(), pad=0.0, cache=cache, progress=False)
    n = Counting.calls
    second = detect_entries(entries, Counting(), pad=0.0, cache=cache, progress=False)
    assert Counting.calls == n and [e.status for e in first] == [e.status for e in second] == [UNDETECTED] * 2


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_impostor_threshold_is_exact():
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(60, 8)).astype(np.float32))
    labels = np.repeat(np.arange(20), 3)
    t, n = impostor_threshold(emb, labels, far=0.01, chunk=7)
    sims = emb @ emb.T
    iu = np.triu_indices(60, 1)
    imp = sims[iu][labels[iu[0]] != labels[iu[1]]]
    assert n == len(imp)
    k = int(np.floor(0.01 * n))
    assert (imp >= t).sum() == k
    best, arg = max_similarity(emb[:5], emb[5:], chunk=2)
    assert np.allclose(best, sims[:5, 5:].max(1)) and np.array_equal(arg, sims[:5, 5:].argmax(1))
    u, c = centroids(emb, labels)
    assert len(u) == 20 and np.allclose(np.linalg.norm(c, axis=1), 1.0)


def test_overlap_report_finds_planted_duplicates_and_people():
    rng = np.random.default_rng(1)
    people = _unit(rng.normal(size=(50, 32)))
    test_lab = np.repeat(np.arange(50), 4)
    test_emb = _unit(people[test_lab] + 0.08 * rng.normal(size=(200, 32)))
    test = LfwTestSet(np.array([f"p{i}" for i in test_lab]), test_emb.astype(np.float32), [f"t{i}.jpg" for i in range(200)])
    strangers = _unit(rng.normal(size=(30, 32)))
    train = np.concatenate([test_emb[:1],                                             # a near-duplicate of a test image
                            _unit(people[[7, 7, 7]] + 0.08 * rng.normal(size=(3, 32))),  # person p7 again
                            _unit(strangers[np.repeat(np.arange(30), 2)] + 0.08 * rng.normal(size=(60, 32)))])
    ids = ["dup"] + ["celeba:seven"] * 3 + [f"celeba:s{i}" for i in np.repeat(np.arange(30), 2)]
    rep = overlap_report(test, train.astype(np.float32), ids, ["celeba"] * len(ids),
                         {"lfw-nonpair": {"A", "B"}}, {"B", "C"}, far=1e-3, dup_threshold=0.999)
    r = rep["sources"]["celeba"]
    assert r["near_duplicates"] == 1
    matched = {m["train"]: m for m in r["identity_matches"]}
    assert {"celeba:seven", "dup"} <= set(matched) and matched["celeba:seven"]["test"] == "p7"
    strangers = len(matched) - 2
    assert strangers <= 3 * max(1.0, r["identity_expected_by_chance"])  # chance matches, as many as the FAR predicts
    assert r["identity_matches"][0]["train"] in ("dup", "celeba:seven")  # planted ones score highest
    assert rep["by_name"]["lfw-nonpair"]["in_test_pairs"] == 1
    assert rep["split_half_genuine"]["accepted_at_identity_threshold"] > 0.9
