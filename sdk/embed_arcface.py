"""insightface ArcFace recognisers on ONNX Runtime (bundle kind ``arcface_onnx``).

For users who already have an insightface model pack (e.g. ``w600k_r50.onnx``, ``glintr100.onnx``; their
weights are not shipped here: insightface's packs are licensed for non-commercial research only). insightface's
conventions: the 112x112 ArcFace crop (:data:`sdk.align.ARCFACE_CROP`, the same template insightface's
``norm_crop`` uses) from the detector's 5 landmarks; input float32 ``(N, 3, 112, 112)`` **RGB**,
``(x - 127.5) / 127.5``; output ``(N, D)`` (512 for insightface's packs), L2-normalised here. A graph with a
fixed batch of 1 is run one crop at a time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sdk.embed_generic import OnnxEmbedder
from sdk.errors import ModelFileError

__all__ = ["ArcFaceOnnxEmbedder"]


class ArcFaceOnnxEmbedder(OnnxEmbedder):
    """Embedder protocol over an insightface ArcFace ``.onnx`` (see the module doc).

    Args:
        model_path: the ``.onnx`` file.
        dim: expected embedding width (checked when the graph's is static; 0 takes the graph's).
        threads, providers, batch_size: as :class:`sdk.embed_generic.OnnxEmbedder`.

    ``model_id = "onnx:<sha256[:16]>:arcface112"``: galleries built with one file refuse another.
    """

    def __init__(self, model_path: str | Path, *, dim: int = 0, threads: int = 0,
                 providers: Sequence[str] | None = None, batch_size: int = 32):
        self._want_dim = int(dim)
        super().__init__(model_path, None, crop="arcface112", dim=max(int(dim), 1), threads=threads,
                         providers=providers, batch_size=batch_size)

    def _check_io(self) -> None:
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(ins) != 1 or len(outs) < 1:
            raise ModelFileError(self.model_path, f"expected 1 input and an output, got {len(ins)} inputs, "
                                                  f"{len(outs)} outputs")
        i, o = ins[0], outs[0]
        shp = list(i.shape)
        if i.type != "tensor(float)" or len(shp) != 4 or shp[1:] != [3, 112, 112]:
            raise ModelFileError(self.model_path, f"input {i.name!r} is {i.type} {shp}; expected float [N, 3, 112, 112] "
                                                  "(insightface ArcFace: NCHW RGB, (x - 127.5) / 127.5)")
        oshp = list(o.shape)
        if o.type != "tensor(float)" or len(oshp) != 2:
            raise ModelFileError(self.model_path, f"output {o.name!r} is {o.type} {oshp}; expected float [N, D]")
        if isinstance(oshp[1], int):
            if self._want_dim and oshp[1] != self._want_dim:
                raise ModelFileError(self.model_path, f"output width {oshp[1]}, the bundle says {self._want_dim}")
            self.dim = oshp[1]
        self._fixed_batch = isinstance(shp[0], int)
        if self._fixed_batch:
            self.batch_size = int(shp[0])
        self._in, self._out = i.name, o.name

    def descriptors(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 raw outputs for uint8 **RGB** 112x112 crops."""
        if not len(crops):
            return np.zeros((0, self.dim), np.float32)
        for k, c in enumerate(crops):
            if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != (112, 112, 3):
                got = f"{c.dtype} {c.shape}" if isinstance(c, np.ndarray) else type(c).__name__
                raise ValueError(f"crop {k}: this embedder needs 112x112x3 RGB uint8 crops, got {got}")
        x = (np.stack(crops).astype(np.float32) - 127.5) / 127.5
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out = []
        for s in range(0, len(x), self.batch_size):
            part = x[s:s + self.batch_size]
            if self._fixed_batch and len(part) != self.batch_size:  # pad a fixed-batch graph's last call
                pad = np.zeros((self.batch_size - len(part),) + part.shape[1:], np.float32)
                out.append(self._sess.run([self._out], {self._in: np.concatenate([part, pad])})[0][:len(part)])
            else:
                out.append(self._sess.run([self._out], {self._in: part})[0])
        return np.concatenate(out).astype(np.float32, copy=False)
