"""Video sources: one capture thread per source, bounded hand-over to the inference loop.

A source is a video file, an RTSP/HTTP(S) URL (OpenCV's FFmpeg backend: RTSP, HLS, MJPEG over HTTP, ...),
a camera index (``0`` or ``"0"``) or a folder of images (sorted by name). :func:`open_source` picks the kind.

Hand-over (what the inference loop sees through :meth:`Source.get`):

* **live** sources (URL, camera) keep only the *latest* frame: when the loop is slower than the camera, older
  frames are replaced and counted in :attr:`Source.dropped` (latency stays bounded, memory flat);
* **files and folders** are read frame by frame into a bounded queue (``queue_size``): the reader waits for
  the loop, nothing is dropped, results do not depend on speed. With ``realtime=True`` they are paced at their
  frame rate and handed over like a live source (latest frame, drops counted), to replay a recording as a
  camera would deliver it.

A live source that fails (read error, timeout, end of stream) reconnects with exponential backoff
(``reconnect_initial_s`` doubling up to ``reconnect_max_s``; ``max_reconnects`` attempts, ``None`` = forever)
and reports it through ``on_event`` as ``source_lost`` / ``source_reconnected`` events (:mod:`sdk.events`).
Frame indices keep counting across reconnects. Frames are BGR uint8 ``(H, W, 3)``.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from sdk.errors import LookThroughError
from sdk.events import Event

log = logging.getLogger(__name__)

__all__ = ["SourceConfig", "FramePacket", "Source", "SourceError", "open_source", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class SourceError(LookThroughError, ValueError):
    """A source cannot be opened or read (not a video, no images in a folder, a URL that does not answer)."""


@dataclass(frozen=True)
class SourceConfig:
    """How sources are read.

    Attributes:
        realtime: pace files and folders at their frame rate and keep only the latest frame (drops counted),
            as a camera would deliver them; live sources are always real time.
        loop: start files and folders again at their end (soak runs, demos); frame indices keep counting.
        queue_size: frames a file/folder reader may decode ahead of the inference loop.
        folder_fps: frame rate given to image folders (they have none); also the fallback when a video file
            does not say.
        reconnect_initial_s / reconnect_max_s: first and largest wait between reconnection attempts, seconds.
        max_reconnects: attempts before a lost live source is given up (``None`` = forever).
        open_timeout_s / read_timeout_s: FFmpeg timeouts for URLs (a stalled stream counts as lost).
    """

    realtime: bool = False
    loop: bool = False
    queue_size: int = 8
    folder_fps: float = 25.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    max_reconnects: int | None = None
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.folder_fps <= 0:
            raise ValueError(f"queue_size must be >= 1 and folder_fps > 0, got {self.queue_size}, {self.folder_fps}")
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s, got "
                             f"{self.reconnect_initial_s}, {self.reconnect_max_s}")
        if self.max_reconnects is not None and self.max_reconnects < 0:
            raise ValueError(f"max_reconnects must be >= 0 or None, got {self.max_reconnects}")


@dataclass
class FramePacket:
    """One frame handed to the inference loop.

    Attributes:
        source: the source's name; index: frame number from 0 (frames read, including dropped ones);
        ts: the frame's time in seconds (position in a file/folder; UNIX time of capture for live sources);
        captured: UNIX time the frame was read; captured_mono: the same on ``time.perf_counter``'s clock;
        image: BGR uint8 ``(H, W, 3)``.
    """

    source: str
    index: int
    ts: float
    captured: float
    captured_mono: float
    image: np.ndarray


def redact(uri: str) -> str:
    """A URL without its user name and password (for logs and events)."""
    try:
        p = urlsplit(uri)
    except ValueError:
        return uri
    if p.username is None and p.password is None:
        return uri
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, p.query, p.fragment))


def _kind(uri: str | int | Path) -> str:
    if isinstance(uri, int) or (isinstance(uri, str) and re.fullmatch(r"\d{1,3}", uri)):
        return "camera"
    s = str(uri)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) and not s.startswith("file://"):
        return "url"
    p = Path(s.removeprefix("file://"))
    if p.is_dir():
        return "folder"
    if not p.exists():
        raise FileNotFoundError(f"video source not found: {p} (expected a video file, an image folder, "
                                "an rtsp:// or http:// URL, or a camera index)")
    return "file"


class Source:
    """One capture thread reading frames from a file, URL, camera or image folder (see the module docstring).

    Args:
        uri: path, URL or camera index.
        name: name used in events (default: derived from ``uri``).
        config: :class:`SourceConfig`.
        on_event: called (from the capture thread) with ``source_lost`` / ``source_reconnected`` events.
        wake: set whenever a frame is handed over (lets the inference loop sleep until there is work).

    Raises:
        FileNotFoundError: a path that does not exist.
        SourceError: the source cannot be opened, or a folder holds no images.
    """

    def __init__(self, uri: str | int | Path, name: str | None = None, config: SourceConfig = SourceConfig(),
                 on_event: Callable[[Event], None] | None = None, wake: threading.Event | None = None):
        self.uri = uri
        self.kind = _kind(uri)
        self.live = self.kind in ("url", "camera")
        self.config = config
        self.name = name or self._default_name()
        self.on_event = on_event
        self.wake = wake or threading.Event()
        self.frames_read = 0
        self.dropped = 0
        self.reconnects = 0
        self.end_reason: str | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._mailbox: deque[FramePacket] = deque(maxlen=1 if (self.live or config.realtime) else config.queue_size)
        self._space = threading.Condition(self._lock)
        self._avail = threading.Condition(self._lock)
        self._files: list[Path] = []
        self._cap: cv2.VideoCapture | None = None
        self._frame_count: int | None = None
        self.width = self.height = 0
        self.fps = config.folder_fps
        self._open_first()

    # -- opening ------------------------------------------------------------------------------------------
    def _default_name(self) -> str:
        if self.kind == "camera":
            return f"camera{int(self.uri)}"
        if self.kind == "url":
            return redact(str(self.uri))
        return Path(str(self.uri).removeprefix("file://")).name or str(self.uri)

    def _capture(self) -> cv2.VideoCapture:
        if self.kind == "camera":
            return cv2.VideoCapture(int(self.uri))
        if self.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.config.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.config.read_timeout_s * 1000)]
            return cv2.VideoCapture(str(self.uri), cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(str(self.uri).removeprefix("file://"), cv2.CAP_FFMPEG)

    def _open_first(self) -> None:
        if self.kind == "folder":
            folder = Path(str(self.uri).removeprefix("file://"))
            self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._files:
                raise SourceError(f"source {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
            first = cv2.imread(str(self._files[0]), cv2.IMREAD_COLOR)
            if first is None:
                raise SourceError(f"source {folder}: {self._files[0].name} is not a readable image")
            self.height, self.width = first.shape[:2]
            return
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            what = {"file": "not a readable video", "url": "cannot connect / not a video stream",
                    "camera": "no such camera"}[self.kind]
            raise SourceError(f"source {redact(str(self.uri))}: {what}")
        self._cap = cap
        self._probe(cap)

    def _probe(self, cap: cv2.VideoCapture) -> None:
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 < fps < 1000 else self.config.folder_fps
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.kind == "file" else 0
        self._frame_count = n if n > 0 else None

    @property
    def frame_count(self) -> int | None:
        """Frames in a file or folder (``None`` for live sources or when the container does not say)."""
        if self.kind == "folder":
            return len(self._files)
        return self._frame_count

    def describe(self) -> dict:
        """Fields of the ``source_started`` event."""
        uri = self.uri if isinstance(self.uri, int) else redact(str(self.uri))
        return {"kind": self.kind, "uri": uri, "width": self.width, "height": self.height, "fps": self.fps}

    # -- thread -------------------------------------------------------------------------------------------
    def start(self) -> "Source":
        """Start the capture thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"capture:{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the capture thread to end and wait for it (up to ``timeout`` s); releases the capture."""
        self._stop.set()
        with self._lock:
            self._space.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("source %s: capture thread did not stop within %.0f s", self.name, timeout)
        if self.end_reason is None:
            self.end_reason = "stopped"

    def get(self, timeout: float = 0.0) -> FramePacket | None:
        """The next frame (files) or the latest one (live / realtime); ``None`` when none arrived within
        ``timeout`` seconds (0: do not wait) or the source has ended."""
        with self._lock:
            if not self._mailbox and timeout > 0 and not self._done.is_set():
                self._avail.wait_for(lambda: self._mailbox or self._done.is_set(), timeout)
            if not self._mailbox:
                return None
            pkt = self._mailbox.popleft()
            self._space.notify_all()
            return pkt

    @property
    def finished(self) -> bool:
        """The source will hand over no more frames (ended or stopped, and everything read was taken)."""
        with self._lock:
            return self._done.is_set() and not self._mailbox

    def _put(self, pkt: FramePacket) -> bool:
        """Hand a frame over; files (not realtime) wait for room, others replace the waiting frame."""
        with self._lock:
            if self._mailbox.maxlen == 1 and (self.live or self.config.realtime):
                if self._mailbox:
                    self.dropped += 1
                self._mailbox.append(pkt)
            else:
                while len(self._mailbox) >= self._mailbox.maxlen and not self._stop.is_set():
                    self._space.wait(0.1)
                if self._stop.is_set():
                    return False
                self._mailbox.append(pkt)
            self._avail.notify_all()
        self.wake.set()
        return True

    def _emit(self, kind: str, **fields) -> None:
        if self.on_event is None:
            return
        now = time.time()
        try:
            self.on_event(Event(kind, self.name, max(self.frames_read - 1, 0), now, now, fields=fields))
        except Exception:  # never let reporting kill the capture thread
            log.exception("source %s: event callback failed", self.name)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; returns False when stopped."""
        return not self._stop.wait(seconds)

    def _run(self) -> None:
        try:
            if self.kind == "folder":
                self._run_folder()
            else:
                self._run_capture()
        except Exception as e:  # pragma: no cover - unexpected; reported, the stream goes on with the others
            log.exception("source %s: capture thread failed", self.name)
            self.end_reason = f"error: {e}"
        finally:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
            with self._lock:
                self._done.set()
                self._avail.notify_all()
            self.wake.set()

    def _pace(self, t0: float, index: int) -> bool:
        """Realtime files: wait until frame ``index`` is due; returns False when stopped."""
        if not self.config.realtime:
            return True
        due = t0 + index / self.fps - time.perf_counter()
        return self._sleep(due) if due > 0 else not self._stop.is_set()

    def _packet(self, img: np.ndarray) -> FramePacket:
        now, mono = time.time(), time.perf_counter()
        i = self.frames_read
        ts = now if self.live else i / self.fps
        self.frames_read += 1
        return FramePacket(self.name, i, ts, now, mono, img)

    def _run_folder(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            for p in self._files:
                if not self._pace(t0, self.frames_read):
                    return
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is None:
                    log.warning("source %s: %s is not a readable image, skipped", self.name, p.name)
                    continue
                if not self._put(self._packet(img)):
                    return
            if not self.config.loop:
                break
        self.end_reason = self.end_reason or ("stopped" if self._stop.is_set() else "end_of_stream")

    def _run_capture(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            if not self._pace(t0, self.frames_read):
                break
            ok, img = self._cap.read() if self._cap is not None else (False, None)
            if ok and img is not None:
                if not self._put(self._packet(img)):
                    break
                continue
            if not self.live:
                if self.config.loop and self.frames_read > 0:
                    self._cap.release()
                    self._cap = self._capture()
                    if self._cap.isOpened():
                        continue
                self.end_reason = "end_of_stream"
                break
            if not self._reconnect("read failed or timed out"):
                break
        if self.end_reason is None:
            self.end_reason = "stopped"

    def _reconnect(self, error: str) -> bool:
        """Live source lost: retry with exponential backoff, reporting it. False when given up or stopped."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        lost_at = time.perf_counter()
        delay = self.config.reconnect_initial_s
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            limit = self.config.max_reconnects
            if limit is not None and attempt > limit:
                log.warning("source %s: giving up after %d reconnection attempts", self.name, limit)
                self.end_reason = "gave_up"
                return False
            log.warning("source %s lost (%s); reconnecting in %.1f s (attempt %d)", self.name, error, delay, attempt)
            self._emit("source_lost", error=error, attempt=attempt, retry_in_s=delay)
            if not self._sleep(delay):
                return False
            cap = self._capture()
            if cap.isOpened():
                self._cap = cap
                self._probe(cap)
                self.reconnects += 1
                down = time.perf_counter() - lost_at
                log.info("source %s reconnected after %.1f s", self.name, down)
                self._emit("source_reconnected", attempt=attempt, down_s=down)
                return True
            cap.release()
            error = "cannot connect"
            delay = min(delay * 2, self.config.reconnect_max_s)
        return False


def open_source(uri: str | int | Path, name: str | None = None, config: SourceConfig = SourceConfig(),
                on_event: Callable[[Event], None] | None = None, wake: threading.Event | None = None) -> Source:
    """A :class:`Source` for ``uri`` (not started). ``"NAME=URI"`` strings name the source (``door=rtsp://...``)."""
    if isinstance(uri, str) and name is None:
        m = re.match(r"^([A-Za-z_][\w.-]*)=(.+)$", uri)
        if m and not Path(uri).exists():
            name, uri = m.group(1), m.group(2)
    return Source(uri, name=name, config=config, on_event=on_event, wake=wake)
