"""Occlusion segmenter: training loop, checkpoints, ONNX export + SDK stage parity, Recognizer wiring, bad files.

Fast (no ../shared data): the training faces are 112x112 ArcFace crops of scikit-image's astronaut, cut with
jittered landmarks (``astro_faces`` of conftest), and occluders come from the procedural synthesizer (no templates).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdk.align import ARCFACE_CROP, align
from sdk.errors import ModelFileError

from _trainer_helpers import ASTRO_LM, csv_rows  # noqa: E402  (tests/ is on sys.path)


def _mtcnn_onnx() -> Path:
    from sdk.bundle import resolve_path

    return resolve_path("pkg:sdk/models/mtcnn/pnet.onnx", Path("."))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def trained(torch, astro_faces, tmp_path_factory):
    """A width-8 segmenter trained 30 steps (batch 8) by trainer.segmenter_train.train (checkpoint every 15)."""
    from trainer.data.synthesis import MaskSynthesizer
    from trainer.segmenter_train import SegTrainConfig, train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("seg")
    cfg = SegTrainConfig(out=str(out), width=8, batch_size=8, steps=30, lr=3e-3, workers=0, log_every=1,
                         ckpt_every=15, grid_every=15, val_fraction=0.25, progress=False)
    result = train(cfg, faces=astro_faces, synth=MaskSynthesizer())
    return out, cfg, result


@pytest.mark.slow
def test_training_loss_falls_and_writes_outputs(trained):
    out, cfg, result = trained
    rows = csv_rows(out / "log.csv")
    loss = [float(r["loss"]) for r in rows]
    assert len(loss) == 30 and [int(r["step"]) for r in rows] == list(range(1, 31))
    assert np.mean(loss[-5:]) < np.mean(loss[:5])
    assert rows[14]["val_miou"] and rows[29]["val_miou"] and not rows[13]["val_miou"]  # quick val at checkpoints
    for f in ("ckpt/last.safetensors", "ckpt/last.json", "ckpt/last.optim.safetensors", "eval.json",
              "grids/step_000030.png"):
        assert (out / f).is_file(), f
    assert 0.0 <= result["presence_acc"] <= 1.0
    assert "none" in result["per_category"] and "simple" in result["per_category"]


@pytest.mark.slow
def test_checkpoint_records_config_and_preprocess(torch, trained, astro_faces):
    from trainer.models.segmenter import load_checkpoint, preprocess
    from trainer.segmenter_train import predict

    out, cfg, result = trained
    model, ck = load_checkpoint(out)
    assert ck["step"] == 30 and ck["models"]["model"]["width"] == 8 and ck["config"]["steps"] == 30
    assert ck["eval"]["presence_acc"] == result["presence_acc"]  # the final checkpoint carries the evaluation
    assert ck["preprocess"]["model"] == {"crop": "arcface112", "colour": "bgr", "dtype": "float32",
                                         "scale": 1 / 127.5, "offset": -1.0, "layout": "nchw"}
    # the loaded network reproduces the evaluation's predictions (not just itself)
    x = astro_faces.crops[:2]
    prob, occ = predict(model, x)
    with torch.no_grad():
        lg, oc = model(preprocess(torch.from_numpy(x)))
    np.testing.assert_allclose(prob, torch.sigmoid(lg[:, 0]).numpy(), atol=1e-6)
    assert prob.shape == (2, 112, 112) and ((0 <= occ) & (occ <= 1)).all()


@pytest.mark.slow
def test_killed_run_resumes_exactly(torch, trained, astro_faces, tmp_path, kill_and_resume, same_checkpoints):
    """30 steps straight == killed after step 20 (checkpoint at 15) + resumed: identical weights, Adam state and
    log; a finished run resumed for 2 more steps continues at step 31."""
    import dataclasses

    from trainer.data.synthesis import MaskSynthesizer
    from trainer.segmenter_train import SegmenterPlugin, train

    out, cfg, _ = trained
    kill_and_resume(SegmenterPlugin, 20, lambda resume: train(
        dataclasses.replace(cfg, out=str(tmp_path / "killed"), resume=resume), faces=astro_faces,
        synth=MaskSynthesizer()))
    same_checkpoints(out, tmp_path / "killed")

    def logged(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv_rows(run / "log.csv")]

    assert logged(tmp_path / "killed") == logged(out)

    more = tmp_path / "more"
    shutil.copytree(out, more)
    train(dataclasses.replace(cfg, out=str(more), steps=32, resume=True), faces=astro_faces, synth=MaskSynthesizer())
    assert json.loads((more / "ckpt/last.json").read_text())["step"] == 32


@pytest.mark.slow
def test_onnx_export_parity_and_bundle_in_recognizer(torch, trained, astronaut_bgr, tmp_path):
    from export.exporter import ExportConfig, export
    from export.families.segmenter import FAMILY
    from sdk.occluders import draw_surgical_mask
    from sdk.recognizer import Recognizer
    from sdk.segment import OnnxSegmenter
    from trainer.models.segmenter import load_checkpoint

    out, _, _ = trained
    net, _ = load_checkpoint(out)
    result = export(ExportConfig("onnx", "segmenter", out, tmp_path / "bundle", name="seg_test"))
    bundle = result.bundle
    assert result.parity[0].passed and result.record["source"]["sha256"]
    seg = OnnxSegmenter(bundle / "segmenter.onnx").prepare()
    crops = np.stack([align(astronaut_bgr, ASTRO_LM), align(astronaut_bgr[:, ::-1].copy(), ASTRO_LM)])
    m_ref, p_ref = FAMILY.torch_reference(FAMILY.graph(net))({"crops": crops})
    masks, probs = seg.segment(crops)
    assert masks.shape == (2, 112, 112) and masks.dtype == np.float32 and probs.shape == (2,)
    np.testing.assert_allclose(masks, m_ref[:, 0], atol=1e-4)
    np.testing.assert_allclose(probs, p_ref, atol=1e-4)
    assert seg.segment(crops[:0])[0].shape == (0, 112, 112)

    rec = Recognizer(bundle)
    rec.enroll("astronaut", astronaut_bgr)
    masked, _ = draw_surgical_mask(astronaut_bgr, ASTRO_LM)
    timings: dict[str, float] = {}
    matches = rec.identify(masked, timings=timings)
    assert matches
    occ = matches[0].occlusion
    assert isinstance(occ, float) and 0.0 <= occ <= 1.0
    assert timings["segment"] > 0.0
    # the per-face probability is the segmenter's on the ArcFace crop of the detected face
    _, p = seg.segment([align(masked, matches[0].landmarks, ARCFACE_CROP)])
    assert abs(occ - float(p[0])) < 1e-5
    assert rec.identify(np.zeros((64, 64, 3), np.uint8)) == []


def test_baseline_has_no_occlusion(astronaut_bgr):
    from sdk.recognizer import Recognizer

    baseline = Recognizer("baseline")
    assert baseline.segmenter is None
    timings: dict[str, float] = {}
    assert all(m.occlusion is None for m in baseline.identify(astronaut_bgr, timings=timings))
    assert "segment" not in timings and timings["embed"] > 0.0


def test_bad_onnx_files_raise_model_file_error(tmp_path):
    from sdk.segment import OnnxSegmenter

    pnet = _mtcnn_onnx()
    with pytest.raises(ModelFileError, match="not an occlusion segmenter") as e:
        OnnxSegmenter(pnet)  # a foreign (valid) ONNX model
    assert str(pnet) in str(e.value)
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(pnet.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated.onnx"):
        OnnxSegmenter(bad)
    with pytest.raises(ModelFileError, match="missing.onnx"):
        OnnxSegmenter(tmp_path / "missing.onnx")


def test_bundle_with_truncated_segmenter_fails_on_load(tmp_path):
    import json

    from sdk.bundle import find_manifest
    from sdk.embed import file_digest
    from sdk.recognizer import Recognizer

    model = tmp_path / "segmenter.onnx"
    shutil.copy(_mtcnn_onnx(), model)
    manifest = json.loads(find_manifest(None).read_text())
    manifest["stages"]["segment"] = {"kind": "onnx_segmenter", "config": {"threshold": 0.5, "crop": "arcface112"},
                                     "files": {"model": {"path": "segmenter.onnx", "bytes": model.stat().st_size,
                                                         "sha256": file_digest(model)}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="not an occlusion segmenter"):
        Recognizer(tmp_path)  # hashes match, but the file is not a segmenter
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="truncated"):
        Recognizer(tmp_path)


@pytest.mark.slow
def test_mixed_occluders_train_on_realistic_families(torch, astro_faces, tmp_path):
    """``occluders="mixed"``: about half the training samples carry a realistic training family (never a held-out
    one), the per-category validation keeps the template categories, and a short run trains."""
    from trainer.data.occluders.registry import HELDOUT_MIX
    from trainer.data.synthesis import MaskSynthesizer
    from trainer.segmenter_train import MixedOccluders, SegTrainConfig, SynthStream, train, training_occluders

    cfg = SegTrainConfig(out=str(tmp_path / "run"), width=8, batch_size=8, steps=4, workers=0, log_every=1,
                         ckpt_every=4, grid_every=4, val_fraction=0.25, progress=False, occluders="mixed")
    synth = training_occluders(cfg, MaskSynthesizer())
    assert isinstance(synth, MixedOccluders)
    stream = SynthStream(astro_faces, synth, 60, 0.0, 0)
    from trainer.segmenter_train import make_sample

    cats = [make_sample(synth, astro_faces.crops[0], astro_faces.landmarks[0], np.random.default_rng([0, i]), 0.0)[2]
            for i in range(60)]
    realistic = [c for c in cats if c in synth.realistic.available()]
    assert 15 <= len(realistic) <= 45 and not set(cats) & set(HELDOUT_MIX)
    img, m, present = stream[3]
    assert img.shape == (112, 112, 3) and m.shape == (112, 112) and present in (0.0, 1.0)
    # a requested category (validation) always comes from the templates
    r = synth(astro_faces.crops[0], astro_faces.landmarks[0], np.random.default_rng(1), category="simple")
    assert r.category == "simple"
    result = train(cfg, faces=astro_faces, synth=synth)
    assert "simple" in result["per_category"] and (tmp_path / "run" / "ckpt" / "last.safetensors").is_file()
    with pytest.raises(ValueError, match="occluders"):
        training_occluders(SegTrainConfig(occluders="paint"), MaskSynthesizer())
