"""PyTorch port of dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

A differentiable, exportable copy of dlib's ``anet_type`` (dlib/examples/dnn_face_recognition_ex.cpp):
it reproduces ``dlib.face_recognition_model_v1(path).compute_face_descriptor(chip)`` (a 150x150 RGB
aligned chip, ``num_jitters=0``) to float32 rounding (~1e-6 per component; see
``tools/check_dlib_port.py``).

Topology, forward order (dlib's nesting reads inside out)::

    input_rgb_image_sized<150>: x = (rgb - (122.782, 117.001, 104.298)) / 256
    con<32,7,7,2,2> (no padding) -> affine -> relu -> max_pool<3,3,2,2> (no padding)      150->72->35
    alevel4: 3 x ares<32>                                                                35
    alevel3: ares_down<64>,  3 x ares<64>                                                17
    alevel2: ares_down<128>, 2 x ares<128>                                               8
    alevel1: ares_down<256>, 2 x ares<256>                                               block 3, skip 4
    alevel0: ares_down<256>                                                              block 1, skip 2
    avg_pool_everything -> fc_no_bias<128>

    ares<N>(x)      = relu(block(x, stride 1) + x)
    ares_down<N>(x) = relu(block(x, stride 2) (+) avg_pool<2,2,2,2>(x))
    block(x, s)     = affine(con<N,3,3,1,1>(relu(affine(con<N,3,3,s,s>(x)))))

dlib's ``con``/``max_pool``/``avg_pool`` pad ``k/2`` only when the stride is 1, so the stride-2 convs
and pools are unpadded.  ``(+)`` is dlib's ``add_prev`` (``tt::add``): the sum is as large as the
larger operand in every dimension and a missing channel or row/column counts as zero, i.e. the
smaller tensor is zero-padded at the end of the channel axis and at the bottom/right.  That matters
twice: channels 32->64->128->256 at each first-of-level block, and spatially in alevel1/alevel0 where
the unpadded stride-2 conv gives 3x3 (1x1) while the 2x2 average pool gives 4x4 (2x2).  ``affine`` is
dlib's test-time batch norm: ``gamma[c] * x + beta[c]``.

Parity holds in float32 on CPU.  On CUDA, PyTorch's default TF32 convolutions
(``torch.backends.cudnn.allow_tf32``) cost ~3 decimal digits; turn them off when dlib parity matters.
ONNX export (``torch.onnx.export(model, x, f, opset_version=17, dynamo=False)``) works; the zero-padding
amounts of ``add_prev`` are traced as constants, so the graph is for 150x150 input (batch may be dynamic).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._dlib_dat import DlibNet, read_dat

__all__ = ["DlibResNet", "preprocess", "default_dat_path", "DLIB_MEAN_RGB"]

DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # dlib input_rgb_image defaults (also stored in the .dat)
CHIP_SIZE = 150

# (channels, downsample) per residual unit, forward order
_UNITS = ([(32, False)] * 3
          + [(64, True)] + [(64, False)] * 3
          + [(128, True)] + [(128, False)] * 2
          + [(256, True)] + [(256, False)] * 2
          + [(256, True)])


def default_dat_path() -> Path:
    """``dlib_face_recognition_resnet_model_v1.dat`` from the installed face-recognition-models(-ng) package."""
    import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models" / "dlib_face_recognition_resnet_model_v1.dat"


def preprocess(chips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB chips, NHWC (or one HWC chip) -> float32 NCHW tensor in [0, 255], the input of ``forward``."""
    t = torch.as_tensor(np.ascontiguousarray(chips)) if isinstance(chips, np.ndarray) else chips
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB chips shaped (N, H, W, 3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).to(torch.float32).contiguous()


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev``: elementwise sum over the max shape, missing entries are zero (channels, H, W)."""
    ca, ha, wa = int(a.shape[1]), int(a.shape[2]), int(a.shape[3])
    cb, hb, wb = int(b.shape[1]), int(b.shape[2]), int(b.shape[3])
    c, h, w = max(ca, cb), max(ha, hb), max(wa, wb)
    if (ca, ha, wa) != (c, h, w):
        a = F.pad(a, (0, w - wa, 0, h - ha, 0, c - ca))
    if (cb, hb, wb) != (c, h, w):
        b = F.pad(b, (0, w - wb, 0, h - hb, 0, c - cb))
    return a + b


class Affine(nn.Module):
    """dlib ``affine_`` in CONV mode: per-channel ``gamma * x + beta``."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ResUnit(nn.Module):
    """``ares<N>`` (identity skip) or ``ares_down<N>`` (stride-2 block, 2x2/2 average-pooled skip)."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        s = 2 if down else 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=s, padding=0 if down else 1)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.aff2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_prev(y, skip))


class DlibResNet(nn.Module):
    """dlib's ``anet_type`` face descriptor network.

    ``forward(x)``: ``x`` float (N, 3, 150, 150), RGB, values in [0, 255] (``preprocess`` builds it from
    uint8 NHWC chips, which must be aligned like ``dlib.get_face_chip(img, shape, 150, 0.25)``) ->
    (N, 128) raw descriptors exactly as dlib returns them (not normalised; dlib's are not unit length).
    ``embed(x)``: the same, L2-normalised.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor(DLIB_MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv0 = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.aff0 = Affine(32)
        units = []
        cin = 32
        for cout, down in _UNITS:
            units.append(ResUnit(cin, cout, down))
            cin = cout
        self.units = nn.ModuleList(units)
        self.fc = nn.Linear(256, 128, bias=False)

    # -- inference --------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 255] -> (N, 256) pooled features (input of the final fc)."""
        x = (x - self.mean_rgb) / 256.0
        x = F.relu(self.aff0(self.conv0(x)))
        x = F.max_pool2d(x, 3, 2)
        for unit in self.units:
            x = unit(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x), dim=1)

    # -- weights ----------------------------------------------------------------------------------
    @classmethod
    def from_dat(cls, path: str | os.PathLike | None = None) -> "DlibResNet":
        """Build the network with the weights of a dlib ``.dat`` (default: the packaged v1 model)."""
        path = default_dat_path() if path is None else Path(path)
        net = read_dat(path)
        model = cls()
        model.load_dlib(net)
        return model.eval()

    def load_dlib(self, net: DlibNet) -> None:
        """Copy the parameters of a parsed ``.dat`` in; ``ValueError`` unless it is exactly ``anet_type``."""
        got = [layer.kind for layer in net.layers]
        want = self._expected_kinds()
        if got != want:
            raise ValueError(f"{net.path}: layer sequence is not dlib's face recognition anet_type "
                             f"({len(got)} entries, expected {len(want)})")
        if net.input.get("kind") != "input_rgb_image_sized" or (net.input.get("nr"), net.input.get("nc")) != (150, 150):
            raise ValueError(f"{net.path}: expected input_rgb_image_sized<150>, got {net.input}")
        convs = [layer for layer in net.layers if layer.kind == "con"]
        affs = [layer for layer in net.layers if layer.kind == "affine"]
        pools = [layer for layer in net.layers if layer.kind in ("max_pool", "avg_pool")]
        fc = net.of_kind("fc")[0]
        mods_c = [self.conv0] + [c for u in self.units for c in (u.conv1, u.conv2)]
        mods_a = [self.aff0] + [a for u in self.units for a in (u.aff1, u.aff2)]
        with torch.no_grad():
            for layer, mod in zip(convs, mods_c):
                a = layer.attrs
                geom = (a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"])
                want_geom = (*mod.kernel_size, *mod.stride, *mod.padding)
                w = layer.params["weight"]
                if geom != want_geom or tuple(w.shape) != tuple(mod.weight.shape) or "bias" not in layer.params:
                    raise ValueError(f"{net.path}: conv {geom} {w.shape} does not match {want_geom} {tuple(mod.weight.shape)}")
                mod.weight.copy_(torch.from_numpy(w))
                mod.bias.copy_(torch.from_numpy(layer.params["bias"].reshape(-1)))
            for layer, mod in zip(affs, mods_a):
                if layer.attrs.get("mode") != 0 or layer.attrs.get("disabled"):
                    raise ValueError(f"{net.path}: affine layer is not per-channel (mode {layer.attrs})")
                g = layer.params["gamma"].reshape(-1)
                if g.size != mod.weight.numel():
                    raise ValueError(f"{net.path}: affine of {g.size} channels, expected {mod.weight.numel()}")
                mod.weight.copy_(torch.from_numpy(g))
                mod.bias.copy_(torch.from_numpy(layer.params["beta"].reshape(-1)))
            want_pools = [(3, 3, 2, 2, 0, 0)] + [(2, 2, 2, 2, 0, 0)] * 4 + [(0, 0, 1, 1, 0, 0)]
            got_pools = [tuple(p.attrs[k] for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"))
                         for p in pools]
            if got_pools != want_pools:
                raise ValueError(f"{net.path}: pooling geometry {got_pools} != {want_pools}")
            w = fc.params["weight"].reshape(fc.attrs["num_inputs"], fc.attrs["num_outputs"])
            if w.shape != (256, 128) or "bias" in fc.params:
                raise ValueError(f"{net.path}: fc {w.shape} (bias: {'bias' in fc.params}), expected fc_no_bias 256->128")
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            mean = [net.input["avg_red"], net.input["avg_green"], net.input["avg_blue"]]
            self.mean_rgb.copy_(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))

    @staticmethod
    def _expected_kinds() -> list[str]:
        block = ["con", "affine", "relu", "con", "affine"]
        seq = ["con", "affine", "relu", "max_pool"]
        for _, down in _UNITS:
            seq += ["tag_or_skip"] + block  # tag1 <block input>
            seq += ["tag_or_skip", "tag_or_skip", "avg_pool", "add_prev"] if down else ["add_prev"]  # tag2, skip1
            seq += ["relu"]
        return seq + ["avg_pool", "fc"]

    def save_safetensors(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"format": "pt", "model": "dlib_face_recognition_resnet_model_v1"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DlibResNet":
        """Load from ``save_safetensors`` output, or from a dlib ``.dat``."""
        p = Path(path)
        if p.suffix == ".dat":
            return cls.from_dat(p)
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(p)))
        return model.eval()
