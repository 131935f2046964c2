"""Face completion stage (``kind: "onnx_inpainter"``): occluded pixels of an aligned crop -> plausible face pixels.

The ONNX graph (written by ``export/onnx_inpainter.py`` from ``trainer.models.inpainter.Generator``) takes
``"image"`` ``(N, 3, 112, 112)`` float32 in [-1, 1] -- a 112x112 ArcFace crop (:data:`sdk.align.ARCFACE_CROP`)
in **BGR** order, as the inpainter was trained (``trainer.inpainter_train.to_tensor``: ``x / 127.5 - 1``, no
channel flip) -- and ``"mask"`` ``(N, 1, 112, 112)`` float32 {0, 1} with 1 = hole, and returns ``"completed"``
``(N, 3, 112, 112)`` float32 in [-1, 1] (``image * (1 - mask) + generated * mask``). Pre- and postprocessing are
here, in numpy; no torch: ONNX Runtime only.

Stage protocol::

    inp = OnnxInpainter("inpainter.onnx").prepare()
    done = inp.complete(crops_bgr, holes)                 # (N, 112, 112, 3) uint8 BGR, known pixels unchanged
    frame2, ok = inp.complete_in_frame(frame, crops, holes, matrices)   # pasted back into a copy of frame

:func:`paste_back` is the geometry: the inverse of :func:`sdk.align.warp` for the pixels of a hole.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sdk.align import TEMPLATES
from sdk.backends.ort import open_session
from sdk.errors import ModelFileError

log = logging.getLogger(__name__)

INPUTS = ("image", "mask")
OUTPUT = "completed"


def to_model_input(crops_bgr: np.ndarray) -> np.ndarray:
    """uint8 NHWC BGR ``(N, H, W, 3)`` -> float32 NCHW BGR ``(N, 3, H, W)`` in [-1, 1] (``x / 127.5 - 1``)."""
    return np.ascontiguousarray(crops_bgr.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def from_model_output(completed: np.ndarray) -> np.ndarray:
    """float NCHW ``(N, 3, H, W)`` in [-1, 1] -> uint8 NHWC ``(N, H, W, 3)`` (clipped, rounded half to even)."""
    x = (np.clip(completed, -1.0, 1.0) + 1.0) * 127.5
    return np.ascontiguousarray(np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1))


def dilate_holes(holes: np.ndarray, pixels: int) -> np.ndarray:
    """``(N, H, W)`` bool holes grown by ``pixels`` crop pixels (3x3 square steps, 8-connected); 0 = unchanged."""
    holes = np.asarray(holes).astype(bool)
    if pixels <= 0 or holes.size == 0:
        return holes
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([cv2.dilate(h.astype(np.uint8), kernel, iterations=int(pixels)) > 0 for h in holes])


def is_greyscale(crops: np.ndarray, holes: np.ndarray, tol: int = 2) -> np.ndarray:
    """``(N,)`` bool: True where a BGR crop's known pixels (``holes`` False) have B, G and R within ``tol`` grey
    levels of each other everywhere (a greyscale image stored as BGR)."""
    c = np.asarray(crops).astype(np.int16)
    known = ~np.asarray(holes).astype(bool)
    spread = np.maximum(np.abs(c[..., 0] - c[..., 1]), np.abs(c[..., 1] - c[..., 2]))
    return np.array([not (sp[k] > tol).any() for sp, k in zip(spread, known)], bool)


def paste_back(frame_bgr: np.ndarray, crop_bgr: np.ndarray, hole: np.ndarray, matrix: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:
    """Put the hole pixels of an aligned crop back into the frame it was cut from.

    The inverse of ``crop = sdk.align.warp(frame, matrix, (w, h))`` restricted to the hole: the crop and the
    hole are warped back into frame pixels (bilinear; ``matrix`` maps frame -> crop, so it is used as
    OpenCV's inverse map) and the frame pixel is replaced by the warped crop pixel wherever the warped hole
    is >= 0.5. Every other frame pixel is left exactly as it was. Only the hole's bounding box (in frame
    pixels, +1 px) is warped, so the cost does not grow with the frame size.

    Args:
        frame_bgr: ``(H, W, 3)`` uint8 BGR frame (never modified unless it is passed as ``out``).
        crop_bgr: ``(h, w, 3)`` uint8 BGR crop (e.g. the completed 112x112 ArcFace crop).
        hole: ``(h, w)`` bool / {0, 1} array, crop pixels to paste (1 = pasted).
        matrix: ``(2, 3)`` float frame -> crop similarity (:func:`sdk.align.similarity_to_template`).
        out: where to write (an ``(H, W, 3)`` uint8 array, e.g. a copy already holding other faces);
            default: a new copy of ``frame_bgr``.

    Returns:
        ``out`` (or the new copy), ``(H, W, 3)`` uint8 BGR.
    """
    frame_bgr, crop_bgr = np.asarray(frame_bgr), np.asarray(crop_bgr)
    hole = np.asarray(hole).astype(bool)
    if crop_bgr.shape[:2] != hole.shape or crop_bgr.ndim != 3 or frame_bgr.ndim != 3:
        raise ValueError(f"crop (h, w, 3) and hole (h, w) must match: crop {crop_bgr.shape}, hole {hole.shape}")
    dst = frame_bgr.copy() if out is None else out
    if dst.shape != frame_bgr.shape:
        raise ValueError(f"out has shape {dst.shape}, the frame {frame_bgr.shape}")
    ys, xs = np.nonzero(hole)
    if len(xs) == 0:
        return dst
    H, W = frame_bgr.shape[:2]
    m = np.asarray(matrix, np.float64).reshape(2, 3)
    inv = cv2.invertAffineTransform(m)  # crop -> frame
    corners = np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.min() - 1],
                        [xs.min() - 1, ys.max() + 1], [xs.max() + 1, ys.max() + 1]], np.float64)
    fc = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = max(int(np.floor(fc[:, 0].min())) - 1, 0), max(int(np.floor(fc[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(fc[:, 0].max())) + 2, W), min(int(np.ceil(fc[:, 1].max())) + 2, H)
    if x1 <= x0 or y1 <= y0:
        return dst  # the hole maps outside the frame
    # frame->crop matrix of the ROI (its pixel (0, 0) is frame pixel (x0, y0))
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    size = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    crop_w = cv2.warpAffine(np.ascontiguousarray(crop_bgr), m_roi, size, flags=flags,
                            borderMode=cv2.BORDER_REPLICATE)  # replicate: no black fringe at the crop's edge
    hole_w = cv2.warpAffine(hole.astype(np.float32), m_roi, size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0.0) >= 0.5
    roi = dst[y0:y1, x0:x1]
    roi[hole_w] = crop_w[hole_w]
    return dst


class OnnxInpainter:
    """ONNX Runtime face inpainter on 112x112 ArcFace BGR crops.

    Args:
        model: path of the ``.onnx`` file.
        crop: crop template name in :data:`sdk.align.TEMPLATES` (``"arcface112"``).
        threads: ONNX Runtime intra-op threads (0 = ORT default).
        min_occlusion: faces whose occlusion probability (segment stage) is at least this are completed.
        dilate: pixels the segmenter's binary mask is grown by before completion (:func:`dilate_holes`).
        providers: ORT execution providers (default CPU).
        batch_size: crops per ORT call.

    Raises:
        ModelFileError: the file is missing, not a loadable ONNX model, or not an inpainter (wrong inputs /
            outputs); the message names the file.
    """

    def __init__(self, model: str | Path, crop: str = "arcface112", threads: int = 1, min_occlusion: float = 0.5,
                 dilate: int = 1, providers: Sequence[str] | None = None, batch_size: int = 16):
        self.path = Path(model)
        if not self.path.is_file():
            raise ModelFileError(self.path, "not found (face inpainter ONNX model)")
        if crop not in TEMPLATES:
            raise ValueError(f"unknown crop {crop!r}; known: {sorted(TEMPLATES)}")
        self.crop_spec = TEMPLATES[crop]
        self.min_occlusion = float(min_occlusion)
        self.dilate = int(dilate)
        self.batch_size = max(1, int(batch_size))
        self.session = open_session(self.path, threads=threads, providers=providers, what="a face inpainter ONNX model")
        h, w = self.crop_spec.height, self.crop_spec.width
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name for o in self.session.get_outputs()}
        want = {"image": [3, h, w], "mask": [1, h, w]}
        ok = (set(ins) == set(INPUTS) and OUTPUT in outs
              and all(ins[n].type == "tensor(float)" and len(ins[n].shape) == 4 and list(ins[n].shape[1:]) == s
                      for n, s in want.items()))
        if not ok:
            got = [(i.name, i.type, i.shape) for i in ins.values()]
            raise ModelFileError(self.path, f"not a face inpainter: expected float inputs 'image' (N, 3, {h}, {w}) "
                                            f"and 'mask' (N, 1, {h}, {w}) and output {OUTPUT!r}, got inputs {got} "
                                            f"and outputs {sorted(outs)}")

    def prepare(self) -> "OnnxInpainter":
        """Warm up ORT (first-call latency); returns self."""
        h, w = self.crop_spec.height, self.crop_spec.width
        hole = np.zeros((1, h, w), np.uint8)
        hole[0, h // 2:, w // 4: 3 * w // 4] = 1
        self.complete(np.zeros((1, h, w, 3), np.uint8), hole)
        return self

    def _check(self, crops: object, masks: object) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.crop_spec.height, self.crop_spec.width
        if not isinstance(crops, np.ndarray) or not isinstance(masks, np.ndarray):
            raise TypeError(f"crops and masks must be numpy arrays, got {type(crops).__name__} and "
                            f"{type(masks).__name__}")
        if crops.dtype != np.uint8:
            raise TypeError(f"crops must be uint8 BGR (N, {h}, {w}, 3), got dtype {crops.dtype}"
                            + (" (scale floats in [0, 1] by 255 and cast to uint8)" if crops.dtype.kind == "f" else ""))
        if crops.ndim != 4 or crops.shape[1:] != (h, w, 3):
            raise ValueError(f"crops must be uint8 BGR (N, {h}, {w}, 3) (the {w}x{h} ArcFace crop), got shape "
                             f"{crops.shape}" + (" (add a batch axis: crop[None])" if crops.shape == (h, w, 3) else ""))
        if len(crops) == 0:
            raise ValueError(f"empty batch: crops has shape {crops.shape}; pass at least one crop")
        if masks.shape != crops.shape[:3]:
            raise ValueError(f"masks must be (N, {h}, {w}) matching crops {crops.shape}, got {masks.shape}")
        if masks.dtype.kind not in "biuf":
            raise TypeError(f"masks must be bool, integer or float (1 = hole), got dtype {masks.dtype}")
        if masks.dtype.kind == "f" and not np.isfinite(masks).all():
            raise ValueError("masks contain NaN or infinity")
        return crops, masks >= 0.5

    def complete(self, crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Fill the holes of aligned BGR crops.

        Args:
            crops: ``(N, 112, 112, 3)`` uint8 BGR ArcFace crops, N >= 1.
            masks: ``(N, 112, 112)`` bool / uint8 / float; a pixel is a hole where ``mask >= 0.5`` (1 / True).

        Returns:
            ``(N, 112, 112, 3)`` uint8 BGR: the generator's pixels in the holes, ``crops`` exactly elsewhere.

        Raises:
            TypeError: non-array inputs, non-uint8 crops, non-numeric masks.
            ValueError: wrong shapes, an empty batch, non-finite masks.
        """
        crops, holes = self._check(crops, masks)
        parts = []
        for s in range(0, len(crops), self.batch_size):
            c, hm = crops[s:s + self.batch_size], holes[s:s + self.batch_size]
            (y,) = self.session.run([OUTPUT], {"image": to_model_input(c),
                                               "mask": np.ascontiguousarray(hm[:, None], dtype=np.float32)})
            parts.append(from_model_output(y))
        done = np.concatenate(parts)
        # greyscale faces (IR / night cameras, LFW) get greyscale fills: the generator was trained on colour faces
        # and would paint skin tones into a grey face
        grey = is_greyscale(crops, holes)
        if grey.any():
            luma = np.stack([cv2.cvtColor(d, cv2.COLOR_BGR2GRAY) for d in done[grey]])
            done[grey] = np.repeat(luma[..., None], 3, axis=3)
        # the graph composites in float; do it again in uint8 so known pixels are bit-exact
        return np.where(holes[..., None], done, crops)

    def complete_in_frame(self, frame_bgr: np.ndarray, crops: np.ndarray, holes: np.ndarray,
                          matrices: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Complete faces and paste them back into a copy of the frame they were cut from.

        Args:
            frame_bgr: ``(H, W, 3)`` uint8 BGR; never modified.
            crops: ``(N, 112, 112, 3)`` uint8 BGR crops cut from ``frame_bgr`` with ``matrices``.
            holes: ``(N, 112, 112)`` binary masks (1 = occluded), grown by :attr:`dilate` pixels here.
            matrices: N ``(2, 3)`` frame -> crop matrices.

        Returns:
            ``(frame, completed)``: the frame with every non-empty hole completed and pasted back
            (:func:`paste_back`; ``frame_bgr`` itself when nothing was completed) and an ``(N,)`` bool array,
            True for the faces that were completed (False: empty hole).
        """
        holes = dilate_holes(holes, self.dilate)
        todo = np.flatnonzero(holes.reshape(len(holes), -1).any(1)) if len(holes) else np.zeros(0, np.int64)
        done = np.zeros(len(holes), bool)
        if len(todo) == 0:
            return frame_bgr, done
        filled = self.complete(np.asarray(crops)[todo], holes[todo])
        out = frame_bgr.copy()
        for k, i in enumerate(todo):
            paste_back(frame_bgr, filled[k], holes[i], matrices[i], out=out)
        done[todo] = True
        log.debug("completed %d of %d faces", len(todo), len(holes))
        return out, done
