"""Realistic occluders (issue #9): 3-D-ish surface warps, the face's own light / blur / JPEG, harvested real masks.

* :mod:`.surface` -- head pose (yaw + pitch) from 5 landmarks, occluder surfaces, per-pixel surface warps.
* :mod:`.appearance` -- light, blur, noise and JPEG read off the face; compositing with the exact map M; fabrics.
* :mod:`.layer` -- one occluder layer in texture space and how it is shaded, warped and composited (+ straps).
* :mod:`.masks`, :mod:`.accessories`, :mod:`.body` -- the procedural families.
* :mod:`.harvest` -- cut real occluders out of real masked photos (SDK detector + segmenter) and paste them.
* :mod:`.registry` -- family names, which are held out of training.
* :mod:`.synth` -- :class:`OccluderSynthesizer`, the entry point.

Images are BGR uint8, landmarks (5, 2) MTCNN order in image pixels. No torch.
"""
from __future__ import annotations

from trainer.data.occluders.registry import (FAMILIES, HELDOUT_MIX, HELDOUT_TEMPLATE_FAMILIES, Family, families,
                                             is_heldout)
from trainer.data.occluders.synth import OccluderConfig, OccluderSynthesizer

__all__ = ["FAMILIES", "HELDOUT_MIX", "HELDOUT_TEMPLATE_FAMILIES", "Family", "OccluderConfig", "OccluderSynthesizer",
           "families", "is_heldout"]
