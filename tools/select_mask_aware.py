"""Pick the mask-aware matching settings (``match.mask_aware``: upper_cut, occluded_weight) on a validation set.

Validation: a CelebA-style identity tree (``--data``, one folder per person; the CelebA subset of
``../shared/data``), at most ``--per-person`` images per person, the **training** occluder families painted on the
aligned faces (``trainmix``, as the threshold calibration uses) -- never LFW and never a held-out family, so the
held-out evaluation (``python -m trainer.evaluate --protocol heldout-lfw``) stays untouched by this choice.
For every (upper_cut, occluded_weight) it reports, for masked-probe and both-masked pairs, TAR at FAR 1e-3 and
1e-2 (all impostor pairs of different people), and the same for the full-face baseline (weight 0). JSON + table.

    python tools/select_mask_aware.py --model default --data ../shared/data/celeba_subset \
        --occluders /work/shared-extra/cutouts --out reports/mask_aware/selection.json

A student trained on the CelebA subset must not be validated on it: ``--lfw DIR`` uses the threshold calibration's
faces instead (every image of the LFW people in no pair of ``pairs.txt``; few genuine pairs, so TARs are coarse).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("select_mask_aware")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="bundle whose detector and embedder are used")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="identity tree (one folder per person)")
    src.add_argument("--lfw", type=Path, help="LFW folder: validate on its people in no pair of pairs.txt")
    p.add_argument("--occluders", default=None, help="cutout folder (adds harvested training masks to trainmix)")
    p.add_argument("--per-person", type=int, default=4, help="images per person (default 4)")
    p.add_argument("--cuts", default="0.6,0.8,1.0", help="upper_cut values to try")
    p.add_argument("--weights", default="0.25,0.5,0.75,1.0", help="occluded_weight values to try (0 = full face)")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--cache", type=Path, default=Path("out/cache"))
    p.add_argument("--out", type=Path, default=Path("reports/mask_aware/selection.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from sdk.views import MaskAwareConfig
    from trainer.calibrate import state_pair_scores
    from trainer.data.faces import DETECTED, align_images
    from trainer.eval.metrics import tar_at_far
    from trainer.evaluate import Job, embed_condition, embed_templates

    t0 = time.perf_counter()
    paths, ids = [], []
    if args.lfw is not None:
        from trainer.calibrate import calibration_images

        paths, ids = calibration_images(args.lfw, args.lfw / "pairs.txt")
    else:
        for person in sorted(d for d in args.data.iterdir() if d.is_dir()):
            for img in sorted(person.glob("*.jpg"))[: args.per_person]:
                paths.append(str(img))
                ids.append(person.name)
    bundle = load_bundle(args.model)
    det = build_stage(bundle.stages["detect"], {"max_side": None})
    emb = build_stage(bundle.stages["embed"])
    aligned = align_images(paths, det, emb, args.cache)
    keep = np.flatnonzero(aligned.status == DETECTED)
    ids_k = [ids[i] for i in keep]
    log.info("%d validation images of %d people (%d with a detected face)", len(paths), len(set(ids)), len(keep))
    model = str(args.model)
    clean_job, occ_job = Job(model, "unmasked", None, 0), Job(model, "trainmix", None, 0, occluders=args.occluders)
    full_c = embed_condition(aligned, keep, np.zeros(len(keep), bool), clean_job, args.workers, args.cache)
    full_o = embed_condition(aligned, keep, np.ones(len(keep), bool), occ_job, args.workers, args.cache)
    rows = []

    def measure(label: str, cut: float | None, w: float, clean: np.ndarray, occluded: np.ndarray, cfg) -> None:
        pairs = state_pair_scores(clean, occluded, ids_k, cfg)
        row = {"setting": label, "upper_cut": cut, "occluded_weight": w}
        for state in ("clean", "probe_occluded", "both_occluded"):
            s, g = pairs[state]
            ops = tar_at_far(s, g, (1e-2, 1e-3))
            row[state] = {"TAR@1e-3": round(100 * ops[1e-3].tar, 2), "TAR@1e-2": round(100 * ops[1e-2].tar, 2),
                          "genuine": int(g.sum()), "impostor": int((~g).sum())}
        rows.append(row)
        log.info("%-28s probe TAR@1e-3 %5.2f  both %5.2f  clean %5.2f", label, row["probe_occluded"]["TAR@1e-3"],
                 row["both_occluded"]["TAR@1e-3"], row["clean"]["TAR@1e-3"])

    measure("full face (no mask-aware)", None, 0.0, full_c, full_o, None)
    for cut in (float(c) for c in args.cuts.split(",")):
        base = MaskAwareConfig(upper_cut=cut)
        tc = embed_templates(aligned, keep, np.zeros(len(keep), bool), clean_job, args.workers, args.cache, base)
        to = embed_templates(aligned, keep, np.ones(len(keep), bool), occ_job, args.workers, args.cache, base)
        for w in (float(x) for x in args.weights.split(",")):
            if w == 0.0:
                continue
            measure(f"upper_cut {cut:g}, weight {w:g}", cut, w, tc, to, MaskAwareConfig(upper_cut=cut, occluded_weight=w))
    best = max(rows[1:], key=lambda r: r["probe_occluded"]["TAR@1e-3"] + r["both_occluded"]["TAR@1e-3"])
    data = str(args.data) if args.lfw is None else f"{args.lfw}: people in no pair of pairs.txt"
    report = {"model": bundle.name, "data": data, "images": len(keep), "people": len(set(ids_k)),
              "occluders": "trainmix (training families" + (", harvested cutouts)" if args.occluders else ")"),
              "criterion": "max TAR@FAR1e-3 (probe masked) + TAR@FAR1e-3 (both masked)", "best": best["setting"],
              "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "command": "python tools/select_mask_aware.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| setting | probe masked TAR@1e-3 | TAR@1e-2 | both masked TAR@1e-3 | TAR@1e-2 | clean TAR@1e-3 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['probe_occluded']['TAR@1e-3']} | {r['probe_occluded']['TAR@1e-2']} | "
                     f"{r['both_occluded']['TAR@1e-3']} | {r['both_occluded']['TAR@1e-2']} | {r['clean']['TAR@1e-3']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + f"\n\nbest: {best['setting']}\n")
    print("\n".join(lines))
    print(f"best: {best['setting']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
