"""End to end on real images: detect -> align -> [segment ->] embed -> match with the built-in pretrained models."""
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from sdk.errors import GalleryError, LookThroughError, NoFaceError
from sdk.occluders import draw_surgical_mask
from sdk.recognizer import STAGE_NAMES, Recognizer, RecognizerConfig


def test_identifies_transformed_copies(recognizer, astronaut_bgr):
    flipped = cv2.resize(astronaut_bgr[:, ::-1], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    [m] = recognizer.identify(flipped)
    assert m.identity == "astronaut" and m.similarity > recognizer.threshold
    assert m.occlusion is not None and m.occlusion < 0.5  # the default bundle's segmenter: not occluded
    x1, y1, x2, y2 = m.box
    assert (x1 <= m.landmarks[:, 0]).all() and (m.landmarks[:, 0] <= x2).all()


def test_identifies_masked_copy(recognizer, astronaut_bgr):
    face = recognizer.detect(astronaut_bgr)[0]
    masked, occ = draw_surgical_mask(astronaut_bgr, face.landmarks)
    assert occ.sum() > 0.25 * face.width * face.height  # the mask really covers the lower face
    [m] = recognizer.identify(masked)
    assert m.identity == "astronaut"
    assert m.occlusion > 0.5  # the segmenter sees the mask
    [clean] = recognizer.identify(astronaut_bgr)
    assert m.similarity < clean.similarity  # the mask costs similarity, as expected


def test_other_person_is_unknown_and_no_face_is_empty(recognizer, camera_bgr, coffee_bgr):
    matches = recognizer.identify(camera_bgr)
    assert len(matches) >= 1
    assert all(m.identity is None for m in matches)
    assert all(m.similarity < recognizer.threshold for m in matches)
    assert matches[0].candidates[0][0] == "astronaut"  # the only candidate, below threshold
    assert recognizer.identify(coffee_bgr) == []


def test_grey_input_is_accepted(recognizer, astronaut_bgr):
    grey = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    [m] = recognizer.identify(grey)
    assert m.identity == "astronaut"


@pytest.mark.parametrize("bad, exc", [
    (None, TypeError), (np.zeros((64, 64, 3), np.float64), TypeError), (np.zeros((64, 64, 2), np.uint8), ValueError),
    (np.zeros((0, 0, 3), np.uint8), ValueError), (np.zeros((9000, 20, 3), np.uint8), ValueError),
])
def test_identify_rejects_bad_frames(recognizer, bad, exc):
    with pytest.raises(exc):
        recognizer.identify(bad)


def test_verify(recognizer, astronaut_bgr, camera_bgr):
    same = recognizer.verify(astronaut_bgr, astronaut_bgr[:, ::-1].copy())
    assert same.same and same.similarity > 0.9
    diff = recognizer.verify(astronaut_bgr, camera_bgr)
    assert not diff.same and diff.similarity < same.similarity
    with pytest.raises(NoFaceError, match="image b: no face") as e:
        recognizer.verify(astronaut_bgr, np.full((100, 100, 3), 128, np.uint8))
    # its own class: a LookThroughError and a ValueError, not the gallery-file error
    assert isinstance(e.value, LookThroughError) and isinstance(e.value, ValueError)
    assert not isinstance(e.value, GalleryError)


@pytest.mark.slow
def test_enroll_failing_half_way_loses_nothing(tmp_path, astronaut_bgr, coffee_bgr):
    db = tmp_path / "people.db"
    with Recognizer(gallery=db) as rec:
        assert rec.enroll("astronaut", [astronaut_bgr]) == 1
        with pytest.raises(NoFaceError, match="image 1: no face"):
            rec.enroll("astronaut", [astronaut_bgr[:, ::-1].copy(), coffee_bgr])
        with pytest.raises(TypeError, match="image 1"):
            rec.enroll("astronaut", [astronaut_bgr, np.zeros((64, 64, 3), np.float32)])
        with pytest.raises(FileNotFoundError, match="missing.jpg"):
            rec.enroll("astronaut", [astronaut_bgr, tmp_path / "missing.jpg"])
        assert len(rec.gallery) == 1
    with Recognizer(gallery=db) as rec:  # and on disk
        assert len(rec.gallery) == 1 and rec.gallery.names == ["astronaut"]
        [m] = rec.identify(astronaut_bgr)
        assert m.identity == "astronaut"


def test_threshold_config_controls_acceptance(astronaut_bgr):
    rec = Recognizer(config=RecognizerConfig(threshold=0.9999))
    rec.enroll("astronaut", astronaut_bgr)
    [m] = rec.identify(cv2.resize(astronaut_bgr, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA))
    assert m.identity is None and m.candidates[0][0] == "astronaut"


def test_stage_timings_are_returned_per_call(recognizer, astronaut_bgr):
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    recognizer.identify(astronaut_bgr, timings=timings)
    wall = time.perf_counter() - t0
    assert set(timings) == {"detect", "segment", "align", "embed", "match"} and set(timings) <= set(STAGE_NAMES)
    # each stage did real work, and the stages together fit inside the call
    assert all(v > 0 for v in timings.values()) and sum(timings.values()) <= wall
    assert timings["detect"] > timings["match"]  # a CNN cascade on 512x512 vs one dot product with 1 row
    assert not hasattr(recognizer, "last_timings")  # no per-call state on the shared object
    later: dict[str, float] = {}
    recognizer.identify_faces(astronaut_bgr, recognizer.detect(astronaut_bgr), timings=later)
    assert "detect" not in later and set(later) == {"segment", "align", "embed", "match"}


@pytest.mark.slow
def test_concurrent_calls_give_the_serial_answers(recognizer, astronaut_bgr, camera_bgr):
    """One Recognizer, four threads: every result (and every call's timings) is the one a lone call gives."""
    face = recognizer.detect(astronaut_bgr)[0]
    masked = draw_surgical_mask(astronaut_bgr, face.landmarks)[0]
    frames = [astronaut_bgr, masked, camera_bgr, astronaut_bgr[:, ::-1].copy()] * 2
    serial = [[(m.identity, m.similarity, m.occlusion) for m in recognizer.identify(f)] for f in frames]

    def one(f):
        t: dict[str, float] = {}
        return [(m.identity, m.similarity, m.occlusion) for m in recognizer.identify(f, timings=t)], t

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, frames))
    assert [g for g, _ in got] == serial
    assert all(set(t) == {"detect", "segment", "align", "embed", "match"} for _, t in got)


@pytest.mark.slow
def test_identify_enroll_and_verify_run_the_same_stages(astronaut_bgr):
    """With a completing bundle, a masked face is completed whether it is enrolled, verified or identified: the
    embedding a probe is matched with is the one enrolling the same image stores."""
    with Recognizer("deocclusion-preview") as rec:
        face = rec.detect(astronaut_bgr)[0]
        masked = draw_surgical_mask(astronaut_bgr, face.landmarks)[0]
        [found] = rec.detect(masked)
        e_faces = rec.embed_faces(masked, [found])[0]
        np.testing.assert_array_equal(e_faces, rec.embed_largest(masked))
        rec.enroll("masked", masked)
        np.testing.assert_allclose(rec.gallery.matrix[0], e_faces, atol=1e-6)
        [m] = rec.identify(masked)
        assert m.completed and m.identity == "masked" and m.similarity == pytest.approx(1.0, abs=1e-5)
        assert rec.verify(masked, masked).similarity == pytest.approx(1.0, abs=1e-5)
        # skipping completion changes the embedding: enroll really ran the complete stage
        raw = rec.embedder.embed(masked, [found])[0]
        assert float(np.dot(raw, e_faces)) < 0.999


def test_embed_largest_picks_the_largest_face(recognizer, astronaut_bgr):
    small = cv2.resize(astronaut_bgr, (160, 160), interpolation=cv2.INTER_AREA)
    frame = np.full((520, 900, 3), 90, np.uint8)
    frame[:512, 380:892] = astronaut_bgr
    frame[20:180, 20:180] = small
    faces = recognizer.detect(frame)
    assert len(faces) == 2
    big = max(faces, key=lambda f: f.width)
    np.testing.assert_array_equal(recognizer.embed_largest(frame), recognizer.embed_faces(frame, [big])[0])
