"""Generic ONNX embedder (bundle kind ``"onnx_embedder"``): any exported face network on ONNX Runtime.

The ONNX file takes uint8 RGB crops, NHWC ``(N, H, W, 3)`` (preprocessing is inside the graph) and returns
``(N, dim)`` raw descriptors; this class cuts the crops, runs the graph and L2-normalises.  Crop geometry by
``config["crop"]``:

* ``"dlib150"``: dlib's 150x150 chip, exactly as :class:`sdk.embed.DlibResNetEmbedder` cuts it (inherited):
  ``chip_landmarks="dlib5"`` re-fits dlib's 5-point shape predictor (file role ``shape_predictor``),
  ``"mtcnn5"`` warps the detector's landmarks onto :data:`sdk.align.DLIB_150`;
* ``"arcface112"``: the 112x112 ArcFace crop (:data:`sdk.align.ARCFACE_CROP`) from the detector's landmarks.

No torch.  The graph's input/output are checked at load (rank, dtype, crop size, width) and any mismatch, a
truncated or foreign file raises :class:`~sdk.errors.ModelFileError` naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sdk import align
from sdk.embed import DlibConfig, DlibResNetEmbedder, _load_dlib, file_digest, l2_normalise
from sdk.backends.ort import CPU, open_session
from sdk.errors import ModelFileError
from sdk.types import Face

CROPS = ("dlib150", "arcface112")


class OnnxEmbedder(DlibResNetEmbedder):
    """Embedder protocol (see :mod:`sdk.embed`) over an ONNX graph ``uint8 (N, H, W, 3) RGB -> (N, dim)``.

    Args:
        model_path: the ``.onnx`` file.
        shape_predictor_path: dlib's 5-point shape predictor (``crop="dlib150"`` with ``chip_landmarks="dlib5"``).
        crop: ``"dlib150"`` | ``"arcface112"``.
        chip_landmarks: ``"dlib5"`` | ``"mtcnn5"`` (dlib150 only).
        dim: expected output width (checked against the graph when it is static).
        threads: ONNX Runtime intra-op threads (0 = its default).
        providers: ONNX Runtime execution providers (default CPU).
        batch_size: crops per ``session.run``.

    ``model_id = "onnx:<sha256[:16]>:<crop>[:<chip_landmarks>]"`` (+ ``:ort-<provider>`` off the CPU provider).
    """

    crop_order = "RGB"

    def __init__(self, model_path: str | Path, shape_predictor_path: str | Path | None = None, *,
                 crop: str = "dlib150", chip_landmarks: str = "dlib5", dim: int = 128, threads: int = 0,
                 providers: Sequence[str | tuple[str, dict]] | None = None, batch_size: int = 32):

        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if crop == "dlib150" and chip_landmarks not in ("dlib5", "mtcnn5"):
            raise ValueError(f"chip_landmarks must be 'dlib5' or 'mtcnn5', got {chip_landmarks!r}")
        if int(threads) < 0 or int(batch_size) < 1:
            raise ValueError(f"threads must be >= 0 and batch_size >= 1, got {threads}, {batch_size}")
        self.crop = crop
        self.model_path = Path(model_path)
        self.batch_size = int(batch_size)
        self.dim = int(dim)
        spec = align.DLIB_CROP if crop == "dlib150" else align.ARCFACE_CROP
        self.crop_size = spec.size
        self._spec = spec
        self.config = DlibConfig(chip_landmarks=chip_landmarks if crop == "dlib150" else "mtcnn5")
        self._rec = None
        self._sp = None
        self._dlib = None
        if crop == "dlib150" and chip_landmarks == "dlib5":
            import dlib  # only for the 5-point shape predictor (chip geometry)

            if shape_predictor_path is None:
                raise ValueError("crop='dlib150' with chip_landmarks='dlib5' needs shape_predictor_path")
            self._sp = _load_dlib(Path(shape_predictor_path), dlib.shape_predictor)
            self._dlib = dlib

        self._sess = open_session(self.model_path, threads=threads, providers=providers, what="an ONNX embedder")
        self._check_io()
        self.providers = self._sess.get_providers()
        tail = f"{crop}:{self.config.chip_landmarks}" if crop == "dlib150" else crop
        self.model_id = f"onnx:{file_digest(self.model_path)[:16]}:{tail}"
        #: what decides the crops (not the weights): alignment caches are shared between equal geometries
        self.geometry_id = tail
        accel = [p for p in self.providers if p != CPU]
        if accel:
            self.model_id += ":ort-" + accel[0].removesuffix("ExecutionProvider").lower()

    def _check_io(self) -> None:
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        w, h = self.crop_size
        if len(ins) != 1 or len(outs) < 1:
            raise ModelFileError(self.model_path, f"expected 1 input and an output, got {len(ins)} inputs, {len(outs)} outputs")
        i, o = ins[0], outs[0]
        shp = list(i.shape)
        if i.type != "tensor(uint8)" or len(shp) != 4 or shp[1:] != [h, w, 3]:
            raise ModelFileError(self.model_path, f"input {i.name!r} is {i.type} {shp}; expected uint8 [N, {h}, {w}, 3] "
                                                  f"(NHWC RGB crops for crop {self.crop!r})")
        oshp = list(o.shape)
        if o.type != "tensor(float)" or len(oshp) != 2 or (isinstance(oshp[1], int) and oshp[1] != self.dim):
            raise ModelFileError(self.model_path, f"output {o.name!r} is {o.type} {oshp}; expected float [N, {self.dim}]")
        self._in, self._out = i.name, o.name

    def prepare(self) -> None:
        """Run one forward pass so the first real call is not slower."""
        w, h = self.crop_size
        self.descriptors([np.zeros((h, w, 3), np.uint8)])

    def crop_transforms(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """One 2x3 float64 frame->crop matrix per face."""
        if self.crop == "dlib150":
            return super().crop_transforms(frame, faces)
        return [align.similarity_to_template(f.landmarks, self._spec.template) for f in faces]

    def descriptors(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 raw outputs of the graph for uint8 RGB crops."""
        if not len(crops):
            return np.zeros((0, self.dim), np.float32)
        w, h = self.crop_size
        for k, c in enumerate(crops):
            if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != (h, w, 3):
                got = f"{c.dtype} {c.shape}" if isinstance(c, np.ndarray) else type(c).__name__
                raise ValueError(f"crop {k}: this embedder needs {w}x{h}x3 RGB uint8 crops, got {got}")
        out = [self._sess.run([self._out], {self._in: np.ascontiguousarray(np.stack(crops[s:s + self.batch_size]))})[0]
               for s in range(0, len(crops), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 unit-norm embeddings of uint8 RGB crops."""
        return l2_normalise(self.descriptors(crops))
