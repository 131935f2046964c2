"""Face completion stage (``kind: "onnx_inpainter"``): occluded pixels of an aligned crop -> plausible face pixels.

The graph (``python -m export onnx --family inpainter``: :class:`sdk.nets.graphs.InpainterGraph`) takes
``"image"`` -- the 112x112 ArcFace crop (:data:`sdk.align.ARCFACE_CROP`) in the convention of the stage's
:class:`~sdk.preprocess.Preprocess` record; the built-in one, :data:`DEFAULT_PREPROCESS`, is float32 NCHW **BGR**
in [-1, 1] (``x / 127.5 - 1``, as ``trainer.inpainter_train.to_tensor`` trains it) -- and ``"mask"``
``(N, 1, 112, 112)`` float32 {0, 1} with 1 = hole (in the image's layout), and returns ``"completed"``, an image
in the same convention (``image * (1 - mask) + generated * mask``), turned back into uint8 BGR by
:meth:`Preprocess.invert <sdk.preprocess.Preprocess.invert>`. The graph runs on a :class:`~sdk.backends.Backend`
(ONNX Runtime by default; the same graph on torch -- with the fused CUDA attention -- or TensorRT when the bundle
has their files); no torch here.

Stage protocol (:class:`sdk.stages.Completer`)::

    inp = OnnxInpainter("inpainter.onnx").prepare()
    done = inp.complete(crops_bgr, holes)                 # (N, 112, 112, 3) uint8 BGR, known pixels unchanged
    frame2, ok = inp.complete_in_frame(frame, crops, holes, matrices)   # pasted back into a copy of frame
    inp.process(batch)        # in a Recognizer: completes the faces the segment stage calls occluded

:func:`paste_back` is the geometry: the inverse of :func:`sdk.align.warp` for the pixels of a hole.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from sdk.align import TEMPLATES
from sdk.backends import ModelFiles, open_backend
from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess, pm1
from sdk.stages import FaceBatch, FaceStage, RunConfig, StageKind, config_from, expect_input, model_files

log = logging.getLogger(__name__)

INPUTS = ("image", "mask")
OUTPUT = "completed"
#: the built-in inpainter's image convention: float32 NCHW BGR in [-1, 1] (``x / 127.5 - 1``)
DEFAULT_PREPROCESS = pm1("arcface112", "bgr", "nchw")


def to_model_input(crops_bgr: np.ndarray) -> np.ndarray:
    """uint8 NHWC BGR ``(N, H, W, 3)`` -> the built-in graph's image: float32 NCHW BGR in [-1, 1]
    (:data:`DEFAULT_PREPROCESS`, ``x / 127.5 - 1`` bit for bit)."""
    return DEFAULT_PREPROCESS.apply(crops_bgr)


def from_model_output(completed: np.ndarray) -> np.ndarray:
    """float NCHW ``(N, 3, H, W)`` in [-1, 1] -> uint8 NHWC BGR ``(N, H, W, 3)`` (clipped, rounded half to even)."""
    return DEFAULT_PREPROCESS.invert(completed)


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


@dataclass(frozen=True)
class CompleteConfig(RunConfig):
    """Settings of the complete stage (manifest ``config``; plus :class:`~sdk.stages.RunConfig`'s fields).

    Attributes:
        min_occlusion: faces whose occlusion probability (segment stage) is at least this are completed.
        dilate: pixels the segmenter's binary mask is grown by before completion (:func:`dilate_holes`).
    """

    batch_size: int = 16
    min_occlusion: float = 0.5
    dilate: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.dilate) < 0:
            raise ValueError(f"dilate must be >= 0 pixels, got {self.dilate}")


class OnnxInpainter:
    """Face inpainter on aligned BGR crops, run by a backend.

    Args:
        model: path of the ``.onnx`` file, or the stage's :class:`~sdk.backends.ModelFiles` (ONNX, torch weights,
            TensorRT engine: the backend picks, :mod:`sdk.backends.select`).
        config: :class:`CompleteConfig`; keyword ``overrides`` (``threads=2``, ``dilate=0``) replace fields.
        preprocess: the graph's image convention (default :data:`DEFAULT_PREPROCESS`); its ``crop`` names the
            crop. Must be a float record (the mask is blended in float inside the graph).

    Raises:
        ModelFileError: the file is missing, not loadable, or not an inpainter for this record (wrong inputs /
            outputs); the message names the file.
    """

    kind = "onnx_inpainter"

    def __init__(self, model: str | Path | ModelFiles, config: CompleteConfig = CompleteConfig(), *,
                 preprocess: Preprocess = DEFAULT_PREPROCESS, **overrides: Any):
        files = ModelFiles.of(model)
        self.path = Path(files.label)
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        if preprocess.crop not in TEMPLATES:
            raise BundleError(f"complete stage: crop {preprocess.crop!r} is not a face crop; known: {sorted(TEMPLATES)}")
        if preprocess.dtype == "uint8" or preprocess.colour == "grey":
            raise BundleError(f"complete stage: the inpainter reads float colour images, got {preprocess.to_dict()}")
        self.preprocess = preprocess
        self.crop_spec = TEMPLATES[preprocess.crop]
        if not self.path.is_file():
            raise ModelFileError(self.path, "not found (face inpainter ONNX model)")
        self.backend = open_backend(files, self.config.backend, what="a face inpainter model")
        h, w = self.crop_spec.height, self.crop_spec.width
        mask_shape = {"nchw": ("N", 1, h, w), "nhwc": ("N", h, w, 1), "nwhc": ("N", w, h, 1)}[preprocess.layout]
        names = {i.name: i for i in self.backend.inputs}
        ok = (set(names) == set(INPUTS) and OUTPUT in {o.name for o in self.backend.outputs}
              and names["mask"].matches(preprocess.dtype, mask_shape))
        if not ok:
            raise ModelFileError(self.path, f"not a face inpainter: expected inputs 'image' {preprocess.dtype} "
                                            f"{preprocess.input_shape(h, w)} and 'mask' {mask_shape}, output "
                                            f"{OUTPUT!r}; got inputs {[str(i) for i in self.backend.inputs]} and "
                                            f"outputs {[str(o) for o in self.backend.outputs]}")
        expect_input(self.backend, preprocess, self.crop_spec.size, self.path, "a face inpainter", name="image")

    @property
    def min_occlusion(self) -> float:
        return float(self.config.min_occlusion)

    @property
    def dilate(self) -> int:
        return int(self.config.dilate)

    @property
    def batch_size(self) -> int:
        return int(self.config.batch_size)

    def prepare(self) -> "OnnxInpainter":
        """Warm up the backend (first-call latency); returns self."""
        h, w = self.crop_spec.height, self.crop_spec.width
        hole = np.zeros((1, h, w), np.uint8)
        hole[0, h // 2:, w // 4: 3 * w // 4] = 1
        self.complete(np.zeros((1, h, w, 3), np.uint8), hole)
        return self

    def connect(self, upstream: Mapping[str, FaceStage]) -> None:
        """Needs a segment stage on the same crop before it (its holes and crops are what gets completed)."""
        seg = upstream.get("segment")
        a, b = getattr(seg, "crop_spec", None), self.crop_spec
        if seg is None or a is None or a.size != b.size or not np.array_equal(a.template, b.template):
            raise BundleError(f"the complete stage needs a segment stage on the same crop ({b.size}) before it, "
                              f"got {None if seg is None else getattr(a, 'size', None)}")

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
            (y,) = self.backend.run([OUTPUT], {"image": self.preprocess.apply(c), "mask": self._mask_input(hm)})
            parts.append(self.preprocess.invert(y))
        done = np.concatenate(parts)
        # greyscale faces (IR / night cameras, LFW) get greyscale fills: the generator was trained on colour faces
        # and would paint skin tones into a grey face
        grey = is_greyscale(crops, holes)
        if grey.any():
            luma = np.stack([cv2.cvtColor(d, cv2.COLOR_BGR2GRAY) for d in done[grey]])
            done[grey] = np.repeat(luma[..., None], 3, axis=3)
        # the graph composites in float; do it again in uint8 so known pixels are bit-exact
        return np.where(holes[..., None], done, crops)

    def _mask_input(self, holes: np.ndarray) -> np.ndarray:
        """(n, h, w) bool holes -> the graph's mask input: {0, 1} in the image's dtype and layout, 1 channel."""
        m = holes[:, None] if self.preprocess.layout == "nchw" else (
            holes[..., None] if self.preprocess.layout == "nhwc" else holes.transpose(0, 2, 1)[..., None])
        return np.ascontiguousarray(m, dtype=self.preprocess.dtype)

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

    def process(self, batch: FaceBatch) -> None:
        """Complete the faces whose occlusion probability is at least :attr:`min_occlusion` (the segment stage's
        holes at its threshold, grown by :attr:`dilate` px so the occluder's anti-aliased edge is filled too)
        and paste them back into a copy of ``batch.frame`` (timed as ``"complete"``)."""
        reg = batch.regions
        if not batch.faces or reg is None:
            return
        with batch.timed("complete"):
            todo = np.flatnonzero(reg.probs >= self.min_occlusion)
            if len(todo):
                batch.frame, done = self.complete_in_frame(batch.frame, reg.crops[todo], reg.holes[todo],
                                                           [reg.matrices[i] for i in todo])
                batch.completed[todo] = done


# ------------------------------------------------------------------------------------------------ bundle kind
def _legacy_preprocess(values: Mapping[str, Any]) -> Preprocess:
    """Version-1 manifests: ``input`` ``"bgr"`` (the default) = float32 NCHW BGR in [-1, 1] on ``crop``."""
    if values.get("input", "bgr") != "bgr":
        raise BundleError(f"complete stage: input {values.get('input')!r} is not supported (only 'bgr': the "
                          "inpainter is trained on BGR crops)")
    try:
        return pm1(str(values.get("crop", "arcface112")), "bgr", "nchw")
    except BundleError as e:
        raise BundleError(f"complete stage: {e}") from None


def _build(spec, preprocess: Preprocess, values: dict) -> OnnxInpainter:
    cfg = config_from(CompleteConfig, values, f"stage {spec.name!r} ({spec.kind})")
    return OnnxInpainter(model_files(spec), cfg, preprocess=preprocess)


KINDS = (StageKind("complete", "onnx_inpainter", _build, _legacy_preprocess),)
