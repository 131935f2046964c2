"""The issue-9 evaluation protocols end to end on tiny data the tests render: ``--protocol heldout-lfw`` (held-out
occluder families on LFW-style pairs, probe and both sides) and ``--protocol real-mask`` (detector recall as photos
and in scenes, segmenter presence, segmenter IoU on pasted occluders with exact masks)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from test_readers_evaluate import tiny_lfw, variants  # noqa: F401  (fixture reused)

from sdk.bundle import load_bundle
from sdk.occluders import draw_surgical_mask
from sdk.types import Face
from trainer.eval.heldout import family_for
from trainer.eval.realmask import iou, paste_into_scene, scene_hits
from trainer.evaluate import main as evaluate_main


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory, astronaut_bgr):
    """A cutout folder with one real-style cutout in its validation part (the astronaut's drawn mask)."""
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.occluders.harvest import harvest_files

    root = tmp_path_factory.mktemp("cutouts")
    b = load_bundle("default")
    det, seg = build_stage(b.stages["detect"]), build_stage(b.stages["segment"])
    face = max(det.detect(astronaut_bgr), key=lambda f: f.width * f.height)
    cv2.imwrite(str(root / "m.png"), draw_surgical_mask(astronaut_bgr, face.landmarks)[0])
    assert harvest_files([(root / "m.png", "cd" * 20)], root / "cut", "validation", det, seg, progress=False).kept == 1
    return root / "cut"


def test_heldout_lfw_reports_probe_and_both(tiny_lfw, cutouts, tmp_path):  # noqa: F811
    out = tmp_path / "heldout"
    rc = evaluate_main(["--protocol", "heldout-lfw", "--data", str(tiny_lfw), "--conditions",
                        "unmasked,heldout,occ:bandana", "--occluders", str(cutouts), "--workers", "1", "--out",
                        str(out), "--cache", str(tmp_path / "cache")])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    res = rep["results"]
    assert set(res) == {"unmasked", "heldout (probe)", "heldout (both)", "occ:bandana (probe)", "occ:bandana (both)"}
    assert res["unmasked"]["verification"]["accuracy_mean"] == 1.0
    for row in res.values():
        assert 0.0 <= row["verification"]["accuracy_mean"] <= 1.0 and len(row["tar_at_far"]) == 2
    assert rep["meta"]["mask_side"] == "probe and both"
    assert (out / "roc.png").stat().st_size > 1000
    # the masked chips differ from the clean ones (occluders really drawn), both sides share the masked embeddings
    assert len(list((tmp_path / "cache").glob("emb-occ:bandana-*.npy"))) == 1
    assert len(list((tmp_path / "cache").glob("emb-heldout-*.npy"))) == 1
    with pytest.raises(SystemExit, match="occluders"):
        evaluate_main(["--protocol", "heldout-lfw", "--data", str(tiny_lfw), "--conditions", "heldout",
                       "--workers", "1", "--out", str(out), "--cache", str(tmp_path / "cache")])
    with pytest.raises(SystemExit, match="unknown conditions"):
        evaluate_main(["--data", str(tiny_lfw), "--conditions", "occ_bandana", "--out", str(out)])


def test_heldout_lfw_with_the_segmenters_occlusion_calls(tiny_lfw, cutouts, tmp_path):  # noqa: F811
    """``--occlusion predicted``: pairs are scored in the state the default bundle's segmenter assigns each face (what
    the SDK does); the report says which fraction it flagged, and the probabilities are cached once per condition."""
    out = tmp_path / "pred"
    rc = evaluate_main(["--protocol", "heldout-lfw", "--data", str(tiny_lfw), "--conditions", "unmasked,occ:real_val",
                        "--occluders", str(cutouts), "--model", "default", "--occlusion", "predicted", "--workers", "1",
                        "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    res = rep["results"]
    assert rep["meta"]["occlusion"] == "predicted"
    assert res["unmasked"]["flagged occluded (%)"] == {"probe": 0.0, "reference": 0.0}  # clean faces stay clean
    probe = res["occ:real_val (probe)"]["flagged occluded (%)"]
    both = res["occ:real_val (both)"]["flagged occluded (%)"]
    assert probe["probe"] >= 50 and probe["reference"] == 0.0  # a surgical mask: the segmenter sees it; enrolled = clean
    assert both["reference"] == both["probe"] == probe["probe"]  # the same masked chips on both sides
    assert len(list((tmp_path / "cache").glob("occ-occ_real_val-*.npy"))) == 1
    assert len(list((tmp_path / "cache").glob("occ-unmasked-*.npy"))) == 1  # the clean run's, once


def test_heldout_condition_picks_heldout_families_deterministically():
    from trainer.data.occluders.registry import HELDOUT_MIX, is_heldout

    picks = [family_for("heldout", s) for s in range(400)]
    assert picks == [family_for("heldout", s) for s in range(400)]
    assert set(picks) == set(HELDOUT_MIX) and all(is_heldout(p) for p in picks)
    assert family_for("occ:kn95", 3) == "kn95"
    with pytest.raises(ValueError):
        family_for("occ:nope", 0)


def test_scene_pasting_and_hits(coffee_bgr):
    rng = np.random.default_rng(0)
    photo = np.full((100, 50, 3), 200, np.uint8)
    bg = cv2.resize(coffee_bgr, (640, 480))
    scene, (x0, y0, x1, y1) = paste_into_scene(photo, 80, bg, rng)
    assert (x1 - x0, y1 - y0) == (40, 80) and (scene[y0:y1, x0:x1] == 200).all()
    inside = Face(np.array([x0 + 5, y0 + 10, x0 + 35, y0 + 50], np.float32), np.zeros((5, 2), np.float32), 0.9)
    tiny = Face(np.array([x0 + 5, y0 + 10, x0 + 7, y0 + 12], np.float32), np.zeros((5, 2), np.float32), 0.9)
    far = Face(np.array([0, 0, 10, 10], np.float32) + (600 if x0 < 300 else 0), np.zeros((5, 2), np.float32), 0.9)
    assert scene_hits([inside, far], (x0, y0, x1, y1)) == (True, 1)
    assert scene_hits([tiny], (x0, y0, x1, y1)) == (False, 0)
    assert iou(np.ones((4, 4)), np.zeros((4, 4))) == 0.0 and iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory, astronaut_bgr, camera_bgr):
    """A Face-Mask-Detection-style folder: with_mask (the astronaut wearing the demo's mask, 2 photos) and
    without_mask (the astronaut and the camera man), plus a split file sending every photo to validation."""
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.realmask_split import build_split, save_split

    root = tmp_path_factory.mktemp("tiny_real")
    det = build_stage(load_bundle("default").stages["detect"])
    (root / "with_mask").mkdir()
    (root / "without_mask").mkdir()
    for i, v in enumerate(variants(astronaut_bgr, 2)):
        face = max(det.detect(v), key=lambda f: f.width * f.height)
        cv2.imwrite(str(root / "with_mask" / f"m{i}.jpg"), draw_surgical_mask(v, face.landmarks)[0])
    cv2.imwrite(str(root / "without_mask" / "astro.jpg"), astronaut_bgr)
    cv2.imwrite(str(root / "without_mask" / "cam.jpg"), camera_bgr)
    doc = build_split(root, validation_fraction=0.5)
    for e in doc["files"]:
        e["part"] = "validation"  # a 4-photo set: evaluate all of it
    return root, save_split(doc, root / "split.json")


def test_real_mask_protocol(tiny_real, tmp_path):
    root, split = tiny_real
    out = tmp_path / "rm"
    rc = evaluate_main(["--protocol", "real-mask", "--data", str(root), "--split", str(split), "--model", "default",
                        "--scene-sizes", "200", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    ph = rep["photos"]
    assert ph["detector recall / with_mask / photo padded 30%"] == {"n": 2, "recall": 1.0}
    assert ph["detector recall / without_mask / photo as is"]["recall"] == 1.0
    assert ph["detector recall / with_mask / scene, photo 200 px"]["n"] == 2
    assert ph["segmenter presence / with_mask"]["occluded_rate"] == 1.0
    assert ph["segmenter presence / without_mask"]["occluded_rate"] == 0.0
    iou_rows = rep["iou"]
    assert iou_rows["none"]["n"] == 2 and iou_rows["none"]["occluded_rate"] == 0.0
    assert {"surgical", "bandana", "respirator", "face_shield"} <= set(iou_rows)
    assert iou_rows["bandana"]["split"] == "heldout" and iou_rows["surgical"]["split"] == "train"
    assert iou_rows["surgical"]["miou"] > 0.5  # a plain lower-face mask on a clean frontal face
    assert all(0.0 <= r.get("miou", 0.0) <= 1.0 for r in iou_rows.values())
    md = (out / "report.md").read_text()
    assert "Detector recall" in md and "Segmenter on occluders pasted" in md
    assert (out / "real_mask.png").stat().st_size > 1000 and (out / "examples.png").is_file()


def test_wild_lfw_paints_on_the_photo_and_counts_lost_faces(tiny_lfw, cutouts, tmp_path):  # noqa: F811
    """``--protocol wild-lfw``: every bundle end to end on photos with the held-out occluder painted before detection;
    rows per bundle, found rates, a face not found scores -1, the MTCNN reference cached once."""
    out = tmp_path / "wild"
    args = ["--protocol", "wild-lfw", "--data", str(tiny_lfw), "--occluders", str(cutouts), "--model", "default-v2",
            "--compare", "default", "--out", str(out), "--cache", str(tmp_path / "cache")]
    assert evaluate_main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    res, meta = rep["results"], rep["meta"]
    current = load_bundle().name  # --compare default: the row is named after the bundle
    assert set(res) == {f"{b}: {c}" for b in ("default-v2", current)
                        for c in ("unmasked", "heldout (probe, on photo)")}
    assert meta["reference faces"] == meta["photos"] == 8 and meta["pairs"] == 8
    for b in ("default-v2", current):
        assert res[f"{b}: unmasked"]["verification"]["accuracy_mean"] == 1.0
        assert meta["faces found"][b]["clean photos (%)"] == 100.0
        row = res[f"{b}: heldout (probe, on photo)"]
        assert 0.0 <= row["verification"]["accuracy_mean"] <= 1.0 and len(row["tar_at_far"]) == 2
        lost = 100.0 - meta["faces found"][b]["masked photos (%)"]
        assert (row["pairs with a face not found (%)"] > 0) == (lost > 0)
    assert (out / "roc.png").stat().st_size > 1000 and (out / "examples.png").stat().st_size > 1000
    assert len(list((tmp_path / "cache").glob("wild-ref-*.npz"))) == 1
    with pytest.raises(SystemExit, match="occluders"):
        evaluate_main([a for a in args if a != str(cutouts) and a != "--occluders"])
    with pytest.raises(SystemExit, match="--compare is for"):
        evaluate_main(["--data", str(tiny_lfw), "--compare", "ltdet-v3", "--out", str(out)])


def test_wild_lfw_painted_photo_and_face_matching(astronaut_bgr, cutouts):
    import sdk
    from trainer.eval.wild import MISSING, BundleRun, masked_photo, match_reference, pair_scores

    rec = sdk.Recognizer("default")
    face = max(rec.detect(astronaut_bgr), key=lambda f: f.width * f.height)
    a = masked_photo(astronaut_bgr, face.landmarks, 5, None, str(cutouts))
    assert a.shape == astronaut_bgr.shape and (a != astronaut_bgr).any()
    assert np.array_equal(a, masked_photo(astronaut_bgr, face.landmarks, 5, None, str(cutouts)))  # seeded
    box = np.asarray(face.box, np.float32)
    assert match_reference([face], box) is face
    shifted = Face(box + np.float32(box[2] - box[0]), face.landmarks, face.score)
    big = Face(np.array([box[0] - 200, box[1] - 200, box[2] + 200, box[3] + 200], np.float32), face.landmarks, 0.9)
    assert match_reference([shifted, big], box) is None
    # a pair whose probe was not found scores MISSING, whatever the templates say
    t = rec.embed_faces(astronaut_bgr, [face])
    ok = BundleRun(np.ones(1, bool), t, np.zeros(1, bool), box[None])
    lost = BundleRun(np.zeros(1, bool), t, np.zeros(1, bool), box[None])
    idx = np.zeros(1, int)
    s, thr = pair_scores(rec, ok, ok, idx, idx)
    assert s[0] > 0.99 and s[0] >= thr[0]
    s, _ = pair_scores(rec, ok, lost, idx, idx)
    assert s[0] == MISSING


def test_validate_wild_reads_only_calibration_people_and_training_occluders(tiny_lfw, cutouts, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    """``tools/validate_wild.py``: people named in pairs.txt are never read; training families on the photo; every
    genuine pair counted, impostors drawn; one row per bundle with TARs and the masked faces found."""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import validate_wild

    import trainer.eval.wild as wild

    lfw = tmp_path / "lfw"
    shutil.copytree(tiny_lfw, lfw)
    (lfw / "Test_Person").mkdir()  # a person named in pairs.txt: never read
    cv2.imwrite(str(lfw / "Test_Person" / "Test_Person_0001.jpg"), np.full((250, 250, 3), 128, np.uint8))
    (lfw / "pairs.txt").write_text("1\t1\nTest_Person\t1\t1\n")
    out = tmp_path / "val.json"
    args = ["--lfw", str(lfw), "--occluders", str(cutouts), "--model", "default", "--impostors", "50", "--cache",
            str(tmp_path / "cache"), "--out", str(out)]
    painted = []
    real = wild.masked_photo
    monkeypatch.setattr(wild, "masked_photo", lambda *a, **k: painted.append(a[5:] or k) or real(*a, **k))
    assert validate_wild.main(args) == 0
    assert painted and all(c == ("trainmix",) for c in painted)  # training families only
    rep = json.loads(out.read_text())
    assert rep["data"].endswith(", 8 images") and rep["genuine pairs"] == 2 * 4 * 3 and 0 < rep["impostor pairs"] <= 50
    [(name, row)] = rep["results"].items()
    assert name.startswith(f"default ({load_bundle().name},")
    assert row["unmasked"]["genuine mean"] > 0.9 and 0 <= row["masked photos: face found (%)"] <= 100
    for cond in ("unmasked", "probe masked (trainmix on the photo)"):
        assert all(0 <= row[cond][k] <= 100 for k in ("TAR@FAR=0.01 (%)", "TAR@FAR=0.001 (%)"))
    (lfw / "pairs.txt").write_text("1\t1\nCamera_Man\t1\t2\n")  # one calibration person left: no impostors
    with pytest.raises(SystemExit, match="two people"):
        validate_wild.main(args)
