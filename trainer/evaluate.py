"""``python -m trainer.evaluate`` — how much do masks hurt a recogniser, measured the papers' way.

Any embedder (a bundle: the built-in ``baseline`` dlib teacher or a trained bundle folder) x any dataset:

* ``--protocol lfw-pairs``: LFW view-2 ``pairs.txt`` (6,000 pairs, 10 folds): 10-fold accuracy (threshold
  picked on 9 folds, tested on the 10th; mean +- std), TAR at FAR 1e-2 / 1e-3, ROC curve.
* ``--protocol rank1``: folder-per-identity data (the CelebA subset): one clean image per identity enrolled,
  the others (masked) as probes; rank-1 / rank-5 identification (the AR protocol of the seeds).
* ``--protocol heldout-lfw``: LFW pairs with occluder families never trained on (``trainer/data/occluders``
  registry; default condition ``heldout``) on the probe image and on both, one report (``trainer/eval/heldout.py``).
* ``--protocol real-mask``: real masked / unmasked photos (the validation part of the committed split): detector
  recall as photos and pasted into scenes, segmenter presence, segmenter IoU on occluders pasted with exact masks
  (``trainer/eval/realmask.py``).
* ``--protocol wild-lfw``: LFW pairs with the held-out occluders painted on the probe *photo* before detection, each
  bundle (``--model``, ``--compare``) end to end through ``sdk.Recognizer``: lost faces, landmarks under the mask,
  the bundle's own occlusion call and thresholds (``trainer/eval/wild.py``).

Conditions (``--conditions``, comma separated): ``unmasked``; ``template`` (real mask templates fitted to the
landmarks, needs ``--templates``); one per synthesis category: ``simple``, ``complex``, ``human_body``,
``hybrid``, ``block`` (ID-GAN: a white 48/128-of-the-face-size square), ``sunglasses``, ``scarf``; and the realistic
occluders of ``trainer.data.occluders``: ``occ:<family>`` (one family, e.g. ``occ:bandana``) or ``heldout`` (one of
the held-out mask families per image); ``real_val`` / ``harvested`` need ``--occluders <cutout folder>``.
Faces are detected and aligned once on the clean image (as in the papers, occluders are painted on the
aligned face); ``--mask-side both`` masks both images of a pair (the papers' protocol), ``probe`` only the
second one (enrolled clean, probe masked). Embeddings are cached per (images, model, condition, seed).

Example::

    python -m trainer.evaluate --data ../shared/data/lfw --protocol lfw-pairs \
        --templates ../shared/data/mask_templates --conditions unmasked,template,block --out reports/lfw_baseline
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from trainer.eval.render import (_W, _unmasked_key, chunk_tasks, is_occluder_condition, occluder_key,  # noqa: F401
                                 render_crop, run_chunks)

log = logging.getLogger("trainer.evaluate")

SYNTH_CONDITIONS = ("simple", "complex", "human_body", "hybrid", "block", "sunglasses", "scarf")
CONDITIONS = ("unmasked", "template") + SYNTH_CONDITIONS


@dataclass(frozen=True)
class Job:
    """What one worker needs to embed a chunk of images under one condition."""

    model: str | None
    condition: str
    templates: str | None
    seed: int
    complete: str | None = None  #: inpainter spec (trainer.data.completion) applied to masked chips, or None
    complete_mask: str = "truth"  #: holes to fill: the synthesis mask ("truth") or the segmenter's ("predicted")
    occluders: str | None = None  #: cutout folder for the ``occ:`` / ``heldout`` conditions (real cutouts)
    #: also embed the upper-face view (``sdk.views``) of the same rendered chips: (upper_cut, fill); the job then
    #: returns ``[full | upper]`` side by side (N, 2 * dim)
    upper: tuple[float, int] | None = None


# ------------------------------------------------------------------------------------------------ workers


def _worker_init(model: str | None, templates: str | None, complete: str | None = None,
                 complete_mask: str = "truth", occluders: str | None = None) -> None:
    cv2.setNumThreads(1)
    _W["occluders"] = occluders
    from sdk.bundle import load_bundle
    from sdk._registry import build_stage

    bundle = load_bundle(model, verify_hash=False)
    _W["embedder"] = build_stage(bundle.stages["embed"])
    _W["templates"] = templates
    _W["synth"] = {}
    if complete:
        from trainer.data.completion import ChipCompleter

        _W["completer"] = ChipCompleter(complete, mask_source=complete_mask)
    else:
        _W.pop("completer", None)


def _embed_chunk(args: tuple) -> np.ndarray:
    paths, chip_ms, lms, seeds, masked_flags, condition, arc_ms, upper = args
    emb = _W["embedder"]
    chips, holes = [], []
    for p, m, lm, sd, flag in zip(paths, chip_ms, lms, seeds, masked_flags):
        chip, hole = render_crop(p, m, condition if flag else "unmasked", int(sd), _W["templates"], emb.crop_size, lm,
                                 _W.get("occluders"))
        chips.append(chip)
        holes.append(np.zeros(chip.shape[:2], np.uint8) if hole is None else hole)
    completer = _W.get("completer")
    if completer is not None and condition != "unmasked":
        from trainer.data.completion import chip_to_arc

        mats = np.stack([chip_to_arc(cm, am) for cm, am in zip(chip_ms, arc_ms)])
        chips = list(completer(np.stack(chips), np.stack(holes), mats))
    full = _embed_bgr(emb, chips)
    if upper is None:
        return full
    # mask-aware matching: the upper-face view of the same (occluded / completed) chips, rendered once
    from sdk.views import MaskAwareConfig, chip_landmarks, upper_view

    chip_lms = np.stack([chip_landmarks(lm, m) for lm, m in zip(lms, chip_ms)])
    ups = upper_view(np.stack(chips), chip_lms, MaskAwareConfig(upper_cut=upper[0], fill=upper[1]))
    return np.concatenate([full, _embed_bgr(emb, list(ups))], axis=1)


def _embed_bgr(emb, chips: list[np.ndarray]) -> np.ndarray:
    """Embeddings of BGR chips (flipped to RGB for embedders that read RGB crops)."""
    chips = [np.ascontiguousarray(c[:, :, ::-1]) if emb.crop_order == "RGB" else c for c in chips]
    return emb.embed_crops(chips)


# ------------------------------------------------------------------------------------------------ driver
def embed_condition(aligned, idx: np.ndarray, masked: np.ndarray, job: Job, workers: int, cache_dir: Path | None,
                    chunk: int = 32) -> np.ndarray:
    """Embeddings (len(idx), D) of images ``aligned.paths[idx]`` under ``job.condition`` (cached)."""
    from trainer.data.completion import model_fingerprint

    job, masked = _unmasked_key(job, masked)
    key_parts = [job.model, job.condition, job.templates, job.seed, [aligned.paths[i] for i in idx],
                 masked.astype(int).tolist()]
    key_parts += occluder_key(job)  # the cutouts it can draw, not only their folder
    if job.complete and job.condition != "unmasked":
        key_parts.append(["complete", model_fingerprint(job.complete)]
                         + (["predicted-mask"] if job.complete_mask == "predicted" else []))
    if job.upper is not None:  # both views (older caches under "upper" held the upper view alone)
        key_parts.append(["views", float(job.upper[0]), int(job.upper[1])])
    h = hashlib.sha1(json.dumps(key_parts).encode())
    h.update(np.ascontiguousarray(aligned.chip_m[idx]).tobytes())  # the chip geometry is part of the key
    key = h.hexdigest()[:16]
    tag = job.condition
    if job.complete and job.condition != "unmasked":
        tag += "-completed" + ("-predmask" if job.complete_mask == "predicted" else "")
    if job.upper is not None:
        tag += "-views"
    cache = cache_dir / f"emb-{tag}-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        log.info("%s: embeddings from cache %s", job.condition, cache)
        return np.load(cache)
    tasks = chunk_tasks(aligned, idx, masked, job, chunk, job.upper)
    out = run_chunks(_embed_chunk, tasks, _worker_init,
                     (job.model, job.templates, job.complete, job.complete_mask, job.occluders), workers, f"embed {tag}")
    emb = np.concatenate(out).astype(np.float32)
    if cache is not None:
        np.save(cache, emb)
    return emb


def embed_templates(aligned, idx: np.ndarray, masked: np.ndarray, job: Job, workers: int, cache_dir: Path | None,
                    mask_aware=None) -> np.ndarray:
    """What a bundle stores per face: the embeddings (``mask_aware`` None), or with a
    :class:`sdk.views.MaskAwareConfig` the templates ``(N, 2 * dim)`` of the full and upper-face views."""
    import dataclasses

    if mask_aware is None:
        return embed_condition(aligned, idx, masked, job, workers, cache_dir)
    from sdk.views import templates

    both = embed_condition(aligned, idx, masked,
                           dataclasses.replace(job, upper=(float(mask_aware.upper_cut), int(mask_aware.fill))),
                           workers, cache_dir)
    d = both.shape[1] // 2
    return templates(both[:, :d], both[:, d:])


def bundle_pair_scores(ta: np.ndarray, tb: np.ndarray, occluded_a, occluded_b, mask_aware=None) -> np.ndarray:
    """Score of each pair (row i of ``ta`` with row i of ``tb``) as the SDK computes it for faces of the given
    occlusion state (a bool for every pair, or one per pair): cosine, or mask-aware (:func:`sdk.views.pair_scores`)."""
    if mask_aware is None:
        from trainer.eval import cosine_pair_scores

        return cosine_pair_scores(ta, tb)
    from sdk.views import pair_scores

    n = len(ta)
    occ_a = np.broadcast_to(np.asarray(occluded_a, bool), (n,))
    occ_b = np.broadcast_to(np.asarray(occluded_b, bool), (n,))
    return pair_scores(ta, tb, occ_a, occ_b, mask_aware).astype(np.float64)


def save_examples(aligned, idx: Sequence[int], conditions: Sequence[str], templates: str | None, crop_size, path: Path,
                  seed: int, complete: str | None = None, complete_mask: str = "truth",
                  occluders: str | None = None) -> None:
    """A contact sheet: one row per condition (and, with ``complete``, one more row with those faces completed),
    the same faces in each column (BGR PNG)."""
    _W.setdefault("synth", {})
    rows = []
    completer = None
    if complete:
        from trainer.data.completion import ChipCompleter, chip_to_arc

        completer = ChipCompleter(complete, mask_source=complete_mask)
    for c in conditions:
        rendered = [render_crop(aligned.paths[i], aligned.chip_m[i], c, seed * 1_000_003 + int(i), templates, crop_size,
                                aligned.landmarks[i], occluders) for i in idx]
        tiles = [r[0] for r in rendered]
        labelled = [(c, tiles)]
        if completer is not None and c != "unmasked":
            holes = np.stack([np.zeros(t.shape[:2], np.uint8) if r[1] is None else r[1] for t, r in zip(tiles, rendered)])
            mats = np.stack([chip_to_arc(aligned.chip_m[i], aligned.arc_m[i]) for i in idx])
            labelled.append((f"{c} completed", list(completer(np.stack(tiles), holes, mats))))
        for label, ts in labelled:
            row = np.concatenate(ts, axis=1)
            cv2.putText(row, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1, cv2.LINE_AA)
            rows.append(row)
    cv2.imwrite(str(path), np.concatenate(rows, axis=0))


def evaluate_lfw(args: argparse.Namespace, detector, embedder) -> tuple[dict, dict]:
    from trainer.data.faces import align_images
    from trainer.data.readers import read_lfw_pairs
    from trainer.eval import lfw_10fold, roc_curve, tar_at_far

    pairs = read_lfw_pairs(args.pairs or Path(args.data) / "pairs.txt", args.data)
    if args.limit:
        if args.limit < 2:
            raise SystemExit("--limit for lfw-pairs counts folds and must be >= 2 (thresholds come from the other folds)")
        pairs = [p for p in pairs if p.fold < args.limit]  # whole folds only: the protocol needs them
    paths = sorted({str(p.a) for p in pairs} | {str(p.b) for p in pairs})
    pos = {p: i for i, p in enumerate(paths)}
    aligned = align_images(paths, detector, embedder, args.cache)
    ia = np.array([pos[str(p.a)] for p in pairs])
    ib = np.array([pos[str(p.b)] for p in pairs])
    labels = np.array([p.same for p in pairs], bool)
    folds = np.array([p.fold for p in pairs])
    results, curves = {}, {}
    all_idx = np.arange(len(paths))
    from sdk.bundle import load_bundle

    bundle = load_bundle(args.model, verify_hash=False)
    ops, mask_aware = bundle.operating_points, bundle.mask_aware
    for cond in args.conditions:
        job = Job(args.model, cond, args.templates, args.seed, args.complete, args.complete_mask,
                  getattr(args, "occluders", None))
        t0 = time.perf_counter()
        masked_all = embed_templates(aligned, all_idx, np.ones(len(paths), bool), job, args.workers, args.cache,
                                     mask_aware)
        if args.mask_side == "both" or cond == "unmasked":
            ea, eb = masked_all[ia], masked_all[ib]
        else:
            clean = embed_templates(aligned, all_idx, np.zeros(len(paths), bool), Job(args.model, "unmasked", None, 0),
                                    args.workers, args.cache, mask_aware)
            ea, eb = clean[ia], masked_all[ib]
        occ_b = cond != "unmasked"
        occ_a = occ_b and args.mask_side == "both"
        flagged = None
        if getattr(args, "occlusion", "truth") == "predicted":  # the state the SDK's segmenter assigns each face
            from trainer.eval.occlusion import occlusion_condition

            p_masked = occlusion_condition(aligned, all_idx, np.ones(len(paths), bool), job, args.workers, args.cache)
            seg_thr = float(getattr(bundle.stages["segment"], "config", {}).get("threshold", 0.5))
            # probe side: identify() against an enrolled template, which the SDK takes to be clean; both sides:
            # verify() of two photos, each with the segmenter's call
            occ_a = p_masked[ia] >= seg_thr if occ_a else np.zeros(len(ia), bool)
            occ_b = p_masked[ib] >= seg_thr
            flagged = {"probe": round(100 * float(occ_b.mean()), 2), "reference": round(100 * float(occ_a.mean()), 2)}
        scores = bundle_pair_scores(ea, eb, occ_a, occ_b, mask_aware)
        ver = lfw_10fold(scores, labels, folds)
        far, tar, _ = roc_curve(scores, labels)
        curves[cond] = (far, tar)
        # the bundle's shipped operating point of each pair's state
        thr = np.array([ops.threshold(ops.state(a, b))
                        for a, b in zip(np.broadcast_to(occ_a, (len(pairs),)), np.broadcast_to(occ_b, (len(pairs),)))])
        results[cond] = {"verification": ver, "tar_at_far": tar_at_far(scores, labels, (1e-2, 1e-3)),
                         "shipped thr": round(float(thr[0]), 4) if np.all(thr == thr[0]) else "per pair",
                         "FAR@shipped (%)": round(100 * float(np.mean(scores[~labels] >= thr[~labels])), 2),
                         "TAR@shipped (%)": round(100 * float(np.mean(scores[labels] >= thr[labels])), 2),
                         "seconds": round(time.perf_counter() - t0, 1)}
        if flagged is not None:
            results[cond]["flagged occluded (%)"] = flagged
        log.info("%s: %.2f +- %.2f %%", cond, 100 * ver.accuracy_mean, 100 * ver.accuracy_std)
    meta = {"pairs": len(pairs), "images": len(paths), "alignment": aligned.counts(), "mask_side": args.mask_side,
            "mask_aware": None if mask_aware is None else mask_aware.to_dict(),
            "occlusion": getattr(args, "occlusion", "truth")}
    save_examples(aligned, list(range(0, len(paths), max(1, len(paths) // 8)))[:8], args.conditions, args.templates,
                  embedder.crop_size, args.out / "examples.png", args.seed, args.complete, args.complete_mask,
                  getattr(args, "occluders", None))
    return results, {"meta": meta, "curves": curves}


def evaluate_rank1(args: argparse.Namespace, detector, embedder) -> tuple[dict, dict]:
    from trainer.data.faces import DETECTED, align_images
    from trainer.data.readers import read_identity_tree
    from trainer.eval import rank1_identification

    samples = read_identity_tree(args.data, min_images=2)
    by_id: dict[str, list] = {}
    for s in samples:
        by_id.setdefault(s.identity, []).append(s)
    if args.limit:
        by_id = dict(list(by_id.items())[: args.limit])
    gallery = [v[0] for v in by_id.values()]
    probes = [s for v in by_id.values() for s in v[1:1 + args.probes_per_identity]]
    paths = [str(s.path) for s in gallery + probes]
    aligned = align_images(paths, detector, embedder, args.cache)
    ng = len(gallery)
    # images without a detectable face are counted, and excluded from rank-1 (a fallback crop of an
    # in-the-wild photo is not a face); the report says how many
    keep = aligned.status == DETECTED
    g_idx = np.nonzero(keep[:ng])[0]
    p_idx = ng + np.nonzero(keep[ng:])[0]
    g_labels = np.array([gallery[i].identity for i in g_idx])
    enrolled = set(g_labels.tolist())
    p_idx = np.array([i for i in p_idx if probes[i - ng].identity in enrolled], dtype=int)
    p_labels = np.array([probes[i - ng].identity for i in p_idx])
    from sdk.bundle import load_bundle

    mask_aware = load_bundle(args.model, verify_hash=False).mask_aware
    clean_g = embed_templates(aligned, g_idx, np.zeros(len(g_idx), bool), Job(args.model, "unmasked", None, 0),
                              args.workers, args.cache, mask_aware)
    results = {}
    for cond in args.conditions:
        t0 = time.perf_counter()
        pe = embed_templates(aligned, p_idx, np.ones(len(p_idx), bool),
                             Job(args.model, cond, args.templates, args.seed, args.complete, args.complete_mask),
                             args.workers, args.cache, mask_aware)
        if mask_aware is not None:  # probes search the gallery as the SDK does (rank order only: scale-free)
            from sdk.views import queries

            pe = queries(pe, np.full(len(pe), cond != "unmasked"), mask_aware)
        r = rank1_identification(clean_g, g_labels, pe, p_labels, ks=[1, 5])
        results[cond] = {"rank1": r[1], "rank_k": {5: r[5]}, "seconds": round(time.perf_counter() - t0, 1)}
        log.info("%s: rank-1 %.2f %%", cond, 100 * r[1])
    meta = {"identities": len(g_idx), "probes": len(p_idx), "alignment": aligned.counts()}
    save_examples(aligned, list(p_idx[:: max(1, len(p_idx) // 8)][:8]), args.conditions, args.templates,
                  embedder.crop_size, args.out / "examples.png", args.seed, args.complete, args.complete_mask)
    return results, {"meta": meta, "curves": {}}


def evaluate_heldout_lfw(args: argparse.Namespace, detector, embedder) -> tuple[dict, dict]:
    """Run ``evaluate_lfw`` for ``args.conditions`` with the probe masked and with both masked; rows are named
    ``"<condition> (probe)"`` / ``"<condition> (both)"`` (``unmasked`` once)."""
    needs_cutouts = any(c == "heldout" or c in ("occ:real_val", "occ:harvested") for c in args.conditions)
    if needs_cutouts and not getattr(args, "occluders", None):
        raise SystemExit("the heldout condition includes real_val cutouts: pass --occluders <cutout folder> "
                         "(python tools/harvest_occluders.py --part validation writes it)")
    results, curves, meta = {}, {}, {}
    for side in ("probe", "both"):
        a = copy.copy(args)
        a.mask_side = side
        conds = [c for c in args.conditions if side == "probe" or c != "unmasked"]
        if not conds:
            continue
        a.conditions = conds
        r, extra = evaluate_lfw(a, detector, embedder)
        meta = extra["meta"]
        for c, row in r.items():
            name = c if c == "unmasked" else f"{c} ({side})"
            results[name] = row
            curves[name] = extra["curves"][c]
    meta = {**meta, "mask_side": "probe and both", "occluders": getattr(args, "occluders", None)}
    return results, {"meta": meta, "curves": curves}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset folder (LFW, or a folder-per-identity tree)")
    p.add_argument("--protocol", choices=("lfw-pairs", "rank1", "heldout-lfw", "wild-lfw", "real-mask"),
                   default="lfw-pairs",
                   help="lfw-pairs, rank1, heldout-lfw (LFW pairs with held-out occluder families, probe and both "
                        "sides), wild-lfw (the held-out occluders painted on the probe *photo*, before detection; "
                        "every bundle end to end through sdk.Recognizer) or real-mask (real masked photos: detector "
                        "recall, segmenter presence / IoU)")
    p.add_argument("--pairs", type=Path, help="pairs.txt (default: <data>/pairs.txt)")
    p.add_argument("--model", default=None, help="bundle whose embedder is evaluated (default: built-in baseline; "
                                                 "real-mask and wild-lfw: default, whose detector + segmenter are "
                                                 "measured too)")
    p.add_argument("--compare", nargs="*", default=[], metavar="BUNDLE",
                   help="wild-lfw: more bundles measured in the same run on the same masked photos")
    p.add_argument("--conditions", default="unmasked,simple,block",
                   help=f"comma-separated, from {', '.join(CONDITIONS)} (default unmasked,simple,block)")
    p.add_argument("--templates", default=None, help="mask_templates folder (real masks); procedural masks without it")
    p.add_argument("--mask-side", choices=("both", "probe"), default="both", help="mask both pair images (papers) or the second only")
    p.add_argument("--limit", type=int, default=0, help="lfw-pairs: first N folds only; rank1: first N identities (0 = all)")
    p.add_argument("--probes-per-identity", type=int, default=5, help="rank1: probes per identity (default 5)")
    p.add_argument("--seed", type=int, default=0, help="synthesis seed (per-image seeds derive from it)")
    p.add_argument("--complete", default=None,
                   help="complete the occluded chips before embedding: an inpainter .onnx, a bundle with a 'complete' "
                        "stage, a trainer run folder (generator.safetensors) or 'telea' (OpenCV); the true synthesis "
                        "mask is the hole (the ID-GAN protocol) unless --complete-mask predicted")
    p.add_argument("--complete-mask", choices=("truth", "predicted"), default="truth",
                   help="holes for --complete: the synthesis mask (truth) or the default bundle's segmenter output on "
                        "the crop, completing only faces it calls occluded (predicted: what the SDK does)")
    p.add_argument("--occlusion", choices=("truth", "predicted"), default="truth",
                   help="lfw-pairs / heldout-lfw: the occlusion state each pair is scored in (mask-aware views, shipped "
                        "threshold): 'truth' = the synthesis's (every painted face is occluded), 'predicted' = the "
                        "bundle's segmenter's call on each face, as the SDK decides (reports the flagged fractions)")
    p.add_argument("--occluders", default=None,
                   help="cutout folder from tools/harvest_occluders.py (real_val / harvested families, real-mask IoU)")
    p.add_argument("--split", type=Path, default=None,
                   help="real-mask: split file (default: trainer/data/splits/face_mask_detection.json)")
    p.add_argument("--scene-sizes", default="48,96,192",
                   help="real-mask: longer side (px) of the photo pasted into a 640x480 scene (default 48,96,192)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="embedding processes")
    p.add_argument("--cache", type=Path, default=Path("out/cache"), help="cache folder for alignment and embeddings")
    p.add_argument("--out", type=Path, default=Path("out/eval"), help="report folder (report.json, report.md, roc.png, examples.png)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.model is None:
        args.model = "default" if args.protocol in ("real-mask", "wild-lfw") else "baseline"
    if args.compare and args.protocol != "wild-lfw":
        raise SystemExit("--compare is for --protocol wild-lfw")
    if args.protocol == "heldout-lfw" and args.conditions == build_parser().get_default("conditions"):
        args.conditions = "unmasked,heldout"
    args.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    bad = [c for c in args.conditions if c not in CONDITIONS and not is_occluder_condition(c)]
    if bad:
        raise SystemExit(f"unknown conditions {bad}; choose from {CONDITIONS}, heldout or occ:<family> "
                         f"(families: python -c 'from trainer.data.occluders import FAMILIES; print(list(FAMILIES))')")
    if "template" in args.conditions and not args.templates:
        raise SystemExit("condition 'template' needs --templates <mask_templates folder>")
    if not args.data.is_dir():
        raise SystemExit(f"data folder not found: {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.eval import plot_roc, write_report

    if args.protocol == "real-mask":
        from trainer.eval.realmask import run_real_mask

        return run_real_mask(args, argv)
    if args.protocol == "wild-lfw":
        from trainer.eval.wild import run_wild_lfw

        return run_wild_lfw(args, argv)
    bundle = load_bundle(args.model)
    detector = build_stage(bundle.stages["detect"], {"max_side": None})
    embedder = build_stage(bundle.stages["embed"])
    t0 = time.perf_counter()
    if args.protocol == "heldout-lfw":
        fn = evaluate_heldout_lfw
    else:
        fn = evaluate_lfw if args.protocol == "lfw-pairs" else evaluate_rank1
    results, extra = fn(args, detector, embedder)
    meta = {**extra["meta"], "protocol": args.protocol, "data": str(args.data), "model": bundle.name,
            "embedder": embedder.model_id, "templates": args.templates, "seed": args.seed, "complete": args.complete,
            "complete_mask": args.complete_mask if args.complete else None,
            "seconds": round(time.perf_counter() - t0, 1), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": "python -m trainer.evaluate " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    write_report(results, args.out / "report.json", args.out / "report.md", title=f"{bundle.name} on {args.data.name}", meta=meta)
    if extra["curves"]:
        side = "probe + both" if args.protocol == "heldout-lfw" else args.mask_side
        plot_roc(extra["curves"], args.out / "roc.png", title=f"{bundle.name} on {args.data.name} ({side})")
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
