"""``python -m trainer.calibrate`` -- thresholds per occlusion state that hold a stated false accept rate.

A threshold calibrated on clean faces lets masked strangers through: a mask makes every face look more alike
to the embedder, so impostor similarities rise (issue #9: at the old single threshold ``student-v1`` accepted 23%
of impostors with a masked probe). This tool measures, for one bundle's embedder, the impostor similarity
distribution of each occlusion state of a compared pair and picks the threshold of each at the target FAR:

* ``clean``          -- both faces clean;
* ``probe_occluded`` -- one face occluded (the SDK's use: clean enrolment, masked probe);
* ``both_occluded``  -- both occluded.

Calibration faces: every LFW image of the people who appear in **no** pair of ``pairs.txt`` (so LFW's test
pairs stay unseen; ~1,500 images of ~1,470 people, ~1.2M impostor pairs per state). Faces are detected and
aligned on the clean image by the bundle's detector; the occluded copy has one **training** occluder family
painted on the aligned face (``trainmix``: surgical, KN95, cloth, scarf, hand, sunglasses and, with
``--occluders``, masks harvested from the training part of the real photos) -- never a held-out family, so the
held-out evaluation stays held out. Impostor = a pair of images of different people. Genuine pairs (the few
people with two or more images) give an indicative TAR.

The threshold of a state is the smallest cosine with FAR <= ``--far`` (:func:`trainer.eval.metrics.tar_at_far`);
``--write`` stores them (made monotone: a state with more occluded faces never gets a lower threshold,
:func:`shipped_thresholds`) in the bundle's ``manifest.json`` as ``match.thresholds`` with the calibration record
under ``match.calibration``, and sets ``match.threshold`` (the clean state) to the same calibrated value::

    python -m trainer.calibrate --model sdk/models/default-v1 --lfw ../shared/data/lfw \\
        --occluders /work/shared-extra/cutouts --far 1e-3 --write --out reports/calibration/default-v1
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger("trainer.calibrate")

STATES = ("clean", "probe_occluded", "both_occluded")


@dataclass(frozen=True)
class StateCalibration:
    """One occlusion state: its threshold at the target FAR, what it achieves, and on how many pairs."""

    threshold: float
    achieved_far: float
    impostor_pairs: int
    genuine_pairs: int
    tar: float | None  #: at ``threshold`` on the genuine pairs (None without any)


def pair_scores(a: np.ndarray, b: np.ndarray, identities: Sequence[str], symmetric: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, genuine)`` of every pair (i, j), i != j, of rows of ``a`` against rows of ``b`` (cosine of unit
    rows). ``symmetric`` (``a`` and ``b`` the same set): each unordered pair once."""
    ids = np.asarray(identities)
    s = np.asarray(a, np.float32) @ np.asarray(b, np.float32).T
    n = len(ids)
    iu = np.triu_indices(n, 1) if symmetric else np.nonzero(~np.eye(n, dtype=bool))
    return s[iu].astype(np.float64), ids[iu[0]] == ids[iu[1]]


def state_pair_scores(clean: np.ndarray, occluded: np.ndarray, identities: Sequence[str], mask_aware=None
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{state: (scores, genuine)}`` of every pair of each occlusion state, scored as the SDK scores them:
    cosine, or with a :class:`sdk.views.MaskAwareConfig` (``clean`` / ``occluded`` are then templates) the gallery
    template of one face against the search vector of the other (:func:`sdk.views.queries`)."""
    if mask_aware is None:
        qc, qo = clean, occluded
    else:
        from sdk.views import queries

        qc = queries(clean, np.zeros(len(clean), bool), mask_aware)
        qo = queries(occluded, np.ones(len(occluded), bool), mask_aware)
    return {"clean": pair_scores(clean, qc, identities, True),
            "probe_occluded": pair_scores(clean, qo, identities, False),
            "both_occluded": pair_scores(occluded, qo, identities, True)}


def calibrate_states(clean: np.ndarray, occluded: np.ndarray, identities: Sequence[str], far: float,
                     mask_aware=None) -> dict[str, StateCalibration]:
    """Per-state thresholds at ``far`` from unit embeddings ``clean`` and ``occluded`` ((N, D), row i = image i
    clean / with an occluder) of people ``identities`` (N,); with ``mask_aware`` they are gallery templates
    (:func:`state_pair_scores`)."""
    from trainer.eval.metrics import tar_at_far

    if clean.shape != occluded.shape or len(identities) != len(clean):
        raise ValueError(f"clean {clean.shape}, occluded {occluded.shape} and {len(identities)} identities disagree")
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    pairs = state_pair_scores(clean, occluded, identities, mask_aware)
    out = {}
    for state, (scores, genuine) in pairs.items():
        n_imp, n_gen = int((~genuine).sum()), int(genuine.sum())
        if n_imp * far < 1:
            raise ValueError(f"{state}: {n_imp} impostor pairs cannot measure FAR {far} (need >= {int(np.ceil(1 / far))})")
        if n_gen:
            op = tar_at_far(scores, genuine, (far,))[far]
            thr, achieved, tar = op.threshold, op.achieved_far, op.tar
        else:  # impostors only: the same rule as tar_at_far, without a TAR
            fake = np.r_[scores, np.inf]
            op = tar_at_far(fake, np.r_[genuine, True], (far,))[far]
            thr, achieved, tar = op.threshold, op.achieved_far, None
        out[state] = StateCalibration(float(min(1.0, thr)), float(achieved), n_imp, n_gen, tar)
    return out


def shipped_thresholds(states: dict[str, StateCalibration]) -> dict[str, float]:
    """The thresholds a bundle ships: each state's calibrated one, but never below the state with fewer occluded
    faces (a mask never lowers the bar: ``clean <= probe_occluded <= both_occluded``), rounded to 4 decimals."""
    out, floor = {}, -1.0
    for s in STATES:
        floor = max(floor, states[s].threshold)
        out[s] = round(floor, 4)
    return out


def write_thresholds(manifest: Path, states: dict[str, StateCalibration], far: float, record: dict,
                     per_state: bool = True) -> dict:
    """Store the thresholds in ``manifest`` (``match.thresholds`` + ``match.calibration``; ``match.threshold`` =
    the clean state) and return the new ``match`` block. ``per_state=False`` (a bundle without a segmenter cannot
    tell occluded faces apart): only ``match.threshold``. The file is replaced atomically."""
    raw = json.loads(manifest.read_text(encoding="utf-8"))
    match = dict(raw.get("match") or {"metric": "cosine"})
    shipped = shipped_thresholds(states)
    match.pop("thresholds", None)
    match.pop("uncalibrated", None)  # the exporter's mark: this bundle now has its own thresholds
    if per_state:
        match["thresholds"] = {**shipped, "far": far}
    match["threshold"] = shipped["clean"]
    match["calibration"] = record
    raw["match"] = match
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)
    return match


def calibration_images(lfw: Path, pairs_txt: Path) -> tuple[list[str], list[str]]:
    """``(paths, identities)``: every image of the LFW people in no line of ``pairs_txt``, sorted."""
    from trainer.data.facelist import lfw_pair_people

    test_people = lfw_pair_people(pairs_txt)
    paths, ids = [], []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir() and p.name not in test_people):
        for img in sorted(person.glob("*.jpg")):
            paths.append(str(img))
            ids.append(person.name)
    return paths, ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder (or built-in name) whose embedder is calibrated")
    p.add_argument("--lfw", type=Path, required=True, help="LFW folder (one sub-folder per person) with pairs.txt")
    p.add_argument("--pairs", type=Path, default=None, help="pairs.txt whose people are left out (default: <lfw>/pairs.txt)")
    p.add_argument("--far", type=float, default=1e-3, help="target false accept rate per state (default 1e-3)")
    p.add_argument("--occluders", default=None, help="cutout folder (adds masks harvested from the training photos)")
    p.add_argument("--templates", default=None, help="mask_templates folder (not needed by the trainmix families)")
    p.add_argument("--seed", type=int, default=0, help="occluder seed (per-image seeds derive from it)")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1), help="embedding processes")
    p.add_argument("--cache", type=Path, default=Path("out/cache"), help="alignment and embedding cache")
    p.add_argument("--out", type=Path, default=Path("out/calibration"), help="report folder (calibration.json, .png)")
    p.add_argument("--write", action="store_true", help="write the thresholds into the bundle's manifest.json")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def plot(scores: dict[str, tuple[np.ndarray, np.ndarray]], states: dict[str, StateCalibration], path: Path,
         title: str) -> None:
    """Impostor similarity histograms per state with the calibrated thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for (state, (s, g)), colour in zip(scores.items(), ("tab:green", "tab:orange", "tab:red")):
        ax.hist(s[~g], bins=200, range=(-0.2, 1.0), density=True, histtype="step", color=colour,
                label=f"{state}: impostors ({(~g).sum():,})")
        ax.axvline(states[state].threshold, color=colour, ls="--", lw=1)
    ax.set_xlabel("cosine similarity (dashed: threshold at the target FAR)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pairs_txt = args.pairs or args.lfw / "pairs.txt"
    if not args.lfw.is_dir() or not pairs_txt.is_file():
        raise SystemExit(f"need an LFW folder with pairs.txt, got {args.lfw} ({pairs_txt} missing?)")
    from sdk._registry import build_stage
    from sdk.bundle import find_manifest, load_bundle
    from trainer.data.faces import align_images
    from trainer.evaluate import Job, embed_templates

    t0 = time.perf_counter()
    bundle = load_bundle(args.model)
    manifest = find_manifest(args.model)
    detector = build_stage(bundle.stages["detect"], {"max_side": None})
    embedder = build_stage(bundle.stages["embed"])
    paths, ids = calibration_images(args.lfw, pairs_txt)
    log.info("%d calibration images of %d people (none in %s)", len(paths), len(set(ids)), pairs_txt)
    aligned = align_images(paths, detector, embedder, args.cache)
    idx = np.arange(len(paths))
    model = str(args.model)
    mask_aware = bundle.mask_aware
    clean = embed_templates(aligned, idx, np.zeros(len(idx), bool), Job(model, "unmasked", None, 0), args.workers,
                            args.cache, mask_aware)
    occluded = embed_templates(aligned, idx, np.ones(len(idx), bool),
                               Job(model, "trainmix", args.templates, args.seed, occluders=args.occluders),
                               args.workers, args.cache, mask_aware)
    states = calibrate_states(clean, occluded, ids, args.far, mask_aware)
    record = {"far": args.far, "embedder": embedder.model_id,
              **({"mask_aware": mask_aware.to_dict()} if mask_aware is not None else {}),
              "data": f"LFW people in no pair of pairs.txt: {len(paths)} images, {len(set(ids))} people",
              "occluders": "trainmix (training families" + (", harvested cutouts)" if args.occluders else ")"),
              "states": {s: asdict(c) for s, c in states.items()},
              "date": datetime.date.today().isoformat(),
              "command": "python -m trainer.calibrate " + " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    report = {**record, "bundle": bundle.name, "manifest": str(manifest), "seconds": round(time.perf_counter() - t0, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "alignment": aligned.counts()}
    (args.out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(state_pair_scores(clean, occluded, ids, mask_aware), states, args.out / "calibration.png",
         f"{bundle.name}: impostor similarities, thresholds at FAR {args.far:g}")
    for s, c in states.items():
        tar = "n/a" if c.tar is None else f"{100 * c.tar:.1f}%"
        print(f"{s:15s} threshold {c.threshold:.4f}  FAR {c.achieved_far:.2e} on {c.impostor_pairs:,} impostor pairs"
              f"  TAR {tar} on {c.genuine_pairs} genuine pairs")
    if args.write:
        per_state = bundle.stages.get("segment") is not None
        write_thresholds(manifest, states, args.far, record, per_state)
        print(f"thresholds written to {manifest}" + ("" if per_state else
              " (clean only: without a segment stage the bundle cannot tell occluded faces apart)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
