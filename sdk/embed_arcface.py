"""insightface ArcFace recognisers on ONNX Runtime (bundle kind ``arcface_onnx``).

For users who already have an insightface model pack (e.g. ``w600k_r50.onnx``, ``glintr100.onnx``; their
weights are not shipped here: insightface's packs are licensed for non-commercial research only). insightface's
conventions: the 112x112 ArcFace crop (:data:`sdk.align.ARCFACE_CROP`, the same template insightface's
``norm_crop`` uses) from the detector's 5 landmarks; input float32 ``(N, 3, 112, 112)`` **RGB**,
``(x - 127.5) / 127.5``; output ``(N, D)`` (512 for insightface's packs), L2-normalised here. A graph with a
fixed batch of 1 is run one crop at a time.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from sdk.embed import EmbedConfig
from sdk.embed_onnx import OnnxEmbedder
from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess, pm1
from sdk.stages import StageKind, config_from, file_of

__all__ = ["ArcFaceOnnxEmbedder", "ARCFACE_PREPROCESS", "KINDS"]

#: insightface's recogniser input: 112x112 ArcFace crop, RGB, ``(x - 127.5) / 127.5``, NCHW float32.
ARCFACE_PREPROCESS = pm1("arcface112", colour="rgb", layout="nchw")


class ArcFaceOnnxEmbedder(OnnxEmbedder):
    """Embedder protocol over an insightface ArcFace ``.onnx`` (see the module doc).

    Args:
        model_path: the ``.onnx`` file.
        config: :class:`~sdk.embed.EmbedConfig`; ``dim`` is taken from the graph when it is static and the
            config does not set it (``dim_from_graph=True``).
        dim_from_graph: use the graph's output width instead of ``config.dim`` (default: yes, unless ``dim`` is
            passed as a keyword).

    ``model_id = "onnx:<sha256[:16]>:arcface112"``: galleries built with one file refuse another.
    """

    kind = "arcface_onnx"

    def __init__(self, model_path: str | Path, config: EmbedConfig = EmbedConfig(), *,
                 dim_from_graph: bool | None = None, **overrides: Any):
        # default: the graph's width, unless the caller states one (then it is checked against the graph)
        self._dim_from_graph = ("dim" not in overrides) if dim_from_graph is None else bool(dim_from_graph)
        config = dataclasses.replace(config, **overrides) if overrides else config
        super().__init__(model_path, None, config, preprocess=ARCFACE_PREPROCESS)

    def _check_io(self) -> tuple[str, str]:
        outs = self.backend.outputs
        width = outs[0].shape[1] if outs and len(outs[0].shape) == 2 and isinstance(outs[0].shape[1], int) else None
        if width is not None and self._dim_from_graph:
            self.dim = int(width)
        elif width is not None and width != self.dim:
            raise ModelFileError(self.model_path, f"output width {width}, the bundle / caller says {self.dim}")
        names = super()._check_io()
        batch = self.backend.inputs[0].shape[0]
        self._fixed_batch = int(batch) if isinstance(batch, int) else None
        return names

    def descriptors(self, crops: np.ndarray) -> np.ndarray:
        """(N, dim) float32 raw outputs for uint8 **BGR** 112x112 crops (a fixed-batch graph's last call padded)."""
        if self._fixed_batch is None:
            return super().descriptors(crops)
        x = self.check_crops(crops)
        if not len(x):
            return np.zeros((0, self.dim), np.float32)
        b, out = self._fixed_batch, []
        for s in range(0, len(x), b):
            part = x[s:s + b]
            pad = b - len(part)
            if pad:
                part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], np.uint8)])
            out.append(self.backend.run([self._out], {self._in: self.preprocess.apply(part)})[0][:b - pad])
        return np.concatenate(out).astype(np.float32, copy=False)


def _build(spec, preprocess: Preprocess, values: dict) -> ArcFaceOnnxEmbedder:
    """Files: ``model``. Config: :class:`~sdk.embed.EmbedConfig` fields; ``dim`` given = checked against the graph."""
    where = f"stage {spec.name!r} ({spec.kind})"
    if preprocess != ARCFACE_PREPROCESS:
        raise BundleError(f"{where}: insightface recognisers read {ARCFACE_PREPROCESS.to_dict()}; the manifest's "
                          f"preprocess record says {preprocess.to_dict()}")
    given_dim = "dim" in values
    return ArcFaceOnnxEmbedder(file_of(spec, "model"), config_from(EmbedConfig, values, where),
                               dim_from_graph=not given_dim)


KINDS = (StageKind("embed", "arcface_onnx", _build, lambda values: ARCFACE_PREPROCESS),)
