"""Cut real occluders out of the real masked photos into texture-space RGBA cutouts (never into the repository).

Uses the SDK's detector and occlusion segmenter of ``--model`` (default: the built-in ``default-v2`` bundle, MTCNN +
segmenter: the bundle every committed cutout-based number was made with, pinned so that a rerun cuts the same
cutouts now that ``default`` detects with LTDet) and the committed split file: ``--part harvest`` cuts the training
cutouts (family ``harvested``), ``--part validation`` the
evaluation-only ones (family ``real_val``; never used for training). See trainer/data/occluders/harvest.py.

    python tools/harvest_occluders.py --data /work/shared-extra/face_mask_detection/dataset \
        --out /work/shared-extra/cutouts --part harvest
    python tools/harvest_occluders.py --data /work/shared-extra/face_mask_detection/dataset \
        --out /work/shared-extra/cutouts --part validation
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from trainer.data.realmask_split import DEFAULT_SPLIT

    p = argparse.ArgumentParser(prog="python tools/harvest_occluders.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder holding with_mask/ (and without_mask/)")
    p.add_argument("--out", type=Path, required=True, help="cutout folder (outside the repository)")
    p.add_argument("--part", choices=("harvest", "validation"), required=True)
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT, help="split file (default: the committed one)")
    p.add_argument("--model", default="default-v2",
                   help="bundle whose detector + segmenter are used (default: default-v2, MTCNN; see above)")
    p.add_argument("--limit", type=int, default=0, help="first N photos only (0 = all)")
    p.add_argument("--min-eye-dist", type=float, default=24.0, help="skip faces with eyes closer than this (px)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    repo = Path(__file__).resolve().parents[1]
    if repo in args.out.resolve().parents or args.out.resolve() == repo:
        raise SystemExit("cutouts are derived from research-only photos: write them outside the repository")
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.occluders.harvest import harvest_files
    from trainer.data.realmask_split import split_files

    bundle = load_bundle(args.model)
    if bundle.stages.get("segment") is None:
        raise SystemExit(f"bundle {args.model!r} has no segment stage")
    det = build_stage(bundle.stages["detect"], {"threads": 1})  # one thread: ORT's spinning threads waste shared CPUs
    seg = build_stage(bundle.stages["segment"])
    files = split_files(args.data, args.part, "with_mask", args.split)
    if args.limit:
        files = files[: args.limit]
    stats = harvest_files(files, args.out, args.part, det, seg, min_eye_dist=args.min_eye_dist)
    print(json.dumps(asdict(stats), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
