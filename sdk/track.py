"""Multi-object tracking of faces, ByteTrack-style (Zhang et al., 2022), detector-agnostic.

One :class:`Tracker` per video source. Each frame the caller:

1. :meth:`Tracker.predict` -- every track's Kalman filter advances one frame;
2. either :meth:`Tracker.associate` with the faces of a full-frame detection (ByteTrack's two rounds: the
   high-score faces against every track, then the low-score faces against the tracks still unmatched; faces
   of neither round that score high enough start *tentative* tracks), and/or :meth:`Tracker.assign` with a
   face that was re-detected around one track's predicted box (``MTCNNDetector.refine``: track-guided
   detection between full detections; ``None`` when the face was not found there);
3. :meth:`Tracker.finish_frame` -- unmatched tracks become *lost*, tentative tracks that were seen
   ``min_hits`` frames in a row become *active* (born), duplicates (two tracks on one face) are merged,
   and tracks lost for more than ``max_lost`` frames are removed (ended).

Boxes are ``(x1, y1, x2, y2)`` frame pixels (:mod:`sdk.types`). The Kalman state is ByteTrack's
``(cx, cy, a, h, vcx, vcy, va, vh)`` with ``a = w / h``, constant velocity, noise proportional to the
box height. Matching is greedy on IoU (highest first), which for the few faces of a frame gives the same
pairs as the Hungarian method in all but contrived cases and needs no SciPy. Why not a library:
``supervision`` (MIT) has a ByteTrack, but it would add PyAV, SciPy, matplotlib, Pillow and requests to
the runtime, and it has no way to update one track from a track-guided re-detection.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from sdk.types import Face

__all__ = ["TrackerConfig", "TrackState", "Track", "Tracker", "KalmanBoxFilter", "iou_matrix"]


@dataclass(frozen=True)
class TrackerConfig:
    """Association and life-cycle settings of :class:`Tracker`.

    Attributes:
        birth_score: a face needs at least this detector score to start a track (and for ByteTrack's first
            association round).
        low_score: faces scoring in ``[low_score, birth_score)`` only continue existing tracks (second
            round); below it they are ignored. Also the score a track-guided re-detection needs.
        match_iou: IoU between a track's predicted box and a face needed to match them (first round).
        low_match_iou: the same for the second (low-score) round, stricter because such faces are noisier.
        min_hits: frames in a row a new track must be seen before it is born (reported); 1 = immediately.
        max_lost: frames a lost track is kept (predicted, ready to be matched again) before it ends.
        duplicate_iou: two live tracks whose boxes overlap more than this are one face: the younger is
            merged into the older.
    """

    birth_score: float = 0.9
    low_score: float = 0.6
    match_iou: float = 0.3
    low_match_iou: float = 0.5
    min_hits: int = 2
    max_lost: int = 25
    duplicate_iou: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_score <= self.birth_score <= 1.0:
            raise ValueError(f"need 0 <= low_score <= birth_score <= 1, got {self.low_score}, {self.birth_score}")
        for name in ("match_iou", "low_match_iou", "duplicate_iou"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.min_hits < 1 or self.max_lost < 0:
            raise ValueError(f"min_hits must be >= 1 and max_lost >= 0, got {self.min_hits}, {self.max_lost}")


class TrackState(enum.Enum):
    TENTATIVE = "tentative"  # seen, not yet born (fewer than min_hits frames)
    ACTIVE = "active"  # born and seen in the last frame
    LOST = "lost"  # born, not seen for 1..max_lost frames (still predicted, can be matched again)
    REMOVED = "removed"  # ended


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), ``(x1, y1, x2, y2)``; (N, M) float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _greedy_match(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Pairs (row, col) with IoU >= min_iou, highest IoU first, each row and column used once."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    rows, cols = np.nonzero(iou >= min_iou)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c = set(), set()
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


class KalmanBoxFilter:
    """Constant-velocity Kalman filter over ``(cx, cy, a, h)`` (ByteTrack's parameterisation).

    Noise standard deviations are proportional to the box height (``std_position`` and ``std_velocity`` per
    frame), so the filter behaves the same for small and large faces.
    """

    std_position = 1.0 / 20
    std_velocity = 1.0 / 160

    def __init__(self, box: np.ndarray):
        cx, cy, a, h = self.to_xyah(box)
        self.x = np.array([cx, cy, a, h, 0.0, 0.0, 0.0, 0.0])
        sp, sv = self.std_position * h, self.std_velocity * h
        self.P = np.diag(np.square([2 * sp, 2 * sp, 1e-2, 2 * sp, 10 * sv, 10 * sv, 1e-5, 10 * sv]))
        self._F = np.eye(8)
        self._F[:4, 4:] = np.eye(4)
        self._H = np.eye(4, 8)

    @staticmethod
    def to_xyah(box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
        return np.array([x1 + w / 2, y1 + h / 2, w / h, h])

    @staticmethod
    def to_box(xyah: np.ndarray) -> np.ndarray:
        cx, cy, a, h = xyah[:4]
        h = max(h, 1e-3)
        w = max(a, 1e-3) * h
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)

    @property
    def box(self) -> np.ndarray:
        """Current estimate as ``(x1, y1, x2, y2)`` float32 pixels."""
        return self.to_box(self.x)

    def predict(self) -> None:
        h = self.x[3]
        sp, sv = self.std_position * h, self.std_velocity * h
        Q = np.diag(np.square([sp, sp, 1e-2, sp, sv, sv, 1e-5, sv]))
        self.x = self._F @ self.x
        self.P = self._F @ self.P @ self._F.T + Q

    def update(self, box: np.ndarray) -> None:
        z = self.to_xyah(box)
        h = self.x[3]
        R = np.diag(np.square([self.std_position * h, self.std_position * h, 1e-1, self.std_position * h]))
        S = self._H @ self.P @ self._H.T + R
        K = np.linalg.solve(S, self._H @ self.P).T  # P H^T S^-1 (S symmetric)
        self.x = self.x + K @ (z - self._H @ self.x)
        self.P = (np.eye(8) - K @ self._H) @ self.P


@dataclass(eq=False)
class Track:
    """One face followed over frames.

    Attributes:
        id: unique id (from the tracker's counter; unique across trackers sharing one counter).
        face: the last face observed (box, 5 landmarks, detector score), frame pixels.
        state: :class:`TrackState`.
        first_frame / last_frame: frame indices of the first and of the last observation.
        hits: frames with an observation (a tentative track is removed at its first miss, so its hits are
            consecutive processed frames); ``lost_frames``: source frames since the last one; ``misses``:
            processed frames since the last one (differs from ``lost_frames`` when frames were skipped).
        matched: observed in the current frame (reset by :meth:`Tracker.predict`).
        end_reason: why it ended: ``"lost"`` (unseen for more than ``max_lost`` frames), ``"merged"`` (a
            duplicate of an older track on the same face) or what :meth:`Tracker.end_all` was given.
        data: free slot for the caller (the stream keeps its recognition state here).
    """

    id: int
    face: Face
    kf: KalmanBoxFilter
    first_frame: int
    last_frame: int
    state: TrackState = TrackState.TENTATIVE
    hits: int = 1
    lost_frames: int = 0
    misses: int = 0
    matched: bool = True
    end_reason: str | None = None
    data: dict = field(default_factory=dict)

    @property
    def predicted_box(self) -> np.ndarray:
        """Where the track is expected in the current frame (after :meth:`Tracker.predict`), float32 px."""
        return self.kf.box

    @property
    def box(self) -> np.ndarray:
        """The last observed box (float32 px)."""
        return self.face.box

    @property
    def is_born(self) -> bool:
        return self.state in (TrackState.ACTIVE, TrackState.LOST)


class Tracker:
    """ByteTrack-style multi-face tracker for one source (see the module docstring for the frame protocol).

    Args:
        config: :class:`TrackerConfig`.
        ids: an iterator of ids to hand out (share one ``itertools.count`` between the trackers of several
            sources to get ids unique across them); default ``1, 2, 3, ...``.
    """

    def __init__(self, config: TrackerConfig = TrackerConfig(), ids: Iterable[int] | None = None):
        import itertools

        self.config = config
        self._ids = iter(ids) if ids is not None else itertools.count(1)
        self.tracks: list[Track] = []
        self.frame = -1

    # -- views --------------------------------------------------------------------------------------------
    def live(self) -> list[Track]:
        """Tracks not removed: tentative, active and lost."""
        return list(self.tracks)

    def active(self) -> list[Track]:
        """Born tracks observed in the last frame."""
        return [t for t in self.tracks if t.state is TrackState.ACTIVE]

    def born(self) -> list[Track]:
        """Active and lost tracks (everything that has been reported and not ended)."""
        return [t for t in self.tracks if t.is_born]

    # -- frame protocol -----------------------------------------------------------------------------------
    def predict(self, frame: int) -> None:
        """Start frame ``frame``: advance every track's filter to it and clear the ``matched`` flags.

        The filter steps once per source frame: when frames were skipped (a live source dropped some), it
        steps over them too (at most ``max_lost + 1`` steps), so velocities stay per source frame.
        """
        steps = 1 if self.frame < 0 else min(max(int(frame) - self.frame, 1), self.config.max_lost + 1)
        self.frame = int(frame)
        for t in self.tracks:
            for _ in range(steps):
                t.kf.predict()
            t.matched = False

    def assign(self, track: Track, face: Face | None) -> bool:
        """Update ``track`` with a face found around its predicted box (track-guided detection).

        The face is accepted when it scores at least ``low_score``; ``None`` or a weaker face leaves the track
        unmatched for this frame. Returns whether it was accepted.
        """
        if track.matched or face is None or face.score < self.config.low_score:
            return False
        self._observe(track, face)
        return True

    def associate(self, faces: Sequence[Face]) -> list[Face]:
        """Match the faces of a full-frame detection to the tracks (ByteTrack's two rounds).

        Tracks already updated this frame (by :meth:`assign`) take part too: a face overlapping them is
        consumed and does not start a new track. Faces scoring at least ``birth_score`` that match nothing
        start tentative tracks. Returns those faces (the ones that started tracks).
        """
        cfg = self.config
        faces = [f for f in faces if f.score >= cfg.low_score]
        high = [f for f in faces if f.score >= cfg.birth_score]
        low = [f for f in faces if f.score < cfg.birth_score]
        # tracks already observed this frame absorb overlapping faces without being updated again
        done = [t for t in self.tracks if t.matched]
        if done and high:
            iou = iou_matrix([t.box for t in done], [f.box for f in high])
            gone = {c for _, c in _greedy_match(iou, cfg.match_iou)}
            high = [f for i, f in enumerate(high) if i not in gone]
        # round 1: high-score faces against born tracks (active first: they are the surer ones)
        pool = sorted((t for t in self.tracks if t.is_born and not t.matched),
                      key=lambda t: (t.state is not TrackState.ACTIVE, t.lost_frames))
        high = self._match(pool, high, cfg.match_iou)
        # round 2: low-score faces against the born tracks still unmatched
        pool = [t for t in pool if not t.matched]
        self._match(pool, low, cfg.low_match_iou)
        # round 3: tentative tracks against the high-score faces left
        pool = [t for t in self.tracks if t.state is TrackState.TENTATIVE and not t.matched]
        high = self._match(pool, high, cfg.match_iou)
        for f in high:
            self.tracks.append(Track(next(self._ids), f, KalmanBoxFilter(f.box), self.frame, self.frame))
        return high

    def finish_frame(self) -> tuple[list[Track], list[Track]]:
        """End the frame: age unmatched tracks, birth, merge duplicates, remove expired.

        Returns:
            ``(born, ended)``: tracks born in this frame and tracks removed in this frame (state ``REMOVED``).
        """
        cfg = self.config
        born: list[Track] = []
        ended: list[Track] = []
        for t in self.tracks:
            if t.matched:
                if t.state is TrackState.TENTATIVE and t.hits >= cfg.min_hits:
                    t.state = TrackState.ACTIVE
                    born.append(t)
                elif t.state is TrackState.LOST:
                    t.state = TrackState.ACTIVE
            elif t.state is TrackState.TENTATIVE and t.last_frame < self.frame:
                t.state = TrackState.REMOVED  # a one-frame blip: never reported
            elif t.state is not TrackState.TENTATIVE:
                t.lost_frames = self.frame - t.last_frame
                t.misses += 1
                t.state = TrackState.LOST
                if t.lost_frames > cfg.max_lost:
                    t.state = TrackState.REMOVED
                    t.end_reason = "lost"
                    ended.append(t)
        ended += self._merge_duplicates(born)
        self.tracks = [t for t in self.tracks if t.state is not TrackState.REMOVED]
        return born, ended

    def end_all(self, reason: str = "stopped") -> list[Track]:
        """Remove every born track (end of the stream) with ``reason``; returns them. Tentative tracks vanish."""
        ended = [t for t in self.tracks if t.is_born]
        for t in self.tracks:
            t.state = TrackState.REMOVED
            t.end_reason = reason
        self.tracks = []
        return ended

    # -- internals ----------------------------------------------------------------------------------------
    def _observe(self, track: Track, face: Face) -> None:
        track.kf.update(face.box)
        track.face = face
        if self.frame != track.last_frame:
            track.hits += 1
        track.last_frame = self.frame
        track.lost_frames = track.misses = 0
        track.matched = True

    def _match(self, tracks: list[Track], faces: list[Face], min_iou: float) -> list[Face]:
        """Greedy IoU matching of predicted boxes and faces; updates the matched tracks, returns the faces left."""
        if not tracks or not faces:
            return faces
        iou = iou_matrix([t.predicted_box for t in tracks], [f.box for f in faces])
        used = set()
        for r, c in _greedy_match(iou, min_iou):
            self._observe(tracks[r], faces[c])
            used.add(c)
        return [f for i, f in enumerate(faces) if i not in used]

    def _merge_duplicates(self, born: list[Track]) -> list[Track]:
        """Two observed tracks on one face (overlap > duplicate_iou): the younger one ends (or, unborn, vanishes)."""
        seen = sorted((t for t in self.tracks if t.matched and t.state is not TrackState.REMOVED),
                      key=lambda t: (not t.is_born or t in born, t.first_frame, t.id))
        ended: list[Track] = []
        if len(seen) < 2:
            return ended
        iou = iou_matrix([t.box for t in seen], [t.box for t in seen])
        for j in range(1, len(seen)):
            if seen[j].state is TrackState.REMOVED:
                continue
            for i in range(j):
                if seen[i].state is not TrackState.REMOVED and iou[i, j] > self.config.duplicate_iou:
                    young = seen[j]
                    if young.is_born and young not in born:
                        ended.append(young)
                    if young in born:
                        born.remove(young)
                    young.state = TrackState.REMOVED
                    young.end_reason = "merged"
                    break
        return ended
