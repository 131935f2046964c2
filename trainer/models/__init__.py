"""Trainer models.  ``DlibResNet``: PyTorch port of dlib's face recognition ResNet (the teacher).

Imported lazily so that ``trainer.models._dlib_dat`` (numpy only) works without torch installed.
"""
from __future__ import annotations

__all__ = ["DlibResNet", "preprocess", "read_dat"]


def __getattr__(name: str):
    if name in ("DlibResNet", "preprocess"):
        from . import dlib_resnet

        return getattr(dlib_resnet, name)
    if name == "read_dat":
        from ._dlib_dat import read_dat

        return read_dat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
