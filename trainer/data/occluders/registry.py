"""Which occluder families exist and which are held out of training.

A family is *train* (any trainer may draw it) or *heldout* (only evaluation may draw it: a model that saw it would
be measured on what it learned, not on what it generalises to). :class:`~trainer.data.occluders.OccluderSynthesizer`
refuses a held-out family unless built with ``split="heldout"`` or ``"all"``, and ``split="train"`` never samples
one.

=================  =========  ======  =========  ===========================================================
family             split      region  needs      what
=================  =========  ======  =========  ===========================================================
surgical           train      lower   --         pleated surgical mask, nose wire, ear loops; plain or printed
kn95               train      lower   --         fold-flat KN95 / FFP2 on a sharp ridge, edge seal, ear loops
cloth              train      lower   --         contoured cloth mask: prints, knit, seam, fabric loops
pulled_down        train      lower   --         surgical / cloth mask under the nose or under the chin
hand               train      any     --         a hand over mouth, chin or cheek, in the face's skin colour
hair               train      any     --         bangs over the eyes or a lock across the cheek
scarf              train      lower   --         a thick scarf wrapped up to the nose
sunglasses         train      upper   --         four lens shapes, tinted / see-through, frame and arms
template           train      lower   templates  MaskTheFace templates except the held-out ones (below)
harvested          train      lower   cutouts    real masks cut from the *harvest* part of the real photos
bandana            heldout    lower   --         triangular paisley kerchief, point below the chin
respirator         heldout    lower   --         cup respirator with an exhalation valve and head straps
neck_gaiter        heldout    lower   --         tight printed tube from the nose down the neck
face_shield        heldout    any     --         clear plastic visor (mostly transparent)
template_heldout   heldout    lower   templates  MaskTheFace families ``cloth`` and ``surgical_green``
real_val           heldout    lower   cutouts    real masks cut from the *validation* part of the real photos
=================  =========  ======  =========  ===========================================================

``HELDOUT_MIX`` (the ``heldout`` condition of ``python -m trainer.evaluate``) draws one of the mask-like held-out
families per image: bandana, respirator, neck_gaiter, real_val.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One occluder family: its name, ``split`` ("train" / "heldout"), face ``region`` and what it needs at run
    time (``None``, ``"templates"``: the MaskTheFace folder, ``"cutouts"``: a harvested cutout folder)."""

    name: str
    split: str
    region: str
    needs: str | None = None


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("surgical", "train", "lower"),
    Family("kn95", "train", "lower"),
    Family("cloth", "train", "lower"),
    Family("pulled_down", "train", "lower"),
    Family("hand", "train", "any"),
    Family("hair", "train", "any"),
    Family("scarf", "train", "lower"),
    Family("sunglasses", "train", "upper"),
    Family("template", "train", "lower", "templates"),
    Family("harvested", "train", "lower", "cutouts"),
    Family("bandana", "heldout", "lower"),
    Family("respirator", "heldout", "lower"),
    Family("neck_gaiter", "heldout", "lower"),
    Family("face_shield", "heldout", "any"),
    Family("template_heldout", "heldout", "lower", "templates"),
    Family("real_val", "heldout", "lower", "cutouts"),
)}

#: MaskTheFace template families kept out of training (``template`` skips them; ``template_heldout`` draws them).
HELDOUT_TEMPLATE_FAMILIES: tuple[str, ...] = ("cloth", "surgical_green")

#: The ``heldout`` evaluation condition: one of these per image (mask-like occluders never trained on).
HELDOUT_MIX: tuple[str, ...] = ("bandana", "respirator", "neck_gaiter", "real_val")

#: Which cutout part a cutout family reads (see :mod:`trainer.data.occluders.harvest`).
CUTOUT_PART = {"harvested": "harvest", "real_val": "validation"}

SPLITS = ("train", "heldout", "all")


def families(split: str = "train") -> tuple[str, ...]:
    """Family names of ``split`` ("train", "heldout" or "all"), in registry order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return tuple(n for n, f in FAMILIES.items() if split == "all" or f.split == split)


def is_heldout(name: str) -> bool:
    """True for a held-out family. Raises KeyError naming the known families for an unknown name."""
    if name not in FAMILIES:
        raise KeyError(f"unknown occluder family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name].split == "heldout"
