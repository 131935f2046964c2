"""Occlusion segmenter stage (``kind: "onnx_segmenter"``): aligned face crops -> occlusion map M + probability.

The graph (``python -m export onnx --family segmenter``: :class:`sdk.nets.graphs.SegmenterGraph`) takes one input
of aligned crops (the built-in one: ``"crops"``, uint8 NHWC **BGR** ``(N, 112, 112, 3)``, the 112x112 ArcFace crop of :data:`sdk.align.ARCFACE_CROP`;
normalisation inside the graph) and returns ``"mask_prob"`` ``(N, 1, h, w)`` and ``"occluded_prob"`` ``(N,)``,
both float32 in [0, 1]. The input convention is the stage's :class:`~sdk.preprocess.Preprocess` record; the
graph runs on a :class:`~sdk.backends.Backend` (ONNX Runtime by default; the same graph on torch or TensorRT when the
bundle has their files). No torch here.

Stage protocol (:class:`sdk.stages.Segmenter`)::

    seg = OnnxSegmenter("segmenter.onnx").prepare()
    masks, occluded = seg.segment(crops)         # (N, 112, 112) float32, (N,) float32
    crops = seg.crops(frame_bgr, faces)            # the aligned BGR crops the model reads
    seg.process(batch)                             # in a Recognizer: fills batch.regions
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdk.align import TEMPLATES, similarity_to_template, warp
from sdk.backends import ModelFiles, open_backend
from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess, legacy_input, raw_uint8
from sdk.stages import (FaceBatch, FaceStage, OcclusionRegions, RunConfig, StageKind, config_from, expect_input,
                        model_files)
from sdk.types import Face

INPUT_NAME = "crops"
OUTPUTS = ("mask_prob", "occluded_prob")
#: the built-in segmenter's input: uint8 BGR NHWC ArcFace crops, normalised inside the graph
DEFAULT_PREPROCESS = raw_uint8("arcface112", "bgr", "nhwc")


@dataclass(frozen=True)
class SegmentConfig(RunConfig):
    """Settings of the segment stage (manifest ``config``; plus :class:`~sdk.stages.RunConfig`'s fields).

    Attributes:
        threshold: probability at or above which a pixel (:meth:`OnnxSegmenter.binary_masks`) or a face
            (:meth:`OnnxSegmenter.is_occluded`) counts as occluded.
    """

    threshold: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


class OnnxSegmenter:
    """Occlusion segmenter on a backend.

    Args:
        model: path of the ``.onnx`` file, or the stage's :class:`~sdk.backends.ModelFiles` (ONNX, torch weights,
            TensorRT engine: the backend picks, :mod:`sdk.backends.select`).
        config: :class:`SegmentConfig`; keyword ``overrides`` (``threads=1``, ``threshold=0.6``) replace fields.
        preprocess: the graph's input record (default :data:`DEFAULT_PREPROCESS`); its ``crop`` names the crop.

    Raises:
        ModelFileError: the file is missing, not loadable, or not a segmenter for this record (wrong inputs /
            outputs); the message names the file.
    """

    kind = "onnx_segmenter"

    def __init__(self, model: str | Path | ModelFiles, config: SegmentConfig = SegmentConfig(), *,
                 preprocess: Preprocess = DEFAULT_PREPROCESS, **overrides: Any):
        files = ModelFiles.of(model)
        self.path = Path(files.label)
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        if preprocess.crop not in TEMPLATES:
            raise BundleError(f"segment stage: crop {preprocess.crop!r} is not a face crop; known: {sorted(TEMPLATES)}")
        self.preprocess = preprocess
        self.crop_spec = TEMPLATES[preprocess.crop]
        if not self.path.is_file():
            raise ModelFileError(self.path, "not found (occlusion segmenter ONNX model)")
        self.backend = open_backend(files, self.config.backend, what="an occlusion segmenter model")
        outs = {o.name for o in self.backend.outputs}
        if len(self.backend.inputs) != 1 or not set(OUTPUTS) <= outs:
            raise ModelFileError(self.path, f"not an occlusion segmenter: expected one input and outputs "
                                            f"{list(OUTPUTS)}, got inputs {[str(i) for i in self.backend.inputs]} "
                                            f"and outputs {sorted(outs)}")
        self._in = expect_input(self.backend, preprocess, self.crop_spec.size, self.path,
                                "an occlusion segmenter").name

    @property
    def threshold(self) -> float:
        return float(self.config.threshold)

    @property
    def crop_size(self) -> tuple[int, int]:
        return self.crop_spec.size

    def prepare(self) -> "OnnxSegmenter":
        """Warm up the backend (first-call latency); returns self."""
        self.segment(np.zeros((1, self.crop_spec.height, self.crop_spec.width, 3), np.uint8))
        return self

    def connect(self, upstream: Mapping[str, FaceStage]) -> None:
        """Needs nothing before it."""

    def crops(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """Aligned BGR crops of ``faces`` (``sdk.types.Face``) from a BGR ``frame``."""
        return [warp(frame, m, self.crop_spec.size) for m in self.crop_transforms(faces)]

    def crop_transforms(self, faces: Sequence[Face]) -> list[np.ndarray]:
        """One (2, 3) float64 frame -> crop matrix per face (from its 5 landmarks)."""
        return [similarity_to_template(f.landmarks, self.crop_spec.template) for f in faces]

    def segment(self, crops: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(masks (N, h, w) float32 in [0, 1], occluded_prob (N,) float32)`` for uint8 BGR crops."""
        h, w = self.crop_spec.height, self.crop_spec.width
        x = np.asarray(crops) if isinstance(crops, np.ndarray) else (
            np.stack([np.asarray(c) for c in crops]) if len(crops) else np.zeros((0, h, w, 3), np.uint8))
        if x.ndim == 3:
            x = x[None]
        if x.dtype != np.uint8 or x.shape[1:] != (h, w, 3):
            raise ValueError(f"crops must be uint8 (N, {h}, {w}, 3) BGR, got {x.dtype} {x.shape}")
        if len(x) == 0:
            return np.zeros((0, h, w), np.float32), np.zeros((0,), np.float32)
        ms, ps = [], []
        for s in range(0, len(x), self.config.batch_size):
            m, p = self.backend.run(list(OUTPUTS), {self._in: self.preprocess.apply(x[s:s + self.config.batch_size])})
            ms.append(m.reshape(len(m), h, w))
            ps.append(p.reshape(-1))
        return np.concatenate(ms).astype(np.float32), np.concatenate(ps).astype(np.float32)

    def binary_masks(self, masks: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 0/1: ``masks >= threshold``."""
        return (np.asarray(masks) >= self.threshold).astype(np.uint8)

    def is_occluded(self, occluded_prob: np.ndarray) -> np.ndarray:
        """(N,) bool: ``occluded_prob >= threshold`` (such faces go to completion, when a bundle has it)."""
        return np.asarray(occluded_prob) >= self.threshold

    def process(self, batch: FaceBatch) -> None:
        """Segment the ArcFace crop of every face: fills ``batch.regions`` (timed as ``"segment"``)."""
        with batch.timed("segment"):
            if not batch.faces:
                return
            mats = np.stack(self.crop_transforms(batch.faces))
            crops = np.stack([warp(batch.frame, m, self.crop_spec.size) for m in mats])
            masks, probs = self.segment(crops)
            batch.regions = OcclusionRegions(self.crop_spec, crops, mats, masks, self.binary_masks(masks), probs)


# ------------------------------------------------------------------------------------------------ bundle kind
def _legacy_preprocess(values: Mapping[str, Any]) -> Preprocess:
    """Version-1 manifests: ``input`` ``"uint8_nhwc_bgr"`` (the default) on ``crop`` (``"arcface112"``)."""
    return legacy_input(str(values.get("input", "uint8_nhwc_bgr")), str(values.get("crop", "arcface112")),
                        where="segment stage")


def _build(spec, preprocess: Preprocess, values: dict) -> OnnxSegmenter:
    cfg = config_from(SegmentConfig, values, f"stage {spec.name!r} ({spec.kind})")
    return OnnxSegmenter(model_files(spec), cfg, preprocess=preprocess)


KINDS = (StageKind("segment", "onnx_segmenter", _build, _legacy_preprocess),)
