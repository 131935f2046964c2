"""Occluder conditions of the evaluations: held-out families on LFW pairs (``python -m trainer.evaluate --protocol
heldout-lfw``, driven by :func:`trainer.evaluate.evaluate_heldout_lfw`) and the training mix of the threshold
calibration (``trainmix``, :mod:`trainer.calibrate`).

The LFW view-2 protocol (6,000 pairs, 10 folds) with occluders from families no model was trained on
(:mod:`trainer.data.occluders.registry`): by default the ``heldout`` condition, which draws one of
``HELDOUT_MIX`` (bandana, respirator, neck gaiter, real masks cut from the *validation* photos) per image, the family
chosen by the image's seed. Each condition is measured twice in one run: masked on the probe (the second image of
every pair; the first stays clean: the SDK's enrol-clean / probe-masked use) and masked on both images (the
papers' protocol). Accuracy is the 10-fold mean +- std, plus TAR at FAR 1e-2 / 1e-3.

Occluders are painted on the aligned chip, as for the other conditions (``trainer/evaluate.py``), deterministically
per image and seed; greyscale LFW faces get greyscale occluders.

    python -m trainer.evaluate --protocol heldout-lfw --data ../shared/data/lfw --occluders /work/shared-extra/cutouts \
        --model student-v1 --out reports/heldout_lfw/student-v1
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

_SYNTH: dict = {}

#: training families the ``trainmix`` condition draws from (threshold calibration, ``trainer/calibrate.py``): never
#: a held-out family, so that calibrating a bundle does not see what the held-out evaluation measures
TRAIN_MIX = ("surgical", "kn95", "cloth", "scarf", "hand", "sunglasses", "harvested")


def occluder_synth(templates: str | None, occluders: str | None):
    """One :class:`~trainer.data.occluders.OccluderSynthesizer` (split "all") per (templates, cutouts) per process."""
    from trainer.data.occluders import OccluderConfig, OccluderSynthesizer

    key = (templates, occluders)
    if key not in _SYNTH:
        _SYNTH[key] = OccluderSynthesizer(OccluderConfig(split="all", cutouts_dir=occluders, templates_dir=templates))
    return _SYNTH[key]


def family_for(condition: str, seed: int) -> str:
    """The family a condition draws for an image seed: ``occ:<family>`` -> that family; ``heldout`` -> one of
    ``HELDOUT_MIX``, picked by the seed (so every model and mask side sees the same family on the same image)."""
    from trainer.data.occluders.registry import FAMILIES, HELDOUT_MIX

    if condition == "heldout":
        return HELDOUT_MIX[int(np.random.default_rng([seed, 7]).integers(len(HELDOUT_MIX)))]
    if condition == "trainmix":
        return TRAIN_MIX[int(np.random.default_rng([seed, 11]).integers(len(TRAIN_MIX)))]
    if condition.startswith("occ:"):
        fam = condition[4:]
        if fam not in FAMILIES:
            raise ValueError(f"unknown occluder family {fam!r} in condition {condition!r}; known: {', '.join(FAMILIES)}")
        return fam
    raise ValueError(f"not an occluder condition: {condition!r}")


def cutout_parts(condition: str) -> list[str]:
    """The cutout parts (``harvest`` / ``validation``) a condition can draw from (for cache keys)."""
    from trainer.data.occluders.registry import CUTOUT_PART, HELDOUT_MIX

    fams = (HELDOUT_MIX if condition == "heldout" else TRAIN_MIX if condition == "trainmix"
            else (condition[4:],) if condition.startswith("occ:") else ())
    return sorted({CUTOUT_PART[f] for f in fams if f in CUTOUT_PART})


def render_occluder(chip: np.ndarray, landmarks: np.ndarray, condition: str, seed: int, templates: str | None,
                    occluders: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(BGR chip with the condition's occluder, its exact occlusion mask M)."""
    synth = occluder_synth(templates, occluders)
    family = family_for(condition, int(seed))
    if condition == "trainmix" and family not in synth.available():  # no cutouts given: the procedural families
        pool = [f for f in TRAIN_MIX if f in synth.available()]
        family = pool[int(np.random.default_rng([int(seed), 13]).integers(len(pool)))]
    s = synth(chip, landmarks, int(seed), family=family)
    return s.masked, s.mask
