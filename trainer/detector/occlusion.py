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

With ``realistic_prob > 0`` the training side also draws from the realistic occluders of
:mod:`trainer.data.occluders` (3-D surface warps, the face's own light and blur): the families in
:data:`REALISTIC_WEIGHTS`, among them ``harvested``, real masks cut from the *harvest* part of the real photos
(``cutouts_dir``; the detector's real-photo evaluation uses the *validation* part). Its hands, scarves, KN95s
and printed (text / logo) masks are never drawn, so the held-out side above stays unseen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig, Synthesized

__all__ = ["HELD_OUT_TAGS", "OccluderSampler", "REALISTIC_WEIGHTS", "is_held_out"]

HELD_OUT_TAGS = ("template:N95", "procedural:n95", "hand", "scarf", "+text", "+logo")

#: Category weights of the training side (scarf never: all scarves are held out).
TRAIN_WEIGHTS = {"simple": 0.3, "complex": 0.2, "human_body": 0.08, "hybrid": 0.17, "block": 0.05,
                 "sunglasses": 0.2, "scarf": 0.0}
#: Category weights of the held-out side (respirators and printed masks, hands, scarves).
EVAL_WEIGHTS = {"complex": 0.5, "human_body": 0.25, "scarf": 0.25}
#: Families of the realistic synthesizer the detector may train on (``harvested`` needs a cutout folder; without
#: one it is skipped). Hands, scarves and KN95s are not among them: the evaluation holds those concepts out.
REALISTIC_WEIGHTS = {"harvested": 0.4, "surgical": 0.2, "cloth": 0.2, "pulled_down": 0.05, "hair": 0.05,
                     "sunglasses": 0.1}
#: Parts of a realistic ``kind`` that belong to the held-out side (printed masks).
_REALISTIC_HELD_OUT = ("text", "logo")


def is_held_out(kind: str) -> bool:
    """True if any part of a synthesizer ``kind`` string belongs to a held-out family."""
    return any(tag in part for part in kind.split("|") for tag in HELD_OUT_TAGS)


class OccluderSampler:
    """Draws occluders of one side: ``"train"`` or ``"eval"`` (held-out families).

    Args:
        side: ``"train"`` or ``"eval"``.
        templates_dir: MaskTheFace templates folder (``anchors.cfg`` + PNGs), or None (procedural only).
        tries: rejection-sampling budget per face; after it the face is left clean (``None``).
        realistic_prob: (training side only) share of draws taken from the realistic synthesizer
            (:data:`REALISTIC_WEIGHTS`) instead of the template / procedural one.
        cutouts_dir: folder of harvested real masks (``tools/harvest_occluders.py``) for the realistic
            ``harvested`` family, or None.
    """

    def __init__(self, side: str, templates_dir: str | Path | None = None, tries: int = 40,
                 realistic_prob: float = 0.0, cutouts_dir: str | Path | None = None):
        if side not in ("train", "eval"):
            raise ValueError(f"side must be 'train' or 'eval', got {side!r}")
        if not 0.0 <= realistic_prob <= 1.0:
            raise ValueError(f"realistic_prob must be in [0, 1], got {realistic_prob}")
        if realistic_prob > 0 and side != "train":
            raise ValueError("realistic occluders are a training-side option")
        self.side, self.tries = side, int(tries)
        w = TRAIN_WEIGHTS if side == "train" else EVAL_WEIGHTS
        self.synth = MaskSynthesizer(SynthesisConfig(templates_dir=Path(templates_dir) if templates_dir else None,
                                                     weights=dict(w)))
        self.realistic_prob = float(realistic_prob)
        self.realistic = None
        if realistic_prob > 0:
            from trainer.data.occluders import OccluderConfig, OccluderSynthesizer

            if cutouts_dir is not None and not (Path(cutouts_dir) / "harvest" / "index.json").is_file():
                raise FileNotFoundError(f"{cutouts_dir}: no harvest/index.json (python tools/harvest_occluders.py "
                                        "--part harvest writes it)")
            self.realistic = OccluderSynthesizer(OccluderConfig(split="train", weights=dict(REALISTIC_WEIGHTS),
                                                                cutouts_dir=cutouts_dir))

    def draw(self, image: np.ndarray, landmarks: np.ndarray, seed: int) -> Synthesized | None:
        """An occluded copy of ``image`` (BGR uint8) for the face with ``landmarks`` (5, 2), or None."""
        want_held = self.side == "eval"
        if self.realistic is not None and np.random.default_rng([seed, 101]).random() < self.realistic_prob:
            for t in range(self.tries):
                s = self.realistic(image, landmarks, np.random.default_rng([seed, 102, t]))
                parts = s.kind.split(":")
                if s.mask.any() and not any(p in _REALISTIC_HELD_OUT for p in parts):
                    return s
            return None
        for t in range(self.tries):
            s = self.synth(image, landmarks, np.random.default_rng([seed, t]))
            if is_held_out(s.kind) == want_held and s.mask.any():
                return s
        return None
