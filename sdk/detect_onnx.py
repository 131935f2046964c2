"""Single-shot ONNX face detectors: our LTDet (bundle kind ``ltdet``) and insightface SCRFD files (``scrfd``).

Both follow the detector stage protocol of :class:`sdk.detect.MTCNNDetector`: build, optional ``prepare()``,
``detect(frame) -> list[Face]`` (uint8 BGR frame; boxes ``x1, y1, x2, y2`` and 5 landmarks in frame pixels,
MTCNN order: image-left eye, image-right eye, nose, image-left mouth corner, image-right mouth corner; highest
score first). ``detect`` keeps no state between calls.

**LTDet** (``trainer/detector``, exported by ``export/onnx_detector.py``): one graph, input ``"image"`` float32
``(1, 3, H, W)`` RGB in [-1, 1] with H, W multiples of 32 (the :class:`~sdk.preprocess.Preprocess` record
``frame / rgb / float32 / 1/127.5 / -1 / nchw``), outputs ``"scores"`` ``(1, A)``, ``"boxes"`` ``(1, A, 4)``
and ``"landmarks"`` ``(1, A, 5, 2)``, already decoded to input pixels. The net covers faces of ~14-160 px per
pass; the frame is run at the scales of ``LTDetConfig.pyramid`` (default 1 and 1/4: faces up to ~600 px) and
the passes are merged by non-maximum suppression. The frame is padded (bottom/right) to a multiple of 32.
An optional second graph, the landmark **refiner** (MTCNN O-Net's signature, fine-tuned on occluded faces by
``trainer/main.py landmarks``), re-places the five points of each kept face from a 48x48 crop of its box.

**SCRFD** (insightface's detector files, e.g. ``det_10g.onnx`` / ``det_500m.onnx``; weights not shipped here:
insightface's model packs are licensed for non-commercial research only): input ``"input.1"`` float32
``(1, 3, S, S)`` RGB ``(x - 127.5) / 128``; the frame is letterboxed into ``S x S`` (top-left, zero padding,
aspect kept) as insightface does; outputs per stride (8, 16, 32; 2 anchors per cell) in insightface's order:
scores ``(n, 1)``, box distances ``(n, 4)`` (left, top, right, bottom in stride units), keypoint offsets
``(n, 10)`` (stride units), optionally with a leading batch axis; anchors at ``(x * stride, y * stride)``.
Files with 6 outputs (no keypoints) get landmarks placed in the box at the ArcFace template's proportions
(``SCRFDDetector.has_kps`` is False). 5-stride files (10/15 outputs, 1 anchor) work too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sdk.backends import BackendConfig, open_backend
from sdk.detect import load_mtcnn_session
from sdk.detect import mirror_onet_points, onet_crops, onet_points, refine_inputs
from sdk.errors import BundleError, ModelFileError
from sdk.frame import as_bgr
from sdk.preprocess import Preprocess
from sdk.stages import StageKind, config_from, file_of
from sdk.types import Face

__all__ = ["LTDetConfig", "LTDetDetector", "SCRFDConfig", "SCRFDDetector", "LTDET_PREPROCESS", "SCRFD_PREPROCESS",
           "nms", "KINDS"]

#: How LTDet wants its input (written into the bundle manifest as the stage's ``preprocess``).
LTDET_PREPROCESS = Preprocess(crop="frame", colour="rgb", dtype="float32", scale=1.0 / 127.5, offset=-1.0,
                              layout="nchw")
#: insightface's SCRFD convention: RGB ``(x - 127.5) / 128`` on the letterboxed frame, NCHW.
SCRFD_PREPROCESS = Preprocess(crop="frame", colour="rgb", dtype="float32", scale=1.0 / 128.0, offset=-127.5 / 128.0,
                              layout="nchw")


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, contain: float | None = None) -> np.ndarray:
    """Greedy NMS on ``x1, y1, x2, y2`` boxes (N, 4); returns kept indices, best score first.

    A box is dropped when its IoU with a kept box exceeds ``iou``, or (``contain`` set) when more than
    ``contain`` of its own area lies inside a kept box at least 1.5x its size (a face part inside a face)."""
    if len(boxes) == 0:
        return np.zeros(0, np.intp)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        r = order[1:]
        w = np.clip(np.minimum(x2[i], x2[r]) - np.maximum(x1[i], x1[r]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[r]) - np.maximum(y1[i], y1[r]), 0, None)
        inter = w * h
        drop = inter / np.maximum(area[i] + area[r] - inter, 1e-9) > iou
        if contain is not None:
            drop |= (inter / np.maximum(area[r], 1e-9) > contain) & (area[i] >= 2.25 * area[r])
        order = r[~drop]
    return np.asarray(keep, np.intp)


def _faces(boxes: np.ndarray, lms: np.ndarray, scores: np.ndarray, W: int, H: int) -> list[Face]:
    boxes = boxes.astype(np.float32).copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, W)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, H)
    out = []
    for k in np.argsort(-scores, kind="stable"):
        b = boxes[k]
        if b[2] > b[0] and b[3] > b[1]:
            out.append(Face(box=b, landmarks=lms[k].astype(np.float32).reshape(5, 2), score=float(scores[k])))
    return out


def _check_path(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelFileError(p, f"not found ({what})")
    if not p.is_file():
        raise ModelFileError(p, f"not a file ({what})")
    return p


# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LTDetConfig:
    """Settings of :class:`LTDetDetector`.

    Attributes:
        score_threshold: minimum face probability in [0, 1].
        nms_iou: IoU above which the lower-scoring of two boxes is dropped.
        nms_contain: a box more than this fraction inside a >= 1.5x larger kept box is dropped (face parts).
        pyramid: frame scales run through the net (1.0 = full resolution); faces ~14-160 px per scale.
        max_side: the frame is first downscaled so its longest side is at most this (px); None: never.
        min_face_size: detections smaller than this (px, sqrt of box area, frame pixels) are dropped.
        threads: ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
        refine_context: with a landmark refiner, the side of its square crop relative to the box's longer side.
        refine_mirror: with a landmark refiner, also run it on each crop mirrored left-right and average the two
            sets of points (mirrored back, left / right points swapped): twice the refiner's O-Net work (~0.8 ms a
            face on 2 cores, one batched call), a smaller landmark error (``reports/detector/landmarks``).
        upscale_below: frames whose longer side is at most this (px) also run at ``upscale`` x (small photos,
            where faces are 10-30 px); None: never. Camera frames (>= 640 px) are not affected.
        upscale: the extra scale for small frames.
        pad_below: frames whose longer side is at most this (px) also run once centred on a black square canvas
            ``pad_canvas`` times their longer side, shrunk or enlarged to ``pad_side`` px: a face that fills or
            overflows the photo (a tight crop, an ID photo, another detector's crop) is then seen whole, with room
            around it; None: never (camera frames are never affected when this is <= 320).
        pad_canvas: the canvas side relative to the frame's longer side (> 1).
        pad_side: the side (px, multiple of 32) the canvas is run at.
    """

    score_threshold: float = 0.5
    nms_iou: float = 0.4
    nms_contain: float = 0.7
    pyramid: tuple[float, ...] = (1.0, 0.25)
    max_side: int | None = 1280
    min_face_size: float = 12.0
    threads: int = 0
    refine_context: float = 1.0
    refine_mirror: bool = False
    upscale_below: int | None = None
    upscale: float = 2.0
    pad_below: int | None = None
    pad_canvas: float = 1.5
    pad_side: int = 192

    def __post_init__(self) -> None:
        object.__setattr__(self, "pyramid", tuple(float(s) for s in self.pyramid))
        if self.pad_below is not None and not 32 <= self.pad_below <= 1280:
            raise ValueError(f"pad_below must be in [32, 1280] px or None, got {self.pad_below}")
        if not 1.0 < self.pad_canvas <= 4.0:
            raise ValueError(f"pad_canvas must be in (1, 4], got {self.pad_canvas}")
        if not (64 <= self.pad_side <= 1280 and self.pad_side % 32 == 0):
            raise ValueError(f"pad_side must be a multiple of 32 in [64, 1280] px, got {self.pad_side}")
        if self.upscale_below is not None and not 32 <= self.upscale_below <= 1280:
            raise ValueError(f"upscale_below must be in [32, 1280] px or None, got {self.upscale_below}")
        if not 1.0 < self.upscale <= 4.0:
            raise ValueError(f"upscale must be in (1, 4], got {self.upscale}")
        if not 0.5 <= self.refine_context <= 3.0:
            raise ValueError(f"refine_context must be in [0.5, 3], got {self.refine_context}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.nms_iou <= 1.0 or not 0.0 < self.nms_contain <= 1.0:
            raise ValueError(f"nms_iou and nms_contain must be in (0, 1], got {self.nms_iou}, {self.nms_contain}")
        if not self.pyramid or not all(0.0 < s <= 4.0 for s in self.pyramid):
            raise ValueError(f"pyramid scales must be in (0, 4], got {self.pyramid}")
        if self.max_side is not None and self.max_side < 32:
            raise ValueError(f"max_side must be >= 32 px or None, got {self.max_side}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


class LTDetDetector:
    """LookThrough's single-shot detector (LTDet) on ONNX Runtime; see the module doc for the graph contract.

    Args:
        model: the ``.onnx`` file.
        config: :class:`LTDetConfig`.
        providers: ONNX Runtime execution providers, best first.
        preprocess: the graph's input record (default :data:`LTDET_PREPROCESS`; a bundle passes its own).
        refiner: optional landmark refiner, an ``.onnx`` file with MTCNN O-Net's signature (input
            ``(N, 48, 48, 3)``; outputs with last axes 4, 10, 2), e.g. ``trainer/main.py landmarks``'s
            ``refiner.onnx``. Each kept face's box is squared and cut out as O-Net sees it
            (:func:`sdk.detect.onet_crops`), all faces of a frame in one call, and the refiner's five points
            replace LTDet's (boxes and scores stay LTDet's).

    Raises:
        ModelFileError: missing / unreadable file, or a graph without LTDet's input and outputs (or a refiner
            without O-Net's).
    """

    OUTPUTS = ("scores", "boxes", "landmarks")
    kind = "ltdet"

    def __init__(self, model: str | Path, config: LTDetConfig = LTDetConfig(),
                 providers: Sequence[str] = (), preprocess: Preprocess | None = None,
                 refiner: str | Path | None = None):
        if not isinstance(config, LTDetConfig):
            raise TypeError(f"config must be an LTDetConfig, got {type(config).__name__}")
        self.config = config
        self.preprocess = preprocess or LTDET_PREPROCESS
        if self.preprocess.crop != "frame" or self.preprocess.layout != "nchw" or self.preprocess.channels != 3:
            raise ValueError(f"LTDet needs a 'frame' crop, NCHW, 3 channels; got {self.preprocess}")
        self.path = _check_path(model, "LTDet ONNX detector")
        self._sess = open_backend(self.path, BackendConfig(threads=config.threads, providers=tuple(providers)),
                                  what="an LTDet detector")
        ins, outs = self._sess.inputs, self._sess.outputs
        names = [o.name for o in outs]
        ok = len(ins) == 1 and len(ins[0].shape) == 4 and ins[0].dtype == "float32" and ins[0].shape[1] == 3
        if not ok or sorted(names) != sorted(self.OUTPUTS):
            raise ModelFileError(self.path, "is not an LTDet detector: expected input float (1, 3, H, W) and outputs "
                                            f"{list(self.OUTPUTS)}, got inputs {[str(i) for i in ins]}, "
                                            f"outputs {names}")
        self._in = ins[0].name
        self.refiner_path = None if refiner is None else _check_path(refiner, "LTDet landmark refiner")
        self._refiner = None
        if self.refiner_path is not None:
            # one thread: a few 48x48 crops, and a second intra-op pool would spin beside the detector's on the
            # same cores after every call (measured: +30-45 ms per 640x480 frame on 2 cores with 2 threads each)
            self._refiner = load_mtcnn_session(self.refiner_path, "onet", 1, providers)

    def prepare(self) -> "LTDetDetector":
        """Warm up with one small blank frame (and the refiner with one crop); returns self."""
        self._run(np.zeros((64, 64, 3), np.uint8))
        if self._refiner is not None:
            self._refine(np.zeros((64, 64, 3), np.uint8), np.array([[8.0, 8.0, 56.0, 56.0]]))
        return self

    def _run(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = bgr.shape[:2]
        H, W = -(-h // 32) * 32, -(-w // 32) * 32
        if (H, W) != (h, w):
            bgr = cv2.copyMakeBorder(bgr, 0, H - h, 0, W - w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        x = self.preprocess.apply(bgr[None])
        s, b, lm = self._sess.run(list(self.OUTPUTS), {self._in: x})
        return s[0], b[0], lm[0]

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in ``frame`` (uint8 BGR ``(H, W, 3)``; grey and BGRA accepted), highest score first."""
        bgr = as_bgr(frame)
        H, W = bgr.shape[:2]
        cfg = self.config
        base = 1.0
        if cfg.max_side is not None and max(H, W) > cfg.max_side:
            base = cfg.max_side / max(H, W)
        B, L, S = [], [], []
        scales = cfg.pyramid
        if cfg.upscale_below is not None and max(H, W) <= cfg.upscale_below and cfg.upscale not in scales:
            scales = (cfg.upscale, *scales)
        for p in scales:
            s = base * p
            w, h = max(1, round(W * s)), max(1, round(H * s))
            if min(w, h) < 16:
                continue
            # shrink area-averaged; enlarge bilinearly (INTER_AREA enlarges nearest-neighbour: blocky small photos)
            how = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            img = bgr if (w, h) == (W, H) else cv2.resize(bgr, (w, h), interpolation=how)
            sc, bx, lm = self._run(img)
            k = sc >= cfg.score_threshold
            if not k.any():
                continue
            sx, sy = W / w, H / h
            B.append(bx[k] * np.array([sx, sy, sx, sy], np.float32))
            L.append(lm[k] * np.array([sx, sy], np.float32))
            S.append(sc[k])
        if cfg.pad_below is not None and max(H, W) <= cfg.pad_below:
            got = self._padded(bgr)
            if got is not None:
                B.append(got[0])
                L.append(got[1])
                S.append(got[2])
        if not B:
            return []
        b, lm, sc = np.concatenate(B), np.concatenate(L), np.concatenate(S)
        side = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
        ok = side >= cfg.min_face_size
        b, lm, sc = b[ok], lm[ok], sc[ok]
        keep = nms(b, sc, cfg.nms_iou, cfg.nms_contain)
        b, lm, sc = b[keep], lm[keep], sc[keep]
        if self._refiner is not None and len(b):
            lm = self._refine(bgr, b)
        return _faces(b, lm, sc, W, H)

    def _run_window(self, bgr: np.ndarray, X1: int, Y1: int, n: int, side: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The net on the square window ``[X1, X1 + n) x [Y1, Y1 + n)`` of the frame (black where it leaves the
        frame), resized to ``side`` px: ``(scores, boxes, landmarks)`` of every anchor, in frame pixels. Both the
        ``pad_below`` pass (a window larger than the frame) and :meth:`refine` (a window around a box) use it."""
        H, W = bgr.shape[:2]
        window = np.zeros((n, n, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(X1, 0), max(Y1, 0), min(X1 + n, W), min(Y1 + n, H)
        if sx2 > sx1 and sy2 > sy1:
            window[sy1 - Y1:sy2 - Y1, sx1 - X1:sx2 - X1] = bgr[sy1:sy2, sx1:sx2]
        k = side / n
        window = cv2.resize(window, (side, side), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        sc, bx, lm = self._run(window)
        off = np.array([X1, Y1], np.float32)
        return sc, bx / k + np.tile(off, 2), lm / k + off

    def _padded(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The ``pad_below`` pass (:class:`LTDetConfig`): faces ``(boxes, landmarks, scores)`` in frame pixels whose
        box centre lies inside the frame and whose score passes the threshold, or None."""
        cfg = self.config
        H, W = bgr.shape[:2]
        L = max(int(round(cfg.pad_canvas * max(H, W))), H + 2, W + 2)
        sc, bx, lm = self._run_window(bgr, -((L - W) // 2), -((L - H) // 2), L, cfg.pad_side)
        ctr = (bx[:, :2] + bx[:, 2:]) / 2
        ok = (sc >= cfg.score_threshold) & (ctr[:, 0] >= 0) & (ctr[:, 0] < W) & (ctr[:, 1] >= 0) & (ctr[:, 1] < H)
        if not ok.any():
            return None
        return bx[ok].astype(np.float32), lm[ok].astype(np.float32), sc[ok]

    #: side (px) of the square window :meth:`refine` runs the net on: twice the box, so the face is ~64 px there
    REFINE_SIDE = 128
    #: how far (in box sides) a face may have moved from the given box and still be inside :meth:`refine`'s
    #: window; a tracker need not try shifted boxes within it (``sdk.stream``)
    refine_reach = 0.4

    def refine(self, frame: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]],
               context: float = 1.0) -> list[Face]:
        """Re-detect one face around each given box (track-guided detection, as :meth:`MTCNNDetector.refine`).

        Each box is grown to a square window of side ``2 * context * max(w, h)`` about its centre, cut out (black
        outside the frame), resized to :attr:`REFINE_SIDE` px and run through the net alone (one 128x128 call,
        ~1 ms on 2 cores, instead of the full frame and its pyramid); the best-scoring face whose centre lies within
        half a box side of the window's centre and whose size is 0.5-2x the box is returned, its landmarks from
        the refiner when the bundle has one.

        Args:
            frame: uint8 BGR ``(H, W, 3)`` (grey and BGRA are accepted).
            boxes: ``(N, 4)`` ``(x1, y1, x2, y2)`` frame pixels.
            context: window side relative to twice the box's longer side.

        Returns:
            One :class:`Face` per box, in order, *not* thresholded (``score`` is the net's face probability; 0 with
            the given box when no face qualifies); boxes clipped to the frame.
        """
        bgr, b = refine_inputs(frame, boxes)
        if b.shape[0] == 0:
            return []
        H, W = bgr.shape[:2]
        S = self.REFINE_SIDE
        out_b, out_lm, out_s = np.zeros((len(b), 4)), np.zeros((len(b), 5, 2)), np.zeros(len(b))
        for i, (x1, y1, x2, y2) in enumerate(b):
            side = max(x2 - x1, y2 - y1, 1.0)
            cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, side * float(context)
            out_b[i] = (x1, y1, x2, y2)
            X1, Y1 = int(np.floor(cx - half)), int(np.floor(cy - half))
            n = max(1, int(np.ceil(2 * half)))
            if min(X1 + n, W) <= max(X1, 0) or min(Y1 + n, H) <= max(Y1, 0):
                continue  # the box is outside the frame
            sc, bx, lm = self._run_window(bgr, X1, Y1, n, S)
            ctr = (bx[:, :2] + bx[:, 2:]) / 2
            size = np.sqrt(np.clip(bx[:, 2] - bx[:, 0], 0, None) * np.clip(bx[:, 3] - bx[:, 1], 0, None))
            near = np.abs(ctr - np.array([X1 + n / 2, Y1 + n / 2])).max(axis=1) <= 0.5 * side
            ok = near & (size >= 0.5 * side) & (size <= 2 * side)
            if not ok.any():
                continue
            j = int(np.flatnonzero(ok)[np.argmax(sc[ok])])
            out_s[i] = float(sc[j])
            out_b[i] = bx[j]
            out_lm[i] = lm[j]
        found = out_s > 0
        if self._refiner is not None and found.any():
            out_lm[found] = self._refine(bgr, out_b[found].astype(np.float32))
        faces = []
        for box, lm_, s_ in zip(out_b, out_lm, out_s):
            box = np.array([np.clip(box[0], 0, W), np.clip(box[1], 0, H), np.clip(box[2], 0, W), np.clip(box[3], 0, H)],
                           np.float32)
            faces.append(Face(box=box, landmarks=lm_.astype(np.float32), score=float(s_)))
        return faces

    def _refine(self, bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The refiner's landmarks ``(N, 5, 2)`` (frame pixels) for LTDet's ``boxes`` (N, 4)."""
        sess, name, outs = self._refiner
        sq, crops = onet_crops(bgr, boxes, self.config.refine_context)
        if not self.config.refine_mirror:
            _, lm, _ = sess.run(outs, {name: crops})
            return onet_points(sq, lm).astype(np.float32)
        n = len(crops)  # crops are width-major (N, W, H, 3): axis 1 is x
        _, lm, _ = sess.run(outs, {name: np.concatenate([crops, crops[:, ::-1]])})
        return onet_points(sq, (lm[:n] + mirror_onet_points(lm[n:])) / 2).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SCRFDConfig:
    """Settings of :class:`SCRFDDetector` (insightface's defaults).

    Attributes:
        score_threshold: minimum face score; nms_iou: NMS IoU threshold.
        input_size: letterbox side (px) for graphs with a dynamic input size; a fixed-size graph uses its own.
        threads: ONNX Runtime intra-op threads (0 = default).
    """

    score_threshold: float = 0.5
    nms_iou: float = 0.4
    input_size: int = 640
    threads: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0 or not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1] and nms_iou in (0, 1], got "
                             f"{self.score_threshold}, {self.nms_iou}")
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 >= 32, got {self.input_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


class SCRFDDetector:
    """An insightface SCRFD ``.onnx`` file run with insightface's conventions (see the module doc).

    Raises:
        ModelFileError: missing / unreadable file, or outputs that are not SCRFD's (6, 9, 10 or 15 of them,
            last axes 1 / 4 / 10).
    """

    kind = "scrfd"
    preprocess = SCRFD_PREPROCESS

    def __init__(self, model: str | Path, config: SCRFDConfig = SCRFDConfig(),
                 providers: Sequence[str] = ()):
        if not isinstance(config, SCRFDConfig):
            raise TypeError(f"config must be an SCRFDConfig, got {type(config).__name__}")
        self.config = config
        self.path = _check_path(model, "SCRFD detector")
        self._sess = open_backend(self.path, BackendConfig(threads=config.threads, providers=tuple(providers)),
                                  what="an SCRFD detector")
        ins, outs = self._sess.inputs, self._sess.outputs
        n = len(outs)

        def sig() -> str:
            return f"inputs {[(i.name, i.shape) for i in ins]}, outputs {[(o.name, o.shape) for o in outs]}"

        if len(ins) != 1 or len(ins[0].shape) != 4 or ins[0].shape[1] != 3 or n not in (6, 9, 10, 15):
            raise ModelFileError(self.path, f"is not an SCRFD detector (1 input (1, 3, H, W); 6/9/10/15 outputs): {sig()}")
        self.fmc = 3 if n in (6, 9) else 5
        self.strides = (8, 16, 32) if self.fmc == 3 else (8, 16, 32, 64, 128)
        self.num_anchors = 2 if self.fmc == 3 else 1
        self.has_kps = n in (9, 15)
        lasts = [o.shape[-1] for o in outs]
        want = [1] * self.fmc + [4] * self.fmc + ([10] * self.fmc if self.has_kps else [])
        if any(isinstance(a, int) and a != b for a, b in zip(lasts, want)):
            raise ModelFileError(self.path, f"outputs are not SCRFD's (scores/boxes/kps last axes {want}): {sig()}")
        self._in = ins[0].name
        self._outs = [o.name for o in outs]
        h, w = ins[0].shape[2:]
        self.input_hw = (h, w) if isinstance(h, int) and isinstance(w, int) else (config.input_size, config.input_size)

    def prepare(self) -> "SCRFDDetector":
        """Warm up with one small blank frame; returns self."""
        self.detect(np.zeros((64, 64, 3), np.uint8))
        return self

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in ``frame`` (uint8 BGR), highest score first (insightface's ``detect`` without ``max_num``)."""
        bgr = as_bgr(frame)
        H, W = bgr.shape[:2]
        ih, iw = self.input_hw
        if H / W > ih / iw:
            nh, nw = ih, max(1, int(ih * W / H))
        else:
            nw, nh = iw, max(1, int(iw * H / W))
        scale = nh / H
        canvas = np.zeros((ih, iw, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(bgr, (nw, nh))
        outs = self._sess.run(self._outs, {self._in: self.preprocess.apply(canvas[None])})
        outs = [o[0] if o.ndim == 3 else o for o in outs]
        B, K, S = [], [], []
        for i, st in enumerate(self.strides):
            sc = outs[i].reshape(-1)
            gh, gw = ih // st, iw // st
            c = (np.stack(np.mgrid[:gh, :gw][::-1], -1).astype(np.float32) * st).reshape(-1, 2)
            if self.num_anchors > 1:
                c = np.repeat(c, self.num_anchors, axis=0)
            if len(sc) != len(c):
                raise ModelFileError(self.path, f"stride {st}: {len(sc)} scores for a {gh}x{gw} grid x "
                                                f"{self.num_anchors} anchors ({len(c)} expected)")
            k = sc >= self.config.score_threshold
            if not k.any():
                continue
            d = outs[i + self.fmc].reshape(-1, 4)[k] * st
            cc = c[k]
            B.append(np.concatenate([cc - d[:, :2], cc + d[:, 2:]], 1))
            if self.has_kps:
                kp = outs[i + 2 * self.fmc].reshape(-1, 5, 2)[k] * st
                K.append(cc[:, None] + kp)
            S.append(sc[k])
        if not B:
            return []
        b, s = np.concatenate(B) / scale, np.concatenate(S)
        if self.has_kps:
            kps = np.concatenate(K) / scale
        else:  # no keypoints in the file: the ArcFace template's proportions inside the box
            u = np.array([[0.31, 0.40], [0.69, 0.40], [0.50, 0.58], [0.35, 0.78], [0.65, 0.78]], np.float32)
            kps = b[:, None, :2] + u[None] * (b[:, None, 2:] - b[:, None, :2])
        keep = nms(b, s, self.config.nms_iou)
        return _faces(b[keep], kps[keep], s[keep], W, H)


# ------------------------------------------------------------------------------------------------ bundle kinds
def _providers(values: dict) -> tuple[str, ...]:
    p = values.pop("providers", None) or ()
    return (p,) if isinstance(p, str) else tuple(p)


def _build_ltdet(spec, preprocess: Preprocess, values: dict) -> LTDetDetector:
    """Files: ``model``, optional ``refiner`` (landmark refiner). Config: :class:`LTDetConfig` fields
    (+ ``providers``)."""
    where = f"stage {spec.name!r} ({spec.kind})"
    providers = _providers(values)
    try:
        return LTDetDetector(file_of(spec, "model"), config_from(LTDetConfig, values, where), providers=providers,
                             preprocess=preprocess, refiner=file_of(spec, "refiner", required=False))
    except ValueError as e:
        if isinstance(e, (BundleError, ModelFileError)):
            raise
        raise BundleError(f"{where}: {e}") from None


def _build_scrfd(spec, preprocess: Preprocess, values: dict) -> SCRFDDetector:
    """Files: ``model`` (an insightface SCRFD file). Config: :class:`SCRFDConfig` fields (+ ``providers``)."""
    where = f"stage {spec.name!r} ({spec.kind})"
    if preprocess != SCRFD_PREPROCESS:
        raise BundleError(f"{where}: SCRFD files read {SCRFD_PREPROCESS.to_dict()}; the manifest's preprocess record "
                          f"says {preprocess.to_dict()}")
    providers = _providers(values)
    return SCRFDDetector(file_of(spec, "model"), config_from(SCRFDConfig, values, where), providers=providers)


KINDS = (StageKind("detect", "ltdet", _build_ltdet, lambda values: LTDET_PREPROCESS),
         StageKind("detect", "scrfd", _build_scrfd, lambda values: SCRFD_PREPROCESS))
