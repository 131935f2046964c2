"""Contact sheet of the occluder families on real faces (reports/occluders/contact_sheet.png).

Columns: every family of trainer/data/occluders (held-out ones labelled in orange); rows: the astronaut of
scikit-image plus faces from ``--faces`` folders (e.g. a few LFW / CelebA photos), detected with the SDK's MTCNN.

    python tools/occluder_sheet.py --faces ../shared/data/celeba_subset ../shared/data/lfw --per-folder 3 \
        --templates ../shared/data/mask_templates --cutouts /work/shared-extra/cutouts \
        --out reports/occluders/contact_sheet.png
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pick_faces(folders, per_folder: int, detector):
    """[(BGR image, landmarks)]: the astronaut plus ``per_folder`` images spread over each folder's files."""
    import cv2
    import numpy as np
    from skimage import data

    from trainer.data.faces import pick_central_face

    imgs = [np.ascontiguousarray(data.astronaut()[:, :, ::-1])]
    for folder in folders:
        files = sorted(p for p in Path(folder).rglob("*.jpg"))
        if files:
            step = max(1, len(files) // (per_folder * 7 + 1))
            imgs += [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files[::step][: per_folder * 3]]
    out, taken = [], {}
    for k, img in enumerate(imgs):
        if img is None:
            continue
        face = pick_central_face(detector.detect(img), img.shape)
        if face is None:
            continue
        src = 0 if k == 0 else 1 + (k - 1) // (per_folder * 3)
        if taken.get(src, 0) >= (1 if src == 0 else per_folder):
            continue
        taken[src] = taken.get(src, 0) + 1
        out.append((img, np.asarray(face.landmarks, np.float64)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/occluder_sheet.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=Path, nargs="*", default=[], help="folders to take extra real faces from")
    p.add_argument("--per-folder", type=int, default=3)
    p.add_argument("--templates", default=None, help="mask_templates folder (template families)")
    p.add_argument("--cutouts", default=None, help="cutout folder (harvested / real_val families)")
    p.add_argument("--tile", type=int, default=88, help="tile side in px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("reports/occluders/contact_sheet.png"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import cv2
    import numpy as np

    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.occluders import FAMILIES, OccluderConfig, OccluderSynthesizer, is_heldout
    from trainer.data.occluders.surface import estimate_head_pose

    det = build_stage(load_bundle("baseline").stages["detect"], {"max_side": None, "threads": 1})
    faces = pick_faces(args.faces, args.per_folder, det)
    synth = OccluderSynthesizer(OccluderConfig(split="all", templates_dir=args.templates, cutouts_dir=args.cutouts))
    fams = ["(clean)"] + [f for f in FAMILIES if f in synth.available()]
    t = args.tile
    rows = []
    for r, (img, lm) in enumerate(faces):
        pose = estimate_head_pose(lm)
        c = pose.project(np.array([[0.0, 0.85, 0.0]]))[0]
        half = 1.55 * pose.eye_dist
        m = np.array([[t / (2 * half), 0, t / 2 - c[0] * t / (2 * half)], [0, t / (2 * half), t / 2 - c[1] * t / (2 * half)]])
        tiles = []
        for k, fam in enumerate(fams):
            s = img if fam == "(clean)" else synth(img, lm, [args.seed, r, k], family=fam).masked
            tiles.append(cv2.warpAffine(s, m, (t, t), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE))
        rows.append(np.concatenate(tiles, 1))
    head = np.full((16, t * len(fams), 3), 255, np.uint8)
    for k, fam in enumerate(fams):
        col = (0, 110, 230) if fam != "(clean)" and is_heldout(fam) else (40, 40, 40)
        cv2.putText(head, fam[:13], (k * t + 2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.33, col, 1, cv2.LINE_AA)
    sheet = np.concatenate([head] + rows, 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{args.out}: {sheet.shape[1]}x{sheet.shape[0]} px, {args.out.stat().st_size / 1e3:.0f} kB, "
          f"{len(faces)} faces x {len(fams) - 1} families (orange labels: held out of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
