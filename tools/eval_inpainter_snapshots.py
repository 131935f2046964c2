"""Held-out PSNR / SSIM of inpainter generator snapshots, on the same faces and holes as the trainer's eval.json.

Two runs that share a wall-clock budget end at different step counts; `trainer/main.py inpainter --snapshot-every N`
keeps the generator every N steps, and this tool scores chosen snapshots with the trainer's own evaluation
(`trainer.inpainter_train.evaluate`: identity-disjoint split, ``--val-images`` faces x 7 occluder categories,
OpenCV Telea as the reference) so that runs can be compared at equal steps::

    python tools/eval_inpainter_snapshots.py --faces .device/celeba_faces.npz \
        --templates ../shared/data/mask_templates --out reports/inpainter_gpu/snapshots_at_2250.json \
        noid@2250=out/inpainter/gpu/noid/snapshots/step_002250.safetensors \
        id@2250=out/inpainter/gpu/id/snapshots/step_002250.safetensors

Snapshots are weights-only checkpoints (``snapshots/step_<N>.safetensors`` + ``.json``, :mod:`trainer.checkpoints`,
their JSON holds the generator's config); older bare ``generator_<N>.safetensors`` files load with ``--width``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/eval_inpainter_snapshots.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snapshots", nargs="+", help="NAME=path/to/snapshots/step_<N>.safetensors (or an older "
                                                "generator_<N>.safetensors)")
    p.add_argument("--faces", required=True, help="face pack (.npz from `trainer/main.py pack-faces`)")
    p.add_argument("--templates", default=None, help="mask_templates folder (as in training)")
    p.add_argument("--val-images", type=int, default=120, help="held-out faces (the device job used 120)")
    p.add_argument("--seed", type=int, default=0, help="split / synthesis seed (the trainer's default 0)")
    p.add_argument("--width", type=int, default=12, help="generator width of older snapshots without a config")
    p.add_argument("--out", type=Path, help="write the JSON here")
    args = p.parse_args(argv)

    import torch

    from trainer.checkpoints import load_checkpoint
    from trainer.data.face_arrays import split_by_identity
    from trainer.data.faces import load_faces_for
    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig
    from trainer.inpainter_train import InpaintTrainConfig, build_val, evaluate
    from trainer.models.inpainter import Generator, InpainterConfig

    torch.set_num_threads(1)
    cfg = InpaintTrainConfig(faces=args.faces, images_per_identity=0, seed=args.seed)
    _, val_f = split_by_identity(load_faces_for(cfg), cfg.val_fraction, cfg.seed)
    synth = MaskSynthesizer(SynthesisConfig(templates_dir=Path(args.templates) if args.templates else None))
    val = build_val(val_f, synth, cfg.seed, limit=args.val_images)
    out = {}
    for spec in args.snapshots:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"expected NAME=path, got {spec!r}")
        ck = load_checkpoint(path, module="generator")
        mc = (ck.meta.get("models") or {}).get("generator")
        g = Generator(InpainterConfig(**mc) if mc else InpainterConfig(width=args.width))
        g.load_state_dict(ck.state("generator"), strict=True)
        r = evaluate(g.eval(), val)
        out[name] = {"snapshot": path, **r}
        print(f"{name}: hole PSNR {r['psnr_hole']:.3f} dB, SSIM {r['ssim_hole']:.4f} "
              f"(Telea {r['telea_psnr_hole']:.3f} / {r['telea_ssim_hole']:.4f}, n={r['n']})", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
