"""Soak test: a bounded run on a local video source, watched from outside for leaks.

The source is a video this tool renders (``--source`` to use your own): the astronaut of ``skimage.data`` moving
across a 640x480 scene, masked part of the time, the camera man now and then, empty frames in between. A worker
process consumes it for ``--minutes`` at ``--fps`` (a camera's pace: it sleeps when ahead) and writes one JSON
event per frame; this process samples the worker's resident memory (VmRSS), thread count and open file handles
from ``/proc`` every ``--sample-s`` seconds. Pass criteria: RSS growth after warm-up < ``--max-rss-growth`` (5%),
no thread or file-handle growth, every event present and well-formed, worker exit code 0. Warm-up = the worker's
first pass over the source (identify mode: every scene of the 40-second loop and both kinds of enrollment seen
once; at least 60 s): ONNX Runtime's arenas and the allocator grow to their high-water mark on the first frame of each kind
(1 face, 2 faces, masked, none) and stay there; growth after that is what a leak looks like.

Workers (``--mode``):

* ``identify`` (default): ``Recognizer(gallery=DB).identify(frame)`` per frame (the SDK's public API, frame by
  frame), plus two enroll / remove cycles of a visitor every 300 frames (gallery writes under load). Events:
  ``{"frame", "t", "faces", "identities"}``, then ``{"event": "end", "frames": N}``.
* ``stream``: the documented stream CLI, ``python -m sdk stream SOURCE --gallery DB --events FILE.jsonl`` (issue
  #10); the source video is rendered for the whole duration. Events: whatever the stream writes; checked to be
  valid JSON lines, at least one per second of video.

    python tools/soak.py --minutes 30 --out reports/soak.json                # writes reports/soak.png too
    python tools/soak.py --minutes 30 --mode stream --out reports/soak_stream.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _report import emit  # noqa: E402 - benchmarks/_report.py: one JSON writer for every report

log = logging.getLogger("soak")
W, H = 640, 480
#: Length of the rendered scene (astronaut, masked astronaut, astronaut + camera man, empty), in seconds.
SCENE_S = 40.0


# -- the source --------------------------------------------------------------------------------------------------
def render_source(path: Path, seconds: float, fps: float) -> int:
    """Write a ``seconds``-long MJPG video at ``fps`` to ``path``; returns the number of frames."""
    from skimage import data

    from sdk.occluders import draw_surgical_mask

    astro = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    face = cv2.resize(astro[20:300, 120:340], (140, 180))
    lm = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)
    masked = cv2.resize(draw_surgical_mask(astro, lm)[0][20:300, 120:340], (140, 180))
    camera = cv2.resize(cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)[30:330, 150:400], (140, 168))
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(60, 200, (H, W, 3), dtype=np.uint8), (0, 0), 9)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path} (OpenCV without an MJPG writer?)")
    n = int(seconds * fps)
    for i in range(n):
        frame = background.copy()
        phase = (i / fps) % SCENE_S  # the scene, repeated
        if phase < 30:
            x = int(40 + (W - 220) * (0.5 + 0.5 * np.sin(i / fps / 3)))
            img = masked if 10 <= phase < 20 else face
            frame[150:150 + img.shape[0], x:x + img.shape[1]] = img
        if 24 <= phase < 34:
            frame[280:280 + camera.shape[0], 460:460 + camera.shape[1]] = camera
        cv2.putText(frame, f"{i:06d}", (10, 470), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
        writer.write(frame)
    writer.release()
    return n


# -- workers -------------------------------------------------------------------------------------------------------
def identify_worker(args: argparse.Namespace) -> int:
    """Identify every frame of the (looped) source for ``--minutes`` at ``--fps``; one event per frame."""
    from skimage import data

    from sdk.recognizer import Recognizer

    rec = Recognizer(gallery=args.gallery)
    astro = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    if not rec.gallery.count("astronaut"):
        rec.enroll("astronaut", astro)
    end = time.monotonic() + args.minutes * 60
    period = 1.0 / args.fps
    cap, i = cv2.VideoCapture(str(args.source)), 0
    with open(args.events, "w", encoding="utf-8") as ev:
        while time.monotonic() < end:
            t0 = time.monotonic()
            ok, frame = cap.read()
            if not ok:  # loop the file; the first wrap ends the warm-up (every scene of the source seen once)
                cap.release()
                cap = cv2.VideoCapture(str(args.source))
                ev.write(json.dumps({"event": "loop", "after_frame": i, "t": round(time.time(), 3)}) + "\n")
                continue
            matches = rec.identify(frame)
            ev.write(json.dumps({"frame": i, "t": round(time.time(), 3), "faces": len(matches),
                                 "identities": [m.identity for m in matches]}) + "\n")
            ev.flush()
            if i % 300 in (60, 120):  # gallery writes under load: a visitor (mirrored, then not) comes and goes
                rec.enroll("visitor", np.ascontiguousarray(astro[:, ::-1]) if i % 300 == 60 else astro)
                rec.gallery.remove("visitor")
            i += 1
            time.sleep(max(0.0, period - (time.monotonic() - t0)))
        ev.write(json.dumps({"event": "end", "frames": i}) + "\n")
    cap.release()
    rec.close()
    return 0


# -- the watcher ---------------------------------------------------------------------------------------------------
def sample(pid: int) -> dict | None:
    """``{"t", "rss_mb", "threads", "fds"}`` of process ``pid`` from /proc, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    vals = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"t": time.time(), "rss_mb": int(vals["VmRSS"].split()[0]) / 1024, "threads": int(vals["Threads"]),
            "fds": fds}


def check_events(path: Path, mode: str, video_seconds: float) -> dict:
    """Are the events complete? identify: frames 0..N-1 once each, then the end event; stream: valid JSON lines."""
    bad, events = 0, []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            bad += 1
    out = {"lines": len(events) + bad, "malformed": bad}
    if mode == "identify":
        frames = [e["frame"] for e in events if "frame" in e]
        end = [e for e in events if e.get("event") == "end"]
        out.update(frames=len(frames), consecutive=frames == list(range(len(frames))),
                   end_event=bool(end) and end[-1]["frames"] == len(frames),
                   recognised_frames=sum(1 for e in events if "astronaut" in (e.get("identities") or [])))
        out["complete"] = bad == 0 and out["consecutive"] and out["end_event"] and len(frames) > 0
    else:
        out["complete"] = bad == 0 and len(events) >= video_seconds
    return out


def plot(samples: list[dict], path: Path, warm_t: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = samples[0]["t"]
    t = [(s["t"] - t0) / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t, [s["rss_mb"] for s in samples], label="RSS (MB)")
    ax2 = ax.twinx()
    ax2.plot(t, [s["threads"] for s in samples], "g--", label="threads")
    ax2.plot(t, [s["fds"] for s in samples], "r:", label="open files")
    ax.axvline((warm_t - t0) / 60, color="grey", lw=1, ls=":")
    ax.set(xlabel="minutes", ylabel="RSS (MB)", title="soak: worker memory, threads, file handles")
    ax2.set_ylabel("count")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="lookthrough-soak-"))
    video_s = args.minutes * 60 if args.mode == "stream" else SCENE_S  # identify: one scene cycle, looped
    source = Path(args.source) if args.source else work / "source.avi"
    if not args.source:
        n = render_source(source, video_s, args.fps)
        log.info("rendered %s: %d frames at %.1f fps", source, n, args.fps)
    events, gallery = work / "events.jsonl", work / "gallery.db"
    if args.mode == "identify":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "identify", "--source", str(source),
               "--gallery", str(gallery), "--events", str(events), "--minutes", str(args.minutes), "--fps", str(args.fps)]
    else:
        cmd = [sys.executable, "-m", "sdk", "stream", str(source), "--gallery", str(gallery), "--events", str(events)]
    log.info("worker: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "worker.log", "w"))
    samples, t_start = [], time.time()
    warm_s = max(60.0, 0.1 * args.minutes * 60)
    deadline = t_start + args.minutes * 60 + 300
    while proc.poll() is None and time.time() < deadline:
        s = sample(proc.pid)
        if s:
            samples.append(s)
        time.sleep(args.sample_s)
    if proc.poll() is None:
        proc.kill()
    code = proc.wait()
    loops = []
    if events.exists():  # the worker's first pass over the source ends the warm-up (identify mode)
        loops = [e["t"] for e in map(json.loads, events.read_text().splitlines()) if e.get("event") == "loop"]
    if loops:
        warm_s = max(60.0, loops[0] - t_start)
    after = [s for s in samples if s["t"] >= t_start + warm_s]
    if len(after) < 6:
        raise RuntimeError(f"only {len(after)} samples after warm-up: run longer (--minutes) or sample faster")
    base, last = after[:3], after[-3:]
    rss0, rss1 = float(np.median([s["rss_mb"] for s in base])), float(np.median([s["rss_mb"] for s in last]))
    report = {
        "tool": "tools/soak.py", "command": "python tools/soak.py " + " ".join(args.argv), "mode": args.mode,
        "minutes": args.minutes, "fps_target": args.fps, "worker_exit_code": code, "warmup_s": round(warm_s, 1),
        "warmup": "first pass over the source" if loops else "max(60 s, 10% of the run)",
        "rss_mb": {"after_warmup": round(rss0, 1), "end": round(rss1, 1), "max": round(max(s["rss_mb"] for s in samples), 1),
                   "growth_pct": round(100 * (rss1 - rss0) / rss0, 2)},
        "threads": {"after_warmup": base[0]["threads"], "end": last[-1]["threads"], "max": max(s["threads"] for s in after)},
        "fds": {"after_warmup": base[0]["fds"], "end": last[-1]["fds"], "max": max(s["fds"] for s in after)},
        "events": check_events(events, args.mode, video_s) if events.exists() else {"complete": False, "lines": 0},
        "samples": len(samples),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg": os.getloadavg()},
        "worker_log_tail": (work / "worker.log").read_text()[-1500:],
    }
    if report["events"].get("frames"):
        report["fps_achieved"] = round(report["events"]["frames"] / (args.minutes * 60), 2)
    report["pass"] = {
        "rss_growth_below_limit": report["rss_mb"]["growth_pct"] < args.max_rss_growth,
        "no_thread_leak": report["threads"]["end"] <= report["threads"]["after_warmup"],
        "no_fd_leak": report["fds"]["end"] <= report["fds"]["after_warmup"],
        "events_complete": bool(report["events"]["complete"]),
        "worker_exit_0": code == 0,
    }
    report["ok"] = all(report["pass"].values())
    if args.out:
        plot(samples, args.out.with_suffix(".png"), t_start + warm_s)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    p.add_argument("--mode", choices=("identify", "stream"), default="identify", help="what consumes the source")
    p.add_argument("--fps", type=float, default=5.0, help="frames per second of the source and the worker's pace")
    p.add_argument("--source", help="a local video file to use instead of the rendered one")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between /proc samples")
    p.add_argument("--max-rss-growth", type=float, default=5.0, help="pass limit on RSS growth after warm-up, percent")
    p.add_argument("--out", type=Path, help="JSON report (and a PNG beside it); default: stdout")
    p.add_argument("--worker", choices=("identify",), help=argparse.SUPPRESS)
    p.add_argument("--gallery", help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker:
        return identify_worker(args)
    report = run(args)
    emit(report, args.out)
    log.info("RSS %+.2f%%, threads %d -> %d, fds %d -> %d, events complete: %s -> %s",
             report["rss_mb"]["growth_pct"], report["threads"]["after_warmup"], report["threads"]["end"],
             report["fds"]["after_warmup"], report["fds"]["end"], report["events"]["complete"],
             "PASS" if report["ok"] else "FAIL")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
