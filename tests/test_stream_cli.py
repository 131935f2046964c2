"""``python -m sdk stream``: a whole run, and Ctrl-C / SIGTERM in the middle of one losing no event."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from _stream_util import MjpegServer, wait_for
from sdk.events import read_jsonl
from sdk.scenes import PEOPLE, make_scene, person_image, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(gallery file with both people enrolled, a 640x480 video of both of them, the scene)."""
    from sdk.recognizer import Recognizer

    d = tmp_path_factory.mktemp("cli")
    with Recognizer(gallery=d / "people.db") as rec:
        for name in PEOPLE:
            rec.enroll(name, person_image(name))
    scene = make_scene((640, 480), faces=2, frames=60, masked=0.5, leave_after=None, seed=5)
    return d / "people.db", render(scene, d / "two.mp4"), scene


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sdk", "stream", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, **kw)


def check_complete(path: Path) -> list[dict]:
    """The JSONL is whole: every line parses, every started track ended, the file ends with source_ended."""
    text = path.read_text()
    assert text.endswith("\n")
    events = read_jsonl(path)
    started = [e["track"] for e in events if e["event"] == "track_started"]
    ended = [e["track"] for e in events if e["event"] == "track_ended"]
    assert sorted(started) == sorted(ended) and len(set(started)) == len(started)
    assert events[-1]["event"] == "source_ended"
    return events


@pytest.mark.slow
def test_cli_stream_file(setup, tmp_path):
    db, video, scene = setup
    ev, out, summ = tmp_path / "events.jsonl", tmp_path / "annotated.mp4", tmp_path / "summary.json"
    r = run_cli(video, "--gallery", db, "--events", ev, "--out", out, "--summary", summ, "-q")
    assert r.returncode == 0, r.stderr
    events = check_complete(ev)
    assert {e["identity"] for e in events if e["event"] == "identified"} == {"astronaut", "cameraman"}
    assert "60 frames in" in r.stdout and "2 identified" in r.stdout
    s = json.loads(summ.read_text())
    assert s["frames"] == 60 and s["per_frame_ms"]["total"]["p50"] > 0
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 60
    cap.release()


def test_cli_stream_bad_source_is_a_clear_error(setup, tmp_path):
    db, _, _ = setup
    r = run_cli(tmp_path / "missing.mp4", "--gallery", db, "--events", tmp_path / "ev.jsonl", "-q")
    assert r.returncode == 2 and "video source not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(tmp_path / "missing.mp4", "--gallery", db)  # --events is required
    assert r.returncode == 2 and "--events" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_loses_no_event_and_closes_the_video(setup, tmp_path, sig):
    db, video, _ = setup
    ev, out = tmp_path / "events.jsonl", tmp_path / "annotated.mp4"
    with MjpegServer(list(render(make_scene((320, 240), faces=1, frames=50, leave_after=None, seed=6))), fps=25) as cam:
        # a looping file in real time and a live camera: a stream that never ends by itself
        p = subprocess.Popen([sys.executable, "-m", "sdk", "stream", str(video), f"cam={cam.url}", "--realtime", "--loop",
                              "--gallery", str(db), "--events", str(ev), "--out", str(out), "-q"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: ev.exists() and ev.read_text().count('"identified"') >= 2, 90, "two identified events")
            time.sleep(0.3)
            os.kill(p.pid, sig)
            stdout, stderr = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
    assert p.returncode == 130, stderr
    events = check_complete(ev)
    ends = [e for e in events if e["event"] == "track_ended"]
    reason = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert ends and all(e["reason"] in (reason, "lost", "merged") for e in ends)
    assert {e["source"]: e["reason"] for e in events if e["event"] == "source_ended"} == {"two.mp4": reason, "cam": reason}
    for i in (0, 1):  # both annotated videos were finalised (an unclosed mp4 has no index and does not open)
        cap = cv2.VideoCapture(str(tmp_path / f"annotated_{i}.mp4"))
        assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) > 0
        cap.release()
