"""ONNX embedders on a backend: any exported face network, and dlib's ResNet rebuilt as an ONNX graph.

* :class:`OnnxEmbedder` (bundle kind ``"onnx_embedder"``): a ``.onnx`` graph ``crops -> (N, dim)`` raw
  descriptors; crop geometry and input convention from the stage's :class:`~sdk.preprocess.Preprocess` record
  (version-1 manifests: uint8 NHWC RGB crops, the graph normalises inside itself). Crops: ``"dlib150"``
  (dlib's 150x150 chip, cut like dlib: ``chip_landmarks="dlib5"`` re-fits dlib's 5-point shape predictor,
  ``"mtcnn5"`` warps the detector's landmarks onto :data:`sdk.align.DLIB_150`) or ``"arcface112"``.
* :class:`DlibOnnxEmbedder` (``"dlib_resnet_onnx"``): the same class on a graph built at load time from dlib's
  own ``.dat`` (:mod:`sdk.models.dlib_onnx`, no torch, no ``onnx`` package). Same chips and descriptors as dlib
  (to ~2e-6 per component on CPU) and several times faster, so it shares dlib's ``model_id``.

The graph's input is checked at load against the record (dtype, layout, crop size) and its output width
against ``dim``; a mismatch, a truncated or a foreign file raises :class:`~sdk.errors.ModelFileError` naming
the file.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdk.backends import ModelFiles, open_backend
from sdk.embed import (DLIB_PREPROCESS, ChipEmbedder, ChipGeometry, EmbedConfig, check_dlib_preprocess,
                       dlib_legacy_preprocess, make_model_id)
from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess, legacy_input, raw_uint8
from sdk.stages import StageKind, config_from, expect_input, file_of, model_files

log = logging.getLogger(__name__)


class OnnxEmbedder(ChipEmbedder):
    """Embedder protocol (:class:`sdk.stages.Embedder`) over a graph ``crops -> (N, dim)`` on a backend.

    Args:
        model_path: the ``.onnx`` file, or the stage's :class:`~sdk.backends.ModelFiles` (ONNX, torch weights,
            TensorRT engine: the backend picks); with ``graph``: the file the graph was built from. The ONNX file
            names the model in ids and errors.
        shape_predictor_path: dlib's 5-point shape predictor (``dlib150`` crops with ``chip_landmarks="dlib5"``).
        config: :class:`~sdk.embed.EmbedConfig`; keyword ``overrides`` (``threads=1``) replace fields.
        preprocess: the graph's input record; default: uint8 NHWC RGB on ``crop`` (what ``export/`` writes).
        crop: ``"dlib150"`` | ``"arcface112"``, when ``preprocess`` is not given.
        graph: serialized graph bytes to run instead of reading ``model_path``.

    ``model_id = "onnx:<sha256[:16]>:<geometry_id>"`` (+ ``:ort-<provider>`` off the CPU provider).
    """

    kind = "onnx_embedder"
    #: :func:`sdk.embed.make_model_id` family of the weights
    id_family = "onnx"

    def __init__(self, model_path: str | Path | ModelFiles, shape_predictor_path: str | Path | None = None,
                 config: EmbedConfig = EmbedConfig(), *, preprocess: Preprocess | None = None,
                 crop: str = "dlib150", graph: bytes | None = None, **overrides: Any):
        config = dataclasses.replace(config, **overrides) if overrides else config
        if config.jitters:
            raise ValueError(f"{type(self).__name__} does not implement dlib's jitters (got {config.jitters}); "
                             "use DlibResNetEmbedder (kind 'dlib_resnet') for jittered descriptors")
        preprocess = preprocess if preprocess is not None else raw_uint8(crop, "rgb", "nhwc")
        super().__init__(ChipGeometry(preprocess.crop, config.chip_landmarks, shape_predictor_path), preprocess,
                         config)
        files = ModelFiles.of(model_path)
        self.model_path = Path(files.label)
        t0 = time.perf_counter()
        self.backend = open_backend(ModelFiles(onnx=graph) if graph is not None else files, config.backend,
                                    name=self.model_path, what=f"{'the' if graph else 'an'} embedder graph")
        self.session_s = time.perf_counter() - t0
        self._in, self._out = self._check_io()
        self.providers = self.backend.providers
        self.model_id = make_model_id(self.id_family, self.model_path, self._id_geometry(), self.backend.id_suffix)

    def _id_geometry(self) -> str:
        return self.geometry_id

    def _check_io(self) -> tuple[str, str]:
        ins, outs = self.backend.inputs, self.backend.outputs
        if len(ins) != 1 or len(outs) < 1:
            raise ModelFileError(self.model_path, f"expected 1 input and an output, got {len(ins)} inputs, "
                                                  f"{len(outs)} outputs")
        i = expect_input(self.backend, self.preprocess, self.crop_size, self.model_path, "an ONNX embedder")
        o = outs[0]
        if o.dtype != "float32" or len(o.shape) != 2 or (isinstance(o.shape[1], int) and o.shape[1] != self.dim):
            raise ModelFileError(self.model_path, f"output {o} is not float32 (N, {self.dim}) descriptors")
        return i.name, o.name

    def descriptors(self, crops: np.ndarray) -> np.ndarray:
        """(N, dim) float32 raw outputs of the graph for uint8 BGR crops (an array or a list)."""
        x = self.check_crops(crops)
        if not len(x):
            return np.zeros((0, self.dim), np.float32)
        b = int(self.config.batch_size)
        out = [self.backend.run([self._out], {self._in: self.preprocess.apply(x[s:s + b])})[0]
               for s in range(0, len(x), b)]
        return np.concatenate(out).astype(np.float32, copy=False)


class DlibOnnxEmbedder(OnnxEmbedder):
    """dlib's ResNet (128-d) on a backend, its ONNX graph built from dlib's own ``.dat`` when constructed.

    Same chips and output as :class:`~sdk.embed.DlibResNetEmbedder`: BGR frame + faces -> (N, 128) float32 unit
    rows. The raw descriptors match dlib's ``compute_face_descriptor(chip)`` to ~2e-6 per component on CPU
    (tested bound 1e-4, ``tests/test_embed_onnx.py``). Therefore, with the CPU provider, :attr:`model_id` is
    *the same* as the dlib embedder's for the same ``.dat`` and ``chip_landmarks``: galleries enrolled with either
    can be searched with the other. With any other provider list (GPU providers may use TF32 or other reduced
    precision, untested here) the id gets an ``:ort-<provider>`` suffix so that galleries are not silently mixed.

    Args:
        model_path: ``dlib_face_recognition_resnet_model_v1.dat``.
        shape_predictor_path: dlib's ``shape_predictor_5_face_landmarks.dat`` (needed for ``"dlib5"`` chips).
        config: chip geometry and run settings; ``jitters`` must be 0 (dlib's random jitter is not reproduced).

    Attributes:
        build_s: seconds spent building the graph from the ``.dat`` (parse + serialise).
        session_s: seconds spent creating the backend.
    """

    kind = "dlib_resnet_onnx"
    id_family = "dlib_resnet_v1"

    def __init__(self, model_path: str | Path, shape_predictor_path: str | Path | None = None,
                 config: EmbedConfig = EmbedConfig(), **overrides: Any):
        from sdk.models.dlib_onnx import build_dlib_onnx

        config = dataclasses.replace(config, **overrides) if overrides else config
        if config.jitters:  # before the (slow) build
            raise ValueError(f"DlibOnnxEmbedder does not implement dlib's jitters (got {config.jitters}); "
                             "use DlibResNetEmbedder for jittered descriptors")
        ChipGeometry("dlib150", config.chip_landmarks, shape_predictor_path)  # argument errors before the build
        t0 = time.perf_counter()
        graph = build_dlib_onnx(Path(model_path))  # ModelFileError naming the file on bad input
        self.build_s = time.perf_counter() - t0
        super().__init__(model_path, shape_predictor_path, config, preprocess=DLIB_PREPROCESS, graph=graph)
        log.debug("dlib ONNX graph: %.0f ms to build, %.0f ms to load (%s)", 1e3 * self.build_s,
                  1e3 * self.session_s, self.providers)

    def _id_geometry(self) -> str:
        return self.geometry.landmarks  # dlib's family ids name the landmark source only (as dlib_resnet's)


# ------------------------------------------------------------------------------------------------ bundle kinds
def _legacy_preprocess(values: Mapping[str, Any]) -> Preprocess:
    """Version-1 ``onnx_embedder`` manifests: ``input`` ``"uint8_nhwc_rgb"`` (default) on ``crop`` (``"dlib150"``)."""
    return legacy_input(str(values.get("input", "uint8_nhwc_rgb")), str(values.get("crop", "dlib150")),
                        where="embed stage (onnx_embedder)")


def _build_onnx(spec, preprocess: Preprocess, values: dict) -> OnnxEmbedder:
    cfg = config_from(EmbedConfig, values, f"stage {spec.name!r} ({spec.kind})")
    return OnnxEmbedder(model_files(spec), file_of(spec, "shape_predictor", required=False), cfg,
                        preprocess=preprocess)


def _build_dlib_onnx(spec, preprocess: Preprocess, values: dict) -> DlibOnnxEmbedder:
    where = f"stage {spec.name!r} ({spec.kind})"
    check_dlib_preprocess(preprocess, where)
    cfg = config_from(EmbedConfig, values, where)
    if cfg.jitters:
        raise BundleError(f"{where}: jitters are not supported, use kind 'dlib_resnet'")
    return DlibOnnxEmbedder(file_of(spec, "model"), file_of(spec, "shape_predictor", required=False), cfg)


KINDS = (StageKind("embed", "onnx_embedder", _build_onnx, _legacy_preprocess),
         StageKind("embed", "dlib_resnet_onnx", _build_dlib_onnx, dlib_legacy_preprocess))
