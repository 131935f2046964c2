"""LTDet's landmark refiner (issue #14): the O-Net port, the crop geometry shared by the SDK and the trainer, the
refiner in the SDK's LTDet stage, the exporter's ``--refiner``, and a tiny training run with resume."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdk.detect import WEIGHTS_DIR, onet_crops, onet_points  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LTDET = ROOT / "sdk" / "models" / "ltdet-v1"


@pytest.fixture(scope="module")
def onet_refiner(tmp_path_factory) -> Path:
    """MTCNN's untouched O-Net, ported to torch and exported as a refiner file."""
    from trainer.detector.landmarks import export_refiner, onet_from_onnx

    return export_refiner(onet_from_onnx(), tmp_path_factory.mktemp("refiner") / "refiner.onnx")


def test_onet_port_matches_the_shipped_graph(astronaut_bgr):
    """The torch O-Net built from ``onet.onnx``'s initializers gives the file's outputs (box, landmarks, softmax)."""
    import onnxruntime as ort

    from trainer.detector.landmarks import onet_from_onnx

    sess = ort.InferenceSession(str(WEIGHTS_DIR / "onet.onnx"), providers=["CPUExecutionProvider"])
    _, x = onet_crops(astronaut_bgr, np.array([[160.0, 60.0, 300.0, 220.0], [0.0, 0.0, 100.0, 80.0]]))
    x = np.concatenate([x, np.random.default_rng(0).uniform(-1, 1, (3, 48, 48, 3)).astype(np.float32)])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    with torch.no_grad():
        box, lmk, prob = (t.numpy() for t in onet_from_onnx()(torch.from_numpy(x)))
    assert np.abs(box - want["dense_5"]).max() < 1e-5
    assert np.abs(lmk - want["dense_6"]).max() < 1e-5
    assert np.abs(prob - want["softmax_2"]).max() < 1e-5


def test_an_exported_refiner_reads_back_as_the_same_net(onet_refiner):
    """A refiner file written by ``export_refiner`` (torch names, PReLU slopes renamed by the exporter) loads back
    into the same weights: training can continue from a bundle's ``refiner.onnx``."""
    from trainer.detector.landmarks import initial_net, onet_from_onnx

    x = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (4, 48, 48, 3)).astype(np.float32))
    with torch.no_grad():
        want = [t.numpy() for t in onet_from_onnx()(x)]
        for net in (onet_from_onnx(onet_refiner), initial_net(str(onet_refiner))):
            for a, b in zip(net(x), want):
                assert np.abs(a.numpy() - b).max() < 1e-5


def test_mirrored_scene_keeps_points_on_their_pixels():
    """``mirror_scene``: a point on pixel column ``i`` (x = i + 0.5) lands on the mirrored image's marked pixel, the
    eyes and mouth corners swap, boxes mirror; twice is the identity."""
    from trainer.detector.landmarks import mirror_scene

    img = np.zeros((40, 60, 3), np.uint8)
    cols, rows = np.array([10, 30, 20, 12, 28]), np.array([8, 8, 18, 28, 29])
    img[rows, cols] = np.arange(1, 6)[:, None] * 40
    lm = np.stack([cols + 0.5, rows + 0.5], 1)[None]
    box = np.array([[5.0, 2.0, 35.0, 34.0]])
    im2, b2, lm2 = mirror_scene(img, box, lm)
    assert np.array_equal(im2, img[:, ::-1]) and np.allclose(b2, [[25.0, 2.0, 55.0, 34.0]])
    for k in range(5):
        x, y = lm2[0, k]
        assert im2[int(y), int(x), 0] > 0
    assert np.allclose(lm2[0, :, 0], 60 - lm[0, [1, 0, 2, 4, 3], 0])
    im3, b3, lm3 = mirror_scene(im2, b2, lm2)
    assert np.array_equal(im3, img) and np.allclose(b3, box) and np.allclose(lm3, lm)


def test_refine_mirror_averages_the_crop_and_its_mirror(astronaut_bgr, onet_refiner):
    """``refine_mirror``: the points are the mean of the refiner on the crop and on its mirror (mirrored back);
    for MTCNN's near-symmetric O-Net the two agree within a few pixels on the astronaut, and the mirror of the
    mirror is the identity."""
    import onnxruntime as ort

    from sdk.detect import mirror_onet_points
    from sdk.detect_onnx import LTDetConfig, LTDetDetector

    lm = np.random.default_rng(0).uniform(0, 1, (3, 10))
    assert np.allclose(mirror_onet_points(mirror_onet_points(lm)), lm)
    plain = LTDetDetector(LTDET / "detector.onnx", LTDetConfig(score_threshold=0.75), refiner=onet_refiner)
    both = LTDetDetector(LTDET / "detector.onnx", LTDetConfig(score_threshold=0.75, refine_mirror=True),
                         refiner=onet_refiner).prepare()
    a, b = plain.detect(astronaut_bgr), both.detect(astronaut_bgr)
    assert len(a) == len(b) >= 1 and np.array_equal(a[0].box, b[0].box)
    sq, crops = onet_crops(astronaut_bgr, a[0].box[None])
    sess = ort.InferenceSession(str(onet_refiner), providers=["CPUExecutionProvider"])
    fwd = sess.run(["landmarks"], {"crops": crops})[0]
    back = mirror_onet_points(sess.run(["landmarks"], {"crops": np.ascontiguousarray(crops[:, ::-1])})[0])
    assert np.allclose(b[0].landmarks, onet_points(sq, (fwd + back) / 2)[0], atol=1e-3)
    assert 0.05 < np.abs(onet_points(sq, back) - onet_points(sq, fwd)).max() < 4.0


def test_onet_from_a_foreign_file_is_a_clear_error():
    from trainer.detector.landmarks import onet_from_onnx

    with pytest.raises(ValueError, match="not MTCNN's O-Net"):
        onet_from_onnx(WEIGHTS_DIR / "rnet.onnx")


def test_training_targets_invert_the_sdk_decoding(astronaut_bgr):
    """``_targets`` (trainer) is the inverse of ``onet_points`` (SDK) for the squares ``onet_crops`` cuts."""
    from trainer.detector.landmarks import _targets, jitter_boxes

    rng = np.random.default_rng(1)
    boxes = np.array([[150.0, 50.0, 310.0, 230.0], [10.0, 300.0, 40.0, 330.0], [-20.0, -10.0, 60.0, 90.0]])
    sq, crops = onet_crops(astronaut_bgr, boxes)
    assert crops.shape == (3, 48, 48, 3) and crops.dtype == np.float32
    assert np.allclose(sq[:, 2] - sq[:, 0], sq[:, 3] - sq[:, 1], atol=1)  # squares
    pts = rng.uniform(0, 300, (3, 5, 2))
    assert np.allclose(onet_points(sq, _targets(sq, pts)), pts, atol=1e-4)
    assert np.array_equal(jitter_boxes(boxes, rng, 0.0), boxes)
    j = jitter_boxes(np.tile(boxes[:1], (2000, 1)), rng, 0.1)
    c = (j[:, :2] + j[:, 2:]) / 2 - (boxes[0, :2] + boxes[0, 2:]) / 2
    assert 0.07 * 170 < c.std() < 0.13 * 170  # centre moved by ~0.1 face sizes


def test_ltdet_with_the_untouched_onet_as_refiner_equals_mtcnn_refine(astronaut_bgr, onet_refiner):
    """With MTCNN's own O-Net as the refiner, LTDet's boxes and scores are unchanged and its landmarks are exactly
    what ``MTCNNDetector.refine`` gives for the same boxes (one shared crop / decode path)."""
    from sdk.detect import MTCNNDetector
    from sdk.detect_onnx import LTDetConfig, LTDetDetector

    cfg = LTDetConfig(score_threshold=0.75, threads=1)
    plain = LTDetDetector(LTDET / "detector.onnx", cfg).detect(astronaut_bgr)
    refined = LTDetDetector(LTDET / "detector.onnx", cfg, refiner=onet_refiner).prepare().detect(astronaut_bgr)
    assert len(plain) == len(refined) >= 1
    for a, b in zip(plain, refined):
        assert np.array_equal(a.box, b.box) and a.score == b.score
    want = MTCNNDetector.from_package().refine(astronaut_bgr, np.array([f.box for f in refined]))
    for f, w in zip(refined, want):
        assert np.abs(f.landmarks - w.landmarks).max() < 1e-3
    assert np.abs(refined[0].landmarks - plain[0].landmarks).max() > 0.5  # the refiner did replace them


def test_a_refiner_that_is_not_onet_shaped_is_refused(tmp_path):
    from sdk.detect_onnx import LTDetDetector
    from sdk.errors import ModelFileError

    with pytest.raises(ModelFileError, match="is not an MTCNN onet"):
        LTDetDetector(LTDET / "detector.onnx", refiner=LTDET / "detector.onnx")
    with pytest.raises(ModelFileError, match="not found"):
        LTDetDetector(LTDET / "detector.onnx", refiner=tmp_path / "nope.onnx")
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes((WEIGHTS_DIR / "onet.onnx").read_bytes()[:1000])
    with pytest.raises(ModelFileError):
        LTDetDetector(LTDET / "detector.onnx", refiner=bad)


def test_exporter_bundles_keeps_and_drops_the_refiner(tmp_path, astronaut_bgr, onet_refiner):
    """``--refiner`` writes ``refiner.onnx`` with its digest; re-bundling from that bundle keeps it; ``--no-refiner``
    drops it; the bundle's detect stage uses it."""
    import hashlib

    import sdk
    from export.onnx_detector import main
    from sdk.detect_onnx import LTDetConfig, LTDetDetector

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["--from-onnx", str(LTDET / "detector.onnx"), "--out", str(a), "--bundle-from", "ltdet-v1",
                 "--refiner", str(onet_refiner)]) == 0
    ref = json.loads((a / "manifest.json").read_text())["stages"]["detect"]["files"]["refiner"]
    assert ref["path"] == "refiner.onnx" and ref["sha256"] == hashlib.sha256(onet_refiner.read_bytes()).hexdigest()
    assert main(["--from-onnx", str(a / "detector.onnx"), "--out", str(b), "--bundle-from", str(a)]) == 0
    assert "refiner" in json.loads((b / "manifest.json").read_text())["stages"]["detect"]["files"]
    assert main(["--from-onnx", str(a / "detector.onnx"), "--out", str(c), "--bundle-from", str(a),
                 "--no-refiner"]) == 0
    assert "refiner" not in json.loads((c / "manifest.json").read_text())["stages"]["detect"]["files"]
    with pytest.raises(SystemExit, match="refiner"):
        main(["--from-onnx", str(LTDET / "detector.onnx"), "--out", str(tmp_path / "d"), "--bundle-from", "ltdet-v1",
              "--refiner", str(WEIGHTS_DIR / "rnet.onnx")])
    got = sdk.Recognizer(str(a)).detect(astronaut_bgr)
    want = LTDetDetector(LTDET / "detector.onnx", LTDetConfig(score_threshold=0.75), refiner=onet_refiner)
    assert np.allclose(got[0].landmarks, want.detect(astronaut_bgr)[0].landmarks, atol=1e-4)
    # --refine-mirror on: written to the detect config, kept when re-bundled, refused without a refiner
    m = tmp_path / "m"
    assert main(["--from-onnx", str(a / "detector.onnx"), "--out", str(m), "--bundle-from", str(a),
                 "--refine-mirror", "on"]) == 0
    assert json.loads((m / "manifest.json").read_text())["stages"]["detect"]["config"]["refine_mirror"] is True
    assert main(["--from-onnx", str(m / "detector.onnx"), "--out", str(tmp_path / "m2"), "--bundle-from", str(m)]) == 0
    assert json.loads((tmp_path / "m2" / "manifest.json").read_text())["stages"]["detect"]["config"]["refine_mirror"]
    mirrored = LTDetDetector(LTDET / "detector.onnx", LTDetConfig(score_threshold=0.75, refine_mirror=True),
                             refiner=onet_refiner)
    assert np.allclose(sdk.Recognizer(str(m)).detect(astronaut_bgr)[0].landmarks,
                       mirrored.detect(astronaut_bgr)[0].landmarks, atol=1e-4)
    with pytest.raises(SystemExit, match="needs a landmark refiner"):
        main(["--from-onnx", str(a / "detector.onnx"), "--out", str(tmp_path / "m3"), "--bundle-from", str(a),
              "--no-refiner", "--refine-mirror", "on"])


@pytest.mark.slow
def test_tiny_refiner_run_resumes_and_exports(tmp_path, astronaut_bgr):
    """2 steps, then resumed to 3: one CSV, checkpoints, validation against the untouched O-Net, an ONNX file with
    O-Net's signature the SDK loads; a detector checkpoint is refused as a refiner."""
    from sdk.detect import load_mtcnn_session
    from trainer.detector.landmarks import LandmarkConfig, load_refiner, train

    run = tmp_path / "run"
    cfg = dict(data="astronaut", out=str(run), batch_size=2, scene=128, workers=0, save_every=1, threads=1,
               val_faces=4, progress=False)
    assert train(LandmarkConfig(steps=2, **cfg))["steps"] == 2
    r = train(LandmarkConfig(steps=3, **cfg))
    assert r["steps"] == 3
    rows = list(csv.DictReader(open(run / "steps.csv")))
    assert [int(x["step"]) for x in rows] == [1, 2, 3] and all(x["val_nme"] for x in rows)
    val = json.loads((run / "refiner.json").read_text())["validation"]
    assert val["faces"] == 4 and np.isfinite(val["nme"]) and np.isfinite(val["nme_onet"]) and "nme_init" not in val
    # a second run continues from the first one's exported file, with mirrored scenes and realistic occluders
    cfg2 = {**cfg, "out": str(tmp_path / "run2"), "init": str(run / "refiner.onnx"), "flip_prob": 0.5,
            "realistic_prob": 0.5}
    r2 = train(LandmarkConfig(steps=2, **cfg2))
    assert r2["steps"] == 2 and r2["validation"]["nme_init"] == pytest.approx(val["nme"], abs=1e-4)
    with pytest.raises(FileNotFoundError, match="--init"):
        train(LandmarkConfig(steps=1, **{**cfg2, "out": str(tmp_path / "run3"), "init": str(tmp_path / "nope")}))
    assert (run / "nme.png").is_file()
    load_mtcnn_session(run / "refiner.onnx", "onet", 1, ())
    net = load_refiner(run)
    with torch.no_grad():
        x = torch.zeros(1, 48, 48, 3)
        assert net(x)[1].shape == (1, 10)
    with pytest.raises(ValueError, match="not a landmark refiner"):
        from trainer.checkpoints import save_checkpoint

        save_checkpoint(tmp_path / "other", {"model": net}, {"kind": "detector"})
        load_refiner(tmp_path / "other.json")


def test_builtin_ltdet_v2_places_points_like_mtcnn_and_identifies_the_masked_astronaut(astronaut_bgr):
    """``ltdet-v2`` = ltdet-v1's graph + the trained refiner + the default's segmenter and embedder, whose chip is
    warped from the refined points: on the clean astronaut its five points are within 3 px of MTCNN's (ltdet-v1's
    own heads are not), and a surgical mask drawn on her still matches her enrolled photo above the bundle's
    occluded-probe threshold."""
    import sdk
    from sdk.bundle import load_bundle
    from sdk.detect import MTCNNDetector
    from sdk.occluders import draw_surgical_mask

    spec = load_bundle("ltdet-v2").stages["detect"]
    assert spec.kind == "ltdet" and "refiner" in spec.files
    want = MTCNNDetector.from_package().detect(astronaut_bgr)[0].landmarks
    v1 = sdk.Recognizer("ltdet-v1").detect(astronaut_bgr)[0].landmarks
    rec = sdk.Recognizer("ltdet-v2")
    got = rec.detect(astronaut_bgr)[0].landmarks
    assert np.abs(got - want).max() < 3.0 < np.abs(v1 - want).max()
    rec.enroll("eileen", astronaut_bgr)
    masked = draw_surgical_mask(astronaut_bgr, got)[0]
    [m] = rec.identify(masked)
    assert m.identity == "eileen" and m.similarity > m.threshold


def test_compare_refiners_tool_writes_per_point_nme(tmp_path, onet_refiner):
    """``tools/compare_refiners.py`` on the astronaut scenes: MTCNN's O-Net first, then the given refiner (here the
    same weights, so the same numbers), per point, single and mirrored, occluded and clean; a PNG."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_refiners", ROOT / "tools" / "compare_refiners.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--refiner", str(onet_refiner), "--data", "astronaut", "--faces", "6", "--out",
                      str(tmp_path)]) == 0
    res = json.loads((tmp_path / "refiners.json").read_text())
    assert [r["name"] for r in res["refiners"]] == ["onet", str(onet_refiner)]
    a, b = res["refiners"]
    assert res["faces"] == {"occluded": 6, "clean": 6}
    for state in ("occluded", "clean"):
        for mode in ("single", "mirrored"):
            assert a[state][mode]["nme"] == pytest.approx(b[state][mode]["nme"], abs=1e-4)
            assert 0 < a[state][mode]["nme"] < 1 and len(a[state][mode]["per_point"]) == 5
        assert a[state]["single"]["per_point"] != a[state]["mirrored"]["per_point"]  # the second pass counts
    assert (tmp_path / "refiners.png").stat().st_size > 10_000
    assert res["hidden_points_reference"] is None  # one labelled face: no reference fit
    with pytest.raises(SystemExit, match="no landmark refiner"):
        tool.refiner_file("baseline")

    # the geometric reference: faces that are similarity transforms of one face (plus a per-face mouth shift that
    # the box does not show) -> nose exact, mouth error = the shift
    from trainer.detector.labels import LabelSet

    rng = np.random.default_rng(0)
    face = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 62.0], [35.0, 80.0], [65.0, 80.0]])
    box = np.array([[10.0, 10.0], [90.0, 105.0]])

    def labels(n, shift):
        lm, bx = [], []
        for _ in range(n):
            a, k, t = rng.uniform(-0.3, 0.3), rng.uniform(0.5, 2.0), rng.uniform(0, 200, 2)
            R = k * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            f = face.copy()
            f[3:, 1] += rng.choice([-1, 1]) * shift  # mouth up or down by `shift` px (inter-ocular 40 px)
            lm.append(f @ R.T + t)
            bx.append((box @ R.T + t).reshape(-1))  # corners turned like the face (a test: boxes are not upright)
        z = np.zeros(n, np.int64)
        return LabelSet(np.array([f"{i}.jpg" for i in range(n)]), np.array(["x"] * n), np.array(["t"] * n),
                        np.arange(n), z + 1, np.arange(n), np.array(bx, np.float32), np.array(lm, np.float32),
                        np.ones(n, np.float32))

    ref = tool.hidden_points_reference(labels(200, 0.0), labels(100, 4.0))
    pp = ref["per_point"]
    assert pp["left eye"] == pp["right eye"] == 0 and pp["nose"] < 1e-3
    assert pp["left mouth"] == pytest.approx(0.1, abs=2e-3) and ref["nme"] == pytest.approx(0.04, abs=2e-3)
    assert tool.hidden_points_reference(labels(10, 0.0), labels(100, 0.0)) is None


def test_erase_lower_face_covers_nose_and_mouth_only(astronaut_bgr):
    """The random cover paints over the nose and mouth points, leaves the eyes and the top of the head alone, is
    seeded, turns with the face (a face rotated by 90 degrees gets the cover beside its eyes, not below), and
    the samples with ``erase_prob`` keep their clean targets."""
    from sdk.detect import MTCNNDetector
    from trainer.detector.landmarks import erase_lower_face

    lm = MTCNNDetector.from_package().detect(astronaut_bgr)[0].landmarks.astype(np.float64)
    changed = []
    for seed in range(12):
        img = astronaut_bgr.copy()
        erase_lower_face(img, lm, np.random.default_rng(seed))
        diff = np.abs(img.astype(int) - astronaut_bgr.astype(int)).sum(2) > 0
        for x, y in lm[:2]:  # the eyes stay visible
            assert not diff[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3].any()
        assert diff[:int(lm[:2, 1].min()) - 10].sum() == 0  # nothing above the eyes
        assert all(diff[int(y), int(x)] for x, y in lm[2:])  # nose and mouth corners covered
        changed.append(img)
    again = astronaut_bgr.copy()
    erase_lower_face(again, lm, np.random.default_rng(0))
    assert np.array_equal(again, changed[0]) and not np.array_equal(changed[0], changed[1])
    # rotate the face 90 degrees clockwise: the eyes now sit on a vertical line, the mouth to their left
    rot = np.ascontiguousarray(np.rot90(astronaut_bgr, -1))
    H = astronaut_bgr.shape[0]
    lm_r = np.stack([H - 1 - lm[:, 1], lm[:, 0]], 1)
    img = rot.copy()
    erase_lower_face(img, lm_r, np.random.default_rng(0))
    diff = np.abs(img.astype(int) - rot.astype(int)).sum(2) > 0
    assert all(diff[int(y), int(x)] for x, y in lm_r[2:])
    assert diff[:, int(lm_r[:2, 0].max()) + 10:].sum() == 0  # nothing on the far side of the eyes
