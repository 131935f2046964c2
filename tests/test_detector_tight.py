"""LTDet fine-tuning for real masked photos: tight one-face scenes, realistic occluders on the detector's training
side (never its held-out families), and ``--init`` from a trained LTDet (bundle / ``.onnx``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tflite")

ROOT = Path(__file__).resolve().parents[1]
LTDET = ROOT / "sdk" / "models" / "ltdet-v1"


@pytest.fixture(scope="module")
def astronaut_set():
    from trainer.detector.data import astronaut_labels

    return astronaut_labels()


def _renderer(astronaut_set, **cfg):
    from trainer.detector.occlusion import OccluderSampler
    from trainer.detector.scenes import SceneConfig, SceneRenderer

    ls, table = astronaut_set
    return SceneRenderer(ls, SceneConfig(height=160, width=160, **cfg), OccluderSampler("train"),
                         image_loader=lambda p: table[str(p)])


def test_tight_scenes_are_one_cropped_face_at_the_top_left(astronaut_set):
    r = _renderer(astronaut_set, tight_prob=1.0)
    cut = 0
    for seed in range(12):
        sc = r.render(seed)
        img = sc.image
        assert img.shape == (160, 160, 3) and img.dtype == np.uint8
        # the crop sits at the top-left corner; the rest is black, as a padded small photo
        rows, cols = np.flatnonzero(img.any(axis=(1, 2))), np.flatnonzero(img.any(axis=(0, 2)))
        assert rows.min() == 0 and cols.min() == 0
        side = max(rows.max(), cols.max()) + 1
        assert 24 <= side <= 160
        assert not img[side:].any() and not img[:, side:].any()
        assert len(sc.boxes) == 1  # the astronaut, labelled even when the crop cuts her box
        b, lm = sc.boxes[0], sc.landmarks[0]
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left first, flipped or not
        face = np.sqrt((b[2] - b[0]) * (b[3] - b[1]))
        assert 0.5 * side < face < 2.0 * side  # tight: crop side 0.55-1.4x the face
        cut += bool(b[0] < 0 or b[1] < 0 or b[2] > side or b[3] > side)
    assert cut >= 3  # some crops cut the face box, as real tight photos do
    assert r.render(5).image.tobytes() == r.render(5).image.tobytes()  # a pure function of the seed


def test_tight_prob_zero_leaves_the_scenes_as_they_were(astronaut_set):
    """Evaluation scenes (tight_prob 0) must not change: the option draws from its own random stream."""
    a, b = _renderer(astronaut_set), _renderer(astronaut_set, tight_prob=0.0)
    c = _renderer(astronaut_set, tight_prob=0.5)
    for seed in range(4):
        assert a.render(seed).image.tobytes() == b.render(seed).image.tobytes()
    tight = [c.render(s) for s in range(10)]
    assert any(not t.image[-1].any() for t in tight) and any(t.image[-1].any() for t in tight)


def test_realistic_occluders_stay_on_the_training_side(astronaut_bgr):
    from trainer.data.occluders.registry import is_heldout
    from trainer.detector.occlusion import REALISTIC_WEIGHTS, OccluderSampler, is_held_out
    from sdk.detect import MTCNNDetector

    lm = MTCNNDetector.from_package().detect(astronaut_bgr)[0].landmarks
    s = OccluderSampler("train", realistic_prob=1.0)
    fams = set()
    for seed in range(10):
        d = s.draw(astronaut_bgr, lm, seed)
        assert d is not None and d.mask.any()
        fams.add(d.category)
        assert d.category in REALISTIC_WEIGHTS and not is_heldout(d.category)
        assert not is_held_out(d.kind) and "text" not in d.kind.split(":") and "logo" not in d.kind.split(":")
    assert len(fams) >= 2
    assert not {"hand", "scarf", "kn95"} & set(REALISTIC_WEIGHTS)  # the evaluation holds those concepts out
    with pytest.raises(ValueError, match="training-side"):
        OccluderSampler("eval", realistic_prob=0.5)
    with pytest.raises(ValueError):
        OccluderSampler("train", realistic_prob=1.5)
    with pytest.raises(FileNotFoundError, match="harvest"):
        OccluderSampler("train", realistic_prob=0.5, cutouts_dir=ROOT / "tests")


@pytest.mark.skipif(not (LTDET / "detector.onnx").is_file(), reason="ltdet-v1 bundle not built")
def test_fine_tuning_starts_from_the_shipped_net(tmp_path):
    """``--init <bundle>`` starts from the shipped graph's weights; a tiny run with tight scenes and realistic
    occluders trains, checkpoints and moves them."""
    from trainer.detector.checkpoint import load_net, load_trained_net
    from trainer.detector.model import net_from_onnx
    from trainer.detector.train import DetectorPlugin, DetTrainConfig, train

    ref = net_from_onnx(LTDET / "detector.onnx").state_dict()
    for src in (LTDET, "ltdet-v1", LTDET / "detector.onnx"):  # folder, built-in name, graph
        assert all(torch.equal(v, ref[k]) for k, v in load_trained_net(src).state_dict().items())
    cfg = DetTrainConfig(data="astronaut", out=str(tmp_path / "run"), steps=3, batch_size=2, crop=128, workers=0,
                         save_every=3, threads=1, progress=False, init=str(LTDET), tight_prob=0.5,
                         realistic_prob=0.5, lr=1e-3, warmup=1)
    plugin = DetectorPlugin(cfg, renderer=None)
    assert all(torch.equal(v, ref[k]) for k, v in plugin.net.state_dict().items())
    out = train(cfg)
    assert out["steps"] == 3 and np.isfinite(out["final"]["loss"])
    tuned = load_net(tmp_path / "run").state_dict()
    assert any(not torch.equal(v, ref[k]) for k, v in tuned.items())


def test_bad_fine_tuning_flags_are_clear_errors(tmp_path):
    from trainer.main import main

    base = ["detector", "--data", "astronaut", "--out", str(tmp_path / "r"), "--steps", "1"]
    with pytest.raises(SystemExit, match="neither 'blazeface'"):
        main(base + ["--init", str(tmp_path / "missing.onnx")])
    with pytest.raises(SystemExit, match="tight-prob"):
        main(base + ["--tight-prob", "2"])


@pytest.mark.parametrize("name", ["ltdet-v3", "ltdet-v4", "ltdet-v5", "ltdet-fast"])
def test_builtin_ltdet_finds_a_tight_masked_crop_and_identifies_her(astronaut_bgr, name):
    """``ltdet-v3`` / ``ltdet-v4`` (fine-tuned nets + ltdet-v2's refiner, small photos at 2x): the masked astronaut
    cut tight around her face (a square 0.6x her face box: forehead and chin off the edge, 128 px, the framing of many real
    masked photos) is found, where ``ltdet-v2`` and MTCNN find nothing; the masked full photo matches her enrolled
    one above the bundle's occluded-probe threshold."""
    import sdk
    from sdk.bundle import load_bundle
    from sdk.demo import tight_crop
    from sdk.detect import MTCNNDetector
    from sdk.occluders import draw_surgical_mask

    if not (ROOT / "sdk" / "models" / name / "manifest.json").is_file():
        pytest.skip(f"{name} not built")
    spec = load_bundle(name).stages["detect"]
    assert spec.kind == "ltdet" and "refiner" in spec.files and spec.config["upscale_below"] == 320
    face = MTCNNDetector.from_package().detect(astronaut_bgr)[0]
    masked = draw_surgical_mask(astronaut_bgr, face.landmarks)[0]
    crop = tight_crop(masked, face.box, 0.6, 128)
    rec = sdk.Recognizer(name)
    assert len(rec.detect(crop)) == 1
    assert sdk.Recognizer("ltdet-v2").detect(crop) == [] and MTCNNDetector.from_package().detect(crop) == []
    rec.enroll("eileen", astronaut_bgr)
    [m] = rec.identify(masked)
    assert m.identity == "eileen" and m.similarity > m.threshold


@pytest.mark.skipif(not (ROOT / "sdk" / "models" / "ltdet-v3" / "manifest.json").is_file(), reason="ltdet-v3 not built")
def test_exporter_sets_keeps_and_clears_the_small_photo_passes(tmp_path):
    """``--upscale-below PX`` / ``--pad-below PX`` write the settings; re-bundling keeps them; ``0`` drops them."""
    import json

    from export.onnx_detector import main

    graph = str(ROOT / "sdk" / "models" / "ltdet-v3" / "detector.onnx")

    def cfg(out):
        return json.loads((out / "manifest.json").read_text())["stages"]["detect"]["config"]

    assert main(["--from-onnx", graph, "--out", str(tmp_path / "a"), "--bundle-from", "ltdet-v1",
                 "--upscale-below", "256"]) == 0
    assert cfg(tmp_path / "a")["upscale_below"] == 256
    assert main(["--from-onnx", graph, "--out", str(tmp_path / "b"), "--bundle-from", "ltdet-v3"]) == 0
    assert cfg(tmp_path / "b")["upscale_below"] == 320
    assert main(["--from-onnx", graph, "--out", str(tmp_path / "c"), "--bundle-from", "ltdet-v3",
                 "--upscale-below", "0"]) == 0
    assert "upscale_below" not in cfg(tmp_path / "c")
    assert main(["--from-onnx", graph, "--out", str(tmp_path / "d"), "--bundle-from", "ltdet-v3",
                 "--pad-below", "320"]) == 0
    assert cfg(tmp_path / "d")["pad_below"] == 320 and cfg(tmp_path / "d")["upscale_below"] == 320
    assert "pad_below" not in cfg(tmp_path / "b")
    assert main(["--from-onnx", graph, "--out", str(tmp_path / "e"), "--bundle-from", str(tmp_path / "d"),
                 "--pad-below", "0"]) == 0
    assert "pad_below" not in cfg(tmp_path / "e") and cfg(tmp_path / "e")["upscale_below"] == 320


def test_pad_pass_finds_a_face_that_overflows_a_small_photo(astronaut_bgr):
    """``pad_below``: a small photo also runs once centred on a black canvas 1.5x its side (at 192 px), so a face
    larger than the photo is seen whole: the masked astronaut cut at 0.7x her face box (160 px) scores under
    ``ltdet-v3``'s threshold without the pass and above it with the pass; bad values are errors (which frames run it:
    ``tests/test_detect_onnx.py``)."""
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from sdk.demo import tight_crop
    from sdk.detect import MTCNNDetector
    from sdk.detect_onnx import LTDetConfig
    from sdk.occluders import draw_surgical_mask

    face = MTCNNDetector.from_package().detect(astronaut_bgr)[0]
    crop = tight_crop(draw_surgical_mask(astronaut_bgr, face.landmarks)[0], face.box, 0.7, 160)
    spec = load_bundle("ltdet-v3").stages["detect"]
    plain = build_stage(spec, {"score_threshold": 0.3})
    padded = build_stage(spec, {"score_threshold": 0.3, "pad_below": 320})
    without = max((f.score for f in plain.detect(crop)), default=0.0)
    [f] = padded.detect(crop)
    assert without < 0.75 < f.score, (without, f.score)
    assert 0 <= f.box[0] < f.box[2] <= 160 and 0 <= f.box[1] < f.box[3] <= 160  # clipped to the photo
    assert f.landmarks[0, 0] < f.landmarks[1, 0] and f.landmarks[:2, 1].max() < f.landmarks[3:, 1].min()

    for bad in ({"pad_below": 8}, {"pad_canvas": 1.0}, {"pad_side": 100}):
        with pytest.raises(ValueError):
            LTDetConfig(**bad)


def test_hard_negative_scenes(astronaut_set):
    """``hard_prob``: rendered text and star fields (never the evaluation pictures) as backgrounds, a quarter of the
    share small non-face photos alone; 0 leaves every scene as it was (own random stream); pure function of the seed."""
    from trainer.detector.scenes import render_hard_negative

    base, off = _renderer(astronaut_set), _renderer(astronaut_set, hard_prob=0.0)
    for seed in range(6):
        assert base.render(seed).image.tobytes() == off.render(seed).image.tobytes()
    pics = [render_hard_negative(np.random.default_rng(s), 96, 128) for s in range(20)]
    assert all(p.shape == (96, 128, 3) and p.dtype == np.uint8 for p in pics)
    means = np.array([p.mean() for p in pics])
    assert (means < 60).any() and (means > 100).any()  # star fields (dark) and pages of text (light or inverted)
    assert render_hard_negative(np.random.default_rng(3), 96, 128).tobytes() == pics[3].tobytes()
    r = _renderer(astronaut_set, hard_prob=1.0)
    alone, with_faces = 0, 0
    for seed in range(24):
        sc = r.render(seed)
        assert sc.image.tobytes() == r.render(seed).image.tobytes()
        if len(sc.boxes) == 0 and len(sc.ignore) == 0:
            img = sc.image
            rows, cols = np.flatnonzero(img.any(axis=(1, 2))), np.flatnonzero(img.any(axis=(0, 2)))
            if len(rows) and rows.min() == 0 and cols.min() == 0 and not img[rows.max() + 1:].any():
                alone += 1
        else:
            with_faces += 1
    assert alone >= 2 and with_faces >= 12


def test_from_onnx_traces_an_older_graph_again_with_the_same_outputs(tmp_path, astronaut_bgr):
    """``--from-onnx`` on a graph exported before the cheaper in-graph decoding: the weights are read back and
    traced again -- a different graph (bytes) with the same scores, boxes and landmarks."""
    import cv2
    import onnxruntime as ort

    from export.onnx_detector import main
    from trainer.detector.data import to_input

    graph = ROOT / "sdk" / "models" / "ltdet-v1" / "detector.onnx"
    assert main(["--from-onnx", str(graph), "--out", str(tmp_path / "a"), "--bundle-from", "ltdet-v1"]) == 0
    new = tmp_path / "a" / "detector.onnx"
    assert new.read_bytes() != graph.read_bytes()
    x = to_input(cv2.resize(astronaut_bgr, (320, 256))[None]).contiguous().numpy()
    old_out, new_out = [ort.InferenceSession(str(g), providers=["CPUExecutionProvider"]).run(
        ["scores", "boxes", "landmarks"], {"image": x}) for g in (graph, new)]
    assert np.abs(old_out[0] - new_out[0]).max() < 1e-5
    top = old_out[0][0] > 0.5
    assert top.any()
    for a, b in zip(old_out[1:], new_out[1:]):
        assert np.abs(a[0][top] - b[0][top]).max() < 1e-2
