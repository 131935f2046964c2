"""Face-size labels for the real-photo split's *validation* photos, so the detection evaluation can report recall on
real masked faces >= 40 px (issue #14's target is stated for faces >= 40 px; the photo-level "a face found" share
counts 100x100 thumbnails with 8-15 px faces too).

The photos come without boxes. Each photo (downscaled to at most ``--side`` px, as the evaluation sees it) gets
the side (px, square root of the box area) of its largest face, from:

1. **detectors as labellers**: MTCNN at its default thresholds and each ``--labeller`` LTDet bundle at
   ``--labeller-threshold``; each labeller's best-scoring face gives a side, the label is their median
   (``source``: the labellers that agreed);
2. **by hand** for the photos no labeller found a face in: ``--sheet`` draws them numbered, at their true size
   beside a 40 px scale bar, and ``--manual`` (CSV ``name,face_px,note``) gives their sides; ``face_px`` 0 means
   "no face visible" (the photo is then left out of the size-scoped recall).

Output (``--out``, JSON): ``{"photos": {"<folder>/<name>": {"face_px", "source"}}, "setup": {...}}``; photos
without a label yet are listed under ``"unlabelled"``. Manual rows name photos the same way (``with_mask/x.jpg``).
Used by ``python -m trainer.detector.evaluate --real-sizes``.

Example::

    python tools/label_real_face_sizes.py --photos <fmd>/dataset \\
        --manual trainer/data/splits/face_mask_detection_manual_sizes.csv --sheet out/real_unlabelled.png \\
        --out trainer/data/splits/face_mask_detection_sizes.json
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("label_real_face_sizes")

FOLDERS = ("with_mask", "without_mask")


def read_manual(path: Path | None) -> dict[str, float]:
    """``folder/name -> face_px`` from a ``name,face_px[,note]`` CSV (header row required); empty when ``path`` is None.

    Raises:
        SystemExit: a row without a name or with a negative / non-numeric size."""
    if path is None:
        return {}
    out: dict[str, float] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                px = float(row["face_px"])
            except (KeyError, TypeError, ValueError):
                raise SystemExit(f"{path}:{i}: face_px must be a number, got {row.get('face_px')!r}") from None
            if not row.get("name") or px < 0:
                raise SystemExit(f"{path}:{i}: need a name and face_px >= 0")
            out[row["name"]] = px
    return out


def contact_sheet(items: list[tuple[str, np.ndarray]], path: Path, cols: int = 6, cell: int = 330) -> None:
    """Numbered photos at their true pixel size (larger ones shrunk, the scale written under them) with a 40 px bar."""
    rows = -(-len(items) // cols)
    sheet = np.full((rows * (cell + 40), cols * cell, 3), 255, np.uint8)
    for k, (name, img) in enumerate(items):
        y0, x0 = (k // cols) * (cell + 40), (k % cols) * cell
        f = min(1.0, (cell - 10) / max(img.shape[:2]))
        im = img if f == 1.0 else cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        sheet[y0 + 5:y0 + 5 + im.shape[0], x0 + 5:x0 + 5 + im.shape[1]] = im
        bar = int(round(40 * f))
        cv2.rectangle(sheet, (x0 + 5, y0 + cell + 2), (x0 + 5 + bar, y0 + cell + 6), (0, 0, 255), -1)
        cv2.putText(sheet, f"{k} {name[:22]} x{f:.2f}", (x0 + 5, y0 + cell + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, required=True, help="real-photo dataset folder (with_mask/, without_mask/)")
    p.add_argument("--split", type=Path, default=None, help="split file (default: the committed one)")
    p.add_argument("--labeller", nargs="*", default=["ltdet-v3", "ltdet-v4", "ltdet-v5"],
                   help="LTDet bundles used as labellers beside MTCNN (built-in names or folders)")
    p.add_argument("--labeller-threshold", type=float, default=0.5, help="LTDet labellers' score threshold")
    p.add_argument("--manual", type=Path, default=None, help="CSV name,face_px[,note] for photos no labeller found")
    p.add_argument("--sheet", type=Path, default=None, help="PNG contact sheet of the photos still unlabelled")
    p.add_argument("--side", type=int, default=640, help="photos are downscaled to at most this many px (default 640)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from sdk.detect import DetectorConfig, MTCNNDetector
    from trainer.data.realmask_split import DEFAULT_SPLIT, read_photo, split_files

    manual = read_manual(args.manual)
    labellers = {"mtcnn": MTCNNDetector.from_package(DetectorConfig(threads=args.threads))}
    for name in args.labeller:
        spec = load_bundle(name).stages["detect"]
        labellers[Path(name).name] = build_stage(spec, {"threads": args.threads,
                                                        "score_threshold": args.labeller_threshold})
    for d in labellers.values():
        d.prepare()
    photos: dict[str, dict] = {}
    unlabelled: list[tuple[str, np.ndarray]] = []
    for folder in FOLDERS:
        files = split_files(args.photos, "validation", folder, args.split or DEFAULT_SPLIT)
        if not files:
            raise SystemExit(f"{args.photos / folder}: no validation photos found (tools/get_extra_data.py)")
        for path, _ in tqdm(files, desc=folder, unit="photo"):
            img = read_photo(path, args.side)
            if img is None:
                continue
            sides, who = [], []
            for name, det in labellers.items():
                faces = det.detect(img)
                if faces:
                    x1, y1, x2, y2 = max(faces, key=lambda fc: fc.score).box
                    sides.append(float(np.sqrt(max(x2 - x1, 0) * max(y2 - y1, 0))))
                    who.append(name)
            key = f"{folder}/{path.name}"  # the two folders share file names
            if sides:
                photos[key] = {"face_px": round(float(np.median(sides)), 1), "source": who}
            elif key in manual:
                photos[key] = {"face_px": manual[key], "source": ["manual"]}
            else:
                unlabelled.append((key, img))
    if unlabelled and args.sheet is not None:
        contact_sheet(unlabelled, args.sheet)
        log.info("%d photos without a label: %s", len(unlabelled), args.sheet)
    doc = {"photos": photos, "unlabelled": [n for n, _ in unlabelled],
           "setup": {"labellers": list(labellers), "labeller_threshold": args.labeller_threshold, "side": args.side,
                     "manual": str(args.manual or ""), "machine": platform.machine(),
                     "time": time.strftime("%Y-%m-%d %H:%M")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True))
    for folder in FOLDERS:
        v = [d["face_px"] for k, d in photos.items() if k.startswith(folder + "/")]
        log.info("%s: %d labelled, %d with a face >= 40 px", folder, len(v), sum(x >= 40 for x in v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
