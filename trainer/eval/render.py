"""Chip rendering shared by the evaluation's worker processes (:mod:`trainer.evaluate`) and the segmenter pass
(:mod:`trainer.eval.occlusion`): every condition's occluder painted on an aligned chip, deterministically per image
seed, and the per-process state (``_W``) the workers fill (embedder, synthesizers, cutout folder).
"""
from __future__ import annotations

from pathlib import Path

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
