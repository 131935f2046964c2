"""Identity overlap between the training face list and the LFW test pairs (trainer/eval/overlap.py).

    python tools/identity_overlap.py --faces out/facelist/faces.jsonl --lfw ../shared/data/lfw --out reports/overlap

Embeds every detected face of the face list with the teacher (``--model``, default the built-in ``baseline``: dlib
ResNet on its 150x150 chips; cached under ``--cache``) and the LFW test-pair images through the same aligned-face
cache as ``python -m trainer.evaluate`` (so an evaluation run makes this cheap).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def embed_entries(entries, embedder, cache: Path, batch: int = 64):
    """(N, D) teacher embeddings of detected face-list entries (cached by paths + landmarks)."""
    import cv2
    import numpy as np
    from tqdm import tqdm

    from sdk.types import Face

    key = hashlib.sha1(json.dumps([[e.path, e.landmarks] for e in entries] + [embedder.model_id]).encode()).hexdigest()
    path = cache / f"facelist-emb-{key[:16]}.npy"
    if path.is_file():
        return np.load(path)
    out, chips = [], []
    for e in tqdm(entries, desc="embed face list", unit="face"):
        img = cv2.imread(e.path, cv2.IMREAD_COLOR)
        face = Face(np.asarray(e.box, np.float32), np.asarray(e.landmarks, np.float32), 1.0)
        chips.append(embedder.crops(img, [face])[0])
        if len(chips) == batch:
            out.append(embedder.embed_crops(chips))
            chips = []
    if chips:
        out.append(embedder.embed_crops(chips))
    emb = np.concatenate(out).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/identity_overlap.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=Path, required=True, help="faces.jsonl from tools/build_face_list.py")
    p.add_argument("--lfw", type=Path, required=True, help="LFW root with pairs.txt (the test pairs)")
    p.add_argument("--out", type=Path, default=Path("reports/overlap"))
    p.add_argument("--model", default="baseline", help="bundle of the teacher (default: baseline)")
    p.add_argument("--far", type=float, default=1e-6, help="false-match rate of the calibrated thresholds")
    p.add_argument("--dup-threshold", type=float, default=0.98, help="near-duplicate cosine (default 0.98)")
    p.add_argument("--cache", type=Path, default=Path("out/cache"))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--write-matches", type=Path, metavar="TXT",
                   help="also write the face-list images whose best cosine to any LFW test image reaches the image "
                        "threshold (one path per line): pass it to the student trainer's --exclude")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import numpy as np

    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.data.faces import DETECTED, align_images
    from trainer.data.facelist import DETECTED as LIST_DETECTED, lfw_pair_people, read_face_list
    from trainer.data.readers import read_lfw_pairs
    from trainer.eval.overlap import LfwTestSet, max_similarity, overlap_report, save
    from trainer.evaluate import Job, embed_condition

    bundle = load_bundle(args.model)
    det = build_stage(bundle.stages["detect"], {"max_side": None, "threads": 1})
    emb = build_stage(bundle.stages["embed"])
    pairs = read_lfw_pairs(args.lfw / "pairs.txt", args.lfw)
    paths = sorted({str(q.a) for q in pairs} | {str(q.b) for q in pairs})
    aligned = align_images(paths, det, emb, args.cache)
    test_emb = embed_condition(aligned, np.arange(len(paths)), np.zeros(len(paths), bool),
                               Job(args.model, "unmasked", None, 0), args.workers, args.cache)
    ok = aligned.status == DETECTED
    names = np.array([Path(q).parent.name for q in paths])
    test = LfwTestSet(names[ok], test_emb[ok], [q for q, k in zip(paths, ok) if k])
    entries = [e for e in read_face_list(args.faces) if e.status == LIST_DETECTED]
    train_emb = embed_entries(entries, emb, args.cache)
    lfw_train = {e.identity.split(":", 1)[1] for e in entries if e.source == "lfw-nonpair" and e.identity}
    rep = overlap_report(test, train_emb, [e.identity for e in entries], [e.source for e in entries],
                         {"lfw-nonpair": lfw_train}, lfw_pair_people(args.lfw / "pairs.txt"), args.far,
                         args.dup_threshold)
    for src, r in rep["sources"].items():
        for ex in r["near_duplicate_examples"]:
            ex["train"] = entries[ex.pop("train_index")].path
    rep["meta"] = {"faces": str(args.faces), "lfw": str(args.lfw), "model": bundle.name,
                   "test_images_skipped_no_face": int((~ok).sum()),
                   "command": "python tools/identity_overlap.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    best, _ = max_similarity(train_emb / np.linalg.norm(train_emb, axis=1, keepdims=True),
                             test.emb / np.linalg.norm(test.emb, axis=1, keepdims=True))
    srcs = np.array([e.source for e in entries])
    if args.write_matches:
        hits = [e.path for e, b in zip(entries, best) if b >= rep["image_threshold"]]
        args.write_matches.parent.mkdir(parents=True, exist_ok=True)
        args.write_matches.write_text(f"# face-list images matching an LFW test image (cosine >= "
                                      f"{rep['image_threshold']:.4f}, FAR {args.far:g}; {bundle.name})\n"
                                      + "".join(h + "\n" for h in hits))
        logging.getLogger("identity_overlap").info("%d matching images written to %s", len(hits), args.write_matches)
    save(rep, args.out, {s: best[srcs == s] for s in sorted(set(srcs.tolist()))})
    print((args.out / "overlap.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
