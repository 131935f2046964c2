"""Video-stream benchmark: ``sdk.Stream`` against a face_recognition-style baseline, in the same run.

Videos are rendered by this script from scikit-image's two people (:mod:`sdk.scenes`): 640x480 and 1280x720,
1 / 4 / 16 faces moving on a static background, half of them wearing a surgical mask, entering one after the
other (and half of them leaving before the end). For each video:

* **ours, throughput**: ``Stream`` on the file frame by frame (``--model``, default bundle; CPU): frames/s, milliseconds
  per frame per stage (p50/p95/p99), full/region detections, and *face-frame accuracy*: the share of
  (frame, visible face) pairs for which a track covers the face (IoU > 0.3) and carries the right identity;
* **ours, real time**: the same file played at its frame rate (``realtime=True``, frames dropped when behind,
  as a camera would deliver them): event latency from the frame a face appears in to its ``identified``
  event (ms, and frames), and frames dropped;
* **baseline** (face_recognition's defaults, via dlib): HOG detector with one upsampling, dlib's 5-point
  shape predictor and ResNet descriptor (one pass) for every face, on every frame, nearest enrolled face at
  euclidean distance < 0.6; timed on ``--baseline-frames`` frames spread evenly over the video (it is slow;
  frames/s = frames / processing time, decoding excluded); same accuracy measure;
* ratios: ours / baseline frames per second, and baseline / ours CPU time per frame (process CPU time of all
  threads: a measure that a busy shared machine disturbs less than wall time).

Extra rows on the 640x480 4-face video: ``detect_every_frame`` (full MTCNN on every frame: what tracking
saves) and ``fast_detector`` (MTCNN on half-resolution frames, ~4x cheaper: the scheduler spends the budget it
frees on more detections). ``--soak SECONDS`` loops the 640x480 4-face video for that long and samples the
process's RSS (growth from the first minute to the end; target < 5%).

    python benchmarks/bench_stream.py --out benchmarks/results/stream.json     # + stream.png
    python benchmarks/bench_stream.py --soak 600 --out benchmarks/results/stream_soak.json
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from _report import emit  # benchmarks/_report.py (this folder is sys.path[0] when run as a script)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sdk.bench import machine_info  # noqa: E402
from sdk.events import read_jsonl  # noqa: E402
from sdk.scenes import PEOPLE, Scene, make_scene, person_image, render  # noqa: E402
from sdk.schedule import ScheduleConfig  # noqa: E402
from sdk.sources import SourceConfig  # noqa: E402
from sdk.stream import Stream, StreamConfig  # noqa: E402
from sdk.track import iou_matrix  # noqa: E402
from sdk.types import Face  # noqa: E402

log = logging.getLogger("bench_stream")
CONFIGS = ("640x480:1", "640x480:4", "640x480:16", "1280x720:1", "1280x720:4", "1280x720:16")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


class HalfResDetector:
    """The detector on frames halved in each side (~4x fewer pixels): a stand-in for a faster detector."""

    def __init__(self, det):
        self.det = det
        self.refine = det.refine
        self.refine_reach = getattr(det, "refine_reach", 0.0)

    def detect(self, frame):
        h, w = frame.shape[:2]
        small = cv2.resize(frame, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        s = np.array([w / (w // 2), h / (h // 2)], np.float32)
        return [Face(f.box * np.tile(s, 2), f.landmarks * s, f.score) for f in self.det.detect(small)]


class WithDetector:
    """The Recognizer seen through another detector (what Stream uses: detector, identify_faces, threshold)."""

    def __init__(self, rec, detector):
        self.bundle, self.threshold, self.detector = rec.bundle, rec.threshold, detector
        self.min_det_score = getattr(rec, "min_det_score", None)
        self.identify_faces = rec.identify_faces


def face_accuracy(scene: Scene, frames: dict[int, list[tuple[np.ndarray, str | None]]]) -> dict:
    """Share of (frame, visible face) pairs covered by a box (IoU > 0.3) with the right identity, over the
    frames in ``frames`` ({frame: [(box, identity)]})."""
    total = found = right = 0
    for i, dets in frames.items():
        for a in scene.actors:
            gt = a.face_box(i)
            if gt is None:
                continue
            total += 1
            if not dets:
                continue
            iou = iou_matrix([gt], [b for b, _ in dets])[0]
            k = int(np.argmax(iou))
            if iou[k] > 0.3:
                found += 1
                right += dets[k][1] == a.person
    return {"face_frames": total, "found": round(found / max(total, 1), 4), "identified": round(right / max(total, 1), 4)}


def run_ours(rec, scene: Scene, video: Path, work: Path, name: str, config: StreamConfig = StreamConfig(),
             max_frames: int | None = None) -> dict:
    ev = work / f"{name}.jsonl"
    ev.unlink(missing_ok=True)
    seen: dict[int, list] = {}
    t0: list[float] = []

    def on_frame(pkt, tracks):
        if not t0:
            t0.append(pkt.captured - pkt.index / scene.fps)  # when frame 0 was (or would have been) captured
        seen[pkt.index] = [(t.face.box.copy(), t.data["info"].vote.decision.identity
                            if t.data.get("info") and t.data["info"].vote.decision else None)
                           for t in tracks if t.matched]

    rss0 = rss_mb()
    cpu0 = time.process_time()
    summary = Stream(rec, [str(video)], events=ev, config=config, on_frame=on_frame).run(max_frames=max_frames)
    cpu = time.process_time() - cpu0  # every thread of this process: inference loop, capture thread, ORT pools
    events = read_jsonl(ev)
    out = {"fps": summary["fps"], "frames": summary["frames"], "wall_s": summary["wall_s"],
           "cpu_ms_per_frame": round(1e3 * cpu / max(summary["frames"], 1), 2),
           "per_frame_ms": {k: {q: v.get(q) for q in ("mean", "p50", "p95", "p99")}
                            for k, v in summary["per_frame_ms"].items()},
           "per_call_ms": {k: {q: v.get(q) for q in ("n", "mean", "p50", "p95")} for k, v in summary["per_call_ms"].items()},
           "full_detections": summary["sources"][0]["full_detections"],
           "region_detections": summary["sources"][0]["region_detections"],
           "dropped": summary["sources"][0]["dropped"], "recognitions": summary["recognitions"],
           "events": {k: v for k, v in summary["events"].items() if v}, "accuracy": face_accuracy(scene, seen),
           "rss_mb_before_after": [round(rss0, 1), round(rss_mb(), 1)]}
    # face appears -> identified: the first identified / identity_changed event naming the right person, per
    # actor (matched to the actor whose true box the event's box overlaps); unknown first looks are counted
    lat_ms, lat_frames, wrong, unknown_first, done = [], [], 0, 0, set()
    for e in events:
        if e["event"] not in ("identified", "identity_changed"):
            continue
        for k, a in enumerate(scene.actors):
            gt = a.face_box(e["frame"])
            if gt is None or iou_matrix([gt], [e["box"]])[0, 0] <= 0.3:
                continue
            if e["event"] == "identified":
                wrong += e["identity"] not in (None, a.person)
                unknown_first += e["identity"] is None
            if e["identity"] == a.person and k not in done:
                done.add(k)
                lat_frames.append(e["frame"] - a.appear)
                lat_ms.append(1e3 * (e["emitted"] - (t0[0] + a.appear / scene.fps)))
            break
    out["identify_latency"] = {"faces": len(scene.actors), "identified": len(done), "wrong_identity": wrong,
                               "unknown_first": unknown_first, "p50_ms": pct(lat_ms, 50), "max_ms": pct(lat_ms, 100),
                               "p50_frames": pct(lat_frames, 50), "max_frames": pct(lat_frames, 100)}
    return out


def run_baseline(scene: Scene, video: Path, frames: int) -> dict:
    """face_recognition's default pipeline through dlib, on every frame (see the module docstring)."""
    import dlib
    import face_recognition_models as frm

    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def encode(rgb):
        t0 = time.perf_counter()
        rects = hog(rgb, 1)  # face_recognition.face_locations(img): number_of_times_to_upsample=1
        t1 = time.perf_counter()
        descs = [np.asarray(net.compute_face_descriptor(rgb, sp(rgb, r), 1)) for r in rects]
        return rects, descs, t1 - t0, time.perf_counter() - t1

    names, known = [], []
    for person in PEOPLE:
        rects, descs, _, _ = encode(person_image(person)[:, :, ::-1].copy())
        if descs:
            names.append(person)
            known.append(descs[0])
    known = np.stack(known)
    cap = cv2.VideoCapture(str(video))
    det_ms, emb_ms, tot_ms, cpu_ms, seen = [], [], [], [], {}
    picks = set(np.linspace(0, scene.frames - 1, min(frames, scene.frames)).round().astype(int).tolist())
    for i in range(scene.frames):
        ok, bgr = cap.read()
        if not ok:
            break
        if i not in picks:  # evenly spaced frames: as many faces on them as over the whole video
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rects, descs, td, te = encode(rgb)
        found = []
        for r, d in zip(rects, descs):
            dist = np.linalg.norm(known - d, axis=1)
            k = int(np.argmin(dist))
            found.append((np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32),
                          names[k] if dist[k] < 0.6 else None))
        tot_ms.append(1e3 * (time.perf_counter() - t0))
        cpu_ms.append(1e3 * (time.process_time() - c0))
        det_ms.append(1e3 * td)
        emb_ms.append(1e3 * te)
        seen[i] = found
    cap.release()
    n = len(tot_ms)
    wall = sum(tot_ms) / 1e3  # processing time only (decoding excluded, as it runs in ours' capture thread)
    return {"frames": n, "frames_sampled": "evenly spaced over the video", "fps": round(n / wall, 2),
            "wall_s": round(wall, 2), "cpu_ms_per_frame": round(float(np.mean(cpu_ms)), 2),
            "per_frame_ms": {"detect_hog": {"p50": pct(det_ms, 50), "p95": pct(det_ms, 95), "p99": pct(det_ms, 99)},
                             "landmarks_embed": {"p50": pct(emb_ms, 50), "p95": pct(emb_ms, 95), "p99": pct(emb_ms, 99)},
                             "total": {"p50": pct(tot_ms, 50), "p95": pct(tot_ms, 95), "p99": pct(tot_ms, 99)}},
            "accuracy": face_accuracy(scene, seen)}


def get_video(work: Path, size: tuple[int, int], faces: int, frames: int) -> tuple[Scene, Path]:
    scene = make_scene(size, faces=faces, frames=frames)
    path = work / f"scene_{size[0]}x{size[1]}_{faces}f_{frames}.mp4"
    if not path.exists():
        t = time.perf_counter()
        render(scene, path)
        log.info("rendered %s in %.1f s", path.name, time.perf_counter() - t)
    return scene, path


def soak(rec, work: Path, seconds: float, sample_s: float = 5.0) -> dict:
    """Loop the 640x480 4-face video for ``seconds``; RSS samples every ``sample_s``."""
    scene, video = get_video(work, (640, 480), 4, 250)
    cfg = StreamConfig(source=SourceConfig(loop=True))
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    last = [0.0]

    def on_frame(pkt, tracks):
        now = time.perf_counter() - t0
        if now - last[0] >= sample_s:
            last[0] = now
            samples.append((round(now, 1), round(rss_mb(), 2)))

    samples.append((0.0, round(rss_mb(), 2)))
    ev = work / "soak.jsonl"
    ev.unlink(missing_ok=True)
    summary = Stream(rec, [str(video)], events=ev, config=cfg, on_frame=on_frame).run(duration_s=seconds)
    samples.append((round(time.perf_counter() - t0, 1), round(rss_mb(), 2)))
    ref = next((m for t, m in samples if t >= 60.0), samples[-1][1])
    growth = 100.0 * (samples[-1][1] - ref) / ref
    return {"seconds": seconds, "frames": summary["frames"], "fps": summary["fps"], "tracks": summary["events"]["track_started"],
            "rss_mb_at_60s": ref, "rss_mb_end": samples[-1][1], "rss_growth_pct_after_60s": round(growth, 2),
            "target_growth_pct": 5.0, "passed": growth < 5.0, "rss_samples": samples}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = list(rows)
    soak_data = report.get("soak")
    fig, axes = plt.subplots(1, 4 if not soak_data else 5, figsize=(23 if not soak_data else 28, 5))
    x = np.arange(len(names))
    ours = [rows[n]["ours"]["fps"] for n in names]
    base = [rows[n]["baseline"]["fps"] for n in names]
    ax = axes[0]
    ax.bar(x - 0.2, ours, 0.4, label="ours: Stream (tracking)")
    ax.bar(x + 0.2, base, 0.4, label="baseline: dlib HOG + ResNet every frame")
    for i, n in enumerate(names):
        ax.text(i - 0.2, ours[i], f"{ours[i]:.1f}\n({rows[n]['ratio_fps']:.0f}x)", ha="center", va="bottom", fontsize=8)
    ax.axhline(25, ls="--", c="grey", lw=1)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("frames / s")
    ax.set_title("throughput (same run)")
    ax.legend(fontsize=8)
    ax = axes[1]
    stages = ["motion", "detect", "refine", "track", "recognize", "total"]
    key = "640x480:4" if "640x480:4" in rows else names[0]
    pf = rows[key]["ours"]["per_frame_ms"]
    sx = np.arange(len(stages))
    for j, q in enumerate(("p50", "p95", "p99")):
        ax.bar(sx + (j - 1) * 0.27, [pf[s][q] or 0 for s in stages], 0.27, label=q)
    ax.set_xticks(sx, stages)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylabel("ms per frame")
    ax.set_title(f"ours per stage, {key}")
    ax.legend(fontsize=8)
    ax = axes[2]
    lat = [rows[n].get("realtime", {}).get("identify_latency", {}) for n in names]
    ax.bar(x - 0.2, [d.get("p50_ms") or 0 for d in lat], 0.4, label="p50")
    ax.bar(x + 0.2, [d.get("max_ms") or 0 for d in lat], 0.4, label="max")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("ms")
    ax.set_title("face appears -> identified (real time)")
    ax.legend(fontsize=8)
    ax = axes[3]
    cpu_o = [rows[n]["ours"].get("cpu_ms_per_frame", 0) for n in names]
    cpu_b = [rows[n]["baseline"].get("cpu_ms_per_frame", 0) for n in names]
    ax.bar(x - 0.2, cpu_o, 0.4, label="ours")
    ax.bar(x + 0.2, cpu_b, 0.4, label="baseline")
    for i in range(len(names)):
        if cpu_o[i]:
            ax.text(i - 0.2, cpu_o[i], f"{cpu_o[i]:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("CPU ms per frame (all threads)")
    ax.set_title("CPU time per frame (less sensitive to machine load)")
    ax.legend(fontsize=8)
    if soak_data:
        t, m = zip(*soak_data["rss_samples"])
        axes[4].plot(t, m)
        axes[4].set_xlabel("s")
        axes[4].set_ylabel("RSS MiB")
        axes[4].set_title(f"soak: RSS growth after 60 s {soak_data['rss_growth_pct_after_60s']:+.1f}%")
    fig.suptitle(f"LookThrough stream benchmark - {report['machine'].get('cpu', '?')}, {report['machine']['cpu_count']} "
                 f"cores (shared), load {report['load_before']} -> {report['load_after']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON report (default: print); the plot goes beside it (.png)")
    ap.add_argument("--model", default="default", help="bundle: built-in name or folder (default: %(default)s)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="WxH:faces,... (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=250, help="frames per video (default 250 = 10 s at 25 fps)")
    ap.add_argument("--baseline-frames", type=int, default=25,
                    help="frames (evenly spaced) the baseline is timed on (default 25)")
    ap.add_argument("--no-realtime", action="store_true", help="skip the real-time (latency) runs")
    ap.add_argument("--no-extras", action="store_true", help="skip the detect-every-frame and fast-detector rows")
    ap.add_argument("--soak", type=float, default=0.0, help="also loop the 640x480 4-face video this many seconds")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench_stream", help="rendered videos and event files")
    ap.add_argument("--plot-only", type=Path, metavar="JSON", help="only redraw the PNG of an earlier report")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.plot_only:
        import json

        report = json.loads(args.plot_only.read_text())
        png = (args.out or args.plot_only).with_suffix(".png")
        plot(report, png) if report.get("results") else plot_soak(report, png)
        print(f"wrote {png}", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    args.work.mkdir(parents=True, exist_ok=True)

    from sdk.recognizer import Recognizer

    rec = Recognizer(args.model).prepare()
    for person in PEOPLE:
        rec.enroll(person, person_image(person))
    report = {"command": "python benchmarks/bench_stream.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(), "load_before": load(), "bundle": rec.bundle.name,
              "note": "shared 2-core VM: other engineers' jobs ran at the same time (see load averages)",
              "baseline": "face_recognition defaults via dlib: HOG (upsample 1) + 5-point shape predictor + ResNet "
                          "(1 pass) on every face of every frame, euclidean < 0.6", "results": {}}
    configs = [c for c in args.configs.split(",") if c] if not args.soak or args.configs != ",".join(CONFIGS) else []
    for c in configs:
        size, faces = c.split(":")
        w, h = (int(v) for v in size.split("x"))
        scene, video = get_video(args.work, (w, h), int(faces), args.frames)
        log.info("%s: ours (throughput)", c)
        row = {"video": {"size": [w, h], "faces": int(faces), "frames": scene.frames, "fps": scene.fps,
                         "masked": sum(a.masked for a in scene.actors)}, "load_before": load()}
        row["ours"] = run_ours(rec, scene, video, args.work, f"ours_{w}x{h}_{faces}")
        log.info("%s: ours %.1f fps; baseline", c, row["ours"]["fps"])
        row["baseline"] = run_baseline(scene, video, args.baseline_frames)
        row["ratio_fps"] = round(row["ours"]["fps"] / row["baseline"]["fps"], 2)
        row["ratio_cpu_per_frame"] = round(row["baseline"]["cpu_ms_per_frame"] / row["ours"]["cpu_ms_per_frame"], 2)
        if not args.no_realtime:
            log.info("%s: ours (real time)", c)
            rt = run_ours(rec, scene, video, args.work, f"realtime_{w}x{h}_{faces}",
                          StreamConfig(source=SourceConfig(realtime=True)))
            row["realtime"] = {k: rt[k] for k in ("fps", "frames", "dropped", "identify_latency", "accuracy", "full_detections",
                                                  "region_detections")}
        if c == "640x480:4" and not args.no_extras:
            n = min(args.frames, 100)
            log.info("%s: detect every frame", c)
            every = run_ours(rec, scene, video, args.work, "every", StreamConfig(schedule=ScheduleConfig(detect_every=1)), n)
            row["detect_every_frame"] = {k: every[k] for k in ("fps", "frames", "full_detections", "per_frame_ms", "accuracy")}
            log.info("%s: faster detector", c)
            fast = run_ours(WithDetector(rec, HalfResDetector(rec.detector)), scene, video, args.work, "fast")
            row["fast_detector"] = {k: fast[k] for k in ("fps", "frames", "full_detections", "region_detections",
                                                         "per_call_ms", "accuracy", "identify_latency")}
        row["load_after"] = load()
        report["results"][c] = row
        log.info("%s: ours %.1f fps, baseline %.2f fps, ratio %.1f", c, row["ours"]["fps"], row["baseline"]["fps"],
                 row["ratio_fps"])
    if args.soak:
        log.info("soak: %.0f s", args.soak)
        report["soak"] = soak(rec, args.work, args.soak)
    report["load_after"] = load()
    if report["results"]:
        report["summary"] = {c: {"ours_fps": r["ours"]["fps"], "baseline_fps": r["baseline"]["fps"], "ratio": r["ratio_fps"],
                                 "ours_cpu_ms_per_frame": r["ours"]["cpu_ms_per_frame"],
                                 "baseline_cpu_ms_per_frame": r["baseline"]["cpu_ms_per_frame"],
                                 "identified_face_frames": r["ours"]["accuracy"]["identified"],
                                 "baseline_identified_face_frames": r["baseline"]["accuracy"]["identified"],
                                 "latency_p50_ms": r.get("realtime", {}).get("identify_latency", {}).get("p50_ms")}
                             for c, r in report["results"].items()}
    emit(report, args.out)
    if args.out and (report["results"] or report.get("soak")):
        png = args.out.with_suffix(".png")
        plot(report, png) if report["results"] else plot_soak(report, png)
        print(f"wrote {png}", file=sys.stderr)
    return 0


def plot_soak(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["soak"]
    t, m = zip(*s["rss_samples"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, m)
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"stream soak, 640x480 4 faces looped: {s['frames']} frames, {s['fps']} fps, "
                 f"RSS {s['rss_growth_pct_after_60s']:+.2f}% after 60 s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
