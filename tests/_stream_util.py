"""Helpers of the stream tests: an MJPEG-over-HTTP camera on 127.0.0.1 that can be stopped and restarted."""
from __future__ import annotations

import http.server
import socketserver
import threading
import time
from typing import Sequence

import cv2
import numpy as np


class MjpegServer:
    """Serves ``frames`` in a loop as ``multipart/x-mixed-replace`` JPEGs at ``fps`` (what IP cameras do).

    ``stop()`` closes the listening socket *and* every open connection (a camera dropping off the network);
    ``start()`` again serves on the same port.
    """

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 25.0, port: int = 0):
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
        self.fps = fps
        self.port = port
        self.served = 0
        self._srv: socketserver.ThreadingTCPServer | None = None
        self._running = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> "MjpegServer":
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                i = 0
                try:
                    while owner._running.is_set():
                        jpg = owner.jpegs[i % len(owner.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg))
                        self.wfile.write(jpg + b"\r\n")
                        owner.served += 1
                        i += 1
                        time.sleep(1.0 / owner.fps)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            block_on_close = False

        self._running.set()
        self._srv = Server(("127.0.0.1", self.port), Handler)
        self.port = self._srv.server_address[1]
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._running.clear()  # open connections end after their current frame
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None
        time.sleep(2.0 / self.fps)

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(cond, timeout: float, what: str, poll: float = 0.05):
    """Poll ``cond()`` until truthy (returns it) or fail the test after ``timeout`` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
