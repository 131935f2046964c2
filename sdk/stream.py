"""Real-time recognition on video: ``sdk.Stream(recognizer, sources, events=...).run()``.

Data flow (one capture thread per source, everything else in the thread that calls :meth:`Stream.run`)::

    sources (sdk.sources) -> per frame: motion gate -> [full detection | track-guided re-detection]
      -> tracker (sdk.track) -> recognition of the tracks that need it, batched across sources
      (sdk.batch) -> identity voting (sdk.identity) -> events (sdk.events) [-> annotated video]

Detection runs on full frames only when needed. Between detections each track is re-detected around its
Kalman prediction (``detector.refine``: MTCNN's O-Net on one 48x48 crop, ~1 ms; LTDet's net on a 128x128
window twice the box, ~3 ms with its landmark refiner; a detector without ``refine`` is run on a crop around
the prediction instead). Tracks are born at the tracker's ``birth_score`` capped at the recognizer's
``min_det_score`` (the detectors score on different scales). The detector itself runs only where a new face
may have appeared (:mod:`sdk.schedule`): on a region where something moved outside the tracked faces or a
track was just lost, on the full frame after a scene change and at least every ``max_interval_s``, paced by
a time budget measured from the detector's real cost (a slow detector runs rarely, a fast one often).

A track is recognised when it is born, when its face quality (:mod:`sdk.quality`) rises by ``quality_gain``
over the best look recognised so far, and every ``recognize_every`` frames; never more than
``max_recognitions`` faces per step (born tracks first). The Recognizer is used from this one thread only.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from sdk.batch import identify_batch
from sdk.draw import annotate
from sdk.errors import LookThroughError
from sdk.events import Event, EventSink
from sdk.frame import as_bgr
from sdk.identity import IdentityVote, VoteConfig
from sdk.motion import MotionConfig, MotionGate
from sdk.quality import QualityConfig, face_quality
from sdk.schedule import DetectionScheduler, Plan, ScheduleConfig
from sdk.sources import FramePacket, Source, SourceConfig, open_source
from sdk.stream_stats import Ring, StageStats
from sdk.track import Track, Tracker, TrackerConfig, TrackState, iou_matrix
from sdk.types import Face, Match

log = logging.getLogger(__name__)

__all__ = ["StreamConfig", "Stream", "StreamError", "STAGES"]

#: stages timed per frame (milliseconds; ``Stream.stats``)
STAGES = ("motion", "detect", "refine", "track", "recognize", "draw", "total")


def _tracker_config(cfg: TrackerConfig, min_det_score: float | None) -> TrackerConfig:
    """``cfg`` with ``birth_score`` (and ``low_score``, which may not exceed it) capped at ``min_det_score``."""
    if min_det_score is None or not min_det_score < cfg.birth_score:
        return cfg
    m = float(min_det_score)
    return dataclasses.replace(cfg, birth_score=m, low_score=min(cfg.low_score, m))


class StreamError(LookThroughError, ValueError):
    """The stream cannot run as asked (e.g. the annotated video cannot be written)."""


@dataclass(frozen=True)
class StreamConfig:
    """Settings of :class:`Stream` (frames are source frames; times are seconds).

    Attributes:
        tracker, vote, quality, motion, schedule, source: settings of the parts (see their modules;
            ``schedule`` decides when the full-frame detector runs, :mod:`sdk.schedule`).
        recognize_every: re-recognise each track every N frames.
        recognize_min_gap: frames between two recognitions of one track triggered by better quality.
        quality_gain: quality rise (0-1) over the best recognised look that triggers a recognition.
        max_recognitions: faces recognised per step at most (the others wait for the next step).
        refine_context: crop side for track-guided re-detection, relative to the predicted box's longer side.
        refine_lost: processed frames a lost track is still searched for around its predicted box.
        event_candidates: candidates listed in ``identified`` / ``identity_changed`` events.
    """

    tracker: TrackerConfig = TrackerConfig()
    vote: VoteConfig = VoteConfig()
    quality: QualityConfig = QualityConfig()
    motion: MotionConfig = MotionConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    source: SourceConfig = SourceConfig()
    recognize_every: int = 25
    recognize_min_gap: int = 3
    quality_gain: float = 0.15
    max_recognitions: int = 8
    refine_context: float = 1.0
    refine_lost: int = 5
    event_candidates: int = 3

    def __post_init__(self) -> None:
        if self.recognize_every < 1 or self.recognize_min_gap < 0:
            raise ValueError("need recognize_every >= 1 and recognize_min_gap >= 0")
        if self.max_recognitions < 1 or self.refine_context <= 0 or self.refine_lost < 0:
            raise ValueError("need max_recognitions >= 1, refine_context > 0, refine_lost >= 0")


@dataclass
class _TrackInfo:
    """What the stream keeps per track (in ``Track.data["info"]``)."""

    vote: IdentityVote
    first_ts: float
    first_captured: float
    first_mono: float
    last_ts: float = 0.0
    last_captured: float = 0.0
    last_rec: int = -(10 ** 9)
    best_q: float = -1.0
    occlusion: float | None = None
    completed: bool = False
    recognitions: int = 0


@dataclass
class _Lane:
    """One source and its per-source state."""

    source: Source
    tracker: Tracker
    motion: MotionGate
    writer: cv2.VideoWriter | None = None
    out_path: Path | None = None
    frames: int = 0
    scheduler: DetectionScheduler | None = None  # created at the first frame (its size)
    closed: bool = False
    last: FramePacket | None = None
    tracks_started: int = 0


class Stream:
    """Recognise faces on one or more video sources in real time, writing events.

    Args:
        recognizer: a :class:`sdk.Recognizer` (its gallery holds the people to find); used from the thread
            that runs :meth:`run` only.
        sources: video files, image folders, RTSP/HTTP URLs, camera indices, or :class:`sdk.sources.Source`
            objects (``"name=uri"`` names a source). Opened here: a bad source raises before anything runs.
        events: a JSON-lines file to append events to, an :class:`~sdk.events.EventSink`, or ``None``.
        out: annotated video (``.mp4``/``.avi``); with several sources ``name_<i>.mp4`` per source.
        config: :class:`StreamConfig`.
        on_event: called with each event's dict (from the inference thread, or a capture thread for
            ``source_lost`` / ``source_reconnected``).
        on_frame: called after each processed frame with ``(packet, tracks)`` (born tracks of that source).

    Example::

        rec = sdk.Recognizer(gallery="people.db")
        with sdk.Stream(rec, ["door=rtsp://10.0.0.5/live", "lobby.mp4"], events="events.jsonl") as s:
            s.run()              # until the sources end or s.stop() (Ctrl-C in the CLI)
    """

    def __init__(self, recognizer, sources: Sequence[str | int | Path | Source],
                 events: str | Path | EventSink | None = None, out: str | Path | None = None,
                 config: StreamConfig = StreamConfig(), on_event: Callable[[dict], None] | None = None,
                 on_frame: Callable[[FramePacket, list[Track]], None] | None = None):
        if not isinstance(config, StreamConfig):
            raise TypeError(f"config must be a StreamConfig, got {type(config).__name__}")
        if isinstance(sources, (str, int, Path, Source)):
            sources = [sources]
        if not sources:
            raise ValueError("Stream needs at least one source")
        self.rec = recognizer
        self.config = config
        self.threshold = float(getattr(recognizer, "threshold", recognizer.bundle.threshold))
        self._refine = getattr(recognizer.detector, "refine", None)
        #: shifts (box sides) a detector's ``refine`` already covers (LTDet's window is twice the box; MTCNN: 0)
        self._refine_reach = float(getattr(recognizer.detector, "refine_reach", 0.0))
        #: the tracker's settings: ``config.tracker`` with ``birth_score`` capped at the recognizer's
        #: ``min_det_score`` (a face the recognizer accepts can start a track: LTDet bundles score on another
        #: scale than MTCNN, whose 0.9 the default ``birth_score`` is)
        self.tracker_config = _tracker_config(config.tracker, getattr(recognizer, "min_det_score", None))
        self.sink = events if isinstance(events, EventSink) else EventSink(events)
        if on_event is not None:
            self.sink.callbacks.append(on_event)
        self.on_frame = on_frame
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self._ids = itertools.count(1)
        self.stats = StageStats(STAGES)
        self.latency_ms = Ring()  # first frame of a track -> its identified event
        self.frames = 0
        self.recognitions = 0
        self.wall_s = 0.0
        self._lanes: list[_Lane] = []
        try:
            for s in sources:
                src = s if isinstance(s, Source) else open_source(s, config=config.source, wake=self._wake)
                src.on_event, src.wake = self.sink.emit, self._wake
                self._lanes.append(_Lane(src, Tracker(self.tracker_config, self._ids), MotionGate(config.motion)))
            names = [ln.source.name for ln in self._lanes]
            for i, ln in enumerate(self._lanes):
                if names.count(ln.source.name) > 1:
                    ln.source.name = f"{ln.source.name}#{i}"
            if out is not None:
                self._open_writers(Path(out))
        except BaseException:
            self._release()
            raise

    # -- public -------------------------------------------------------------------------------------------
    @property
    def sources(self) -> list[Source]:
        return [ln.source for ln in self._lanes]

    def stop(self, reason: str = "stopped") -> None:
        """Ask :meth:`run` to finish (thread- and signal-safe): pending events are written, videos closed."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        self._wake.set()

    def run(self, max_frames: int | None = None, duration_s: float | None = None) -> dict:
        """Process frames until every source has ended, :meth:`stop` is called, ``max_frames`` frames (all
        sources together) were processed or ``duration_s`` seconds passed. Then every track is ended
        (``track_ended``), every source closed (``source_ended``), videos and the event file closed.

        Returns:
            :meth:`summary` of the run.
        """
        t0 = time.perf_counter()
        for ln in self._lanes:
            self._emit("source_started", ln, None, ln.source.describe())
            ln.source.start()
        try:
            while not self._stop.is_set():
                if max_frames is not None and self.frames >= max_frames:
                    self.stop("max_frames")
                    break
                if duration_s is not None and time.perf_counter() - t0 >= duration_s:
                    self.stop("duration")
                    break
                batch = []
                for ln in self._lanes:
                    if ln.closed:
                        continue
                    # files (not realtime) go in lock-step: wait briefly for the reader so that every source
                    # contributes a frame to each step (full batches); live sources give what they have
                    lockstep = not (ln.source.live or ln.source.config.realtime)
                    pkt = ln.source.get(timeout=1.0 if lockstep else 0.0)
                    if pkt is not None:
                        batch.append((ln, pkt))
                    elif ln.source.finished:
                        self._close_lane(ln, ln.source.end_reason or "end_of_stream")
                if all(ln.closed for ln in self._lanes):
                    break
                if not batch:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                self._step(batch)
        except BaseException as e:  # still end every track and close everything (below), then re-raise
            if self.stop_reason is None:
                self.stop_reason = "interrupted" if isinstance(e, KeyboardInterrupt) else "error"
            raise
        finally:
            self.wall_s = time.perf_counter() - t0
            for ln in self._lanes:
                if not ln.closed:
                    self._close_lane(ln, self.stop_reason or "stopped")
            self._release()
        return self.summary()

    def summary(self) -> dict:
        """Frames, frames per second, per-stage milliseconds (p50/p95/p99), counts and per-source facts."""
        fps = self.frames / self.wall_s if self.wall_s > 0 else float("nan")
        return {"frames": self.frames, "wall_s": round(self.wall_s, 3), "fps": round(fps, 2),
                "recognitions": self.recognitions, "events": dict(self.sink.counts),
                "identify_latency_ms": self.latency_ms.summary(), **self.stats.summary(),
                "sources": [{"name": ln.source.name, "kind": ln.source.kind, "frames": ln.frames,
                             "read": ln.source.frames_read, "dropped": ln.source.dropped,
                             "reconnects": ln.source.reconnects,
                             "full_detections": ln.scheduler.full_detections if ln.scheduler else 0,
                             "region_detections": ln.scheduler.region_detections if ln.scheduler else 0,
                             "tracks": ln.tracks_started, "end": ln.source.end_reason} for ln in self._lanes],
                "stopped": self.stop_reason}

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._release()

    # -- one step: a frame of each source that has one ------------------------------------------------------
    def _step(self, batch: list[tuple[_Lane, FramePacket]]) -> None:
        t0 = time.perf_counter()
        times = [dict() for _ in batch]
        todo = []
        for (ln, pkt), tm in zip(batch, times):
            todo += self._track_frame(ln, pkt, tm)
        self._recognize(todo, batch, times)
        for (ln, pkt), tm in zip(batch, times):
            if ln.writer is not None:
                t = time.perf_counter()
                self._draw(ln, pkt)
                tm["draw"] = 1e3 * (time.perf_counter() - t)
            ln.frames += 1
            self.frames += 1
            if self.on_frame is not None:
                self.on_frame(pkt, ln.tracker.born())
        total = 1e3 * (time.perf_counter() - t0) / len(batch)
        for tm in times:
            tm["total"] = total
            self.stats.frame(tm)

    def _track_frame(self, ln: _Lane, pkt: FramePacket, tm: dict) -> list[tuple]:
        """Detection/re-detection and tracking of one frame; returns recognition requests."""
        cfg = self.config
        bgr = as_bgr(pkt.image, name=f"frame {pkt.index} of {ln.source.name}")
        pkt.image = bgr
        ln.last = pkt
        tr = ln.tracker
        tr.predict(pkt.index)
        t = time.perf_counter()
        seen = [tk.predicted_box for tk in tr.tracks if tk.state in (TrackState.ACTIVE, TrackState.TENTATIVE)]
        motion = ln.motion.update(bgr, seen)
        tm["motion"] = 1e3 * (time.perf_counter() - t)
        H, W = bgr.shape[:2]
        if ln.scheduler is None or ln.scheduler.size != (W, H):
            ln.scheduler = DetectionScheduler(cfg.schedule, (W, H))
        just_lost = [tk.predicted_box for tk in tr.tracks if tk.state is TrackState.LOST and tk.misses == 1]
        plan = ln.scheduler.plan(motion, just_lost)
        search = [tk for tk in tr.tracks if tk.state is not TrackState.LOST or tk.misses <= cfg.refine_lost]
        if plan is not None:
            t = time.perf_counter()
            faces = self._detect(bgr, plan)
            ms = 1e3 * (time.perf_counter() - t)
            tm["detect"] = ms
            self.stats.call("detect" if plan.full else "detect_region", ms)
            ln.scheduler.done(plan, ms)
            t = time.perf_counter()
            tr.associate(faces)
            tm["track"] = 1e3 * (time.perf_counter() - t)
            search = [tk for tk in search if not tk.matched and tk.is_born]
        if search:
            t = time.perf_counter()
            # a wider search where the prediction is unsure: frames were skipped since the last sighting and
            # the track has no reliable velocity yet (few sightings) or was lost
            unsure = [min(0.4, 0.1 * (pkt.index - tk.last_frame - 1))
                      if tk.state is not TrackState.ACTIVE or tk.hits < 5 else 0.0 for tk in search]
            found = self._redetect(bgr, [tk.predicted_box for tk in search], unsure)
            tm["refine"] = 1e3 * (time.perf_counter() - t)
            for tk, f in zip(search, found):
                tr.assign(tk, f)
        t = time.perf_counter()
        born, ended = tr.finish_frame()
        for tk in born:
            ln.tracks_started += 1
            tk.data["info"] = _TrackInfo(IdentityVote(self.threshold, cfg.vote), first_ts=pkt.ts,
                                         first_captured=pkt.captured, first_mono=pkt.captured_mono)
            self._emit("track_started", ln, tk, {"first_frame": tk.first_frame, "det_score": tk.face.score,
                                                 "quality": face_quality(tk.face, None, cfg.quality)}, pkt)
        for tk in ended:
            self._end_track(ln, tk)
        requests = []
        for tk in tr.tracks:
            if tk.state is not TrackState.ACTIVE or not tk.matched:
                continue
            info: _TrackInfo = tk.data["info"]
            info.last_ts, info.last_captured = pkt.ts, pkt.captured
            since_rec = pkt.index - info.last_rec
            q = face_quality(tk.face, info.occlusion, cfg.quality)
            if info.recognitions == 0:
                prio = 0
            elif since_rec >= cfg.recognize_min_gap and q >= info.best_q + cfg.quality_gain:
                prio = 1
            elif since_rec >= cfg.recognize_every:
                prio = 2
            else:
                continue
            requests.append((prio, -since_rec, tk.id, ln, pkt, tk, q))
        tm["track"] = tm.get("track", 0.0) + 1e3 * (time.perf_counter() - t)
        return requests

    def _detect(self, bgr: np.ndarray, plan: Plan) -> list[Face]:
        """Run the detector on the whole frame or on the plan's region (faces in frame pixels)."""
        if plan.full:
            return self.rec.detector.detect(bgr)
        x1, y1, x2, y2 = plan.region
        if x2 - x1 < 24 or y2 - y1 < 24:
            return []
        d = np.array([x1, y1], np.float32)
        return [Face(f.box + np.tile(d, 2), f.landmarks + d, f.score) for f in self.rec.detector.detect(bgr[y1:y2, x1:x2])]

    def _redetect(self, bgr: np.ndarray, boxes: list[np.ndarray], search: list[float]) -> list[Face | None]:
        """Faces found around predicted boxes: ``detector.refine`` or, without it, detection on a crop.

        ``search[i] > 0`` asks for a wider search around box ``i`` (its prediction is unsure: frames were
        skipped since the track was last seen, and a new track has no velocity yet): with ``refine`` the box is
        also tried shifted by ``search[i]`` box sides left, right, up and down (unless the detector's
        ``refine_reach`` already covers that shift: LTDet searches a window twice the box), and the best-scoring
        face is kept.
        """
        if self._refine is not None:
            tries, owner = [], []
            for i, (b, r) in enumerate(zip(boxes, search)):
                b = np.asarray(b, np.float64)
                side = max(b[2] - b[0], b[3] - b[1])
                shifts = [(0.0, 0.0)] + ([(r, 0.0), (-r, 0.0), (0.0, r), (0.0, -r)] if r > self._refine_reach else [])
                for dx, dy in shifts:
                    tries.append(b + side * np.array([dx, dy, dx, dy]))
                    owner.append(i)
            found = list(self._refine(bgr, np.asarray(tries)))
            best: list[Face | None] = [None] * len(boxes)
            for i, f in zip(owner, found):  # the first try of each box is the prediction: it wins ties
                if best[i] is None or f.score > best[i].score + 1e-3:
                    best[i] = f
            return best
        out: list[Face | None] = []
        H, W = bgr.shape[:2]
        for b, r in zip(boxes, search):  # without refine: detect in a crop twice the box's size (or wider)
            x1, y1, x2, y2 = (float(v) for v in b)
            half = max(x2 - x1, y2 - y1) * (1.0 + r)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            X1, Y1 = max(0, int(cx - half)), max(0, int(cy - half))
            X2, Y2 = min(W, int(math.ceil(cx + half))), min(H, int(math.ceil(cy + half)))
            if X2 - X1 < 24 or Y2 - Y1 < 24:
                out.append(None)
                continue
            faces = self.rec.detector.detect(bgr[Y1:Y2, X1:X2])
            if not faces:
                out.append(None)
                continue
            d = np.array([X1, Y1], np.float32)
            faces = [Face(f.box + np.tile(d, 2), f.landmarks + d, f.score) for f in faces]
            iou = iou_matrix([b], [f.box for f in faces])[0]
            k = int(np.argmax(iou))
            out.append(faces[k] if iou[k] > 0.1 else None)
        return out

    # -- recognition --------------------------------------------------------------------------------------
    def _recognize(self, requests: list[tuple], batch: list, times: list[dict]) -> None:
        if not requests:
            return
        cfg = self.config
        requests.sort(key=lambda r: r[:3])
        chosen = requests[:cfg.max_recognitions]
        groups: dict[int, list] = {}
        for r in chosen:
            groups.setdefault(id(r[4]), []).append(r)
        keys = list(groups)
        items = [(groups[k][0][4].image, [r[5].face for r in groups[k]]) for k in keys]
        t = time.perf_counter()
        results = identify_batch(self.rec, items)
        ms = 1e3 * (time.perf_counter() - t)
        self.stats.call("recognize", ms)
        pkts = [pkt for _, pkt in batch]
        for k, matches in zip(keys, results):
            for r, m in zip(groups[k], matches):
                self._observe(r[3], r[4], r[5], m)
        per = ms / len(chosen)  # spread over the frames whose faces were recognised
        for k in keys:
            i = next(i for i, p in enumerate(pkts) if id(p) == k)
            times[i]["recognize"] = times[i].get("recognize", 0.0) + per * len(groups[k])
        self.recognitions += len(chosen)

    def _observe(self, ln: _Lane, pkt: FramePacket, tk: Track, m: Match) -> None:
        cfg = self.config
        info: _TrackInfo = tk.data["info"]
        q = face_quality(tk.face, m.occlusion, cfg.quality)
        obs = IdentityVote.observation(m.candidates, m.identity, q, m.occlusion, m.completed,
                                       getattr(m, "threshold", None))
        before = info.vote.decision
        decision, changed = info.vote.add(obs)
        first = info.recognitions == 0
        info.recognitions += 1
        info.last_rec = pkt.index
        info.best_q = max(info.best_q, q)
        info.occlusion, info.completed = m.occlusion, m.completed
        if not (first or changed):
            return
        fused = sorted(info.vote.fused().items(), key=lambda kv: -kv[1])[:cfg.event_candidates]
        fields = {"identity": decision.identity, "similarity": decision.similarity, "occlusion": m.occlusion,
                  "completed": m.completed, "quality": q, "observations": decision.observations,
                  "vote": decision.vote, "candidates": [[n, s] for n, s in fused]}
        if first:
            latency = 1e3 * (time.perf_counter() - info.first_mono)
            self.latency_ms.add(latency)
            self._emit("identified", ln, tk, {**fields, "latency_ms": latency}, pkt)
        else:
            fields["previous"] = before.identity if before is not None else None
            self._emit("identity_changed", ln, tk, fields, pkt)

    # -- events, output, shutdown -------------------------------------------------------------------------
    def _emit(self, kind: str, ln: _Lane, tk: Track | None, fields: dict, pkt: FramePacket | None = None,
              frame: int | None = None, ts: float | None = None, captured: float | None = None) -> None:
        now = time.time()
        if pkt is not None:
            frame, ts, captured = pkt.index, pkt.ts, pkt.captured
        self.sink.emit(Event(kind, ln.source.name, frame if frame is not None else max(ln.source.frames_read - 1, 0),
                             ts if ts is not None else now, captured if captured is not None else now,
                             track=None if tk is None else tk.id, box=None if tk is None else tk.face.box,
                             fields=fields))

    def _end_track(self, ln: _Lane, tk: Track) -> None:
        info: _TrackInfo | None = tk.data.get("info")
        if info is None:  # pragma: no cover - every born track has its info
            return
        d = info.vote.decision
        self._emit("track_ended", ln, tk, {
            "reason": tk.end_reason or "stopped", "first_frame": tk.first_frame, "last_frame": tk.last_frame,
            "frames_seen": tk.hits, "duration_s": info.last_ts - info.first_ts,
            "identity": None if d is None else d.identity, "similarity": None if d is None else d.similarity,
            "recognitions": info.recognitions}, frame=tk.last_frame, ts=info.last_ts, captured=info.last_captured)

    def _close_lane(self, ln: _Lane, reason: str) -> None:
        """End a source's tracks, report the source's end, close its video."""
        if ln.closed:
            return
        ln.closed = True
        for tk in ln.tracker.end_all("source_ended" if reason in ("end_of_stream", "gave_up") else reason):
            self._end_track(ln, tk)
        src = ln.source
        src.stop()
        self._emit("source_ended", ln, None, {"reason": src.end_reason if reason == "end_of_stream" else reason,
                                              "frames": ln.frames, "dropped": src.dropped})
        if ln.writer is not None:
            ln.writer.release()
            ln.writer = None

    def _release(self) -> None:
        for ln in self._lanes:
            ln.source.stop()
            if ln.writer is not None:
                ln.writer.release()
                ln.writer = None
        self.sink.close()

    def _open_writers(self, out: Path) -> None:
        if not out.parent.exists():
            raise FileNotFoundError(f"annotated video {out}: folder {out.parent} does not exist")
        fourcc = cv2.VideoWriter_fourcc(*("MJPG" if out.suffix.lower() == ".avi" else "mp4v"))
        for i, ln in enumerate(self._lanes):
            path = out if len(self._lanes) == 1 else out.with_name(f"{out.stem}_{i}{out.suffix}")
            src = ln.source
            fps = src.fps if not src.live else self.config.schedule.target_fps
            w = cv2.VideoWriter(str(path), fourcc, float(fps), (src.width, src.height))
            if not w.isOpened() or src.width <= 0:
                w.release()
                raise StreamError(f"cannot write the annotated video {path} ({src.width}x{src.height}; "
                                 "use .mp4 or .avi)")
            ln.writer, ln.out_path = w, path

    def _draw(self, ln: _Lane, pkt: FramePacket) -> None:
        shown, ids = [], []
        for tk in ln.tracker.tracks:
            if tk.state is not TrackState.ACTIVE:
                continue
            info: _TrackInfo = tk.data["info"]
            d = info.vote.decision
            shown.append(Match(tk.face.box, tk.face.landmarks, tk.face.score, info.occlusion,
                               None if d is None else d.identity, float("nan") if d is None else d.similarity))
            ids.append(tk.id)
        img = annotate(pkt.image, shown)
        for m, i in zip(shown, ids):
            x1, y2 = int(m.box[0]), int(m.box[3])
            cv2.putText(img, f"#{i}", (x1, min(img.shape[0] - 4, y2 + 16)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 220, 255), 1, cv2.LINE_AA)
        size = (ln.source.width, ln.source.height)
        if (img.shape[1], img.shape[0]) != size:  # a reconnected camera with another resolution
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        ln.writer.write(img)

