"""Training / evaluation data: masked-face synthesis (``MaskSynthesizer``) and real mask templates.

Images are BGR uint8 (H, W, 3); landmarks are 5 MTCNN points in image pixels. No torch needed here.
"""
from __future__ import annotations

from trainer.data.synthesis import (CATEGORIES, CATEGORY_REGION, DEFAULT_WEIGHTS, FacePose, MaskSynthesizer,
                                    Synthesized, SynthesisConfig, estimate_pose, estimate_yaw)
from trainer.data.templates import MaskTemplate, load_templates

__all__ = ["CATEGORIES", "CATEGORY_REGION", "DEFAULT_WEIGHTS", "FacePose", "MaskSynthesizer", "MaskTemplate",
           "Synthesized", "SynthesisConfig", "estimate_pose", "estimate_yaw", "load_templates"]
