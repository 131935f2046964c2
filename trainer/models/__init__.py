"""Trainer models (torch): the dlib ResNet port (the teacher, :mod:`trainer.models.dlib_resnet`), the students
(:mod:`trainer.models.student`), the occlusion segmenter, the inpainter and its critics, contextual attention.

``DlibResNet`` and ``preprocess`` are imported lazily, so ``import trainer.models`` does not import torch.  The dlib
network's layer spec and ``.dat`` reader are the SDK's (:mod:`sdk.models.dlib_arch`, :mod:`sdk.models.dlib_dat`).
"""
from __future__ import annotations

__all__ = ["DlibResNet", "preprocess"]


def __getattr__(name: str):
    if name in ("DlibResNet", "preprocess"):
        from . import dlib_resnet

        return getattr(dlib_resnet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
