"""Share of the real-photo split's *validation* photos in which a detector bundle finds a face, at the bundle's own
score threshold (or ``--threshold``): the quick check run after each LTDet training round.

The full comparison at MTCNN's false-positive rate, with MTCNN and dlib HOG in the same run, is
``python -m trainer.detector.evaluate`` (its real-photo columns use the same photos, downscaled the same way).

Example::

    python tools/check_real_photos.py --model ltdet-v4 --photos <fmd>/dataset --out reports/detector/real_check_v4.json
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("check_real_photos")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle: built-in name or folder (its detect stage is used)")
    p.add_argument("--photos", type=Path, required=True, help="real-photo dataset folder (with_mask/, without_mask/)")
    p.add_argument("--split", type=Path, default=None, help="split file (default: the committed one)")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the bundle's)")
    p.add_argument("--side", type=int, default=640, help="photos are downscaled to at most this many px (default 640)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.realmask_split import DEFAULT_SPLIT, read_photo, split_files

    spec = load_bundle(args.model).stages["detect"]
    opts: dict = {"threads": args.threads}
    if args.threshold is not None:
        opts["score_threshold"] = args.threshold
    det = build_stage(spec, opts)
    det.prepare()
    res: dict = {"model": str(args.model), "threshold": args.threshold if args.threshold is not None
                 else spec.config.get("score_threshold"), "side": args.side}
    for folder in ("with_mask", "without_mask"):
        files = split_files(args.photos, "validation", folder, args.split or DEFAULT_SPLIT)
        if not files:
            raise SystemExit(f"{args.photos / folder}: no validation photos found (tools/get_extra_data.py)")
        n = found = 0
        missed = []
        for path, _ in tqdm(files, desc=folder, unit="photo"):
            img = read_photo(path, args.side)
            if img is None:
                continue
            n += 1
            if det.detect(img):
                found += 1
            else:
                missed.append(path.name)
        res[folder] = {"photos": n, "found": found, "found_pct": round(100.0 * found / max(n, 1), 2), "missed": missed}
        log.info("%s: a face in %d of %d photos (%.2f%%)", folder, found, n, res[folder]["found_pct"])
    res["setup"] = {"machine": platform.machine(), "processor": platform.processor(),
                    "time": time.strftime("%Y-%m-%d %H:%M")}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    short = {k: ({kk: vv for kk, vv in v.items() if kk != "missed"} if isinstance(v, dict) else v)
             for k, v in res.items()}
    print(json.dumps(short))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
