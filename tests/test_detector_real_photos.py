"""Pseudo-labelled real masked photos as LTDet training faces (``trainer/main.py detector --real-photos``):
the labeller's merge rule, the harvest-part-only photo list, the compositor's real pool and a tiny training run.
The "real photo" here is the astronaut wearing a drawn mask, written into a throw-away dataset folder with its own
split file (no downloaded data needed)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tflite")

ROOT = Path(__file__).resolve().parents[1]
HAVE_V3 = (ROOT / "sdk" / "models" / "ltdet-v3" / "manifest.json").is_file()


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory, astronaut_bgr):
    """A dataset folder laid out as the real-photo dataset (``with_mask/``), with a split file: the masked astronaut
    twice in the harvest part (full photo and a tight crop), once in the validation part, and a blank photo."""
    from sdk.detect import MTCNNDetector
    from sdk.occluders import draw_surgical_mask

    root = tmp_path_factory.mktemp("realmask")
    (root / "with_mask").mkdir()
    (root / "without_mask").mkdir()
    face = MTCNNDetector.from_package().detect(astronaut_bgr)[0]
    masked = draw_surgical_mask(astronaut_bgr, face.landmarks)[0]
    x1, y1, x2, y2 = face.box.astype(int)
    photos = {"a.jpg": (masked, "harvest"), "b.png": (masked[max(0, y1 - 40):y2 + 40, max(0, x1 - 40):x2 + 40],
                                                       "harvest"),
              "v.jpg": (masked, "validation"), "blank.png": (np.full((200, 200, 3), 90, np.uint8), "harvest"),
              "v2.png": (np.full((200, 200, 3), 90, np.uint8), "validation")}
    rows = []
    for name, (img, part) in list(photos.items()) + [("u.jpg", (astronaut_bgr, "validation"))]:
        folder = "without_mask" if name == "u.jpg" else "with_mask"
        cv2.imwrite(str(root / folder / name), img)
        rows.append({"folder": folder, "name": name, "part": part, "group": len(rows),
                     "sha1": hashlib.sha1((root / folder / name).read_bytes()).hexdigest()})
    split = root / "split.json"
    split.write_text(json.dumps({"files": rows}))
    return root, split


def test_merge_keeps_every_found_face_and_picks_a_sure_main_one():
    from trainer.detector.real_labels import PseudoLabelConfig, merge_faces

    cfg = PseudoLabelConfig()
    lm = np.zeros((1, 5, 2), np.float32)
    lt = (np.array([[10, 10, 60, 60], [200, 10, 220, 30]], np.float32), np.repeat(lm, 2, 0),
          np.array([0.95, 0.7], np.float32))
    # MTCNN: the same first face (sure) and one face LTDet missed (not sure)
    mt = (np.array([[12, 11, 61, 62], [100, 100, 140, 140]], np.float32), np.repeat(lm, 2, 0) + 1,
          np.array([0.99, 0.92], np.float32))
    boxes, lms, sure, main = merge_faces(lt, mt, cfg, 300, 200)
    assert len(boxes) == 3 and boxes[:2].tolist() == lt[0].tolist() and boxes[2].tolist() == [100, 100, 140, 140]
    assert sure.tolist() == [True, False, False] and main == 0
    # no sure face: no main face (the photo is not used)
    _, _, sure, main = merge_faces((lt[0][1:], lt[1][1:], lt[2][1:]), (mt[0][1:], mt[1][1:], mt[2][1:]), cfg, 300, 200)
    assert not sure.any() and main == -1
    # an LTDet face that only MTCNN is sure of is sure
    _, _, sure, main = merge_faces((lt[0][:1], lt[1][:1], np.array([0.65], np.float32)), mt, cfg, 300, 200)
    assert sure[0] and main == 0
    # nothing found
    empty = (np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))
    assert merge_faces(empty, empty, cfg, 10, 10)[3] == -1


def test_only_the_harvest_part_is_listed(real_dataset):
    from trainer.detector.real_labels import real_photo_items

    root, split = real_dataset
    items = real_photo_items(root, split=split)
    assert sorted(Path(p).name for p, _, _ in items) == ["a.jpg", "b.png", "blank.png"]
    assert all(i.startswith("realmask:") and s == "realmask" for _, i, s in items)
    with pytest.raises(SystemExit, match="no with_mask photos"):
        real_photo_items(root / "with_mask", split=split)


@pytest.mark.skipif(not HAVE_V3, reason="ltdet-v3 not built")
def test_pseudo_labels_are_cached_and_used_as_covered_faces(real_dataset, tmp_path, astronaut_set, astronaut_bgr,
                                                            monkeypatch):
    import trainer.detector.real_labels as rl
    from sdk.detect import MTCNNDetector
    from trainer.detector.data import scene_renderer

    root, split = real_dataset
    monkeypatch.setattr("trainer.data.realmask_split.DEFAULT_SPLIT", split)
    cache = tmp_path / "real.npz"
    ls = rl.build_or_load_real(root, "ltdet-v3", cache, progress=False)
    assert cache.is_file()
    assert sorted(Path(p).name for p in ls.paths) == ["a.jpg", "b.png"]  # the blank photo has no face
    m = int(ls.main[0] - ls.first[0])
    b, t = ls.faces_of(0)[0][m], MTCNNDetector.from_package().detect(astronaut_bgr)[0].box
    inter = np.prod(np.clip(np.minimum(b[2:], t[2:]) - np.maximum(b[:2], t[:2]), 0, None))
    union = np.prod(b[2:] - b[:2]) + np.prod(t[2:] - t[:2]) - inter
    assert inter / union > 0.6  # the masked astronaut's face where MTCNN puts it unmasked, in the photo's own pixels

    def boom(*a, **k):
        raise AssertionError("labelled again")

    monkeypatch.setattr(rl, "pseudo_label", boom)
    again = rl.build_or_load_real(root, "ltdet-v3", cache, progress=False)
    assert again.paths.tolist() == ls.paths.tolist()
    with pytest.raises(AssertionError, match="labelled again"):  # another labeller's labels are not reused
        rl.build_or_load_real(root, "ltdet-v2", cache, progress=False)
    with pytest.raises(AssertionError, match="labelled again"):  # nor other settings
        rl.build_or_load_real(root, "ltdet-v3", cache, rl.PseudoLabelConfig(small_side=200), progress=False)

    labels, table = astronaut_set
    r = scene_renderer(labels, table, 160, None, occlude_prob=0.0, tight_prob=0.5, real=ls, real_prob=1.0)
    kinds = set()
    for seed in range(8):
        sc = r.render(seed)
        assert sc.image.shape == (160, 160, 3)
        kinds.update(sc.kinds)
        assert len(sc.kinds) == len(sc.boxes) == len(sc.occluded)
        assert all(o == (k == "realmask") for o, k in zip(sc.occluded, sc.kinds))
    assert "realmask" in kinds
    # real_prob 0: the pool is never drawn, scenes as without it
    a = scene_renderer(labels, table, 160, None, tight_prob=0.5)
    c = scene_renderer(labels, table, 160, None, tight_prob=0.5, real=ls, real_prob=0.0)
    assert all(a.render(s).image.tobytes() == c.render(s).image.tobytes() for s in range(6))


@pytest.fixture(scope="module")
def astronaut_set():
    from trainer.detector.data import astronaut_labels

    return astronaut_labels()


def test_real_photo_flags_are_checked(tmp_path):
    from trainer.main import main

    base = ["detector", "--data", "astronaut", "--out", str(tmp_path / "r"), "--steps", "1"]
    with pytest.raises(SystemExit, match="--real-photos"):
        main(base + ["--real-prob", "0.3"])
    (tmp_path / "ds" / "with_mask").mkdir(parents=True)
    with pytest.raises(SystemExit, match="--real-labeller"):
        main(base + ["--real-prob", "0.3", "--real-photos", str(tmp_path / "ds"), "--real-labeller", "nope"])
    with pytest.raises(SystemExit, match="real-prob"):
        main(base + ["--real-prob", "1.5", "--real-photos", str(tmp_path / "ds")])


@pytest.mark.skipif(not HAVE_V3, reason="ltdet-v3 not built")
def test_tiny_training_run_with_real_photos(real_dataset, tmp_path, monkeypatch):
    from trainer.detector.train import DetTrainConfig, train

    root, split = real_dataset
    monkeypatch.setattr("trainer.data.realmask_split.DEFAULT_SPLIT", split)
    cfg = DetTrainConfig(data="astronaut", out=str(tmp_path / "run"), steps=2, batch_size=2, crop=128, workers=0,
                         save_every=2, threads=1, progress=False, init="ltdet-v3", real_photos=str(root),
                         real_prob=0.5, real_cache=str(tmp_path / "real.npz"), tight_prob=0.5, lr=1e-3, warmup=1)
    out = train(cfg)
    assert out["steps"] == 2 and np.isfinite(out["final"]["loss"]) and (tmp_path / "real.npz").is_file()


def test_lowres_scenes_keep_their_labels_and_zero_changes_nothing(astronaut_set):
    from trainer.detector.data import scene_renderer

    labels, table = astronaut_set
    a = scene_renderer(labels, table, 160, None)
    b = scene_renderer(labels, table, 160, None, lowres_prob=0.0)
    c = scene_renderer(labels, table, 160, None, lowres_prob=1.0)
    for seed in range(4):
        sa, sb, sc = a.render(seed), b.render(seed), c.render(seed)
        assert sa.image.tobytes() == sb.image.tobytes()
        assert sc.image.shape == sa.image.shape and sc.image.tobytes() != sa.image.tobytes()
        assert np.array_equal(sc.boxes, sa.boxes) and np.array_equal(sc.landmarks, sa.landmarks)
        # shrunk and enlarged back: less fine detail than the sharp scene
        lap = [float(np.abs(cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.CV_32F)).mean())
               for x in (sa.image, sc.image)]
        assert lap[1] < lap[0]



@pytest.mark.skipif(not HAVE_V3, reason="ltdet-v3 not built")
def test_real_photo_check_counts_validation_photos_only(real_dataset, tmp_path):
    """``tools/check_real_photos.py``: the validation part's photos with a face at the bundle's threshold; the blank
    one is a miss, and the harvest part is not read."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from check_real_photos import main
    finally:
        sys.path.pop(0)
    root, split = real_dataset
    out = tmp_path / "check.json"
    assert main(["--model", "ltdet-v3", "--photos", str(root), "--split", str(split), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["threshold"] == 0.75
    assert res["with_mask"] == {"photos": 2, "found": 1, "found_pct": 50.0, "missed": ["v2.png"]}
    assert res["without_mask"]["photos"] == 1 and res["without_mask"]["found"] == 1
    with pytest.raises(SystemExit, match="no validation photos"):
        main(["--model", "ltdet-v3", "--photos", str(tmp_path), "--split", str(split)])


@pytest.mark.skipif(not HAVE_V3, reason="ltdet-v3 not built")
def test_face_size_labels_from_labellers_then_by_hand(real_dataset, tmp_path):
    """``tools/label_real_face_sizes.py``: validation photos only; the masked astronaut gets her face's side from the
    labellers (MTCNN + ``ltdet-v3``; they agree within a few px); the blank photo is left unlabelled and drawn on the
    contact sheet until a manual row gives it a size; bad manual rows are errors."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from label_real_face_sizes import main
    finally:
        sys.path.pop(0)
    from sdk.detect import MTCNNDetector

    root, split = real_dataset
    out, sheet = tmp_path / "sizes.json", tmp_path / "sheet.png"
    base = ["--photos", str(root), "--split", str(split), "--labeller", "ltdet-v3"]
    assert main(base + ["--sheet", str(sheet), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["photos"]) == {"with_mask/v.jpg", "without_mask/u.jpg"}  # harvest photos are never read
    assert doc["unlabelled"] == ["with_mask/v2.png"] and cv2.imread(str(sheet)) is not None
    v = doc["photos"]["with_mask/v.jpg"]
    assert sorted(v["source"]) == ["ltdet-v3", "mtcnn"]
    x1, y1, x2, y2 = MTCNNDetector.from_package().detect(cv2.imread(str(root / "with_mask" / "v.jpg")))[0].box
    assert abs(v["face_px"] - np.sqrt((x2 - x1) * (y2 - y1))) < 0.2 * v["face_px"]
    manual = tmp_path / "manual.csv"
    manual.write_text("name,face_px,note\nwith_mask/v2.png,0,no face\n")
    assert main(base + ["--manual", str(manual), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["unlabelled"] == [] and doc["photos"]["with_mask/v2.png"] == {"face_px": 0.0, "source": ["manual"]}
    manual.write_text("name,face_px\nwith_mask/v2.png,big\n")
    with pytest.raises(SystemExit, match="face_px must be a number"):
        main(base + ["--manual", str(manual), "--out", str(out)])
