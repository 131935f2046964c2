"""Occlusion segmenter stage (``kind: "onnx_segmenter"``): aligned face crops -> occlusion map M + probability.

The ONNX graph (written by ``export/onnx_segmenter.py``) takes uint8 NHWC **BGR** crops ``(N, 112, 112, 3)``
(input ``"crops"``: the 112x112 ArcFace crop of :data:`sdk.align.ARCFACE_CROP`, as :func:`sdk.align.align`
cuts it from a BGR frame) and returns ``"mask_prob"`` ``(N, 1, 112, 112)`` and ``"occluded_prob"`` ``(N,)``,
both float32 in [0, 1]. Preprocessing is inside the graph. No torch here: ONNX Runtime only.

Stage protocol::

    seg = OnnxSegmenter("segmenter.onnx").prepare()
    masks, occluded = seg.segment(crops)       # (N, 112, 112) float32, (N,) float32
    crops = seg.crops(frame_bgr, faces)          # the aligned crops the model expects
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sdk.align import TEMPLATES, align
from sdk.backends.ort import open_session
from sdk.errors import ModelFileError

INPUT_NAME = "crops"
OUTPUTS = ("mask_prob", "occluded_prob")


class OnnxSegmenter:
    """ONNX Runtime occlusion segmenter.

    Args:
        model: path of the ``.onnx`` file.
        threshold: probability at or above which a pixel (:meth:`binary_masks`) or a face (:meth:`is_occluded`)
            counts as occluded.
        crop: crop template name in :data:`sdk.align.TEMPLATES` (``"arcface112"``).
        threads: ONNX Runtime intra-op threads (0 = ORT default).
        providers: ORT execution providers (default CPU).
        batch_size: faces per ORT call.

    Raises:
        ModelFileError: the file is missing, not a loadable ONNX model, or not a segmenter (wrong inputs /
            outputs); the message names the file.
    """

    def __init__(self, model: str | Path, threshold: float = 0.5, crop: str = "arcface112", threads: int = 1,
                 providers: Sequence[str] | None = None, batch_size: int = 32):

        self.path = Path(model)
        if not self.path.is_file():
            raise ModelFileError(self.path, "not found (occlusion segmenter ONNX model)")
        if crop not in TEMPLATES:
            raise ValueError(f"unknown crop {crop!r}; known: {sorted(TEMPLATES)}")
        self.crop_spec = TEMPLATES[crop]
        self.threshold = float(threshold)
        self.batch_size = max(1, int(batch_size))
        self.session = open_session(self.path, threads=threads, providers=providers,
                                    what="an occlusion segmenter ONNX model")
        ins = self.session.get_inputs()
        outs = {o.name for o in self.session.get_outputs()}
        h, w = self.crop_spec.height, self.crop_spec.width
        ok = (len(ins) == 1 and ins[0].name == INPUT_NAME and ins[0].type == "tensor(uint8)"
              and len(ins[0].shape) == 4 and list(ins[0].shape[1:]) == [h, w, 3] and set(OUTPUTS) <= outs)
        if not ok:
            got = [(i.name, i.type, i.shape) for i in ins]
            raise ModelFileError(self.path, f"not an occlusion segmenter: expected input {INPUT_NAME!r} uint8 "
                                            f"(N, {h}, {w}, 3) and outputs {list(OUTPUTS)}, got inputs {got} "
                                            f"and outputs {sorted(outs)}")

    @property
    def crop_size(self) -> tuple[int, int]:
        return self.crop_spec.size

    def prepare(self) -> "OnnxSegmenter":
        """Warm up ORT (first-call latency); returns self."""
        self.segment(np.zeros((1, self.crop_spec.height, self.crop_spec.width, 3), np.uint8))
        return self

    def crops(self, frame: np.ndarray, faces: Sequence) -> list[np.ndarray]:
        """Aligned BGR crops of ``faces`` (``sdk.types.Face``) from a BGR ``frame``."""
        return [align(frame, f.landmarks, self.crop_spec) for f in faces]

    def segment(self, crops: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(masks (N, H, W) float32 in [0, 1], occluded_prob (N,) float32)`` for uint8 BGR crops."""
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
        for s in range(0, len(x), self.batch_size):
            m, p = self.session.run(list(OUTPUTS), {INPUT_NAME: np.ascontiguousarray(x[s:s + self.batch_size])})
            ms.append(m[:, 0])
            ps.append(p.reshape(-1))
        return np.concatenate(ms).astype(np.float32), np.concatenate(ps).astype(np.float32)

    def binary_masks(self, masks: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 0/1: ``masks >= threshold``."""
        return (np.asarray(masks) >= self.threshold).astype(np.uint8)

    def is_occluded(self, occluded_prob: np.ndarray) -> np.ndarray:
        """(N,) bool: ``occluded_prob >= threshold`` (such faces go to completion, when a bundle has it)."""
        return np.asarray(occluded_prob) >= self.threshold
