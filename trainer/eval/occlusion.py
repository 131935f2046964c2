"""The segmenter's occlusion call on every face an evaluation renders (``python -m trainer.evaluate --occlusion
predicted``): the chips are rendered exactly as :mod:`trainer.evaluate` renders them for embedding, cut to the
segmenter's 112x112 ArcFace crop and segmented by the bundle's segment stage, so each pair can be scored in the
occlusion state the SDK would assign. Probabilities are cached per segmenter file, condition, seed and images.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
__all__ = ["occlusion_condition"]


def _occlusion_chunk(args: tuple) -> np.ndarray:
    """Segmenter occlusion probability of each chip of a chunk, rendered exactly as :func:`trainer.evaluate._embed_chunk` renders it
    and cut to the segmenter's 112x112 ArcFace crop (what the SDK segments)."""
    paths, chip_ms, lms, seeds, masked_flags, condition, arc_ms, _ = args
    from sdk.align import warp
    from trainer.data.completion import chip_to_arc
    from trainer.eval.render import _W, render_crop

    seg = _W["segmenter"]
    size = (seg.crop_spec.width, seg.crop_spec.height)
    crops = []
    for p, m, lm, sd, flag, am in zip(paths, chip_ms, lms, seeds, masked_flags, arc_ms):
        chip, _hole = render_crop(p, m, condition if flag else "unmasked", int(sd), _W["templates"],
                                  _W["chip_size"], lm, _W.get("occluders"))
        crops.append(warp(chip, chip_to_arc(m, am), size))
    return seg.segment(np.stack(crops))[1].astype(np.float32)


def _occlusion_init(model: str | None, templates: str | None, occluders: str | None) -> None:
    cv2.setNumThreads(1)
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle
    from trainer.eval.render import _W

    bundle = load_bundle(model, verify_hash=False)
    _W.update(occluders=occluders, templates=templates, synth={}, segmenter=build_stage(bundle.stages["segment"]),
              chip_size=build_stage(bundle.stages["embed"]).crop_size)


def occlusion_condition(aligned, idx: np.ndarray, masked: np.ndarray, job, workers: int,
                        cache_dir: Path | None, chunk: int = 64) -> np.ndarray:
    """``(len(idx),)`` float32: the bundle's segmenter occlusion probability of every chip of ``job.condition``
    (the same rendered chips as :func:`embed_condition`; cached by segmenter file, condition, seed and images).

    With ``--occlusion predicted`` the evaluation scores each pair in the occlusion state the SDK would assign (the
    segmenter's call on each face), not the state the synthesis knows."""
    from sdk.bundle import load_bundle
    from trainer.eval.render import _unmasked_key, chunk_tasks, occluder_key, run_chunks

    bundle = load_bundle(job.model, verify_hash=False)
    seg = bundle.stages.get("segment")
    if seg is None:
        raise SystemExit(f"--occlusion predicted: bundle {job.model!r} has no segment stage")
    job, masked = _unmasked_key(job, masked)
    key_parts = ["occlusion", [f.sha256 for f in seg.files.values()], job.condition, job.templates, job.seed,
                 [aligned.paths[i] for i in idx], masked.astype(int).tolist()] + occluder_key(job)
    h = hashlib.sha1(json.dumps(key_parts).encode())
    h.update(np.ascontiguousarray(aligned.chip_m[idx]).tobytes())
    cache = cache_dir / f"occ-{job.condition.replace(':', '_')}-{h.hexdigest()[:16]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    out = run_chunks(_occlusion_chunk, chunk_tasks(aligned, idx, masked, job, chunk), _occlusion_init,
                     (job.model, job.templates, job.occluders), workers, f"segment {job.condition}")
    prob = np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
    if cache is not None:
        np.save(cache, prob)
    return prob
