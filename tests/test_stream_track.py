"""Tracking parts without models: tracker, Kalman filter, quality, identity voting, motion gate, events, stats."""
import itertools
import json
import threading

import numpy as np
import pytest

from sdk.events import FIELDS, Event, EventSink, read_jsonl
from sdk.identity import IdentityVote, VoteConfig
from sdk.motion import MotionConfig, MotionGate
from sdk.quality import face_quality, pose_scores
from sdk.stream_stats import Ring, StageStats
from sdk.track import KalmanBoxFilter, Tracker, TrackerConfig, TrackState, iou_matrix
from sdk.types import Face

FRONTAL = np.array([[38, 52], [74, 52], [56, 72], [42, 92], [71, 92]], np.float32)  # ArcFace-like, 112 px face


def face(x, y, side=60.0, score=0.99, lm=None):
    box = np.array([x, y, x + side, y + side], np.float32)
    if lm is None:
        lm = FRONTAL / 112.0 * side + np.array([x, y], np.float32)
    return Face(box=box, landmarks=np.asarray(lm, np.float32), score=score)


def step(tr, frame, faces=None, assign=None):
    """One frame: predict, optional full detection, optional per-track faces; returns (born, ended)."""
    tr.predict(frame)
    if faces is not None:
        tr.associate(faces)
    for t, f in (assign or {}).items():
        tr.assign(t, f)
    return tr.finish_frame()


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]])
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    m = iou_matrix(a, b)
    assert m.shape == (2, 2)
    assert m[0, 0] == pytest.approx(1.0) and m[0, 1] == 0.0
    assert m[1, 0] == pytest.approx(25 / 175)
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 2)


def test_kalman_follows_constant_velocity():
    kf = KalmanBoxFilter(np.array([0, 0, 50, 60]))
    for i in range(1, 30):
        kf.predict()
        kf.update(np.array([4 * i, 2 * i, 4 * i + 50, 2 * i + 60]))
    kf.predict()  # where frame 30 should be
    np.testing.assert_allclose(kf.box, [120, 60, 170, 120], atol=1.5)


def test_prediction_steps_over_dropped_frames():
    tr = Tracker(TrackerConfig(min_hits=1))
    for i in range(10):
        step(tr, i, [face(10 + 5 * i, 50)])
    [t] = tr.tracks
    tr.predict(14)  # frames 10-13 were dropped: the face moved 5 px per frame meanwhile
    assert t.predicted_box[0] == pytest.approx(10 + 5 * 14, abs=2)


def test_birth_needs_min_hits_and_ids_are_stable_for_moving_faces():
    tr = Tracker(TrackerConfig(min_hits=2))
    born, _ = step(tr, 0, [face(10, 10), face(300, 80)])
    assert born == [] and len(tr.tracks) == 2 and all(t.state is TrackState.TENTATIVE for t in tr.tracks)
    ids_by_start = {}
    for i in range(1, 40):  # two faces moving towards each other and crossing vertically apart
        born, ended = step(tr, i, [face(10 + 7 * i, 10 + i), face(300 - 7 * i, 80 - i)])
        assert ended == []
        if i == 1:
            assert len(born) == 2
            ids_by_start = {int(t.face.box[0] < 150): t.id for t in born}
    # the boxes overlapped half-way (IoU ~0.3); the one that started on the left is now on the right
    assert {t.id for t in tr.active()} == set(ids_by_start.values())
    right = max(tr.active(), key=lambda t: t.face.box[0])
    assert right.id == ids_by_start[1] and right.hits == 40


def test_one_frame_blip_is_never_born():
    tr = Tracker(TrackerConfig(min_hits=2))
    step(tr, 0, [face(10, 10)])
    born, ended = step(tr, 1, [])
    assert born == [] and ended == [] and tr.tracks == []


def test_lost_track_is_kept_then_ended_and_can_come_back():
    tr = Tracker(TrackerConfig(min_hits=1, max_lost=5))
    [t], _ = step(tr, 0, [face(100, 100)])
    for i in range(1, 4):  # unseen for 3 frames
        step(tr, i, [])
    assert t.state is TrackState.LOST and t.lost_frames == 3
    born, _ = step(tr, 4, [face(100, 100)])  # re-found within max_lost: same track, not a new one
    assert born == [] and t.state is TrackState.ACTIVE and len(tr.tracks) == 1
    ended = []
    for i in range(5, 12):
        ended += step(tr, i, [])[1]
    assert ended == [t] and t.end_reason == "lost" and tr.tracks == []


def test_bytetrack_low_score_round_keeps_a_track_but_never_starts_one():
    cfg = TrackerConfig(min_hits=1, birth_score=0.9, low_score=0.6)
    tr = Tracker(cfg)
    [t], _ = step(tr, 0, [face(100, 100)])
    step(tr, 1, [face(102, 100, score=0.7), face(400, 300, score=0.7)])  # a weak look at the tracked face + a weak new one
    assert t.matched and t.face.score == pytest.approx(0.7) and len(tr.tracks) == 1
    step(tr, 2, [face(400, 300, score=0.5)])  # below low_score: ignored
    assert len(tr.tracks) == 1 and t.state is TrackState.LOST


def test_assign_from_track_guided_redetection():
    tr = Tracker(TrackerConfig(min_hits=2, low_score=0.6))
    step(tr, 0, [face(50, 50)])
    [t] = tr.tracks
    born, _ = step(tr, 1, None, {t: face(53, 50)})
    assert born == [t]
    assert not tr.assign(t, face(60, 50))  # already matched this frame
    step(tr, 2, None, {t: face(56, 50, score=0.3)})  # too weak: lost
    assert t.state is TrackState.LOST
    step(tr, 3, None, {t: None})
    assert t.lost_frames == 2


def test_full_detection_does_not_duplicate_a_track_updated_by_refine():
    tr = Tracker(TrackerConfig(min_hits=1))
    [t], _ = step(tr, 0, [face(50, 50)])
    tr.predict(1)
    tr.assign(t, face(52, 50))
    tr.associate([face(53, 51), face(300, 300)])
    born, _ = tr.finish_frame()
    assert len(tr.tracks) == 2 and t.face.box[0] == pytest.approx(52)  # refine's face kept, one new track


def test_duplicates_are_merged_into_the_older_track():
    tr = Tracker(TrackerConfig(min_hits=1))
    [a], _ = step(tr, 0, [face(50, 50)])
    [b], _ = step(tr, 1, [face(50, 50), face(200, 50)])
    tr.predict(2)
    tr.assign(a, face(200, 50))  # refine pulled both tracks onto the same face
    tr.assign(b, face(201, 50))
    _, ended = tr.finish_frame()
    assert ended == [b] and b.end_reason == "merged" and tr.tracks == [a]


def test_end_all_and_shared_id_counter():
    ids = itertools.count(1)
    t1, t2 = Tracker(TrackerConfig(min_hits=1), ids), Tracker(TrackerConfig(min_hits=1), ids)
    [a], _ = step(t1, 0, [face(0, 0)])
    [b], _ = step(t2, 0, [face(0, 0)])
    assert (a.id, b.id) == (1, 2)
    step(t1, 1, [face(300, 300)])
    [c] = [t for t in t1.tracks if t is not a]
    assert c.id == 3
    assert t1.end_all("stopped") == [a, c] and a.end_reason == "stopped" and t1.tracks == []


def test_tracker_config_is_validated():
    with pytest.raises(ValueError):
        TrackerConfig(low_score=0.95, birth_score=0.9)
    with pytest.raises(ValueError):
        TrackerConfig(min_hits=0)


# -- quality -------------------------------------------------------------------------------------------------
def test_quality_prefers_big_frontal_confident_unoccluded_faces():
    big = face(0, 0, 120)
    assert pose_scores(big.landmarks)[0] < 0.05
    q = face_quality(big)
    assert 0.9 < q <= 1.0
    assert face_quality(face(0, 0, 40)) < q  # smaller
    assert face_quality(face(0, 0, 15)) == 0.0  # below min_side
    assert face_quality(face(0, 0, 120, score=0.75)) < q  # less sure
    assert face_quality(big, occlusion=0.95) < q  # masked
    turned = FRONTAL.copy() / 112 * 120
    turned[2, 0] += 18  # nose moved towards the right eye: head turned
    yaw = pose_scores(turned)[0]
    assert yaw > 0.4
    assert face_quality(face(0, 0, 120, lm=turned)) < q
    rolled = FRONTAL.copy() / 112 * 120
    rolled[1, 1] += 30
    assert pose_scores(rolled)[2] > 0.2


# -- identity voting ---------------------------------------------------------------------------------------
def obs(name, sim, q=1.0, thr=0.9, other=("bob", 0.5)):
    cands = sorted([(name, sim), other], key=lambda c: -c[1])
    return IdentityVote.observation(cands, name if sim >= thr else None, q)


def test_vote_first_decision_then_hysteresis():
    v = IdentityVote(0.9, VoteConfig(window=8, switch_after=2))
    d, changed = v.add(obs("alice", 0.95))
    assert changed and d.identity == "alice" and d.similarity == pytest.approx(0.95)
    d, changed = v.add(obs("alice", 0.93))
    assert not changed and d.similarity == pytest.approx(0.94)
    # one bad look (masked, low quality) does not flip the identity
    d, changed = v.add(IdentityVote.observation([("bob", 0.92), ("alice", 0.6)], "bob", 0.2))
    assert not changed and d.identity == "alice"


def test_vote_changes_identity_after_consistent_evidence():
    v = IdentityVote(0.9, VoteConfig(window=3, switch_after=2))
    v.add(obs("alice", 0.95))
    seen = []
    for _ in range(4):
        d, c = v.add(IdentityVote.observation([("bob", 0.97), ("alice", 0.5)], "bob", 1.0))
        seen.append((d.identity, c))
    # alice -> unknown after two disagreeing looks (hysteresis), unknown -> bob as soon as the evidence says so
    assert seen == [("alice", False), (None, True), ("bob", True), ("bob", False)]


def test_vote_unknown_and_empty_gallery():
    v = IdentityVote(0.9)
    d, changed = v.add(obs("alice", 0.7))
    assert changed and d.identity is None and d.similarity == pytest.approx(0.7)
    e = IdentityVote(0.9)
    d, _ = e.add(IdentityVote.observation([], None, 0.5))
    assert d.identity is None and np.isnan(d.similarity)
    d, _ = e.add(IdentityVote.observation([("x", float("nan"))], None, 0.5))  # NaN similarities dropped
    assert d.identity is None


def test_fused_similarity_is_quality_weighted():
    v = IdentityVote(0.9)
    v.add(obs("alice", 1.0, q=0.9))
    v.add(obs("alice", 0.8, q=0.1))
    assert v.fused()["alice"] == pytest.approx(0.98)


# -- motion gate ---------------------------------------------------------------------------------------------
def test_motion_gate_ignores_tracked_faces_and_sees_new_ones():
    gate = MotionGate(MotionConfig(width=160))
    bg = np.full((480, 640, 3), 100, np.uint8)
    first = gate.update(bg)
    assert first.scene_change and first.outside
    still = gate.update(bg.copy())
    assert not still.outside and still.fraction == 0.0
    f = bg.copy()
    f[100:200, 100:180] = 220  # something moved where a track is
    m = gate.update(f, [np.array([100, 100, 180, 200])])
    assert not m.outside and m.fraction > 0
    g = f.copy()
    g[300:360, 450:500] = 10  # something new elsewhere
    m = gate.update(g, [np.array([100, 100, 180, 200])])
    assert m.outside and not m.scene_change
    x1, y1, x2, y2 = m.region
    assert 430 <= x1 <= 452 and 490 <= x2 <= 510 and 280 <= y1 <= 302
    m = gate.update(255 - g)
    assert m.scene_change


# -- events and stats ----------------------------------------------------------------------------------------
def test_event_sink_writes_whole_lines_from_threads(tmp_path):
    path = tmp_path / "ev.jsonl"
    got = []
    sink = EventSink(path, callbacks=[got.append])

    def work(k):
        for i in range(50):
            sink.emit(Event("track_started", f"s{k}", i, i / 25, 1.0, track=i, box=np.array([1, 2, 3, 4.5]),
                            fields={"first_frame": i, "det_score": np.float32(0.99), "quality": float("nan")}))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    sink.close()  # idempotent
    rows = read_jsonl(path)
    assert len(rows) == 200 == len(got) and sink.counts["track_started"] == 200
    r = rows[0]
    assert set(r) == {"event", "source", "track", "frame", "ts", "captured", "emitted", "box", *FIELDS["track_started"]}
    assert r["quality"] is None and r["box"] == [1.0, 2.0, 3.0, 4.5] and isinstance(r["det_score"], float)
    assert sink.emit(Event("source_ended", "s", 0, 0, 0, fields={"reason": "x", "frames": 1, "dropped": 0}))
    assert len(read_jsonl(path)) == 200  # after close: not written


def test_event_kinds_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match="unknown event kind"):
        Event("person_seen", "s", 0, 0, 0)
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"event": "x"}) + "\n{\"event\": \n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EventSink(tmp_path / "missing" / "ev.jsonl")


def test_ring_keeps_fixed_memory_and_percentiles():
    r = Ring(capacity=100)
    for i in range(1000):
        r.add(float(i % 100))
    assert r.count == 1000 and len(r.values()) == 100
    s = r.summary()
    assert s["n"] == 1000 and s["p50"] == pytest.approx(49.5) and s["mean"] == pytest.approx(49.5)
    st = StageStats(("a", "b"))
    st.frame({"a": 2.0})
    st.call("a", 2.0)
    out = st.summary()
    assert out["per_frame_ms"]["b"]["p50"] == 0.0 and "b" not in out["per_call_ms"]
