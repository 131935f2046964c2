"""PyTorch port of dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

A differentiable, exportable copy of dlib's ``anet_type`` (dlib/examples/dnn_face_recognition_ex.cpp): it
reproduces ``dlib.face_recognition_model_v1(path).compute_face_descriptor(chip)`` (a 150x150 RGB aligned chip,
``num_jitters=0``) to float32 rounding (~1e-6 per component; see ``tools/check_dlib_port.py``).

The architecture is not written down here: :class:`DlibResNet` is built by walking the layer spec that
:func:`sdk.models.dlib_arch.resnet_spec` reads from the ``.dat`` -- the same spec the SDK's ONNX builder
(:mod:`sdk.models.dlib_onnx`) walks -- so the runtime graph and this port cannot drift apart.  ``DlibResNet()``
takes the geometry of the packaged ``.dat`` (:func:`sdk.models.dlib_arch.packaged_spec`).  See
:mod:`sdk.models.dlib_arch` for the topology (stem, ``ares`` / ``ares_down`` units, head).

dlib's ``con``/``max_pool``/``avg_pool`` pad ``k/2`` only when the stride is 1, so the stride-2 convs and pools
are unpadded.  ``(+)`` is dlib's ``add_prev`` (``tt::add``): the sum is as large as the larger operand in every
dimension and a missing channel or row/column counts as zero, i.e. the smaller tensor is zero-padded at the end
of the channel axis and at the bottom/right (:func:`_add_prev`).  ``affine`` is dlib's test-time batch norm:
``gamma[c] * x + beta[c]``.

Parity holds in float32 on CPU.  On CUDA, PyTorch's default TF32 convolutions (``torch.backends.cudnn.allow_tf32``)
cost ~3 decimal digits; turn them off when dlib parity matters.  ONNX export
(``torch.onnx.export(model, x, f, opset_version=17, dynamo=False)``) works; the zero-padding amounts of
``add_prev`` are traced as constants, so the graph is for 150x150 input (batch may be dynamic).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdk.models.dlib_arch import (CHIP_SIZE, ConvSpec, DlibResNetSpec, PoolSpec, default_dat_path, packaged_spec,
                                  resnet_spec)
from sdk.models.dlib_dat import DlibNet, read_dat

__all__ = ["DlibResNet", "default_dat_path", "DLIB_MEAN_RGB", "CHIP_SIZE"]

DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # dlib input_rgb_image defaults (also stored in the .dat)


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


def _conv(c: ConvSpec) -> nn.Conv2d:
    return nn.Conv2d(c.cin, c.cout, c.kernel, stride=c.stride, padding=c.pad)


def _affine(c: ConvSpec) -> nn.Module:
    return Affine(c.cout) if c.affine else nn.Identity()


def _pool(p: PoolSpec, x: torch.Tensor) -> torch.Tensor:
    if p.kind == "max":
        return F.max_pool2d(x, p.kernel, p.stride, p.pad)
    if p.kind == "avg":
        return F.avg_pool2d(x, p.kernel, p.stride, p.pad)
    return x.mean(dim=(2, 3), keepdim=True)


class ResUnit(nn.Module):
    """``ares<N>`` (identity skip) or ``ares_down<N>`` (stride-2 block, average-pooled skip), from a
    :class:`sdk.models.dlib_arch.UnitSpec`."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.down = spec.down
        self.conv1 = _conv(spec.conv1)
        self.aff1 = _affine(spec.conv1)
        self.conv2 = _conv(spec.conv2)
        self.aff2 = _affine(spec.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        y = self.aff1(self.conv1(x))
        if s.conv1.relu:
            y = F.relu(y)
        y = self.aff2(self.conv2(y))
        if s.conv2.relu:
            y = F.relu(y)
        skip = _pool(s.skip_pool, x) if s.down else x
        y = _add_prev(y, skip)
        return F.relu(y) if s.relu else y


class DlibResNet(nn.Module):
    """dlib's ``anet_type`` face descriptor network, built from a :class:`~sdk.models.dlib_arch.DlibResNetSpec`.

    ``forward(x)``: ``x`` float (N, 3, 150, 150), RGB, values in [0, 255] (``preprocess`` builds it from
    uint8 NHWC chips, which must be aligned like ``dlib.get_face_chip(img, shape, 150, 0.25)``) ->
    (N, 128) raw descriptors exactly as dlib returns them (not normalised; dlib's are not unit length).
    ``embed(x)``: the same, L2-normalised.  ``trunk(x, tap)``: the pooled features and one unit's output.

    Args:
        spec: the geometry to build (weights in it are ignored; :meth:`from_dat` loads them); default: the
            packaged ``.dat``'s.
    """

    def __init__(self, spec: DlibResNetSpec | None = None):
        super().__init__()
        spec = (spec or packaged_spec()).geometry()
        self.spec = spec
        self.register_buffer("mean_rgb", torch.tensor(spec.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv0 = _conv(spec.stem)
        self.aff0 = _affine(spec.stem)
        self.units = nn.ModuleList([ResUnit(u) for u in spec.units])
        self.fc = nn.Linear(spec.fc.nin, spec.fc.nout, bias=spec.fc.has_bias)

    # -- inference --------------------------------------------------------------------------------
    def trunk(self, x: torch.Tensor, tap: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 3, H, W) in [0, 255] -> ``(pooled features (N, C), output of unit ``tap`` or None)``."""
        s = self.spec
        x = (x - self.mean_rgb) / 256.0
        x = self.aff0(self.conv0(x))
        if s.stem.relu:
            x = F.relu(x)
        x = _pool(s.stem_pool, x)
        tapped = None
        for i, unit in enumerate(self.units):
            x = unit(x)
            if i == tap:
                tapped = x
        return x.mean(dim=(2, 3)), tapped

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 255] -> (N, 256) pooled features (input of the final fc)."""
        return self.trunk(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x), dim=1)

    # -- weights ----------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: DlibResNetSpec) -> "DlibResNet":
        """The network of ``spec`` with its weights (eval mode)."""
        model = cls(spec)
        model._copy_weights(spec)
        return model.eval()

    @classmethod
    def from_dat(cls, path: str | os.PathLike | None = None) -> "DlibResNet":
        """Build the network with the weights of a dlib ``.dat`` (default: the packaged v1 model)."""
        return cls.from_spec(resnet_spec(read_dat(default_dat_path() if path is None else Path(path))))

    def load_dlib(self, net: DlibNet) -> None:
        """Copy the parameters of a parsed ``.dat`` in; ``ValueError`` (naming the file) unless it is dlib's
        ``anet_type`` family with this module's geometry."""
        spec = resnet_spec(net)
        if spec != self.spec:
            raise ValueError(f"{net.path}: a dlib face recognition ResNet (anet_type family) of another geometry than "
                             "this module")
        self._copy_weights(spec)

    def _copy_weights(self, spec: DlibResNetSpec) -> None:
        convs = [(spec.stem, self.conv0, self.aff0)] + [
            (c, conv, aff) for u, m in zip(spec.units, self.units) for c, conv, aff in
            ((u.conv1, m.conv1, m.aff1), (u.conv2, m.conv2, m.aff2))]
        with torch.no_grad():
            for c, conv, aff in convs:
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(c.weight)))
                conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(c.bias)))
                if c.affine:
                    aff.weight.copy_(torch.from_numpy(np.ascontiguousarray(c.gamma)))
                    aff.bias.copy_(torch.from_numpy(np.ascontiguousarray(c.beta)))
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(spec.fc.weight.T)))
            if spec.fc.has_bias:
                self.fc.bias.copy_(torch.from_numpy(np.ascontiguousarray(spec.fc.bias)))
            self.mean_rgb.copy_(torch.tensor(spec.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
