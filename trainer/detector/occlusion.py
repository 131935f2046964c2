"""Which occluders the detector trains on and which are held out for its evaluation.

The synthesizer (:mod:`trainer.data.synthesis`) names what it drew in ``Synthesized.kind``. The detector
**never trains** on these families, kept for the occluded-face evaluation:

* respirators: the N95 template (``template:N95*``, the printed MaskTheFace N95) and the procedural N95 cup
  (``procedural:n95*``);
* hands over mouth and nose (``hand``);
* scarves (``scarf:*``);
* printed masks (``+text``, ``+logo`` patterns on any mask).

It trains on the rest: surgical / cloth masks (real templates, recoloured, stripes / checks / dots / camo
patterns, procedural surgical and cloth shapes), hair, sunglasses, white blocks and their hybrids.
:func:`draw` rejects samples until the kind is on the wanted side (a different sub-seed per try).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig, Synthesized

__all__ = ["HELD_OUT_TAGS", "OccluderSampler", "is_held_out"]

HELD_OUT_TAGS = ("template:N95", "procedural:n95", "hand", "scarf", "+text", "+logo")

#: Category weights of the training side (scarf never: all scarves are held out).
TRAIN_WEIGHTS = {"simple": 0.3, "complex": 0.2, "human_body": 0.08, "hybrid": 0.17, "block": 0.05,
                 "sunglasses": 0.2, "scarf": 0.0}
#: Category weights of the held-out side (respirators and printed masks, hands, scarves).
EVAL_WEIGHTS = {"complex": 0.5, "human_body": 0.25, "scarf": 0.25}


def is_held_out(kind: str) -> bool:
    """True if any part of a synthesizer ``kind`` string belongs to a held-out family."""
    return any(tag in part for part in kind.split("|") for tag in HELD_OUT_TAGS)


class OccluderSampler:
    """Draws occluders of one side: ``"train"`` or ``"eval"`` (held-out families).

    Args:
        side: ``"train"`` or ``"eval"``.
        templates_dir: MaskTheFace templates folder (``anchors.cfg`` + PNGs), or None (procedural only).
        tries: rejection-sampling budget per face; after it the face is left clean (``None``).
    """

    def __init__(self, side: str, templates_dir: str | Path | None = None, tries: int = 40):
        if side not in ("train", "eval"):
            raise ValueError(f"side must be 'train' or 'eval', got {side!r}")
        self.side, self.tries = side, int(tries)
        w = TRAIN_WEIGHTS if side == "train" else EVAL_WEIGHTS
        self.synth = MaskSynthesizer(SynthesisConfig(templates_dir=Path(templates_dir) if templates_dir else None,
                                                     weights=dict(w)))

    def draw(self, image: np.ndarray, landmarks: np.ndarray, seed: int) -> Synthesized | None:
        """An occluded copy of ``image`` (BGR uint8) for the face with ``landmarks`` (5, 2), or None."""
        want_held = self.side == "eval"
        for t in range(self.tries):
            s = self.synth(image, landmarks, np.random.default_rng([seed, t]))
            if is_held_out(s.kind) == want_held and s.mask.any():
                return s
        return None
