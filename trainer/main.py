"""``python trainer/main.py <command>`` — the trainer's entry point.

Commands so far:

    pack-faces align a folder-per-identity tree once and store 112x112 crops + landmarks + identities in one
               .npz (trainer/data/pack.py): ``--faces`` of segmenter / inpainter reads it (no detector needed).
    split      identity-disjoint train/val/test split of a folder-per-identity dataset, written as a JSON
               manifest (identities per part, seed, image counts, and the alignment failures counted).
    segmenter  train the occlusion segmenter on synthesized masks (see trainer/segmenter_train.py).
    student    distil the dlib teacher into a student that sees masked faces (trainer/student/).
    inpainter  train the contextual-attention inpainter, optionally with the ID-GAN identity loss
               (trainer/inpainter_train.py).
    detector   fine-tune the masked-face detector (LTDet) on composed scenes (trainer/detector/train.py).
    landmarks  train LTDet's landmark refiner: MTCNN's O-Net fine-tuned on occluded faces
               (trainer/detector/landmarks.py).
    detector-stem  make LTDet faster: distil its first stage into a cheap stride-4 stem
               (trainer/detector/stem.py).
    ablation   the student ablation rows (CE / +pair / +triplet / hard / soft / completed inputs), each
               trained, exported and evaluated on LFW pairs -> one table (trainer/ablation.py).

Every trainer runs on one loop skeleton (trainer/loops/) and writes one checkpoint format (trainer/checkpoints.py):
``<out>/ckpt/last.*``, resumable with ``--resume``.  Evaluation has its own entry point:
``python -m trainer.evaluate --help``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("trainer")


def cmd_split(args: argparse.Namespace) -> int:
    from trainer.data.readers import identity_split, read_identity_tree

    samples = read_identity_tree(args.data, min_images=args.min_images)
    split = identity_split(samples, tuple(args.fractions), seed=args.seed)
    out = {"data": str(args.data), "seed": split.seed, "fractions": args.fractions,
           "train": split.train, "val": split.val, "test": split.test,
           "images": {part: len(split.of(samples, part)) for part in ("train", "val", "test")}}
    if args.align:
        from sdk._registry import build_stage
        from sdk.bundle import load_bundle
        from trainer.data.faces import align_images

        bundle = load_bundle(args.model or "baseline")
        det = build_stage(bundle.stages["detect"], {"max_side": None})
        emb = build_stage(bundle.stages["embed"])
        aligned = align_images([s.path for s in samples], det, emb, args.cache)
        out["alignment"] = aligned.counts()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("train", "val", "test")}, indent=1))
    print(f"identities: {len(split.train)} train / {len(split.val)} val / {len(split.test)} test -> {args.out}")
    return 0


def cmd_pack_faces(args: argparse.Namespace) -> int:
    from trainer.data.faces import load_faces
    from trainer.data.pack import save_face_pack

    if not Path(args.data).is_dir():
        raise SystemExit(f"data folder not found: {args.data}")
    faces = load_faces(args.data, images_per_identity=args.images_per_identity, model=args.model, cache=args.cache)
    path = save_face_pack(faces, args.out, quality=args.quality)
    print(json.dumps({"pack": str(path), "faces": len(faces.crops), "identities": len(set(faces.identities)),
                      "megabytes": round(path.stat().st_size / 1e6, 2), "alignment": faces.counts}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python trainer/main.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("split", help="identity-disjoint train/val/test split manifest")
    s.add_argument("--data", type=Path, required=True, help="folder with one sub-folder per identity")
    s.add_argument("--out", type=Path, default=Path("out/splits/split.json"), help="manifest path (JSON)")
    s.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-images", type=int, default=2, help="skip identities with fewer images (default 2)")
    s.add_argument("--align", action="store_true", help="also detect+align every image (cached) and count failures")
    s.add_argument("--model", default=None, help="bundle for --align (default: built-in baseline)")
    s.add_argument("--cache", type=Path, default=Path("out/cache"), help="alignment cache folder")
    s.set_defaults(fn=cmd_split)
    pk = sub.add_parser("pack-faces", help="aligned faces -> one .npz face pack (for --faces)")
    pk.add_argument("--data", type=Path, required=True, help="folder with one sub-folder per identity")
    pk.add_argument("--out", type=Path, required=True, help="pack file to write (.npz)")
    pk.add_argument("--images-per-identity", type=int, default=0, help="at most this many per identity (0 = all)")
    pk.add_argument("--quality", type=int, default=95, help="JPEG quality of the stored crops (1-100)")
    pk.add_argument("--model", default=None, help="bundle whose detector aligns the faces (default: baseline)")
    pk.add_argument("--cache", type=Path, default=Path("out/cache"), help="alignment cache folder")
    pk.set_defaults(fn=cmd_pack_faces)
    from trainer.segmenter_train import add_parser as add_segmenter

    add_segmenter(sub)
    from trainer.student.cli import add_parser as add_student

    add_student(sub)
    from trainer.inpainter_train import add_parser as add_inpainter

    add_inpainter(sub)
    from trainer.ablation import add_parser as add_ablation

    add_ablation(sub)
    from trainer.detector.train import add_parser as add_detector

    add_detector(sub)
    from trainer.detector.landmarks import add_parser as add_landmarks

    add_landmarks(sub)
    from trainer.detector.stem import add_parser as add_stem

    add_stem(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
