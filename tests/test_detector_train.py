"""The masked-face detector (LTDet): BlazeFace port, targets, scene labels, occluder split, a tiny training run
with resume, ONNX export parity, and the shipped bundle's stage on the astronaut (clean and masked)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tflite")

from trainer.detector.model import build_net  # noqa: E402
from trainer.detector.tflite_port import blazeface_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the built-in bundle with LTDet as its detector
V2 = ROOT / "sdk" / "models" / "ltdet-v1"


@pytest.fixture(scope="module")
def mtcnn_face(astronaut_bgr):
    from sdk.detect import MTCNNDetector

    return MTCNNDetector.from_package().detect(astronaut_bgr)[0]


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    i = iw * ih
    return i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i)


def test_blazeface_port_finds_the_astronaut(astronaut_bgr, mtcnn_face):
    """The ported graph with BlazeFace's own heads (before any training) finds her, eyes where MTCNN has them."""
    import cv2

    assert blazeface_path("front").is_file()
    net = build_net("blazeface").eval()
    x = cv2.resize(astronaut_bgr, (128, 128))[..., ::-1].astype(np.float32) / 127.5 - 1
    with torch.no_grad():
        s, b, lm = net.decode(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
    i = int(s[0].argmax())
    assert float(s[0, i]) > 0.8
    box, pts = b[0, i].numpy() * 4, lm[0, i].numpy() * 4
    assert _iou(box, mtcnn_face.box) > 0.4
    io = np.linalg.norm(mtcnn_face.landmarks[0] - mtcnn_face.landmarks[1])
    assert np.linalg.norm(pts[:2] - mtcnn_face.landmarks[:2], axis=1).max() < 0.3 * io


def test_random_init_has_the_same_shape():
    a, b = build_net("blazeface"), build_net("random")
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    with pytest.raises(ValueError):
        build_net("imagenet")


def test_match_targets():
    from trainer.detector.targets import make_anchors, match

    anc = make_anchors(64, 64, [8, 16], [2, 6])
    assert len(anc.sizes) == 8 * 8 * 2 + 4 * 4 * 6
    # a face exactly on anchor 0 of stride-16 cell (1, 1): centre (24, 24), size 44.67
    s = anc.sizes[8 * 8 * 2]
    box = np.array([[24 - s / 2, 24 - s / 2, 24 + s / 2, 24 + s / 2]], np.float32)
    lm = np.tile(np.array([[24, 24]], np.float32), (1, 5, 1))
    t = match(anc, box, lm, np.zeros((0, 4), np.float32))
    k = 8 * 8 * 2 + (1 * 4 + 1) * 6
    assert t["label"][k] == 1
    np.testing.assert_allclose(t["box"][k], [0, 0, s, s], atol=1e-4)
    np.testing.assert_allclose(t["lmk"][k], 0, atol=1e-5)
    assert (t["label"] == 0).sum() > 100
    t2 = match(anc, np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.array([[0, 0, 30, 30]], np.float32))
    assert (t2["label"] == -1).any() and (t2["label"] == 1).sum() == 0


def test_occluder_split_is_disjoint(astronaut_bgr, mtcnn_face):
    from trainer.detector.occlusion import OccluderSampler, is_held_out

    tr, ev = OccluderSampler("train"), OccluderSampler("eval")
    kt = [tr.draw(astronaut_bgr, mtcnn_face.landmarks, s) for s in range(12)]
    ke = [ev.draw(astronaut_bgr, mtcnn_face.landmarks, s) for s in range(12)]
    assert all(k is not None and not is_held_out(k.kind) for k in kt)
    assert all(k is not None and is_held_out(k.kind) for k in ke)
    assert is_held_out("template:surgical|hand") and not is_held_out("template:surgical+stripes")


def test_scene_labels_follow_the_faces():
    from trainer.detector.scenes import SceneConfig, SceneRenderer
    from trainer.detector.train import astronaut_labels

    ls, table = astronaut_labels()
    from trainer.detector.occlusion import OccluderSampler

    r = SceneRenderer(ls, SceneConfig(height=256, width=320, faces=(2, 3)), OccluderSampler("train"),
                      image_loader=lambda p: table[str(p)])
    n = 0
    for seed in range(6):
        clean, occl = r.render(seed, occlude=False), r.render(seed, occlude=True)
        np.testing.assert_array_equal(clean.boxes, occl.boxes)  # same layout
        assert clean.image.shape == (256, 320, 3) and clean.image.dtype == np.uint8
        for b, lm in zip(clean.boxes, clean.landmarks):
            assert (lm[:, 0] > b[0] - 2).all() and (lm[:, 0] < b[2] + 2).all()
            assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left first, also after flips
        n += len(clean.boxes)
        assert occl.occluded.sum() >= 1 or len(occl.boxes) == 0
        if len(occl.boxes):
            assert not np.array_equal(clean.image, occl.image)
    assert n >= 6


def test_tiny_training_run_resumes_and_exports(tmp_path, astronaut_bgr):
    from export.onnx_detector import export_onnx_bytes, parity, write_bundle
    from trainer.detector.train import DetTrainConfig, load_checkpoint, train

    cfg = DetTrainConfig(data="astronaut", out=str(tmp_path / "run"), steps=2, batch_size=2, crop=128, workers=0,
                         save_every=1, threads=1)
    r = train(cfg)
    assert r["steps"] == 2 and np.isfinite(r["final"]["loss"])
    r = train(DetTrainConfig(**{**cfg.__dict__, "steps": 3, "refit_scenes": 4}))  # resumes at step 2, then refits
    rows = list(csv.DictReader(open(tmp_path / "run" / "steps.csv")))
    assert [int(x["step"]) for x in rows] == [1, 2, 3]
    assert (tmp_path / "run" / "loss.png").is_file()
    refit = json.loads((tmp_path / "run" / "refit.json").read_text())
    assert refit and all("samples" in v for v in refit.values())
    net = load_checkpoint(tmp_path / "run")
    data = export_onnx_bytes(net)
    d = parity(net, data, sizes=((128, 160),))
    assert d["scores"] < 1e-4 and d["boxes"] < 1e-2 and d["landmarks"] < 1e-2
    b = write_bundle(data, tmp_path / "bundle", "baseline", "tiny")
    man = json.loads((b / "manifest.json").read_text())
    assert man["stages"]["detect"]["kind"] == "ltdet" and man["stages"]["embed"]["kind"] == "dlib_resnet_onnx"
    import sdk

    rec = sdk.Recognizer(str(b))  # loads (sizes + sha256 checked) and runs; the 3-step net finds anything
    assert isinstance(rec.detect(astronaut_bgr), list)


def test_trainer_cli_help():
    from trainer.main import build_parser

    p = build_parser()
    with pytest.raises(SystemExit):
        p.parse_args(["detector", "--help"])


@pytest.mark.skipif(not (V2 / "manifest.json").is_file(), reason="ltdet-v1 bundle not built")
def test_shipped_detector_finds_the_astronaut_masked(astronaut_bgr, mtcnn_face):
    from sdk.bundle import load_bundle
    from sdk._registry import build_stage
    from sdk.occluders import draw_surgical_mask

    det = build_stage(load_bundle(str(V2)).stages["detect"])
    io = np.linalg.norm(mtcnn_face.landmarks[0] - mtcnn_face.landmarks[1])
    masked, _ = draw_surgical_mask(astronaut_bgr, mtcnn_face.landmarks)
    for img, tol in ((astronaut_bgr, 0.2), (masked, 0.3)):
        faces = det.detect(img)
        assert len(faces) == 1, [f.score for f in faces]
        f = faces[0]
        assert _iou(f.box, mtcnn_face.box) > 0.6
        err = np.linalg.norm(f.landmarks - mtcnn_face.landmarks, axis=1)
        assert err.max() < tol * io, err / io  # mouth corners under the mask included
