"""Write the harvest / validation split of the real masked photos (names + SHA-1 only; see trainer/data/realmask_split.py).

    python tools/split_real_masks.py --data /work/shared-extra/face_mask_detection/dataset \
        --out trainer/data/splits/face_mask_detection.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.data.realmask_split import DEFAULT_SPLIT, build_split, save_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/split_real_masks.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder holding with_mask/ and without_mask/")
    p.add_argument("--out", type=Path, default=DEFAULT_SPLIT, help=f"split file (default {DEFAULT_SPLIT})")
    p.add_argument("--validation-fraction", type=float, default=0.3)
    p.add_argument("--dhash-bits", type=int, default=4, help="near-duplicate Hamming radius of the 64-bit dHash")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    doc = build_split(args.data, args.validation_fraction, dhash_bits=args.dhash_bits)
    save_split(doc, args.out)
    print(json.dumps({k: v for k, v in doc.items() if k not in ("files", "rule")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
