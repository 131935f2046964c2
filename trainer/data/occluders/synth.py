"""``OccluderSynthesizer``: realistic occluders on a face from its 5 landmarks, with the exact occlusion map.

    >>> synth = OccluderSynthesizer(OccluderConfig(split="train", cutouts_dir=Path("/work/shared-extra/cutouts")))
    >>> s = synth(image_bgr, landmarks, seed)                  # a random training family
    >>> s = synth(image_bgr, landmarks, seed, family="kn95")   # one family
    >>> s.masked, s.mask, s.category, s.kind                    # (H,W,3) uint8 BGR, (H,W) uint8 0/1, family, detail

Per call: the head pose (yaw + pitch) is fitted to the landmarks, the face's light / blur / noise / JPEG quality are
read off the image (:func:`~trainer.data.occluders.appearance.read_face`), the family draws its layers in texture
space, and each layer is warped through its 3-D surface and composited (:mod:`trainer.data.occluders.layer`).
Deterministic per seed. Returns :class:`trainer.data.synthesis.Synthesized` (``category`` = the family name), so
the segmenter and student loaders can take it where they take ``MaskSynthesizer`` output.

Which families may be drawn is the registry's business (:mod:`trainer.data.occluders.registry`): ``split="train"``
(the default) draws only training families and raises for a held-out one; evaluation uses ``"heldout"`` or
``"all"``. Families that need data (templates, cutouts) are skipped from random sampling when their folder is not
configured, and raise when asked for by name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from trainer.data.occluders import accessories, body, masks
from trainer.data.occluders.appearance import read_face
from trainer.data.occluders.harvest import CutoutBank, paste_cutout
from trainer.data.occluders.layer import render_layer
from trainer.data.occluders.registry import CUTOUT_PART, FAMILIES, HELDOUT_TEMPLATE_FAMILIES, families
from trainer.data.occluders.surface import TextureGrid, estimate_head_pose
from trainer.data.synthesis import MaskSynthesizer, Synthesized, SynthesisConfig

log = logging.getLogger(__name__)

_PROCEDURAL = {
    "surgical": masks.surgical, "kn95": masks.kn95, "cloth": masks.cloth, "pulled_down": masks.pulled_down,
    "bandana": masks.bandana, "respirator": masks.respirator, "neck_gaiter": masks.neck_gaiter,
    "scarf": accessories.scarf, "sunglasses": accessories.sunglasses, "face_shield": accessories.face_shield,
    "hair": body.hair,
}


@dataclass(frozen=True)
class OccluderConfig:
    """Knobs of :class:`OccluderSynthesizer`.

    Attributes:
        split: families that may be drawn: "train", "heldout" or "all" (registry).
        weights: family -> sampling weight when no family is given (default: 1 for every available family of
            ``split``); families outside ``split`` are an error.
        cutouts_dir: folder written by ``tools/harvest_occluders.py`` (``harvest/`` and ``validation/`` parts), or
            None (then ``harvested`` / ``real_val`` are unavailable).
        templates_dir: MaskTheFace templates folder (``template`` / ``template_heldout``), or None.
        match_look: blur / noise / JPEG the occluder like the face (False: paint it as rendered).
        second_prob: probability of a second occluder from ``second_families`` on top (training hybrids; only
            families of ``split`` are used).
        second_families: candidates for the second occluder.
        recolour_cutouts: probability that a harvested (train) cutout gets a random hue (never for ``real_val``).
        texture_res: (min, max) texture pixels per eye distance.
    """

    split: str = "train"
    weights: Mapping[str, float] | None = None
    cutouts_dir: Path | str | None = None
    templates_dir: Path | str | None = None
    match_look: bool = True
    second_prob: float = 0.0
    second_families: tuple[str, ...] = ("sunglasses", "hand", "hair")
    recolour_cutouts: float = 0.3
    texture_res: tuple[float, float] = (24.0, 128.0)


class OccluderSynthesizer:
    """Realistic occluders: ``synth(image, landmarks, seed, family=None) -> Synthesized`` (see module doc)."""

    def __init__(self, config: OccluderConfig | None = None):
        self.config = cfg = config or OccluderConfig()
        self.allowed = families(cfg.split)
        if cfg.weights is not None:
            bad = [f for f in cfg.weights if f not in self.allowed]
            if bad:
                raise ValueError(f"families {bad} are not in split {cfg.split!r} ({', '.join(self.allowed)})")
        self._banks: dict[str, CutoutBank] = {}
        self._templates: dict[str, MaskSynthesizer] = {}

    def available(self) -> tuple[str, ...]:
        """Families of the split that can be drawn with the configured data folders (a cutout family needs its
        part's ``index.json``)."""
        cfg = self.config
        out = []
        for f in self.allowed:
            needs = FAMILIES[f].needs
            if needs == "cutouts" and (cfg.cutouts_dir is None
                                       or not (Path(cfg.cutouts_dir) / CUTOUT_PART[f] / "index.json").is_file()):
                continue
            if needs == "templates" and cfg.templates_dir is None:
                continue
            out.append(f)
        return tuple(out)

    def __getstate__(self):
        return {"config": self.config, "allowed": self.allowed, "_banks": {}, "_templates": {}}

    # -- data-backed families ------------------------------------------------------------------------------
    def bank(self, family: str) -> CutoutBank:
        if self.config.cutouts_dir is None:
            raise ValueError(f"family {family!r} needs cutouts: set OccluderConfig.cutouts_dir "
                             "(python tools/harvest_occluders.py writes them)")
        if family not in self._banks:
            self._banks[family] = CutoutBank(self.config.cutouts_dir, CUTOUT_PART[family])
        return self._banks[family]

    def _template_synth(self, family: str) -> MaskSynthesizer:
        if self.config.templates_dir is None:
            raise ValueError(f"family {family!r} needs the MaskTheFace templates: set OccluderConfig.templates_dir")
        if family not in self._templates:
            held = HELDOUT_TEMPLATE_FAMILIES
            sc = SynthesisConfig(templates_dir=Path(self.config.templates_dir), template_prob=1.0, recolor_prob=0.25,
                                 **({"template_families": held} if family == "template_heldout"
                                    else {"exclude_template_families": held}))
            self._templates[family] = MaskSynthesizer(sc)
        return self._templates[family]

    # -- main entry ----------------------------------------------------------------------------------------
    def pick(self, rng: np.random.Generator) -> str:
        """A random family of the split (by ``config.weights``) among the available ones."""
        avail = self.available()
        w = self.config.weights
        names = [f for f in avail if (w is None or w.get(f, 0.0) > 0)]
        if not names:
            raise ValueError(f"no occluder family available for split {self.config.split!r} with these data folders")
        p = np.array([1.0 if w is None else float(w[f]) for f in names])
        return names[int(rng.choice(len(names), p=p / p.sum()))]

    def __call__(self, image: np.ndarray, landmarks: np.ndarray, rng_or_seed: int | np.random.Generator | None = None,
                 family: str | None = None) -> Synthesized:
        """Draw one occluder family (and, with ``second_prob``, a second one) on a copy of ``image``.

        Args:
            image: (H, W, 3) uint8 BGR, not modified. landmarks: (5, 2) MTCNN order, image pixels.
            rng_or_seed: int seed or a numpy Generator (advanced).
            family: a family name; None samples one (:meth:`pick`).

        Raises:
            ValueError: bad image, held-out family asked for under ``split="train"`` (or the reverse), or a family
                whose data folder is not configured. KeyError: unknown family.
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
        if family is None:
            family = self.pick(rng)
        elif family not in FAMILIES:
            raise KeyError(f"unknown occluder family {family!r}; known: {', '.join(FAMILIES)}")
        elif family not in self.allowed:
            raise ValueError(f"family {family!r} is {FAMILIES[family].split}, not allowed with split "
                             f"{self.config.split!r}")
        lm = np.asarray(landmarks, np.float64).reshape(5, 2)
        pose = estimate_head_pose(lm)
        out, mask = img.copy(), np.zeros(img.shape[:2], np.uint8)
        look = read_face(img, pose)
        kinds = [self._draw(family, img, out, mask, lm, pose, look, rng)]
        second = [f for f in self.config.second_families if f in self.available() and f != family]
        if second and rng.random() < self.config.second_prob:
            f2 = second[int(rng.integers(len(second)))]
            kinds.append(self._draw(f2, img, out, mask, lm, pose, look, rng))
        return Synthesized(masked=out, clean=img.copy(), mask=mask, category=family, kind="|".join(kinds),
                           yaw_deg=pose.yaw_deg)

    def _draw(self, family: str, img, out, mask, lm, pose, look, rng: np.random.Generator) -> str:
        cfg = self.config
        if FAMILIES[family].needs == "cutouts":
            bank = self.bank(family)
            c = bank.sample(rng)
            recolour = family == "harvested" and rng.random() < cfg.recolour_cutouts
            paste_cutout(c, img, out, mask, lm, pose, look, rng, bank.grid, recolour=recolour, match=cfg.match_look)
            return f"{family}:{c.meta.name[:8]}" + (":recoloured" if recolour else "")
        if family in ("template", "template_heldout"):
            s = self._template_synth(family)(out, lm, rng, category="simple")
            sel = s.mask > 0
            out[sel] = s.masked[sel]
            mask[sel] = 1
            return f"template:{s.kind.split(':', 1)[-1]}"
        grid = TextureGrid.for_face(pose.eye_dist, *cfg.texture_res)
        if family == "hand":
            layers, kind = body.hand(grid, rng, None if look.grey else look.skin)
        else:
            layers, kind = _PROCEDURAL[family](grid, rng)
        for layer in layers:
            render_layer(img, out, mask, lm, pose, look, layer, grid, rng, cfg.match_look)
        return kind
