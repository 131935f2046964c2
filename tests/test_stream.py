"""Streams end to end on videos the tests render: tracking, recognition events, batching, detector fallbacks."""
import json
import threading

import cv2
import numpy as np
import pytest

from _stream_util import MjpegServer, wait_for
from sdk.batch import identify_batch, pack_regions
from sdk.events import FIELDS, read_jsonl
from sdk.occluders import draw_surgical_mask
from sdk.schedule import ScheduleConfig
from sdk.sources import SourceConfig
from sdk.scenes import PEOPLE, make_scene, person_image, render
from sdk.stream import Stream, StreamConfig, StreamError
from sdk.track import iou_matrix
from sdk.types import Face


@pytest.fixture(scope="module")
def rec():
    """A Recognizer with both scikit-image people enrolled (unmasked pictures), in-memory gallery."""
    from sdk.recognizer import Recognizer

    r = Recognizer().prepare()
    for name in PEOPLE:
        r.enroll(name, person_image(name))
    return r


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    """640x480, 3 s: the astronaut from frame 0, the cameraman *masked* from frame 9; nobody leaves."""
    scene = make_scene((640, 480), faces=2, frames=75, masked=0.5, leave_after=None, seed=1)
    assert [(a.person, a.masked) for a in scene.actors] == [("astronaut", False), ("cameraman", True)]
    return scene, render(scene, tmp_path_factory.mktemp("video") / "two.mp4")


def actor_tracks(scene, frames_tracks):
    """For each actor: {track id: frames} of the tracks whose box overlaps the actor's true face box."""
    out = [dict() for _ in scene.actors]
    for frame, tracks in frames_tracks:
        for k, a in enumerate(scene.actors):
            gt = a.face_box(frame)
            if gt is None:
                continue
            for tid, box in tracks:
                if iou_matrix([gt], [box])[0, 0] > 0.3:
                    out[k][tid] = out[k].get(tid, 0) + 1
    return out


@pytest.fixture(scope="module")
def mtcnn_rec():
    """The previous default (MTCNN + the same segmenter and student): PEOPLE holds MTCNN's boxes, and MTCNN's O-Net
    is the detector with a ``refine`` (LTDet, today's default, re-detects in a crop instead)."""
    from sdk.recognizer import Recognizer

    return Recognizer("default-v2").prepare()


def test_people_constants_match_the_detector(mtcnn_rec):
    for name, info in PEOPLE.items():
        [f] = mtcnn_rec.detect(person_image(name))
        np.testing.assert_allclose(f.box, info["box"], atol=1.0)
        np.testing.assert_allclose(f.landmarks, info["landmarks"], atol=1.0)


def test_refine_follows_a_face_and_rejects_background(mtcnn_rec, astronaut_bgr):
    det = mtcnn_rec.detector
    [f0] = det.detect(astronaut_bgr)
    [same] = det.refine(astronaut_bgr, [f0.box])
    assert same.score > 0.99 and iou_matrix([f0.box], [same.box])[0, 0] > 0.9
    assert np.abs(same.landmarks - f0.landmarks).max() < 3
    b = f0.box.copy()
    for _ in range(20):  # fed its own output, it does not drift
        b = det.refine(astronaut_bgr, [b])[0].box
    assert iou_matrix([f0.box], [b])[0, 0] > 0.85
    w = f0.width
    shifted = f0.box + np.array([0.15 * w, -0.1 * w, 0.15 * w, -0.1 * w], np.float32)
    moved, background = det.refine(astronaut_bgr, [shifted, [400, 400, 480, 480]])
    assert iou_matrix([f0.box], [moved.box])[0, 0] > 0.75 and moved.score > 0.9  # pulled back onto the face
    assert background.score < 0.5
    assert det.refine(astronaut_bgr, np.zeros((0, 4))) == []
    [outside] = det.refine(astronaut_bgr, [[600, 600, 700, 700]])
    assert outside.score < 0.5
    with pytest.raises(ValueError, match="finite"):
        det.refine(astronaut_bgr, [[0, 0, np.nan, 10]])



def test_ltdet_refine_follows_a_face_and_rejects_background(rec, astronaut_bgr):
    """The default detector (LTDet) re-detects around a box with one small net call on a window twice the box."""
    det = rec.detector
    assert det.kind == "ltdet" and det.refine_reach > 0
    [f0] = det.detect(astronaut_bgr)
    [same] = det.refine(astronaut_bgr, [f0.box])
    assert same.score > 0.9 and iou_matrix([f0.box], [same.box])[0, 0] > 0.8
    assert np.abs(same.landmarks - f0.landmarks).max() < 4  # both from the landmark refiner
    b = f0.box.copy()
    for _ in range(20):  # fed its own output, it does not drift
        b = det.refine(astronaut_bgr, [b])[0].box
    assert iou_matrix([f0.box], [b])[0, 0] > 0.8
    side = f0.box[2] - f0.box[0]
    moved, background, outside = det.refine(astronaut_bgr, [f0.box + 0.3 * side * np.array([1, 0, 1, 0]),
                                                            [400, 400, 480, 480], [600, 600, 700, 700]])
    assert moved.score > 0.9 and iou_matrix([f0.box], [moved.box])[0, 0] > 0.7  # within its reach: found again
    assert background.score < 0.6 and outside.score == 0.0  # below the tracker's low_score: not a face
    assert det.refine(astronaut_bgr, np.zeros((0, 4))) == []
    with pytest.raises(ValueError, match="finite"):
        det.refine(astronaut_bgr, [[0, 0, np.nan, 10]])


def test_tracks_are_born_at_the_recognizers_detection_score(rec, mtcnn_rec, tmp_path):
    """LTDet scores faces on another scale than MTCNN: the tracker's birth_score (0.9, MTCNN's) is capped at the
    recognizer's min_det_score, so every face the recognizer accepts can start a track."""
    from sdk.track import TrackerConfig

    video = render(make_scene((320, 240), faces=1, frames=5, masked=0.0, leave_after=None, seed=3), tmp_path / "v.mp4")
    assert Stream(rec, [video]).tracker_config.birth_score == rec.min_det_score == 0.75
    assert Stream(mtcnn_rec, [video]).tracker_config == TrackerConfig()  # MTCNN bundles: unchanged (0.9)
    strict = StreamConfig(tracker=TrackerConfig(birth_score=0.95, low_score=0.8))
    cfg = Stream(rec, [video], config=strict).tracker_config
    assert (cfg.birth_score, cfg.low_score) == (0.75, 0.75)


def test_ltdet_stream_tries_one_window_per_track(rec, two_people, tmp_path):
    """With LTDet's refine (reach 0.4 box sides) the stream sends one box per track, never the shifted tries."""
    scene, video = two_people
    calls = []
    real = rec.detector.refine

    class Det:
        refine_reach = rec.detector.refine_reach
        detect = staticmethod(rec.detector.detect)

        def refine(self, frame, boxes, context=1.0):
            calls.append(len(boxes))
            return real(frame, boxes, context)

    class Proxy:
        bundle, threshold, detector, min_det_score = rec.bundle, rec.threshold, Det(), rec.min_det_score
        identify_faces = staticmethod(rec.identify_faces)

    summary = Stream(Proxy(), [str(video)], events=tmp_path / "ev.jsonl").run()
    assert calls and max(calls) <= 2 and summary["events"]["track_started"] == 2
    events = read_jsonl(tmp_path / "ev.jsonl")
    assert sorted(e["identity"] for e in events if e["event"] == "identified") == ["astronaut", "cameraman"]

def test_identify_batch_equals_per_frame_calls(rec, astronaut_bgr, camera_bgr):
    [fa] = rec.detect(astronaut_bgr)
    masked, _ = draw_surgical_mask(astronaut_bgr, fa.landmarks)
    wide = cv2.copyMakeBorder(camera_bgr, 0, 0, 300, 0, cv2.BORDER_CONSTANT)  # a face far from the origin
    items = [(f, rec.detect(f)) for f in (astronaut_bgr, camera_bgr, masked, wide)]
    direct = [rec.identify_faces(f, faces) for f, faces in items]
    calls = []
    real = rec.identify_faces

    class Counting:
        bundle, threshold = rec.bundle, rec.threshold

        def identify_faces(self, frame, faces):
            calls.append(len(faces))
            return real(frame, faces)

    batched = identify_batch(Counting(), items)
    assert calls == [4]  # one call for the faces of four frames
    for d, b in zip(direct, batched):
        assert len(d) == len(b) == 1
        assert d[0].identity == b[0].identity
        assert b[0].similarity == pytest.approx(d[0].similarity, abs=1e-4)
        assert b[0].occlusion == pytest.approx(d[0].occlusion, abs=1e-3)
        np.testing.assert_allclose(b[0].box, d[0].box, atol=1e-3)
    assert [m[0].identity for m in batched] == ["astronaut", "cameraman", "astronaut", "cameraman"]
    assert identify_batch(rec, [(astronaut_bgr, [])]) == [[]]


def test_pack_regions_never_overlap():
    sizes = [50, 120, 30, 30, 200, 75, 10]
    offs, w, h = pack_regions(sizes, max_width=256)
    rects = [(x, y, x + s, y + s) for (x, y), s in zip(offs, sizes)]
    assert all(x2 <= max(w, 256) and y2 <= h for _, _, x2, y2 in rects)
    iou = iou_matrix(rects, rects)
    assert np.allclose(iou - np.eye(len(sizes)), 0)


@pytest.mark.slow
def test_stream_tracks_and_identifies_two_people(rec, two_people, tmp_path):
    scene, video = two_people
    seen = []
    ev_path, out = tmp_path / "events.jsonl", tmp_path / "annotated.mp4"
    stream = Stream(rec, [str(video)], events=ev_path, out=out,
                    on_frame=lambda p, tracks: seen.append((p.index, [(t.id, t.face.box.copy()) for t in tracks if t.matched])))
    summary = stream.run()
    events = read_jsonl(ev_path)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "source_started" and kinds[-1] == "source_ended" and events[-1]["reason"] == "end_of_stream"
    envelope = {"event", "source", "track", "frame", "ts", "captured", "emitted", "box"}
    for e in events:  # exactly the documented schema
        assert set(e) == envelope | set(FIELDS[e["event"]]), e["event"]
    started = [e for e in events if e["event"] == "track_started"]
    ended = {e["track"]: e for e in events if e["event"] == "track_ended"}
    assert len(started) == 2 and set(ended) == {e["track"] for e in started}
    # one stable track id per person, found within the scheduler's max_delay_s (0.5 s = 12 frames) of
    # appearing and following the face on (almost) every frame from then on
    per_actor = actor_tracks(scene, seen)
    first = {e["track"]: e["first_frame"] for e in started}
    for a, ids in zip(scene.actors, per_actor):
        assert len(ids) == 1, f"{a.person}: tracks {ids}"
        [(tid, n)] = ids.items()
        assert first[tid] - a.appear <= 14
        assert n >= 0.9 * (scene.frames - first[tid])
    ident = {e["track"]: e for e in events if e["event"] == "identified"}
    for a, ids in zip(scene.actors, per_actor):
        [tid] = ids
        e = ident[tid]
        assert e["identity"] == a.person and e["similarity"] >= rec.threshold
        assert (e["occlusion"] > 0.5) == a.masked and e["completed"] is False
        assert e["latency_ms"] > 0 and e["frame"] - a.appear <= 30  # identified within ~1 s of appearing
        assert ended[tid]["identity"] == a.person and ended[tid]["reason"] == "source_ended"
    assert not [e for e in events if e["event"] == "identity_changed"]
    # track-guided detection: far fewer full-frame detections than frames
    assert summary["sources"][0]["full_detections"] <= scene.frames // 3
    assert summary["frames"] == scene.frames and summary["events"]["identified"] == 2
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == scene.frames
    cap.release()


def test_detector_without_refine_falls_back_to_region_detection(rec, tmp_path):
    scene = make_scene((320, 240), faces=1, frames=25, masked=0.0, leave_after=None, seed=2)
    video = render(scene, tmp_path / "one.mp4")
    calls = {"sizes": []}

    class PlainDetector:  # a detector with only detect(), like a future one might be
        def detect(self, frame):
            calls["sizes"].append(frame.shape[:2])
            return rec.detector.detect(frame)

    class Proxy:
        bundle, threshold, detector = rec.bundle, rec.threshold, PlainDetector()
        identify_faces = staticmethod(rec.identify_faces)

    stream = Stream(Proxy(), [video], events=tmp_path / "ev.jsonl", config=StreamConfig(schedule=ScheduleConfig(detect_every=10)))
    summary = stream.run()
    events = read_jsonl(tmp_path / "ev.jsonl")
    assert [e["identity"] for e in events if e["event"] == "identified"] == ["astronaut"]
    assert summary["events"]["track_started"] == 1
    crops = [s for s in calls["sizes"] if s != (240, 320)]
    assert len(crops) >= 15  # the frames between full detections searched a crop around the track


def test_two_sources_share_one_recognizer_with_batched_calls(rec, tmp_path):
    scene = make_scene((320, 240), faces=1, frames=30, masked=0.0, leave_after=None, seed=3)
    video = render(scene, tmp_path / "a.mp4")
    sizes = []
    real = rec.identify_faces

    class Proxy:
        bundle, threshold, detector = rec.bundle, rec.threshold, rec.detector

        def identify_faces(self, frame, faces):
            sizes.append(len(faces))
            return real(frame, faces)

    stream = Stream(Proxy(), [f"left={video}", f"right={video}"], events=tmp_path / "ev.jsonl",
                    out=tmp_path / "out.avi")
    summary = stream.run()
    events = read_jsonl(tmp_path / "ev.jsonl")
    idents = [(e["source"], e["identity"]) for e in events if e["event"] == "identified"]
    assert sorted(idents) == [("left", "astronaut"), ("right", "astronaut")]
    assert sizes[0] == 2  # both sources' new faces went through one call
    assert [s["name"] for s in summary["sources"]] == ["left", "right"] and summary["frames"] == 60
    assert (tmp_path / "out_0.avi").stat().st_size > 0 and (tmp_path / "out_1.avi").stat().st_size > 0
    tracks = {e["track"] for e in events if e["event"] == "track_started"}
    assert len(tracks) == 2 and tracks == {e["track"] for e in events if e["event"] == "track_ended"}


def test_live_mjpeg_stream_reports_the_drop_and_reconnects(rec, tmp_path):
    scene = make_scene((320, 240), faces=1, frames=50, masked=0.0, leave_after=None, seed=4)
    cfg = StreamConfig(source=SourceConfig(reconnect_initial_s=0.2, reconnect_max_s=0.5, read_timeout_s=2,
                                           open_timeout_s=2))
    ev = tmp_path / "ev.jsonl"
    with MjpegServer(list(render(scene)), fps=25) as cam:
        stream = Stream(rec, [f"door={cam.url}"], events=ev, config=cfg)
        runner = threading.Thread(target=stream.run)
        runner.start()
        try:
            wait_for(lambda: "identified" in ev.read_text(), 30, "the astronaut to be identified")
            cam.stop()
            wait_for(lambda: "source_lost" in ev.read_text(), 20, "source_lost")
            cam.start()
            wait_for(lambda: "source_reconnected" in ev.read_text(), 20, "source_reconnected")
            n = stream.frames
            wait_for(lambda: stream.frames > n + 10, 20, "frames after the reconnection")
        finally:
            stream.stop()
            runner.join(30)
    events = read_jsonl(ev)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "source_started" and kinds[-1] == "source_ended" and events[-1]["reason"] == "stopped"
    lost = next(e for e in events if e["event"] == "source_lost")
    assert lost["source"] == "door" and lost["attempt"] == 1 and lost["track"] is None
    assert ("door", "astronaut") in {(e["source"], e["identity"]) for e in events if e["event"] == "identified"}
    started = {e["track"] for e in events if e["event"] == "track_started"}
    assert started and started == {e["track"] for e in events if e["event"] == "track_ended"}


def test_stream_errors(rec, two_people, tmp_path):
    _, video = two_people
    with pytest.raises(ValueError, match="at least one source"):
        Stream(rec, [])
    with pytest.raises(FileNotFoundError):
        Stream(rec, [str(tmp_path / "missing.mp4")])
    with pytest.raises(StreamError, match="cannot write"):
        Stream(rec, [str(video)], out=tmp_path / "annotated.xyz")
    with pytest.raises(TypeError):
        Stream(rec, [str(video)], config={"detect_every": 3})
    with pytest.raises(ValueError):
        ScheduleConfig(detect_budget=0)
    with pytest.raises(ValueError):
        StreamConfig(recognize_every=0)


def test_json_summary_is_serialisable(rec, two_people, tmp_path):
    _, video = two_people
    s = Stream(rec, [str(video)], config=StreamConfig(schedule=ScheduleConfig(detect_every=1))).run(max_frames=3)
    json.dumps(s)
    assert s["frames"] == 3 and s["sources"][0]["full_detections"] == 3 and s["stopped"] == "max_frames"
    assert s["per_frame_ms"]["total"]["n"] == 3


def test_identify_batch_splits_tall_canvases_and_maps_faces_back(monkeypatch):
    """A fake recognizer reads each face's frame id from the canvas pixels at the face centre."""
    import sdk.batch as batch
    from sdk.types import Match

    calls = []

    class Fake:
        def identify_faces(self, frame, faces):
            calls.append(frame.shape)
            out = []
            for f in faces:
                cx, cy = int((f.box[0] + f.box[2]) / 2), int((f.box[1] + f.box[3]) / 2)
                out.append(Match(f.box, f.landmarks, f.score, None, f"frame{frame[cy, cx, 0]}", 1.0))
            return out

    monkeypatch.setattr(batch, "MAX_CANVAS", 400)
    items = []
    for k in range(5):
        frame = np.full((300, 400, 3), 10 * (k + 1), np.uint8)
        faces = [Face(np.array([x, 100, x + 40, 140], np.float32), np.zeros((5, 2), np.float32), 0.99) for x in (20, 300)]
        items.append((frame, faces))
    res = batch.identify_batch(Fake(), items)
    assert len(calls) > 1 and all(h <= 400 for h, _, _ in calls)
    for k, matches in enumerate(res):
        assert [m.identity for m in matches] == [f"frame{10 * (k + 1)}"] * 2
        np.testing.assert_allclose([m.box for m in matches], [f.box for f in items[k][1]], atol=1e-4)
