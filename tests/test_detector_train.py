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


@pytest.mark.slow
def test_scene_backgrounds_are_the_same_in_every_process():
    """The background pool is a pure function of its split (scikit-image's binary_blobs is random unless seeded), so
    scene ``i`` -- and a resumed run in a new process -- is the same everywhere."""
    from trainer.detector.scenes import background_pool

    first = background_pool("train")
    background_pool.cache_clear()
    again = background_pool("train")
    assert len(first) == len(again) and all(np.array_equal(a, b) for a, b in zip(first, again))


def _tiny_cfg(out, **kw):
    """A 128x128, 2-scenes-a-step run on the astronaut (seconds), checkpoint every 2 steps, no bars."""
    from trainer.detector.train import DetTrainConfig

    base = dict(data="astronaut", out=str(out), steps=4, batch_size=2, crop=128, workers=0, save_every=2, threads=1,
                progress=False)
    return DetTrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_tiny_training_run_resumes_and_exports(tmp_path, astronaut_bgr):
    from export.onnx_detector import export_onnx_bytes, parity, write_bundle
    from sdk.detect_onnx import LTDET_PREPROCESS
    from trainer.checkpoints import load_checkpoint
    from trainer.detector.checkpoint import load_detector
    from trainer.detector.train import train

    run = tmp_path / "run"
    r = train(_tiny_cfg(run, steps=2, save_every=1))
    assert r["steps"] == 2 and np.isfinite(r["final"]["loss"])
    r = train(_tiny_cfg(run, steps=3, save_every=1, refit_scenes=4))  # resumes at step 2, then refits
    assert r["steps"] == 3
    rows = list(csv.DictReader(open(run / "steps.csv")))
    assert [int(x["step"]) for x in rows] == [1, 2, 3]
    assert list(rows[0]) == ["step", "loss", "cls", "box", "lmk", "npos", "lr", "seconds"]
    assert (run / "loss.png").is_file()
    refit = json.loads((run / "refit.json").read_text())
    assert refit and all("samples" in v for v in refit.values())
    # one checkpoint format: training state in ckpt/last (weights + AdamW + RNG), the refit net in detector.*
    last = load_checkpoint(run)
    assert last.kind == "detector" and last.step == 3 and "rng.torch" in last.optim
    assert last.meta["preprocess"]["model"] == LTDET_PREPROCESS.to_dict() and last.meta["config"]["steps"] == 3
    net, meta = load_detector(run)
    assert meta["refit"] == refit and meta["step"] == 3 and not (run / "detector.optim.safetensors").exists()
    changed = any(not torch.equal(v, last.weights["model." + k]) for k, v in net.state_dict().items())
    assert changed == any(not v.get("skipped") for v in refit.values())  # the refit (if any slot had the samples)
    data = export_onnx_bytes(net)
    d = parity(net, data, sizes=((128, 160),))
    assert d["scores"] < 1e-4 and d["boxes"] < 1e-2 and d["landmarks"] < 1e-2
    b = write_bundle(data, tmp_path / "bundle", "baseline", "tiny")
    man = json.loads((b / "manifest.json").read_text())
    assert man["stages"]["detect"]["kind"] == "ltdet" and man["stages"]["embed"]["kind"] == "dlib_resnet_onnx"
    assert man["format_version"] == 2 and man["stages"]["detect"]["preprocess"] == LTDET_PREPROCESS.to_dict()
    import sdk

    rec = sdk.Recognizer(str(b))  # loads (sizes + sha256 checked) and runs; the 3-step net finds anything
    assert isinstance(rec.detect(astronaut_bgr), list)


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, kill_and_resume, same_checkpoints):
    """4 steps straight == killed before step 4 (checkpoint at 2) + resumed: identical weights, AdamW state, log and
    final net; the scene stream does not depend on the worker count."""
    import dataclasses

    from trainer.checkpoints import load_checkpoint
    from trainer.detector.train import DetectorPlugin, train

    cfg = _tiny_cfg(tmp_path / "straight")
    train(cfg)
    kill_and_resume(DetectorPlugin, 3, lambda resume: train(
        dataclasses.replace(cfg, out=str(tmp_path / "killed"), resume=resume)))
    same_checkpoints(tmp_path / "straight", tmp_path / "killed")

    def logged(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(run / "steps.csv"))]

    assert [r["step"] for r in logged(tmp_path / "killed")] == ["1", "2", "3", "4"]
    assert logged(tmp_path / "killed") == logged(tmp_path / "straight")
    a, b = load_checkpoint(tmp_path / "straight/detector"), load_checkpoint(tmp_path / "killed/detector")
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    train(dataclasses.replace(cfg, out=str(tmp_path / "workers"), workers=2))
    same_checkpoints(tmp_path / "straight", tmp_path / "workers")


def _write_v1_run(run, src) -> None:
    """``src``'s ckpt/last written as the detector branch's first layout: ``last.safetensors`` (``model.`` and
    ``opt.<i>.<key>`` keys, 0-d as 1-d, ``step`` metadata), ``model.safetensors`` (bare) + ``net_config.json``."""
    from safetensors.torch import save_file

    from trainer.checkpoints import load_checkpoint

    ck = load_checkpoint(src)
    run.mkdir()
    save_file({**ck.weights, **{k: v for k, v in ck.optim.items() if k.startswith("opt.")}},
              str(run / "last.safetensors"), {"step": str(ck.step)})
    save_file({k[len("model."):]: v for k, v in ck.weights.items()}, str(run / "model.safetensors"), {"extra": "{}"})
    (run / "net_config.json").write_text(json.dumps(ck.meta["models"]["model"]))


@pytest.mark.slow
def test_older_run_folders_load_and_resume(tmp_path, same_checkpoints):
    """A run folder of the first layout (out/detector/v1, the shipped model's) exports, and resumes to the same
    weights and AdamW state as a run that never stopped (the detector's steps draw no random numbers)."""
    import dataclasses

    from export.onnx_detector import main as export_main
    from trainer.checkpoints import load_checkpoint
    from trainer.detector.checkpoint import load_detector
    from trainer.detector.train import train

    cfg = _tiny_cfg(tmp_path / "half", steps=2)
    train(cfg)
    train(dataclasses.replace(cfg, out=str(tmp_path / "straight"), steps=4))
    old = tmp_path / "old"
    _write_v1_run(old, tmp_path / "half")
    ck = load_checkpoint(old)
    assert ck.legacy == "detector-v1" and ck.step == 2 and ck.kind == "detector"
    net, meta = load_detector(old)
    half = load_checkpoint(tmp_path / "half")
    assert meta["legacy"] == "detector-v1" and meta["preprocess"]["model"]["colour"] == "rgb"
    assert all(torch.equal(v, half.weights["model." + k]) for k, v in net.state_dict().items())
    assert export_main(["--checkpoint", str(old / "model.safetensors"), "--out", str(tmp_path / "bundle")]) == 0
    man = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert man["format_version"] == 2 and man["stages"]["detect"]["preprocess"]["scale"] == pytest.approx(1 / 127.5)
    train(dataclasses.replace(cfg, out=str(old), steps=4))  # continues the old run in the new format
    same_checkpoints(tmp_path / "straight", old)
    with pytest.raises(FileNotFoundError, match="no detector checkpoint"):
        load_detector(tmp_path / "bundle")


def test_wrong_checkpoints_are_clear_errors(tmp_path):
    from trainer.checkpoints import CheckpointError, save_checkpoint
    from trainer.detector.checkpoint import load_detector

    save_checkpoint(tmp_path / "seg" / "ckpt" / "last", {"model": torch.nn.Linear(2, 2)}, {"kind": "segmenter"})
    with pytest.raises(CheckpointError, match="'segmenter' checkpoint, not a detector"):
        load_detector(tmp_path / "seg")
    with pytest.raises(FileNotFoundError):
        load_detector(tmp_path / "nothing.safetensors")


def test_input_is_the_preprocess_record():
    """The trainer's input is :data:`LTDET_PREPROCESS` applied as the SDK applies it, bit for bit."""
    from sdk.detect_onnx import LTDET_PREPROCESS
    from trainer.detector.data import to_input

    x = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    t = to_input(x)
    assert t.shape == (2, 3, 64, 96) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), LTDET_PREPROCESS.apply(x))
    np.testing.assert_array_equal(t.numpy(), x[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)


def test_shipped_recipe_and_flags_parse():
    """The shipped model's recorded config (reports/detector/training) still loads with --config; the flags work."""
    import argparse

    from trainer._config_cli import dataclass_from_args
    from trainer.detector.train import DetTrainConfig, add_parser

    sub = argparse.ArgumentParser().add_subparsers()
    p = add_parser(sub)
    args = p.parse_args(["--config", str(ROOT / "reports/detector/training/train_config.json"), "--refit-scenes", "400",
                         "--no-resume", "--no-progress", "--max-minutes", "30"])
    cfg = dataclass_from_args(args, DetTrainConfig)
    assert (cfg.steps, cfg.batch_size, cfg.crop, cfg.freeze, cfg.save_every) == (500, 8, 160, 11, 25)
    assert cfg.refit_scenes == 400 and not cfg.resume and not cfg.progress and cfg.max_minutes == 30
    assert DetTrainConfig().resume  # rerunning a command continues its run, as before


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


def test_small_negative_photos_and_their_column():
    """The evaluation's small photos without a face: seeded crops of 64-320 px (longer side) of the face-free scenes,
    and the report's column for them."""
    from trainer.detector.evaluate import markdown, small_negative_photos

    scenes = [np.full((480, 640, 3), k, np.uint8) for k in range(3)]
    crops = small_negative_photos(scenes, 30)
    assert len(crops) == 30 and all(c.flags.c_contiguous for c in crops)
    assert all(64 * 0.6 <= max(c.shape[:2]) <= 320 and min(c.shape[:2]) >= 24 for c in crops)
    assert [int(c[0, 0, 0]) for c in crops[:6]] == [0, 1, 2, 0, 1, 2]  # round robin over the scenes
    assert all(a.shape == b.shape for a, b in zip(crops, small_negative_photos(scenes, 30)))
    res = {"scenes": {}, "photos_heldout_occluders": {"ltdet": {"recall": 0.9, "images": 10}},
           "small_negatives": {"photos": 30, "ltdet": {"with_detection": 3, "share": 0.1}}}
    assert "| ltdet | 90.0 % of 10 | – | – | – | – | 10.0 % |" in markdown(res)
    assert "small photos without a face (30)" in markdown(res)
    # with --real-sizes: the share of the photos whose labelled face is >= 40 px, and their number in the header
    res["real_masked"] = {"images": 5, "ltdet": {"found_any": 0.8, "found_face_ge_20pct": 0.6,
                                                 "images_face_ge_40px": 4, "found_face_ge_40px": 0.75}}
    assert "| ltdet | 90.0 % of 10 | – | 80.0 (60.0) | 75.0 | – | 10.0 % |" in markdown(res)
    assert "labelled face >= 40 px (4): found" in markdown(res)
