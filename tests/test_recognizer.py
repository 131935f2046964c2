"""End to end on real images: detect -> align -> embed -> match with the built-in pretrained models."""
import cv2
import numpy as np
import pytest

from sdk.errors import GalleryError
from sdk.occluders import draw_surgical_mask
from sdk.recognizer import Recognizer, RecognizerConfig


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
    with pytest.raises(GalleryError, match="image b: no face"):
        recognizer.verify(astronaut_bgr, np.full((100, 100, 3), 128, np.uint8))


def test_enroll_failing_half_way_loses_nothing(tmp_path, astronaut_bgr, coffee_bgr):
    db = tmp_path / "people.db"
    with Recognizer(gallery=db) as rec:
        assert rec.enroll("astronaut", [astronaut_bgr]) == 1
        with pytest.raises(GalleryError, match="image 1: no face"):
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


def test_stage_timings_recorded(recognizer, astronaut_bgr):
    recognizer.identify(astronaut_bgr)
    assert set(recognizer.last_timings) == {"detect", "segment", "align", "embed", "match"}
    assert all(v >= 0 for v in recognizer.last_timings.values())
