"""dlib's face recognition ResNet (``anet_type``) as one layer spec, read from the ``.dat``: the only definition.

:func:`resnet_spec` walks the layer list that :mod:`sdk.models.dlib_dat` parses (numpy only) once, checks that it
is dlib's ``anet_type`` family and returns a :class:`DlibResNetSpec`: the stem, the residual units and the head,
every kernel / stride / padding / channel count and every weight taken from the file.  Two builders walk the
spec and nothing else:

* :func:`sdk.models.dlib_onnx.dlib_net_to_onnx` -- the ONNX graph the SDK runs (affines folded into the convs);
* :class:`trainer.models.dlib_resnet.DlibResNet` -- the differentiable PyTorch port the trainer distils from and
  fine-tunes (its empty constructor takes the geometry of the packaged ``.dat``: :func:`packaged_spec`).

Forward order (dlib's C++ nesting reads inside out, dlib/examples/dnn_face_recognition_ex.cpp)::

    input_rgb_image_sized<150>: x = (rgb - mean_rgb) / 256
    stem:   con 7x7/2 -> affine -> relu -> max_pool 3x3/2
    units:  ares      = relu(block(x) + x)
            ares_down = relu(block_stride2(x) (+) avg_pool 2x2/2 (x))
            block(x)  = affine(con 3x3(relu(affine(con 3x3/s(x)))))
    head:   avg_pool_everything -> fc_no_bias 256 -> 128

``(+)`` is dlib's ``add_prev``: the sum has the larger shape of its operands and a missing channel / row / column
counts as zero (:func:`add_prev_shape`).  The layer stream of a ``.dat`` per unit is ``tag_or_skip`` (tag1),
the block (``con affine relu con affine``), then ``add_prev`` (ares) or ``tag_or_skip tag_or_skip avg_pool
add_prev`` (tag2, skip1: ares_down), then ``relu``.

Errors are :class:`sdk.errors.ModelFileError` (a ``ValueError``) naming the file and saying what is not
``anet_type``.  Shapes are ``(channels, height, width)``; weights are float32 numpy arrays exactly as stored.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sdk.errors import ModelFileError
from sdk.models.dlib_dat import DlibLayer, DlibNet, read_dat

__all__ = ["ConvSpec", "PoolSpec", "UnitSpec", "FcSpec", "DlibResNetSpec", "resnet_spec", "packaged_spec",
           "default_dat_path", "conv_shape", "pool_shape", "add_prev_shape", "CHIP_SIZE"]

CHIP_SIZE = 150
Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ConvSpec:
    """dlib ``con`` + ``affine`` (+ ``relu``): a convolution, its per-channel test-time batch norm and a ReLU.

    ``weight`` (cout, cin, kh, kw), ``bias`` (cout,) (zeros when the file has none); ``gamma`` / ``beta`` (cout,)
    or ``None`` when the affine layer is disabled; ``relu``: an enabled ReLU follows the affine.  Arrays are
    ``None`` in a weightless spec (:meth:`DlibResNetSpec.geometry`)."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    relu: bool
    affine: bool = True
    weight: np.ndarray | None = field(default=None, compare=False, repr=False)
    bias: np.ndarray | None = field(default=None, compare=False, repr=False)
    gamma: np.ndarray | None = field(default=None, compare=False, repr=False)
    beta: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PoolSpec:
    """``max_pool`` / ``avg_pool`` geometry; ``kind == "global"`` is ``avg_pool_everything``."""

    kind: str  # max | avg | global
    kernel: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class UnitSpec:
    """A residual unit: ``ares`` (``skip_pool is None``: identity skip) or ``ares_down`` (average-pooled skip);
    ``relu``: an enabled ReLU follows the sum."""

    conv1: ConvSpec
    conv2: ConvSpec
    skip_pool: PoolSpec | None
    relu: bool

    @property
    def down(self) -> bool:
        return self.skip_pool is not None


@dataclass(frozen=True)
class FcSpec:
    """``fc`` (``fc_no_bias`` when ``bias is None``): ``weight`` (nin, nout) as dlib stores it."""

    nin: int
    nout: int
    has_bias: bool
    weight: np.ndarray | None = field(default=None, compare=False, repr=False)
    bias: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DlibResNetSpec:
    """The whole network: input size and means (RGB order), stem, residual units, head.

    ``path`` names the ``.dat`` it came from (errors and ONNX metadata); equality compares the geometry only."""

    path: str = field(compare=False)
    input_size: int
    mean_rgb: tuple[float, float, float] = field(compare=False)
    stem: ConvSpec
    stem_pool: PoolSpec
    units: tuple[UnitSpec, ...]
    head_pool: PoolSpec
    fc: FcSpec

    @property
    def dim(self) -> int:
        """Descriptor width (128 for dlib's model)."""
        return self.fc.nout

    def geometry(self) -> "DlibResNetSpec":
        """The same spec without weights (what a module built from it needs to know)."""

        def strip(c: ConvSpec) -> ConvSpec:
            return replace(c, weight=None, bias=None, gamma=None, beta=None)

        return replace(self, stem=strip(self.stem), fc=replace(self.fc, weight=None, bias=None),
                       units=tuple(replace(u, conv1=strip(u.conv1), conv2=strip(u.conv2)) for u in self.units))

    def shapes(self) -> list[Shape]:
        """Output shape after the stem conv, the stem pool, every unit and the head pool (in that order)."""
        s: Shape = (3, self.input_size, self.input_size)
        out = [conv_shape(self.stem, s)]
        out.append(pool_shape(self.stem_pool, out[-1]))
        for u in self.units:
            x = out[-1]
            y = conv_shape(u.conv2, conv_shape(u.conv1, x))
            out.append(add_prev_shape(y, pool_shape(u.skip_pool, x) if u.down else x))
        out.append(pool_shape(self.head_pool, out[-1]))
        return out


def conv_shape(c: ConvSpec, shape: Shape) -> Shape:
    """Output shape of ``c`` on an input of ``shape``."""
    return (c.cout, (shape[1] + 2 * c.pad[0] - c.kernel[0]) // c.stride[0] + 1,
            (shape[2] + 2 * c.pad[1] - c.kernel[1]) // c.stride[1] + 1)


def pool_shape(p: PoolSpec, shape: Shape) -> Shape:
    """Output shape of ``p`` on an input of ``shape``."""
    if p.kind == "global":
        return (shape[0], 1, 1)
    return (shape[0], (shape[1] + 2 * p.pad[0] - p.kernel[0]) // p.stride[0] + 1,
            (shape[2] + 2 * p.pad[1] - p.kernel[1]) // p.stride[1] + 1)


def add_prev_shape(a: Shape, b: Shape) -> Shape:
    """dlib ``add_prev``: the sum is as large as the larger operand in every dimension."""
    return (max(a[0], b[0]), max(a[1], b[1]), max(a[2], b[2]))


class _Walker:
    """Reads a :class:`DlibNet`'s layer list front to back into a :class:`DlibResNetSpec`."""

    def __init__(self, net: DlibNet):
        self.net, self.layers, self.i = net, net.layers, 0

    def bad(self, what: str) -> ModelFileError:
        return ModelFileError(self.net.path, f"not dlib's face recognition ResNet (anet_type): {what}")

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.layers[j].kind if j < len(self.layers) else "<end>"

    def take(self, kind: str) -> DlibLayer:
        if self.peek() != kind:
            raise self.bad(f"layer {self.i} is {self.peek()!r}, expected {kind!r}")
        layer = self.layers[self.i]
        self.i += 1
        return layer

    def conv(self, shape: Shape, relu: bool) -> tuple[ConvSpec, Shape]:
        """``con`` then ``affine``, then (``relu=True``) a ``relu`` layer."""
        con = self.take("con")
        a = con.attrs
        w = con.params["weight"]
        cin = shape[0]
        if w.ndim != 4 or w.shape[0] != a["num_filters"] or w.shape[1] != cin or w.shape[2:] != (a["nr"], a["nc"]):
            raise self.bad(f"conv {self.i - 1} weights {w.shape} do not fit input {shape} / {a}")
        b = con.params["bias"].reshape(-1) if "bias" in con.params else np.zeros(w.shape[0], np.float32)
        if b.size != w.shape[0]:
            raise self.bad(f"conv {self.i - 1} has {b.size} biases for {w.shape[0]} filters")
        if a.get("use_relu"):  # dlib's fused conv+relu (con_6): the affine after it cannot be folded in
            raise self.bad(f"conv {self.i - 1} has a fused relu (a dlib fuse_layers()-ed network)")
        aff = self.take("affine")
        gamma = beta = None
        if not aff.attrs.get("disabled"):
            if aff.attrs.get("mode") != 0:
                raise self.bad(f"affine {self.i - 1} is not per-channel (mode {aff.attrs.get('mode')})")
            gamma = aff.params["gamma"].reshape(-1)
            beta = aff.params["beta"].reshape(-1)
            if gamma.size != w.shape[0] or beta.size != w.shape[0]:
                raise self.bad(f"affine {self.i - 1} has {gamma.size} channels, the conv {w.shape[0]}")
        sy, sx, py, px = a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"]
        if min(sy, sx) < 1 or min(py, px) < 0:
            raise self.bad(f"conv {self.i - 2} geometry {a}")
        enabled = False
        if relu:
            enabled = not self.take("relu").attrs.get("disabled")
        spec = ConvSpec(cin, int(w.shape[0]), (int(a["nr"]), int(a["nc"])), (int(sy), int(sx)), (int(py), int(px)),
                        enabled, gamma is not None, w, b, gamma, beta)
        out = conv_shape(spec, shape)
        if min(out[1:]) < 1:
            raise self.bad(f"conv {self.i - 2} leaves no output for input {shape}")
        return spec, out

    def pool(self, kind: str, shape: Shape) -> tuple[PoolSpec, Shape]:
        a = self.take(kind).attrs
        kh, kw, sy, sx, py, px = a["nr"], a["nc"], a["stride_y"], a["stride_x"], a["padding_y"], a["padding_x"]
        if kind == "avg_pool" and kh == 0 and kw == 0:  # avg_pool_everything
            p = PoolSpec("global")
            return p, pool_shape(p, shape)
        if min(kh, kw, sy, sx) < 1 or min(py, px) < 0:
            raise self.bad(f"{kind} geometry {a}")
        p = PoolSpec("max" if kind == "max_pool" else "avg", (int(kh), int(kw)), (int(sy), int(sx)), (int(py), int(px)))
        out = pool_shape(p, shape)
        if min(out[1:]) < 1:
            raise self.bad(f"{kind} leaves no output for input {shape}")
        return p, out

    def relu(self) -> bool:
        return not self.take("relu").attrs.get("disabled")

    def walk(self) -> DlibResNetSpec:
        net = self.net
        inp = net.input
        if inp.get("kind") != "input_rgb_image_sized" or (inp.get("nr"), inp.get("nc")) != (CHIP_SIZE, CHIP_SIZE):
            raise self.bad(f"input layer is {inp.get('kind')} {inp.get('nr')}x{inp.get('nc')}, "
                           f"expected input_rgb_image_sized<{CHIP_SIZE}>")
        mean = (inp["avg_red"], inp["avg_green"], inp["avg_blue"])
        if not np.isfinite(np.array(mean, np.float32)).all():
            raise self.bad(f"input means {mean}")
        shape: Shape = (3, CHIP_SIZE, CHIP_SIZE)
        stem, shape = self.conv(shape, relu=True)
        stem_pool, shape = self.pool("max_pool", shape)
        units = []
        while self.peek() == "tag_or_skip":  # tag1: the unit's input
            self.take("tag_or_skip")
            c1, ys = self.conv(shape, relu=True)
            c2, ys = self.conv(ys, relu=False)
            if self.peek() == "add_prev":  # ares: add_prev1<block<tag1>>
                self.take("add_prev")
                skip = None
                shape = add_prev_shape(ys, shape)
            else:  # ares_down: add_prev2<avg_pool<skip1<tag2<block<tag1>>>>>
                self.take("tag_or_skip")  # tag2: the block's output
                self.take("tag_or_skip")  # skip1: back to tag1 (the unit's input)
                skip, ps = self.pool("avg_pool", shape)
                self.take("add_prev")
                shape = add_prev_shape(ps, ys)
            units.append(UnitSpec(c1, c2, skip, self.relu()))
        if not units:
            raise self.bad("no residual units after the stem")
        head_pool, shape = self.pool("avg_pool", shape)
        if shape[1:] != (1, 1):
            raise self.bad(f"the last pooling leaves {shape}, expected a global average")
        fc = self.take("fc")
        nin, nout = fc.attrs["num_inputs"], fc.attrs["num_outputs"]
        w = fc.params["weight"]
        if nin != shape[0] or w.size != nin * nout:
            raise self.bad(f"fc {nin}->{nout} with {w.size} weights after {shape[0]} features")
        bias = fc.params["bias"].reshape(nout) if "bias" in fc.params else None
        if self.i != len(self.layers):
            raise self.bad(f"{len(self.layers) - self.i} layer(s) after the fc layer")
        return DlibResNetSpec(str(net.path), CHIP_SIZE, tuple(float(m) for m in mean), stem, stem_pool,  # type: ignore[arg-type]
                              tuple(units), head_pool, FcSpec(int(nin), int(nout), bias is not None,
                                                              w.reshape(nin, nout), bias))


def resnet_spec(net: DlibNet) -> DlibResNetSpec:
    """The :class:`DlibResNetSpec` of a parsed ``.dat`` (weights included).

    Raises :class:`~sdk.errors.ModelFileError` naming ``net.path`` when the network is not dlib's ``anet_type``
    family (150x150 RGB input, conv/affine/relu stem, residual units, global pool, fc)."""
    return _Walker(net).walk()


def default_dat_path() -> Path:
    """``dlib_face_recognition_resnet_model_v1.dat`` of the installed face-recognition-models(-ng) package."""
    import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models" / "dlib_face_recognition_resnet_model_v1.dat"


@functools.lru_cache(maxsize=4)
def _geometry_of(path: str) -> DlibResNetSpec:
    return resnet_spec(read_dat(path)).geometry()


def packaged_spec(path: str | os.PathLike | None = None) -> DlibResNetSpec:
    """The weightless spec (geometry) of ``path`` (default: the packaged v1 model), read once per process."""
    return _geometry_of(str(default_dat_path() if path is None else Path(path)))
