"""Chip rendering shared by the evaluation's worker processes (:mod:`trainer.evaluate`) and the segmenter pass
(:mod:`trainer.eval.occlusion`): every condition's occluder painted on an aligned chip, deterministically per image
seed, and the per-process state (``_W``) the workers fill (embedder, synthesizers, cutout folder).
"""
from __future__ import annotations

import hashlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

#: per-process worker state: set by the pool initializers of trainer.evaluate / trainer.eval.occlusion
_W: dict = {}


def is_occluder_condition(condition: str) -> bool:
    """``heldout``, ``trainmix`` or ``occ:<family>``: drawn by ``trainer.data.occluders`` (realistic families, registry)."""
    return condition in ("heldout", "trainmix") or condition.startswith("occ:")


def _synthesizer(condition: str, templates: str | None):
    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig

    key = (condition, templates)
    if key not in _W["synth"]:
        tdir = Path(templates) if templates else None
        if condition == "template":
            if tdir is None:
                raise ValueError("condition 'template' needs --templates")
            cfg = SynthesisConfig(templates_dir=tdir, template_prob=1.0, recolor_prob=0.0)
        else:
            cfg = SynthesisConfig(templates_dir=tdir)
        _W["synth"][key] = MaskSynthesizer(cfg)
    return _W["synth"][key]


def render_crop(path: str, chip_m: np.ndarray, condition: str, seed: int, templates: str | None,
                crop_size: tuple[int, int], landmarks: np.ndarray,
                occluders: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(BGR chip of ``crop_size`` with the condition's occluder painted, occlusion mask or None)."""
    from sdk.align import warp

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return np.zeros((crop_size[1], crop_size[0], 3), np.uint8), None
    chip = warp(img, chip_m, crop_size)
    if condition == "unmasked":
        return chip, None
    lm = landmarks @ chip_m[:, :2].T + chip_m[:, 2]
    if is_occluder_condition(condition):
        from trainer.eval.heldout import render_occluder

        return render_occluder(chip, lm, condition, seed, templates, occluders if occluders else _W.get("occluders"))
    cat = "simple" if condition == "template" else condition
    s = _synthesizer(condition, templates)(chip, lm, seed, category=cat)
    return s.masked, s.mask


def _unmasked_key(job, masked: np.ndarray) -> tuple:
    """``(job, masked)`` as cached: nothing is painted in the ``unmasked`` condition, so its flags, templates and
    seed do not matter (one cache, not one per caller)."""
    import dataclasses

    if job.condition != "unmasked":
        return job, masked
    return dataclasses.replace(job, templates=None, seed=0), np.zeros(len(masked), bool)


def occluder_key(job) -> list:
    """Cache-key part of the cutouts an occluder condition can draw (their index files' digests, not only the
    folder); empty for the other conditions."""
    if not (job.occluders and is_occluder_condition(job.condition)):
        return []
    from trainer.eval.heldout import cutout_parts

    index_files = [Path(job.occluders) / part / "index.json" for part in cutout_parts(job.condition)]
    return [["occluders", str(job.occluders)] + [hashlib.sha1(f.read_bytes()).hexdigest() for f in index_files
                                                 if f.is_file()]]


def chunk_tasks(aligned, idx: np.ndarray, masked: np.ndarray, job, chunk: int, upper=None) -> list[tuple]:
    """Worker tasks of ``chunk`` images each: ``(paths, chip_m, landmarks, seeds, masked, condition, arc_m, upper)``
    with the per-image seeds every renderer uses (``job.seed * 1_000_003 + index``)."""
    seeds = job.seed * 1_000_003 + idx
    return [([aligned.paths[i] for i in idx[s:s + chunk]], aligned.chip_m[idx[s:s + chunk]],
             aligned.landmarks[idx[s:s + chunk]], seeds[s:s + chunk], masked[s:s + chunk], job.condition,
             aligned.arc_m[idx[s:s + chunk]], upper) for s in range(0, len(idx), chunk)]


def run_chunks(fn: Callable, tasks: list[tuple], init: Callable, initargs: tuple, workers: int,
               desc: str) -> list[np.ndarray]:
    """``[fn(t) for t in tasks]`` in this process (``workers <= 1``) or a pool of ``workers`` processes started by
    ``init(*initargs)``, with one progress bar counting faces."""
    from tqdm import tqdm

    out: list[np.ndarray] = []
    with tqdm(total=sum(len(t[0]) for t in tasks), desc=desc, unit="face") as bar:
        if workers <= 1:
            init(*initargs)
            for t in tasks:
                out.append(fn(t))
                bar.update(len(t[0]))
        else:
            # spawned, not forked: a fork copies the parent's ONNX Runtime / torch thread-pool locks mid-use, and the
            # workers hung on one (calibrating ltdet-v3: every worker asleep in futex_wait, 0% CPU)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init, initargs=initargs) as ex:
                for t, r in zip(tasks, ex.map(fn, tasks)):
                    out.append(r)
                    bar.update(len(t[0]))
    return out
