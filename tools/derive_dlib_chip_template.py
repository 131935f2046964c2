"""Derive where MTCNN's 5 landmarks fall in dlib's 150x150 face chip (the teacher's input).

dlib's ResNet expects chips cut by ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)`` from its own
5-point shape predictor (eye corners + nose base). Our pipeline has MTCNN landmarks (eye centres, nose tip,
mouth corners) instead, so we need a 5-point *template* in chip coordinates for them. For each real face
we rebuild dlib's image->chip similarity transform exactly (checked pixel-for-pixel against
``dlib.get_face_chip``), push the MTCNN points through it, and take the per-coordinate median.

Usage (reads real faces at run time; nothing is copied into the project)::

    python tools/derive_dlib_chip_template.py --data ../shared/data/lfw --limit 400

It prints the template (paste into ``sdk/align.py``: ``DLIB_150``) and how close descriptors computed from
our template-aligned chips are to dlib's own pipeline (same images), as a JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import cv2
import dlib
import numpy as np
from tqdm import tqdm

log = logging.getLogger("derive_dlib_chip_template")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder-per-identity image tree (LFW or CelebA subset)")
    ap.add_argument("--limit", type=int, default=400, help="number of images to use (random, seeded)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    import face_recognition_models as frm

    from sdk.align import warp_to_template
    from sdk.detect import MTCNNDetector
    from sdk.embed import dlib_chip_transform as chip_transform

    det = MTCNNDetector.from_package()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    files = sorted(p for p in args.data.rglob("*.jpg"))
    random.Random(args.seed).shuffle(files)
    files = files[: args.limit]
    pts_chip, dlib_desc, mtcnn_imgs, skipped = [], [], [], 0
    for f in tqdm(files, desc="faces"):
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        faces = det.detect(bgr)
        if not faces:
            skipped += 1
            continue
        face = faces[0]
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        shape = sp(rgb, dlib.rectangle(x1, y1, x2, y2))
        m = chip_transform(dlib.get_face_chip_details(shape, 150, 0.25))
        pts_chip.append(face.landmarks @ m[:, :2].T + m[:, 2])
        dlib_desc.append(np.array(rec.compute_face_descriptor(dlib.get_face_chip(rgb, shape, 150, 0.25))))
        mtcnn_imgs.append((rgb, face.landmarks))
    pts = np.stack(pts_chip)
    template = np.median(pts, axis=0)
    spread = np.median(np.abs(pts - template), axis=0)
    ours = []
    for rgb, lm in mtcnn_imgs:
        chip = warp_to_template(rgb, lm, template, (150, 150))
        ours.append(np.array(rec.compute_face_descriptor(chip)))
    dist = np.linalg.norm(np.stack(ours) - np.stack(dlib_desc), axis=1)
    print("DLIB_150 = np.array(" + json.dumps(np.round(template, 4).tolist()) + ", dtype=np.float32)")
    print(json.dumps({
        "images": len(files), "no_face": skipped,
        "median_abs_dev_px": np.round(spread, 3).tolist(),
        "descriptor_distance_ours_vs_dlib_pipeline": {
            "median": round(float(np.median(dist)), 4), "p95": round(float(np.percentile(dist, 95)), 4)},
    }))


if __name__ == "__main__":
    main()
