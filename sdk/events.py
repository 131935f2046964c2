"""Stream events: one record type, written as JSON lines (one event per line, UTF-8).

Every event has the same envelope::

    {"event": "identified", "source": "cam0", "track": 7, "frame": 152, "ts": 6.08,
     "captured": 1733090004.512, "emitted": 1733090004.547, "box": [x1, y1, x2, y2], ...kind fields}

* ``event``: ``track_started``, ``identified``, ``identity_changed``, ``track_ended`` (per track) or
  ``source_started``, ``source_lost``, ``source_reconnected``, ``source_ended`` (per source);
* ``source``: the source's name; ``track``: track id, unique within one stream (``null`` for source events);
* ``frame``: index of the frame the event describes, counted from 0 per source (frames read, dropped
  ones included); ``ts``: that frame's time in seconds (position in a file, or UNIX time of capture for live
  sources); ``captured``: UNIX time the frame was read; ``emitted``: UNIX time the event was written.
  Source events describe the source's last frame read, and their ``ts`` and ``captured`` are the UNIX time
  of the event;
* ``box``: ``[x1, y1, x2, y2]`` frame pixels of the track's face in that frame (``null`` for source events).

Kind fields are documented at :data:`FIELDS`. :class:`EventSink` writes each event with one ``write`` and a
flush, so a crash loses at most the event being written, and a Ctrl-C (which the stream turns into an orderly
stop) loses none; ``close`` also fsyncs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Event", "EventSink", "FIELDS", "KINDS", "read_jsonl"]

#: Kind-specific fields of each event (besides the envelope), for the README and the tests.
FIELDS: dict[str, tuple[str, ...]] = {
    "track_started": ("first_frame", "det_score", "quality"),
    "identified": ("identity", "similarity", "occlusion", "completed", "quality", "observations", "vote",
                   "candidates", "latency_ms"),
    "identity_changed": ("identity", "previous", "similarity", "occlusion", "completed", "quality",
                         "observations", "vote", "candidates"),
    "track_ended": ("reason", "first_frame", "last_frame", "frames_seen", "duration_s", "identity", "similarity",
                    "recognitions"),
    "source_started": ("kind", "uri", "width", "height", "fps"),
    "source_lost": ("error", "attempt", "retry_in_s"),
    "source_reconnected": ("attempt", "down_s"),
    "source_ended": ("reason", "frames", "dropped"),
}
KINDS = tuple(FIELDS)


def _clean(v: Any) -> Any:
    """JSON-friendly copy: numpy scalars/arrays to Python, floats rounded, NaN/inf to None."""
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if not math.isfinite(f) else round(f, 4)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    return v


@dataclass
class Event:
    """One event (see the module docstring for the envelope and :data:`FIELDS` for the kind fields)."""

    event: str
    source: str
    frame: int
    ts: float
    captured: float
    track: int | None = None
    box: Sequence[float] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    emitted: float | None = None

    def __post_init__(self) -> None:
        if self.event not in FIELDS:
            raise ValueError(f"unknown event kind {self.event!r}; known: {list(FIELDS)}")

    def to_dict(self) -> dict[str, Any]:
        d = {"event": self.event, "source": self.source, "track": self.track, "frame": int(self.frame),
             "ts": round(float(self.ts), 4), "captured": round(float(self.captured), 4),
             "emitted": round(float(self.emitted if self.emitted is not None else time.time()), 4),
             "box": None if self.box is None else [round(float(v), 1) for v in self.box]}
        d.update(_clean(self.fields))
        return d


class EventSink:
    """Where events go: an optional JSON-lines file plus callbacks; thread-safe (capture threads emit source
    events, the inference loop emits track events). ``emit`` stamps ``emitted`` and keeps counts per kind."""

    def __init__(self, path: str | Path | None = None, callbacks: Sequence[Callable[[dict], None]] = ()):
        self._lock = threading.Lock()
        self.path = Path(path) if path is not None else None
        self._file: TextIO | None = None
        if self.path is not None:
            if not self.path.parent.exists():
                raise FileNotFoundError(f"events file {self.path}: folder {self.path.parent} does not exist")
            self._file = open(self.path, "a", encoding="utf-8")
        self.callbacks = list(callbacks)
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.closed = False

    def emit(self, event: Event) -> dict[str, Any]:
        """Write one event (one line, flushed); returns its dict. After :meth:`close` events are dropped with
        a warning (the stream closes its sink last, so this only happens to callers that keep emitting)."""
        with self._lock:
            event.emitted = time.time()
            d = event.to_dict()
            if self.closed:
                log.warning("event after close dropped: %s", d["event"])
                return d
            if self._file is not None:
                self._file.write(json.dumps(d, separators=(",", ":")) + "\n")
                self._file.flush()
            self.counts[event.event] += 1
        for cb in self.callbacks:
            try:
                cb(d)
            except Exception:  # a broken callback must not stop the stream
                log.exception("event callback %r failed", cb)
        return d

    def close(self) -> None:
        """Flush, fsync and close the file (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._file is not None:
                self._file.flush()
                try:
                    os.fsync(self._file.fileno())
                except OSError:  # pragma: no cover - e.g. a pipe
                    pass
                self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every event of a JSON-lines file, in order (raises ``ValueError`` naming the line if one is corrupt)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON line ({e})") from None
    return out
