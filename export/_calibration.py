"""Calibration data and INT8 quantization for TensorRT engines (:mod:`export.trt`'s helpers).

* :func:`load_faces` -- aligned face crops from a folder (uint8 BGR);
* :func:`synthetic_holes` -- occlusion masks for inpainter inputs;
* :func:`calibration_batches` -- feed dicts through a stage's preprocess record;
* :func:`quantize_qdq` -- explicit INT8 (Q/DQ nodes, entropy-calibrated scales, ONNX Runtime's quantizer);
* :func:`make_entropy_calibrator` -- ``IInt8EntropyCalibrator2`` for TensorRT <= 10.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from sdk.errors import LookThroughError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class EngineBuildError(LookThroughError, RuntimeError):
    """The ONNX graph could not be parsed or the engine could not be built (the message says why)."""


def load_faces(folder: str | Path, size: tuple[int, int], limit: int | None = None) -> np.ndarray:
    """Aligned face crops from a folder (png / jpg / bmp, sorted by name) as uint8 BGR ``(N, H, W, 3)``, resized to
    ``size = (height, width)`` when they are not (they should already be crops of the stage's geometry).

    Raises:
        FileNotFoundError: the folder does not exist or holds no readable image.
    """
    import cv2

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("skipping unreadable image %s", p)
            continue
        if img.shape[:2] != size:
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out.append(img)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise FileNotFoundError(f"calibration folder {folder} holds no readable image ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack(out)


def synthetic_holes(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``(n, H, W)`` uint8 {0, 1} occlusion masks for inpainter inputs: a surgical mask drawn from the ArcFace
    template (scaled to the crop), jittered, or a random rectangle (every third)."""
    import cv2

    from sdk.align import ARCFACE_112
    from sdk.occluders import surgical_mask_polygon

    rng = np.random.default_rng(seed)
    h, w = size
    out = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        if i % 3 == 2:
            rh, rw = rng.integers(h // 5, h // 2), rng.integers(w // 5, w // 2)
            y, x = rng.integers(0, h - rh), rng.integers(0, w - rw)
            out[i, y:y + rh, x:x + rw] = 1
            continue
        lm = ARCFACE_112 * np.array([w / 112.0, h / 112.0], np.float32) + rng.normal(0, 1.5, (5, 2)).astype(np.float32)
        cv2.fillPoly(out[i], [np.round(surgical_mask_polygon(lm)).astype(np.int32)], 1)
    return out


def calibration_batches(faces: np.ndarray, inputs: list, preprocess: dict, batch: int,
                        max_batches: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Feed dicts for calibration: the image input preprocessed with the stage's record, an input named like
    ``*mask*`` with one channel filled with :func:`synthetic_holes` (float, 1 = hole); ``max_batches`` batches of
    ``batch`` crops (cycling through the faces)."""
    from sdk.preprocess import Preprocess

    pre = Preprocess.from_dict(preprocess)
    n = len(faces)
    for k in range(max_batches):
        idx = [(k * batch + i) % n for i in range(batch)]
        crops = faces[idx]
        feed = {}
        for inp in inputs:
            if "mask" in inp.name.lower():
                holes = synthetic_holes(batch, crops.shape[1:3], seed=seed + k).astype(inp.dtype)
                feed[inp.name] = holes[:, None] if len(inp.shape) == 4 else holes
            else:
                feed[inp.name] = pre.apply(crops).astype(inp.dtype, copy=False)
        yield feed


def quantize_qdq(onnx_path: Path, out_path: Path, batches: list[dict[str, np.ndarray]]) -> Path:
    """Explicit INT8 quantization: Q/DQ nodes with entropy-calibrated activation scales (ONNX Runtime's static
    quantizer, symmetric activations and per-channel symmetric weights as TensorRT requires). The graph must be
    runnable by ONNX Runtime (not the plugin graph of the ``trt-onnx`` format: use ``--int8-mode calibrator`` there)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(onnx_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Entropy,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return out_path


def make_entropy_calibrator(trt, batches: list[dict[str, np.ndarray]], cache_path: Path | None, device: int = 0):
    """A ``trt.IInt8EntropyCalibrator2`` (TensorRT <= 10) feeding ``batches``; device buffers come from the SDK's
    own CUDA core (``sdk._core.cuda_alloc``), so neither pycuda nor torch is needed."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise EngineBuildError(f"TensorRT {trt.__version__} has no implicit INT8 calibration "
                               "(removed in TensorRT 11): use --int8-mode qdq")
    from sdk import _native

    core = _native.core

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches, self.k = batches, 0
            first = batches[0]
            self.bufs = {name: core.cuda_alloc(a.nbytes, device) for name, a in first.items()}

        def get_batch_size(self):
            return len(next(iter(self.batches[0].values())))

        def get_batch(self, names):
            if self.k >= len(self.batches):
                return None
            feed = self.batches[self.k]
            self.k += 1
            for name in names:
                core.cuda_copy_to_device(self.bufs[name], np.ascontiguousarray(feed[name]))
            return [self.bufs[name] for name in names]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path and cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            if cache_path:
                cache_path.write_bytes(bytes(cache))

        def __del__(self):
            for ptr in getattr(self, "bufs", {}).values():
                try:
                    core.cuda_free(ptr)
                except Exception:  # pragma: no cover - process teardown
                    pass

    return EntropyCalibrator()
