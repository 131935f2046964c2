"""Gather every readable clean face (CelebA subset, LFW people in no pair of pairs.txt, UTKFace crops, extra folders)
with identity labels where they exist, counting what cannot be read or has no face (trainer/data/facelist.py).

    python tools/build_face_list.py --celeba ../shared/data/celeba_subset --lfw ../shared/data/lfw \
        --utkface /work/shared-extra/utkface/crop_part1 --out out/facelist --pack out/facelist/faces.npz
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/build_face_list.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--celeba", type=Path, help="CelebA subset (folder per identity)")
    p.add_argument("--lfw", type=Path, help="LFW root with pairs.txt: only people in no pair are used")
    p.add_argument("--utkface", type=Path, help="UTKFace crops folder (crop_part1), unlabelled")
    p.add_argument("--extra", type=Path, action="append", default=[], help="more flat folders of unlabelled faces")
    p.add_argument("--out", type=Path, required=True, help="output folder (faces.jsonl, summary.json)")
    p.add_argument("--pack", type=Path, help="also write a face pack (.npz, 112x112 ArcFace crops)")
    p.add_argument("--model", default="baseline", help="bundle whose detector is used (default: baseline)")
    p.add_argument("--min-face-size", type=float, default=40.0, help="MTCNN minimum face size in px (default 40)")
    p.add_argument("--pad", type=float, default=0.25, help="grey border, fraction of the longer side (default 0.25)")
    p.add_argument("--limit", type=int, default=0, help="first N images per source (0 = all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.celeba or args.lfw or args.utkface or args.extra):
        raise SystemExit("give at least one source (--celeba, --lfw, --utkface, --extra)")
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.facelist import detect_entries, list_sources, write_face_list, write_pack

    entries = list_sources(args.celeba, args.lfw, args.utkface, args.extra)
    if args.limit:
        seen: dict[str, int] = {}
        keep = []
        for e in entries:
            seen[e.source] = seen.get(e.source, 0) + 1
            if seen[e.source] <= args.limit:
                keep.append(e)
        entries = keep
    det = build_stage(load_bundle(args.model).stages["detect"],
                      {"max_side": None, "min_face_size": args.min_face_size, "threads": 1})
    entries = detect_entries(entries, det, args.pad, cache=args.out / "detections.jsonl")
    summary = write_face_list(entries, args.out)
    if args.pack:
        write_pack(entries, args.pack)
        summary["pack"] = str(args.pack)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
