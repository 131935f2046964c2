"""Writes a stage's :class:`sdk.preprocess.Preprocess` record into a bundle manifest (the exporters' shared bit).

Manifest contract: every model stage object may carry ``"preprocess": Preprocess.to_dict()`` -- how the SDK turns
its uint8 BGR crops into the graph's input -- and a manifest with one says ``"format_version": 2``.  While the
SDK in this checkout reads only version 1 (``sdk.bundle.FORMAT_VERSION``), the version stays 1: a version-1 reader
ignores the extra key, so bundles load either way.
"""
from __future__ import annotations

from sdk.preprocess import Preprocess

__all__ = ["set_stage_preprocess", "PREPROCESS_FORMAT_VERSION"]

#: the manifest format version that introduced per-stage preprocess records
PREPROCESS_FORMAT_VERSION = 2


def set_stage_preprocess(manifest: dict, stage: str, pre: Preprocess) -> dict:
    """``manifest["stages"][stage]["preprocess"] = pre.to_dict()`` and the format version raised to 2 when the SDK
    reads it; returns ``manifest``."""
    from sdk.bundle import FORMAT_VERSION

    manifest["stages"][stage]["preprocess"] = pre.to_dict()
    version = int(manifest.get("format_version", 1))
    manifest["format_version"] = max(version, min(PREPROCESS_FORMAT_VERSION, FORMAT_VERSION))
    return manifest
