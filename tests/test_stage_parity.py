"""The refactored stages give what every built-in bundle gave before (issue #13: "behaviour unchanged").

Two references:

* ``tests/golden/stages.npz``, recorded by ``tests/golden/make_stage_golden.py`` at commit f157c79 (before the
  stage / backend / preprocess refactor) through the public Recognizer API: faces, embeddings, occlusion
  probabilities and maps, identify similarities, and the inpainter's completed crop, on seeded inputs;
* first principles: each graph run by a bare ``onnxruntime.InferenceSession`` fed by hand in the convention it
  was trained with (written out here, not read from a manifest), compared with the stage that reads the
  manifest's preprocess record.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sdk.align import ARCFACE_CROP, similarity_to_template, warp
from sdk.bundle import BUILTIN_DIR
from sdk.occluders import draw_surgical_mask
from sdk.recognizer import Recognizer

GOLDEN = Path(__file__).resolve().parent / "golden"
BUNDLES = ("default-v1", "baseline", "student-v1", "deocclusion-preview")
#: golden keys recorded under another name: default-v1 was the built-in ``default`` until issue #9.7
RECORDED_AS = {"default-v1": "default"}
#: the goldens were recorded on an Intel Xeon; ONNX Runtime's CPU kernels on another processor (an AMD EPYC) round
#: the last bits differently: seen up to 3.2e-6 on similarities, 1.5e-5 px on boxes, 5e-4 on mask probabilities
#: and one uint8 step on 4 of 37,632 inpainted pixels. Same-machine runs are still checked bit-exactly below
#: (bare ONNX Runtime vs the stage).
CPU_ATOL = 2e-5

pytestmark = pytest.mark.slow  # loads all four built-in bundles (~30 s)


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_stage_golden", GOLDEN / "make_stage_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "stages.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    return _golden_module().golden_frames()


@pytest.fixture(scope="module", params=BUNDLES)
def bundle_run(request, frames):
    """(bundle name, Recognizer with the astronaut enrolled, frames incl. the masked probe)."""
    rec = Recognizer(request.param)
    fr = dict(frames)
    fr["masked"] = draw_surgical_mask(fr["astro"], rec.detect(fr["astro"])[0].landmarks)[0]
    rec.enroll("astronaut", fr["astro"])
    yield request.param, rec, fr
    rec.close()


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_golden_file_is_small(golden):
    assert (GOLDEN / "stages.npz").stat().st_size < 100_000
    assert {f"{RECORDED_AS.get(b, b)}/masked/emb" for b in BUNDLES} <= set(golden)


def test_bundles_give_the_recorded_outputs(bundle_run, golden):
    name, rec, fr = bundle_run
    for probe, frame in fr.items():
        key = f"{RECORDED_AS.get(name, name)}/{probe}"
        faces = rec.detect(frame)
        # 1e-3 px, not bit-equality: recorded on an Intel Xeon; ONNX Runtime's kernels on other CPUs (an AMD EPYC)
        # round the last bit of a few coordinates differently (seen: 1.5e-5 px)
        np.testing.assert_allclose(np.array([f.box for f in faces]).reshape(-1, 4), golden[f"{key}/boxes"],
                                   rtol=0, atol=1e-3)
        np.testing.assert_allclose(np.array([f.landmarks for f in faces]).reshape(-1, 5, 2),
                                   golden[f"{key}/landmarks"], rtol=0, atol=1e-3)
        occ = np.array([np.nan if o is None else o for o in rec.occlusion(frame, faces)])
        np.testing.assert_allclose(occ, golden[f"{key}/occ"], atol=CPU_ATOL, equal_nan=True)
        matches = rec.identify(frame)
        np.testing.assert_allclose([m.similarity for m in matches], golden[f"{key}/sim"], atol=CPU_ATOL)
        np.testing.assert_array_equal([m.completed for m in matches], golden[f"{key}/completed"])
        emb = rec.embed_faces(frame, faces)
        if golden[f"{key}/completed"].any():
            # recorded before enroll/embed_faces ran the complete stage: now the embedding of a completed face
            # is the one identify matched with, so its similarity to the enrolled face is the recorded one
            enrolled = rec.gallery.matrix[0]
            np.testing.assert_allclose(emb @ enrolled, golden[f"{key}/sim"], atol=CPU_ATOL)
            assert np.abs(emb - golden[f"{key}/emb"]).max() > 1e-3  # and not the raw masked face's any more
        else:
            np.testing.assert_allclose(emb, golden[f"{key}/emb"], atol=CPU_ATOL)


def test_segmenter_maps_and_completed_crop(bundle_run, golden):
    name, rec, fr = bundle_run
    if rec.segmenter is None:
        assert name == "baseline" and rec.completer is None
        return
    faces = rec.detect(fr["masked"])
    mats = [similarity_to_template(f.landmarks, ARCFACE_CROP.template) for f in faces]
    crops = np.stack([warp(fr["masked"], m, ARCFACE_CROP.size) for m in mats])
    masks, probs = rec.segmenter.segment(crops)
    if name == "default-v1":
        n, h, w = masks.shape
        pooled = masks.reshape(n, h // 4, 4, w // 4, 4).mean(axis=(2, 4))
        np.testing.assert_allclose(pooled, golden["default/masked/mask_pool4"], atol=2e-3)  # probabilities
    if rec.completer is not None:
        done = rec.completer.complete(crops, rec.segmenter.binary_masks(masks))
        diff = np.abs(done.astype(np.int16) - golden[f"{name}/masked/completed_crop"].astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # uint8 pixels: a rounding step at most, rarely


def test_graphs_fed_by_hand_match_the_stages(frames):
    """Each built-in graph in the convention it was trained with, run by bare ONNX Runtime, vs its stage."""
    rec = Recognizer("deocclusion-preview")
    face = rec.detect(frames["astro"])[0]
    masked = draw_surgical_mask(frames["astro"], face.landmarks)[0]
    [mface] = rec.detect(masked)
    m = similarity_to_template(mface.landmarks, ARCFACE_CROP.template)
    crop = warp(masked, m, ARCFACE_CROP.size)[None]  # (1, 112, 112, 3) uint8 BGR

    # segmenter: uint8 BGR NHWC crops, normalised inside the graph
    seg = _session(BUILTIN_DIR / "default" / "segmenter.onnx")
    m_ref, p_ref = seg.run(["mask_prob", "occluded_prob"], {"crops": crop})
    masks, probs = rec.segmenter.segment(crop)
    np.testing.assert_array_equal(masks, m_ref[:, 0])
    np.testing.assert_array_equal(probs, p_ref.reshape(-1))

    # inpainter: float32 NCHW BGR x / 127.5 - 1, mask (N, 1, H, W); output back by (y + 1) * 127.5
    holes = (masks >= 0.5)
    inp = _session(BUILTIN_DIR / "deocclusion-preview" / "inpainter.onnx")
    x = crop.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    (y,) = inp.run(["completed"], {"image": x, "mask": holes[:, None].astype(np.float32)})
    filled = np.rint((np.clip(y, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(rec.completer.complete(crop, holes), np.where(holes[..., None], filled, crop))

    # student: uint8 RGB NHWC dlib chips, normalised inside the graph
    student = Recognizer("student-v1").embedder
    chips = student.crops(frames["astro"], [face])  # BGR, as every SDK stage reads
    st = _session(BUILTIN_DIR / "student-v1" / "student.onnx")
    (d,) = st.run(None, {st.get_inputs()[0].name: np.ascontiguousarray(chips[..., ::-1])})
    np.testing.assert_array_equal(student.descriptors(chips), d)

    # dlib's network: dlib itself on RGB chips
    dlib = pytest.importorskip("dlib")
    ref = dlib.face_recognition_model_v1(str(rec.bundle.stages["embed"].files["model"].path))
    want = np.array(ref.compute_face_descriptor(np.ascontiguousarray(chips[0, :, :, ::-1]), 0))
    assert np.abs(rec.embedder.descriptors(chips)[0] - want).max() < 1e-4
