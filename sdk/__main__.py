"""``python -m sdk`` — the LookThrough command line.

Examples::

    python -m sdk demo                                   # the main job on the built-in models
    python -m sdk enroll --gallery people.db alice a1.jpg a2.jpg
    python -m sdk enroll --gallery people.db --folder faces/      # faces/<name>/*.jpg, progress bar
    python -m sdk identify --gallery people.db door.jpg --out annotated/
    python -m sdk verify a.jpg b.jpg
    python -m sdk bench --out bench.json
    python -m sdk info --gallery people.db
    python -m sdk stream lobby.mp4 rtsp://cam/live --gallery people.db --events events.jsonl --out annotated.mp4
    python -m sdk gallery list --gallery people.db           # also remove, export, import, backup, restore, check
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
log = logging.getLogger("sdk")


def _images_in(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def _recognizer(args: argparse.Namespace):
    from sdk.recognizer import Recognizer, RecognizerConfig

    cfg = RecognizerConfig(threshold=args.threshold, backend=args.backend, device=args.device)
    return Recognizer(args.model, gallery=getattr(args, "gallery", None), config=cfg)


def cmd_enroll(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sdk.errors import GalleryError

    rec = _recognizer(args)
    if args.folder:
        people = sorted(d for d in Path(args.folder).iterdir() if d.is_dir())
        if not people:
            raise SystemExit(f"{args.folder}: no sub-folders (expected one folder per person: <folder>/<name>/*.jpg)")
        jobs = [(d.name, _images_in(d)) for d in people]
    else:
        if not args.name or not args.images:
            raise SystemExit("enroll needs NAME and IMAGE... (or --folder DIR)")
        jobs = [(args.name, [p for img in args.images for p in _images_in(Path(img))])]
    total = sum(len(imgs) for _, imgs in jobs)
    added = skipped = 0
    import numpy as np

    with tqdm(total=total, desc="enroll", unit="img", disable=args.quiet) as bar:
        for name, imgs in jobs:
            embs, srcs = [], []
            for img in imgs:
                try:
                    embs.append(rec.embed_largest(img, what=str(img)))
                    srcs.append(str(img))
                except (GalleryError, ValueError, FileNotFoundError) as e:
                    if args.strict:
                        raise SystemExit(f"enroll aborted, gallery unchanged for {name!r}: {e}")
                    log.warning("skipped %s", e)
                    skipped += 1
                bar.update(1)
            if embs:
                added += rec.gallery.add(name, np.stack(embs), srcs)
    print(f"enrolled {added} embeddings for {len(jobs)} identities into {rec.gallery.path or ':memory:'}"
          f" ({skipped} images skipped: no face or unreadable)")
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    import cv2

    from sdk.draw import annotate
    from sdk.frame import read_image

    rec = _recognizer(args)
    paths = [p for src in args.paths for p in _images_in(Path(src))]
    if not paths:
        raise SystemExit("no images found")
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in paths:
        frame = read_image(p)
        matches = rec.identify(frame)
        if out:
            cv2.imwrite(str(out / (p.stem + ".png")), annotate(frame, matches))
        for i, m in enumerate(matches):
            rows.append({"image": str(p), "face": i, **m.to_dict()})
        if not matches:
            rows.append({"image": str(p), "face": None, "identity": None, "similarity": None, "det_score": None, "box": None})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'image':40s} {'face':>4s} {'identity':20s} {'similarity':>10s} {'det':>5s}  box")
        for r in rows:
            sim = "" if r["similarity"] is None else f"{r['similarity']:.3f}"
            det = "" if r["det_score"] is None else f"{r['det_score']:.2f}"
            face = "-" if r["face"] is None else str(r["face"])
            ident = r["identity"] or ("no face" if r["face"] is None else "unknown")
            box = "" if r["box"] is None else ",".join(f"{v:.0f}" for v in r["box"])
            print(f"{Path(r['image']).name[:40]:40s} {face:>4s} {ident[:20]:20s} {sim:>10s} {det:>5s}  {box}")
        ops = rec.operating_points
        thr = (f"{rec.threshold:.3f}" if len({ops.clean, ops.probe_occluded}) == 1
               else f"{ops.clean:.3f} clean / {ops.probe_occluded:.3f} occluded")
        print(f"threshold {thr} (cosine); gallery {len(rec.gallery.names)} identities"
              + (f"; annotated images in {out}" if out else ""))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    rec = _recognizer(args)
    v = rec.verify(args.a, args.b)
    print(json.dumps({"similarity": round(v.similarity, 4), "same": v.same, "threshold": v.threshold,
                      "operating_point": v.operating_point}))
    return 0 if v.same else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from sdk.bench import run_bench, write_report

    report = run_bench(frames=args.frames, gallery_size=args.gallery_size, model=args.model, progress=not args.quiet)
    print(write_report(report, Path(args.out) if args.out else None))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sdk.demo import run_demo

    rows = run_demo(Path(args.out), args.model)
    print(f"{'probe':28s} {'faces':>5s} {'identity':12s} {'similarity':>10s} {'occluded':>9s}")
    for r in rows:
        sim = "" if r["similarity"] is None else f"{r['similarity']:.3f}"
        occ = "n/a" if r["occlusion"] is None else f"{r['occlusion']:.3f}"
        print(f"{r['probe']:28s} {r['faces']:>5d} {str(r['identity'] or 'unknown'):12s} {sim:>10s} {occ:>9s}")
    print(f"annotated images and results.json in {args.out}")
    ok = [r["identity"] for r in rows] == ["astronaut", "astronaut", None]
    if not ok:
        print("UNEXPECTED: the demo should find the astronaut twice and report the camera man as unknown")
    return 0 if ok else 1


def cmd_info(args: argparse.Namespace) -> int:
    from sdk import _native
    from sdk.bundle import builtin_bundles, load_bundle

    b = load_bundle(args.model)
    info = {"bundle": b.name, "mode": b.mode, "root": str(b.root), "format_version": b.format_version,
            "builtin_bundles": builtin_bundles(), "match": b.match,
            "stages": {k: (None if v is None else {"kind": v.kind, "files": {r: str(f.path) for r, f in v.files.items()},
                                                   "preprocess": None if v.preprocess is None else v.preprocess.to_dict()})
                       for k, v in b.stages.items()},
            "cuda": _native.cuda_info()}
    from sdk.errors import LookThroughError

    try:  # what would run each stage with --backend / --device (an engine that cannot load here says why)
        info["engines"] = _recognizer(argparse.Namespace(**{**vars(args), "gallery": None})).engines
    except LookThroughError as e:
        info["engines"] = {"error": str(e)}
    if args.gallery:
        rec = _recognizer(args)
        info["gallery"] = {"path": args.gallery, "identities": len(rec.gallery.names), "embeddings": len(rec.gallery),
                           "model_id": rec.gallery.model_id}
    print(json.dumps(info, indent=2))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    import signal

    from tqdm import tqdm

    from sdk.schedule import ScheduleConfig
    from sdk.sources import SourceConfig, open_source
    from sdk.stream import Stream, StreamConfig

    cfg = StreamConfig(
        recognize_every=args.recognize_every,
        schedule=ScheduleConfig(detect_every=args.detect_every, target_fps=args.target_fps),
        source=SourceConfig(realtime=args.realtime, loop=args.loop, folder_fps=args.fps,
                            max_reconnects=args.max_reconnects))
    if args.gallery is None:
        log.warning("no --gallery: every face will be reported as unknown")
    rec = _recognizer(args)
    sources = [open_source(s, config=cfg.source) for s in args.sources]  # errors before anything runs
    total = None if (args.loop or any(s.live for s in sources)) else sum(s.frame_count or 0 for s in sources) or None
    if args.max_frames:
        total = args.max_frames if total is None else min(total, args.max_frames)
    bar = tqdm(total=total, desc="stream", unit="frame", disable=args.quiet, smoothing=0.1)
    stream = Stream(rec, sources, events=args.events, out=args.out, config=cfg, on_frame=lambda p, t: bar.update(1))
    signals = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

    def on_signal(signum, _frame):
        if stream.stop_reason is not None and stream.stop_reason in signals.values():
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the orderly shutdown
        log.warning("%s: stopping (writing the pending events, closing the video)", signals[signum])
        stream.stop(signals[signum])

    old = {s: signal.signal(s, on_signal) for s in signals}
    try:
        summary = stream.run(max_frames=args.max_frames, duration_s=args.duration)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'source':24s} {'frames':>7s} {'dropped':>7s} {'tracks':>6s} {'full det':>8s} {'region det':>10s}  end")
    for s in summary["sources"]:
        print(f"{s['name'][:24]:24s} {s['frames']:7d} {s['dropped']:7d} {s['tracks']:6d} {s['full_detections']:8d} "
              f"{s['region_detections']:10d}  {s['end']}")
    ev = summary["events"]
    print(f"{summary['frames']} frames in {summary['wall_s']:.1f} s ({summary['fps']:.1f} frames/s); "
          f"{ev['track_started']} tracks, {ev['identified']} identified, {ev['identity_changed']} identity changes; "
          f"events in {args.events}" + (f"; annotated video {args.out}" if args.out else ""))
    return 130 if summary["stopped"] in signals.values() else 0


STREAM_HELP = """Track and recognise faces in one or more video sources; events go to a JSON-lines file.

Each source gets a capture thread; live sources (URLs, cameras) keep only the latest frame and reconnect
with backoff when they drop; files are read frame by frame unless --realtime. Events: track_started,
identified, identity_changed, track_ended, source_started/lost/reconnected/ended (schema in the README).
Ctrl-C or SIGTERM stops cleanly: every track gets its track_ended, the video is closed (exit code 130).

examples:
  python -m sdk stream lobby.mp4 --gallery people.db --events events.jsonl --out annotated.mp4
  python -m sdk stream door=rtsp://10.0.0.5/live 0 --gallery people.db --events events.jsonl
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    from sdk.bundle import builtin_bundles

    common.add_argument("--model", default=None, help="bundle: built-in name ('default' when omitted; "
                        f"{', '.join(repr(b) for b in builtin_bundles() if b != 'default')}), bundle folder or "
                        "manifest.json")
    common.add_argument("--threshold", type=float, default=None, help="cosine similarity needed to accept a match, for masked and clean faces alike "
                        "(default: the bundle's thresholds per occlusion state)")
    common.add_argument("--backend", default="auto", choices=("auto", "ort", "torch", "tensorrt"),
                        help="inference engine of the model stages (auto: from the bundle's files and the device)")
    common.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu, cuda or cuda:N")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    gal = argparse.ArgumentParser(add_help=False)
    gal.add_argument("--gallery", default=None, help="SQLite gallery file (created if missing); default: in memory")

    p = argparse.ArgumentParser(prog="python -m sdk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("demo", parents=[common], help="enroll the astronaut, find her flipped, masked; camera man is unknown")
    s.add_argument("--out", default="out/demo", help="folder for annotated PNGs and results.json (default out/demo)")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("enroll", parents=[common, gal], help="add people to a gallery",
                       description="Enroll NAME from IMAGE files/folders, or every <DIR>/<name>/ sub-folder with --folder.")
    s.add_argument("name", nargs="?", help="identity name")
    s.add_argument("images", nargs="*", help="image files or folders of images (largest face of each is used)")
    s.add_argument("--folder", help="folder with one sub-folder per person")
    s.add_argument("--strict", action="store_true", help="abort (writing nothing for that person) when an image has no face")
    s.set_defaults(fn=cmd_enroll)
    s = sub.add_parser("identify", parents=[common, gal], help="identify faces in images or folders")
    s.add_argument("paths", nargs="+", help="image files or folders")
    s.add_argument("--out", help="write annotated PNGs here")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(fn=cmd_identify)
    s = sub.add_parser("verify", parents=[common], help="are two images the same person? (exit code 0 = same)")
    s.add_argument("a")
    s.add_argument("b")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("bench", parents=[common], help="per-stage latency p50/p95 with same-run baselines, JSON out")
    s.add_argument("--frames", type=int, default=60, help="frames to time (>= 50 recommended; default 60)")
    s.add_argument("--gallery-size", type=int, default=10000, help="gallery rows to search (default 10000)")
    s.add_argument("--out", help="also write the JSON report here")
    s.set_defaults(fn=cmd_bench)
    s = sub.add_parser("stream", parents=[common, gal], help="recognise faces in videos, cameras and RTSP/HTTP streams",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=STREAM_HELP)
    s.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video file, rtsp:// or http:// URL, camera index or image folder; NAME=SOURCE names it")
    s.add_argument("--events", required=True, help="JSON-lines file the events are appended to")
    s.add_argument("--out", help="annotated video (.mp4 or .avi; NAME_<i>.mp4 per source when there are several)")
    s.add_argument("--realtime", action="store_true",
                   help="play files and folders at their frame rate, dropping frames when behind (as a camera would)")
    s.add_argument("--loop", action="store_true", help="start files and folders again at their end")
    s.add_argument("--fps", type=float, default=25.0, help="frame rate of image folders (default 25)")
    s.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (all sources)")
    s.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    s.add_argument("--detect-every", type=int, default=0,
                   help="full-frame detection every K frames (default 0: when needed, within a time budget)")
    s.add_argument("--recognize-every", type=int, default=25, help="re-recognise each track every N frames (default 25)")
    s.add_argument("--target-fps", type=float, default=25.0, help="frame rate the detection budget is planned for")
    s.add_argument("--max-reconnects", type=int, default=None,
                   help="give a lost live source up after this many attempts (default: retry forever)")
    s.add_argument("--summary", help="also write the run's summary (fps, per-stage ms, counts) as JSON here")
    s.set_defaults(fn=cmd_stream)
    s = sub.add_parser("info", parents=[common, gal], help="bundle, stages, files, CUDA and gallery facts")
    s.set_defaults(fn=cmd_info)
    from sdk.gallery_cli import add_parser as add_gallery_parser

    add_gallery_parser(sub)  # python -m sdk gallery list|remove|export|import|backup|restore|check|...
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if not args.quiet else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from sdk.errors import LookThroughError

    try:
        return int(args.fn(args) or 0)
    except (LookThroughError, FileNotFoundError, ValueError) as e:  # bad input: one line (traceback with -vv)
        logging.getLogger("sdk").debug("details", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
