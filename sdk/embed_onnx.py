"""dlib's face recognition ResNet on ONNX Runtime: same chips, same descriptors, several times faster than dlib.

:class:`DlibOnnxEmbedder` is a drop-in replacement for :class:`sdk.embed.DlibResNetEmbedder`.  It cuts exactly
the same 150x150 RGB chips (it inherits the chip geometry: dlib's 5-point shape predictor for
``chip_landmarks="dlib5"``, the detector's landmarks for ``"mtcnn5"``) but never loads dlib's recognition model:
the network is rebuilt from the same ``.dat`` as an ONNX graph at load time (:mod:`sdk.models.dlib_onnx`, no
torch, no ``onnx`` package) and run by ONNX Runtime on batches of chips.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sdk.backends.ort import CPU, open_session
from sdk.embed import DlibConfig, DlibResNetEmbedder, _load_dlib, file_digest, l2_normalise
from sdk.models.dlib_onnx import INPUT_NAME, OUTPUT_NAME, build_dlib_onnx

log = logging.getLogger(__name__)


class DlibOnnxEmbedder(DlibResNetEmbedder):
    """dlib's ResNet (128-d) run by ONNX Runtime, built from dlib's own ``.dat`` when constructed.

    Same protocol, chips and output as :class:`~sdk.embed.DlibResNetEmbedder` (which it subclasses for the chip
    geometry): BGR frame + faces -> (N, 128) float32 unit-norm rows.  The raw descriptors match dlib's
    ``compute_face_descriptor(chip)`` to ~2e-6 per component on CPU (tested bound 1e-4,
    ``tests/test_embed_onnx.py``).  Therefore, with the CPU provider, :attr:`model_id` is *the same* as the
    dlib embedder's for the same ``.dat`` and ``chip_landmarks``: galleries enrolled with either backend can be
    searched with the other.  With any other provider list (GPU execution providers may use TF32 or other
    reduced-precision kernels, untested here) the id gets an ``:ort-<provider>`` suffix so that galleries are
    not silently mixed; descriptors that may differ by more than 1e-4 never share an id.

    Args:
        model_path: ``dlib_face_recognition_resnet_model_v1.dat``.
        shape_predictor_path: dlib's ``shape_predictor_5_face_landmarks.dat`` (needed for ``"dlib5"`` chips).
        config: chip geometry; ``jitters`` must be 0 (dlib's random test-time jitter is not reproduced).
        threads: ONNX Runtime intra-op threads (0 = ONNX Runtime's default, one per physical core).
        providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
        batch_size: chips per ``session.run`` call (bounds memory on large batches).

    Attributes:
        build_s: seconds spent building the graph from the ``.dat`` (parse + serialise).
        session_s: seconds spent creating the ONNX Runtime session.
    """

    def __init__(self, model_path: str | Path, shape_predictor_path: str | Path | None = None,
                 config: DlibConfig = DlibConfig(), *, threads: int = 0,
                 providers: Sequence[str | tuple[str, dict]] | None = None, batch_size: int = 32):

        if config.jitters:
            raise ValueError(f"DlibOnnxEmbedder does not implement dlib's jitters (got {config.jitters}); "
                             "use DlibResNetEmbedder for jittered descriptors")
        if config.chip_landmarks not in ("dlib5", "mtcnn5"):
            raise ValueError(f"chip_landmarks must be 'dlib5' or 'mtcnn5', got {config.chip_landmarks!r}")
        if int(threads) < 0 or int(batch_size) < 1:
            raise ValueError(f"threads must be >= 0 and batch_size >= 1, got {threads}, {batch_size}")
        self.config = config
        self.model_path = Path(model_path)
        self.batch_size = int(batch_size)
        self._rec = None  # dlib's recognition model is never loaded
        self._sp = None
        self._dlib = None
        if config.chip_landmarks == "dlib5":
            import dlib  # only for the 5-point shape predictor (chip geometry)

            if shape_predictor_path is None:
                raise ValueError("chip_landmarks='dlib5' needs shape_predictor_path")
            self._sp = _load_dlib(Path(shape_predictor_path), dlib.shape_predictor)
            self._dlib = dlib

        t0 = time.perf_counter()
        model = build_dlib_onnx(self.model_path)  # ModelFileError naming the file on bad input
        t1 = time.perf_counter()
        self._sess = open_session(model, threads=threads, providers=providers, name=self.model_path,
                                  what="dlib ResNet ONNX graph")
        self.build_s, self.session_s = t1 - t0, time.perf_counter() - t1
        self.providers = self._sess.get_providers()
        log.debug("dlib ONNX graph: %.0f ms to build, %.0f ms to load (%s)", 1e3 * self.build_s,
                  1e3 * self.session_s, self.providers)
        # identical to DlibResNetEmbedder.model_id (sdk/embed.py) when the descriptors are interchangeable
        self.model_id = f"dlib_resnet_v1:{file_digest(self.model_path)[:16]}:{config.chip_landmarks}"
        self.geometry_id = f"dlib150:{config.chip_landmarks}"
        accel = [p for p in self.providers if p != CPU]
        if accel:
            self.model_id += ":ort-" + accel[0].removesuffix("ExecutionProvider").lower()

    def prepare(self) -> None:
        """Run one forward pass so the first real call is not slower."""
        self.descriptors([np.zeros((150, 150, 3), np.uint8)])

    def descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 **raw** dlib descriptors (not normalised) of 150x150x3 RGB uint8 chips."""
        if not len(chips):
            return np.zeros((0, self.dim), np.float32)
        for i, c in enumerate(chips):
            if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != (150, 150, 3):
                got = f"{c.dtype} {c.shape}" if isinstance(c, np.ndarray) else type(c).__name__
                raise ValueError(f"chip {i}: dlib's ResNet needs 150x150x3 RGB uint8 chips, got {got}")
        out = [self._sess.run([OUTPUT_NAME], {INPUT_NAME: np.stack(chips[i:i + self.batch_size])})[0]
               for i in range(0, len(chips), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_crops(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 unit-norm embeddings of 150x150x3 RGB uint8 chips."""
        return l2_normalise(self.descriptors(chips))
