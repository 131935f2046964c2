"""Where does a bundle's chip land, compared with the chip the student was trained on? (validation data only)

For ``--n`` images of LFW people in no line of ``pairs.txt`` (the calibration split), the reference chip is the one
``--reference`` cuts (default ``default-v2``: MTCNN's box + dlib's 5-point predictor, the geometry every shipped
student was distilled on). ``--model``'s detector then finds the same face on the clean photo and on the photo with a
*training-family* occluder painted on (``trainmix``), and each weighting of its five points (eyes, nose, mouth
corners) is fitted to :data:`sdk.align.DLIB_150`. Reported per weighting and condition: the mean distance between
the two chips' 3x3 grid points mapped back into the photo, in inter-ocular distances, and the cosine between the
embedder's descriptors of the two chips (both cut from the clean photo, so only the placement differs).

    python tools/chip_placement.py --lfw ../shared/data/lfw --occluders /work/shared-extra/cutouts \\
        --out reports/validation/chip_placement.json        # 300 faces, ~3 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.eval.wild import add_validation_args  # noqa: E402

log = logging.getLogger("tools.chip_placement")

#: point weights tried, as repeat counts (left eye, right eye, nose, left mouth corner, right mouth corner): the
#: fit is :func:`sdk.align.weighted_similarity_to_template`, the one ``chip_landmarks: mtcnn5w`` uses
WEIGHTINGS = {"equal (mtcnn5)": (1, 1, 1, 1, 1), "eyes + nose": (1, 1, 1, 0, 0), "eyes": (1, 1, 0, 0, 0),
              "eyes 2, nose 1, mouth 0.5 (mtcnn5w)": (4, 4, 2, 1, 1), "eyes 4, nose 1, mouth 1": (4, 4, 1, 1, 1)}
GRID = np.array([[x, y] for x in (0, 75, 150) for y in (0, 75, 150)], np.float64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_validation_args(p)
    p.add_argument("--model", default="default", help="bundle whose detector's points are fitted (LTDet)")
    p.add_argument("--reference", default="default-v2", help="bundle whose chip is the reference")
    p.add_argument("--n", type=int, default=300, help="images drawn (seeded) from the calibration split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="JSON report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import cv2
    from tqdm import tqdm

    import sdk
    from sdk.align import DLIB_150, weighted_similarity_to_template
    from trainer.calibrate import calibration_images
    from trainer.eval.report import write_json_run
    from trainer.eval.heldout import render_occluder
    from trainer.eval.wild import match_reference

    t0 = time.perf_counter()
    paths, _ = calibration_images(args.lfw, args.lfw / "pairs.txt")
    if not paths:
        raise SystemExit(f"{args.lfw}: no image of a person outside pairs.txt")
    pick = np.random.default_rng(args.seed).choice(len(paths), size=min(args.n, len(paths)), replace=False)
    ref, rec = sdk.Recognizer(args.reference).prepare(), sdk.Recognizer(args.model).prepare()
    emb = rec.embedder
    err = {c: {k: [] for k in WEIGHTINGS} for c in ("clean", "occluded")}
    cos = {c: {k: [] for k in WEIGHTINGS} for c in ("clean", "occluded")}
    for i in tqdm(pick, desc="faces", unit="img"):
        img = cv2.imread(paths[i], cv2.IMREAD_COLOR)
        faces = ref.detect(img) if img is not None else []
        if not faces:
            continue
        f0 = max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
        m_ref = ref.embedder.crop_transforms(img, [f0])[0]
        iod = float(np.linalg.norm(f0.landmarks[0] - f0.landmarks[1]))
        a = cv2.invertAffineTransform(m_ref)
        ref_pts = GRID @ a[:, :2].T + a[:, 2]
        e_ref = emb.embed_crops(emb.geometry.warp(img, [m_ref]))[0]
        occluded, _ = render_occluder(img, f0.landmarks, "trainmix", args.seed * 1_000_003 + int(i), args.templates,
                                      args.occluders)
        for cond, photo in (("clean", img), ("occluded", occluded)):
            f = match_reference(rec.detect(photo), np.asarray(f0.box))
            if f is None:
                continue
            mats = [weighted_similarity_to_template(f.landmarks, DLIB_150, w) for w in WEIGHTINGS.values()]
            descs = emb.embed_crops(emb.geometry.warp(img, mats))
            for k, m, d in zip(WEIGHTINGS, mats, descs):
                b = cv2.invertAffineTransform(m)
                err[cond][k].append(float(np.linalg.norm(GRID @ b[:, :2].T + b[:, 2] - ref_pts, axis=1).mean()) / iod)
                cos[cond][k].append(float(d @ e_ref))
    results = {c: {k: {"placement error (IOD)": round(float(np.mean(err[c][k])), 4),
                       "cosine to the reference chip": round(float(np.mean(cos[c][k])), 4), "faces": len(err[c][k])}
                   for k in WEIGHTINGS} for c in err}
    report = {"data": f"{args.lfw}: {len(pick)} images of people in no pair of pairs.txt", "model": args.model,
              "reference": args.reference, "point repeats (eyes, nose, mouth corners)": WEIGHTINGS, "results": results}
    write_json_run(report, args.out, "python tools/chip_placement.py", argv, time.perf_counter() - t0)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
