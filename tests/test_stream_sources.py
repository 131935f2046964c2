"""Video sources: files frame by frame, folders, realtime pacing, a live MJPEG camera that drops and comes back."""
import time

import cv2
import numpy as np
import pytest

from _stream_util import MjpegServer, wait_for
from sdk.sources import Source, SourceConfig, SourceError, open_source, redact


def numbered_frames(n, size=(160, 120)):
    """Frames whose grey level encodes their index (i * 8), readable back after compression."""
    return [np.full((size[1], size[0], 3), (i * 8) % 256, np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "numbers.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 120))
    for f in numbered_frames(30):
        w.write(f)
    w.release()
    return path


def drain(src, timeout=20.0):
    out = []
    t0 = time.monotonic()
    while not src.finished and time.monotonic() - t0 < timeout:
        p = src.get()
        if p is None:
            time.sleep(0.002)
        else:
            out.append(p)
    return out


def test_file_is_read_frame_by_frame_without_drops(video):
    src = open_source(str(video), config=SourceConfig(queue_size=2)).start()
    assert (src.kind, src.live, src.name, src.width, src.height, src.fps) == ("file", False, "numbers.avi", 160, 120, 25.0)
    time.sleep(0.3)  # the reader waits for us: the queue holds only 2
    pkts = drain(src)
    assert [p.index for p in pkts] == list(range(30)) and src.dropped == 0
    assert [round(float(p.image.mean()) / 8) for p in pkts] == list(range(30))
    assert pkts[5].ts == pytest.approx(5 / 25) and pkts[0].image.dtype == np.uint8
    assert src.end_reason == "end_of_stream" and src.frame_count == 30


def test_realtime_file_is_paced_and_drops_when_the_consumer_is_slow(video):
    src = Source(video, config=SourceConfig(realtime=True))
    t0 = time.monotonic()
    src.start()
    got = []
    while not src.finished:
        p = src.get()
        if p is not None:
            got.append(p.index)
            time.sleep(0.1)  # a slow consumer: 10 frames/s against 25
        else:
            time.sleep(0.005)
    assert time.monotonic() - t0 >= 30 / 25 * 0.9  # played at its frame rate
    assert src.dropped > 5 and len(got) + src.dropped == 30 and got == sorted(got)


def test_loop_restarts_a_file(video):
    src = Source(video, config=SourceConfig(loop=True)).start()
    seen = []
    wait_for(lambda: (p := src.get()) is not None and seen.append(p.index) is None and len(seen) >= 45, 20, "45 frames")
    src.stop()
    assert seen == list(range(45)) and src.end_reason == "stopped"


def test_image_folder(tmp_path):
    for i, f in enumerate(numbered_frames(5)):
        cv2.imwrite(str(tmp_path / f"img_{4 - i:02d}.png"), f)  # names sort in reverse order of the index
    (tmp_path / "notes.txt").write_text("not an image")
    src = Source(tmp_path, config=SourceConfig(folder_fps=10)).start()
    pkts = drain(src)
    assert src.kind == "folder" and src.frame_count == 5
    assert [round(float(p.image.mean()) / 8) for p in pkts] == [4, 3, 2, 1, 0]
    assert [p.ts for p in pkts] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="video source not found"):
        open_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))
    bad = tmp_path / "fake.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError, match="not a readable video"):
        open_source(str(bad))
    with pytest.raises(ValueError):
        SourceConfig(reconnect_initial_s=5, reconnect_max_s=1)


def test_names_and_redaction(video):
    assert open_source(f"door={video}").name == "door"
    assert redact("rtsp://admin:secret@10.0.0.5:554/live") == "rtsp://10.0.0.5:554/live"
    assert redact("http://cam/x.mjpg") == "http://cam/x.mjpg"


def test_live_mjpeg_keeps_latest_frame_counts_drops_and_reconnects():
    events = []
    server = MjpegServer(numbered_frames(20), fps=50).start()
    cfg = SourceConfig(reconnect_initial_s=0.2, reconnect_max_s=0.4, open_timeout_s=3, read_timeout_s=2)
    src = open_source(server.url, config=cfg, on_event=events.append)
    try:
        assert src.live and src.kind == "url" and src.width == 160
        src.start()
        wait_for(lambda: src.frames_read >= 20, 15, "20 frames from the MJPEG server")
        time.sleep(0.5)  # we read nothing for 0.5 s: only the latest frame waits, the rest are dropped
        p = src.get()
        assert p is not None and src.get() is None
        assert src.dropped >= 5 and p.index >= 20
        assert p.ts == pytest.approx(time.time(), abs=5)  # live: wall-clock timestamps

        server.stop()  # the camera drops off the network
        lost = wait_for(lambda: [e for e in events if e.event == "source_lost"], 15, "source_lost")
        assert lost[0].source == src.name and lost[0].fields["attempt"] == 1 and lost[0].fields["retry_in_s"] > 0
        time.sleep(0.5)
        read_before = src.frames_read
        server.start()  # and comes back on the same address
        back = wait_for(lambda: [e for e in events if e.event == "source_reconnected"], 20, "source_reconnected")
        assert back[0].fields["down_s"] > 0
        wait_for(lambda: src.frames_read > read_before + 5, 15, "frames after the reconnection")
        assert src.reconnects == 1 and not src.finished
    finally:
        src.stop()
        server.stop()
    while src.get() is not None:  # what was read before the stop can still be taken
        pass
    assert src.end_reason == "stopped" and src.finished


def test_live_source_gives_up_after_max_reconnects():
    events = []
    server = MjpegServer(numbered_frames(3), fps=50).start()
    src = open_source(server.url, config=SourceConfig(reconnect_initial_s=0.1, reconnect_max_s=0.1, max_reconnects=2,
                                                      open_timeout_s=1, read_timeout_s=1), on_event=events.append)
    src.start()
    wait_for(lambda: src.frames_read > 3, 15, "frames")
    server.stop()
    wait_for(lambda: src.finished or (src.get() and False), 30, "the source to give up")
    assert src.end_reason == "gave_up"
    assert [e.fields["attempt"] for e in events if e.event == "source_lost"] == [1, 2]
