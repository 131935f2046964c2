"""Validation twin of ``--protocol wild-lfw``: bundles end to end on *validation* data only.

The people are LFW's calibration split (every image of the people in no line of ``pairs.txt``, as
``python -m trainer.calibrate`` uses), the occluders the **training** families (``trainmix``) painted on the probe
photo at MTCNN's landmarks; nothing of the held-out test (LFW test pairs, held-out occluder families) is read, so
a choice made on these numbers (e.g. a bundle's ``chip_landmarks``) leaves the test untouched. Every genuine pair
(clean photo of a person vs another photo of the same person, clean or masked) and ``--impostors`` random
pairs of different people; each bundle detects, segments and embeds as :class:`sdk.Recognizer` does, a face not
found scores -1. Writes JSON: TAR at FAR 1e-2 / 1e-3 and the mean genuine score per bundle and condition.

    python tools/validate_wild.py --lfw ../shared/data/lfw --occluders /work/shared-extra/cutouts \\
        --model ltdet-v3 default --out reports/validation/wild_trainmix.json     # ~3 min per bundle (2 cores)
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

log = logging.getLogger("tools.validate_wild")
#: training occluder families only: this is validation
VALIDATION_CONDITION = "trainmix"


def pairs(ids: np.ndarray, ok: np.ndarray, impostors: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, same)``: every ordered genuine pair among ``ok`` images, then ``impostors`` random different-person
    pairs (fewer after dropping same-person draws)."""
    idx = np.flatnonzero(ok)
    same = ids[idx][:, None] == ids[idx][None, :]
    np.fill_diagonal(same, False)
    ga, gb = np.nonzero(same)
    rng = np.random.default_rng(seed)
    ia, ib = rng.choice(idx, impostors), rng.choice(idx, impostors)
    keep = ids[ia] != ids[ib]
    a = np.concatenate([idx[ga], ia[keep]])
    b = np.concatenate([idx[gb], ib[keep]])
    return a, b, np.concatenate([np.ones(len(ga), bool), np.zeros(int(keep.sum()), bool)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_validation_args(p)
    p.add_argument("--model", nargs="+", required=True, help="bundles (built-in names or folders)")
    p.add_argument("--impostors", type=int, default=400_000, help="random impostor pairs drawn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("out/cache"), help="MTCNN reference-face cache folder")
    p.add_argument("--out", type=Path, required=True, help="JSON report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import sdk
    import trainer.eval.wild as wild
    from trainer.calibrate import calibration_images
    from trainer.eval.report import write_json_run
    from trainer.eval import roc_curve

    t0 = time.perf_counter()
    paths, names = calibration_images(args.lfw, args.lfw / "pairs.txt")
    ids = np.array(names)
    ref = wild.reference_faces(paths, args.cache)
    a, b, same = pairs(ids, ref.ok, args.impostors, args.seed)
    log.info("%d images, %d genuine and %d impostor pairs", len(paths), int(same.sum()), int((~same).sum()))
    if same.all() or not same.any():
        raise SystemExit(f"{args.lfw}: need two people in no pair of pairs.txt with a face, and one with two photos "
                         f"({len(paths)} images of {len(set(names))} people)")
    paint = argparse.Namespace(seed=args.seed, templates=args.templates, occluders=args.occluders)
    results = {}
    for model in args.model:
        rec = sdk.Recognizer(model).prepare()
        clean = wild.run_bundle(rec, paths, ref, False, paint)
        masked = wild.run_bundle(rec, paths, ref, True, paint, condition=VALIDATION_CONDITION)
        row: dict = {"masked photos: face found (%)": round(100 * float(masked.found[ref.ok].mean()), 2)}
        for cond, probe in (("unmasked", clean), ("probe masked (trainmix on the photo)", masked)):
            s, _ = wild.pair_scores(rec, clean, probe, a, b)
            far, tar, _ = roc_curve(s, same)
            g = s[same]
            row[cond] = {**{f"TAR@FAR={f:g} (%)": round(100 * float(np.interp(f, far, tar)), 2) for f in (1e-2, 1e-3)},
                         "genuine mean": round(float(g[g > wild.MISSING].mean()), 4)}
        results[f"{model} ({rec.bundle.name}, {rec.template_id})"] = row
        log.info("%s: %s", model, row)
        rec.close()
    report = {"data": f"{args.lfw}: people in no pair of pairs.txt, {len(paths)} images",
              "occluders": "trainmix painted on the probe photo", "genuine pairs": int(same.sum()),
              "impostor pairs": int((~same).sum()), "results": results}
    write_json_run(report, args.out, "python tools/validate_wild.py", argv, time.perf_counter() - t0)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
