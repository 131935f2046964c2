"""Reader for dlib's serialized DNN files: moved to the SDK runtime (:mod:`sdk.models.dlib_dat`).

Kept as a re-export so ``from trainer.models._dlib_dat import read_dat`` (and ``DlibNet``, ``DlibLayer``,
``parse_dat_bytes``) keeps working.  Errors are :class:`sdk.errors.ModelFileError`, a ``ValueError``.
"""
from __future__ import annotations

from sdk.models.dlib_dat import *  # noqa: F401,F403
from sdk.models.dlib_dat import DlibLayer, DlibNet, parse_dat_bytes, read_dat  # noqa: F401

__all__ = ["DlibLayer", "DlibNet", "parse_dat_bytes", "read_dat"]
