"""When to run the face detector on a video frame, and on how much of it.

Full-frame detection is the expensive step (MTCNN: ~150 ms for 640x480 on one core); tracks are followed
between detections by track-guided re-detection (``detector.refine``), so the detector is only needed to
*discover* faces. :class:`DetectionScheduler` asks for a detection when one is needed:

* a **full** frame: on the first frame, on a scene change (:class:`sdk.motion.Motion`), when motion outside the
  tracked faces covers a large part of the frame, and at least every ``max_interval_s`` (faces that appeared
  without moving, faces the last detection missed);
* a **region**: when motion outside the tracks is confined to a small area (someone walking in), or where a
  track was just lost, only that area (grown by ``region_margin``) is searched, at a cost proportional to
  its area.

and it paces them with a time budget (a token bucket): every processed frame adds ``detect_budget /
target_fps`` seconds, a detection spends what it really took, and a needed detection waits until the bucket
holds its estimated cost, but never longer than ``max_delay_s``. Delays and intervals are counted in
*processed* frames (``seconds * target_fps``), not in source frames: a live source on an overloaded machine
skips frames, and counting those would force a detection on every processed frame, which is exactly what the
overloaded machine cannot afford. A slow detector is therefore run rarely (new faces
are found up to ``max_delay_s`` late) and a fast one on every frame where something may have appeared, with
the same code. ``detect_every=K`` replaces all of this by a full detection every K frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sdk.motion import Motion

__all__ = ["ScheduleConfig", "Plan", "DetectionScheduler"]


@dataclass(frozen=True)
class ScheduleConfig:
    """Settings of :class:`DetectionScheduler` (seconds become processed frames at ``target_fps``).

    Attributes:
        detect_every: a full detection every K frames and nothing else (0 = the budgeted policy).
        target_fps: frame rate the budget is planned for.
        detect_budget: share of the frame time that detections may take on average, in (0, 1].
        max_interval_s: a full-frame detection runs at least this often.
        max_delay_s: a needed detection waits at most this long for the budget.
        region_max: motion outside the tracks covering more than this share of the frame -> full frame.
        region_margin: a region is grown by this share of its size on every side (at least ``min_region`` px).
        min_region: smallest side of a searched region, pixels.
    """

    detect_every: int = 0
    target_fps: float = 25.0
    detect_budget: float = 0.3
    max_interval_s: float = 2.0
    max_delay_s: float = 0.5
    region_max: float = 0.4
    region_margin: float = 0.5
    min_region: int = 96

    def __post_init__(self) -> None:
        if self.detect_every < 0 or self.target_fps <= 0 or not 0 < self.detect_budget <= 1:
            raise ValueError("need detect_every >= 0, target_fps > 0 and 0 < detect_budget <= 1")
        if self.max_interval_s <= 0 or self.max_delay_s < 0 or not 0 < self.region_max <= 1:
            raise ValueError("need max_interval_s > 0, max_delay_s >= 0 and 0 < region_max <= 1")


@dataclass(frozen=True)
class Plan:
    """A detection to run: ``region`` is ``None`` for the full frame, else ``(x1, y1, x2, y2)`` int pixels."""

    region: tuple[int, int, int, int] | None = None

    @property
    def full(self) -> bool:
        return self.region is None


class DetectionScheduler:
    """Decides, frame by frame, whether and where one source's frames are searched for new faces.

    Args:
        config: :class:`ScheduleConfig`.
        size: ``(width, height)`` of the source's frames, pixels.
    """

    def __init__(self, config: ScheduleConfig, size: tuple[int, int]):
        self.config = config
        self.step = -1  # processed frames so far - 1
        self.size = (int(size[0]), int(size[1]))
        self.frame_budget_ms = 1e3 * config.detect_budget / config.target_fps
        self.ms_per_px: float | None = None  # measured cost of detection per pixel searched
        self.bucket_ms = math.inf  # the first detection is always allowed
        self.last_full = -(10 ** 9)
        self.need_full_since: int | None = 0  # frame at which a full detection became needed
        self.need_region: tuple[int, int, int, int] | None = None
        self.need_region_since: int | None = None
        self.full_detections = 0
        self.region_detections = 0

    def _frames(self, seconds: float) -> int:
        return max(1, int(round(seconds * self.config.target_fps)))

    def _estimate(self, region: tuple[int, int, int, int] | None) -> float:
        """Expected milliseconds of a detection (regions: proportional to area, plus a fixed overhead)."""
        if self.ms_per_px is None:
            return 0.0
        if region is None:
            return self.ms_per_px * self.size[0] * self.size[1]
        return 2.0 + 1.5 * self.ms_per_px * (region[2] - region[0]) * (region[3] - region[1])

    def _grow(self, box: Sequence[float]) -> tuple[int, int, int, int]:
        cfg = self.config
        x1, y1, x2, y2 = (float(v) for v in box)
        mx = max(cfg.region_margin * (x2 - x1), (cfg.min_region - (x2 - x1)) / 2, 0.0)
        my = max(cfg.region_margin * (y2 - y1), (cfg.min_region - (y2 - y1)) / 2, 0.0)
        W, H = self.size
        return (int(max(0, x1 - mx)), int(max(0, y1 - my)), int(min(W, math.ceil(x2 + mx))), int(min(H, math.ceil(y2 + my))))

    @staticmethod
    def _union(a, b):
        if a is None:
            return b
        if b is None:
            return a
        return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))

    def plan(self, motion: Motion, lost_boxes: Sequence[np.ndarray] = ()) -> Plan | None:
        """What to detect in the next processed frame (``None``: nothing; track-guided re-detection only).

        Args:
            motion: the motion gate's verdict on this frame.
            lost_boxes: predicted boxes of tracks lost in the previous frame (searched as a region).
        """
        cfg = self.config
        self.step += 1
        frame = self.step
        if self.ms_per_px is not None:  # refill the bucket, holding at most one full detection's worth
            cap = max(self._estimate(None), self.frame_budget_ms)
            self.bucket_ms = min(self.bucket_ms + self.frame_budget_ms, cap)
        if cfg.detect_every > 0:
            return Plan() if frame - self.last_full >= cfg.detect_every else None
        if motion.scene_change:
            self._want_full(frame)
        elif motion.outside and motion.region is not None:
            self._want_region(frame, self._grow(motion.region))
        for b in lost_boxes:
            self._want_region(frame, self._grow(b))
        if frame - self.last_full >= self._frames(cfg.max_interval_s):
            return Plan()
        late = self._frames(cfg.max_delay_s)
        if self.need_full_since is not None:
            if self.bucket_ms >= self._estimate(None) or frame - self.need_full_since >= late:
                return Plan()
        elif self.need_region is not None:
            if self.bucket_ms >= self._estimate(self.need_region) or frame - self.need_region_since >= late:
                return Plan(self.need_region)
        return None

    def _want_full(self, frame: int, since: int | None = None) -> None:
        since = frame if since is None else since
        self.need_full_since = since if self.need_full_since is None else min(self.need_full_since, since)
        self.need_region, self.need_region_since = None, None  # a full frame covers every region

    def _want_region(self, frame: int, r: tuple[int, int, int, int]) -> None:
        if self.need_full_since is not None:
            return
        u = self._union(self.need_region, r)
        W, H = self.size
        if (u[2] - u[0]) * (u[3] - u[1]) > self.config.region_max * W * H:
            self._want_full(frame, self.need_region_since)
            return
        self.need_region = u
        if self.need_region_since is None:
            self.need_region_since = frame

    def done(self, plan: Plan, ms: float) -> None:
        """Record that ``plan`` ran on the frame of the last :meth:`plan` and took ``ms`` milliseconds."""
        frame = self.step
        W, H = self.size
        area = W * H if plan.full else max(1, (plan.region[2] - plan.region[0]) * (plan.region[3] - plan.region[1]))
        if plan.full:  # the per-pixel cost is learnt from full frames (regions carry a larger fixed overhead)
            per = ms / area
            self.ms_per_px = per if self.ms_per_px is None else 0.8 * self.ms_per_px + 0.2 * per
        self.bucket_ms = (0.0 if not math.isfinite(self.bucket_ms) else self.bucket_ms) - ms
        if plan.full:
            self.full_detections += 1
            self.last_full = frame
            self.need_full_since = None
            self.need_region, self.need_region_since = None, None  # a full frame covers every region
        else:
            self.region_detections += 1
            self.need_region, self.need_region_since = None, None
