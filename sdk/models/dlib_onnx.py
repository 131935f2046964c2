"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as an ONNX graph, built at load time.

:func:`build_dlib_onnx` reads the ``.dat`` with :mod:`sdk.models.dlib_dat` (numpy only) and writes an ONNX
model (opset 17, IR version 8) that ONNX Runtime runs; neither dlib, torch nor the ``onnx`` package is needed.
The model is serialised by a small protobuf writer in this module (the ONNX wire format is plain protobuf;
the ``onnx`` package is a trainer-only dependency).  ``tests/test_embed_onnx.py`` checks the bytes with
``onnx.checker`` (full check, with shape inference) and that ``onnx`` re-serialises them unchanged.

Graph (the topology of dlib's ``anet_type``, dlib/examples/dnn_face_recognition_ex.cpp, walked from the layer spec
:func:`sdk.models.dlib_arch.resnet_spec` reads from the file -- the spec the trainer's PyTorch port is built from
too; every kernel/stride/padding/channel count comes from the file)::

    chips uint8 (N, 150, 150, 3) RGB -> Cast float -> Transpose NCHW -> (x - mean_rgb) * (1/256)
    con 7x7/2 (+ affine folded in) -> Relu -> MaxPool 3x3/2
    residual units:  ares:       Relu(block(x) + x)
                     ares_down:  Relu(block_stride2(x) (+) AveragePool 2x2/2 (x))
                     block(x) =  con 3x3 (+affine) -> Relu -> con 3x3 (+affine)
    GlobalAveragePool -> Flatten -> MatMul (fc_no_bias 256 -> 128) -> descriptor float (N, 128)

``descriptor`` is the raw dlib descriptor (not normalised), what ``compute_face_descriptor(chip)`` returns
(``num_jitters=0``) to float32 rounding.  ``(+)`` is dlib's ``add_prev``: the sum has the larger shape of the
two and a missing channel / row / column counts as zero, so the smaller operand is zero-padded (``Pad``) at the
end of the channel axis and at the bottom / right: channels 32->64->128->256, and 3x3 vs 4x4, 1x1 vs 2x2
spatially in the last two down-sampling units (unpadded stride-2 convs).  dlib's ``affine`` (test-time batch
norm, ``gamma * x + beta`` per channel) is folded into the preceding convolution: ``W * gamma``,
``b * gamma + beta`` (computed in float64, stored as float32).  The mean subtraction and the exact
power-of-two scaling are kept as separate nodes so the network input is bit-identical to dlib's.

Output bytes are a pure function of the ``.dat`` bytes (no time stamps, paths or versions inside), so the same
file always gives the same model.
"""
from __future__ import annotations

import hashlib
import os
import struct

import numpy as np

from sdk.models.dlib_arch import (ConvSpec, DlibResNetSpec, PoolSpec, add_prev_shape, conv_shape, pool_shape,
                                  resnet_spec)
from sdk.models.dlib_dat import DlibNet, read_dat_with_bytes

Shape = tuple[int, int, int]

__all__ = ["build_dlib_onnx", "dlib_net_to_onnx", "dlib_spec_to_onnx", "INPUT_NAME", "OUTPUT_NAME", "OPSET",
           "IR_VERSION"]

INPUT_NAME = "chips"
OUTPUT_NAME = "descriptor"
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17 (onnx 1.12)


# -- protobuf wire format (only what ONNX models need) -------------------------------------------------
# Fields are written in field-number order with minimal varints, as protobuf itself serialises them.
_FLOAT, _UINT8, _INT64 = 1, 2, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _int(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(int(v))


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _str(field: int, s: str) -> bytes:
    return _len(field, s.encode("utf-8"))


def _f32(field: int, v: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", v)


def _tensor(name: str, arr: np.ndarray) -> bytes:
    """TensorProto: dims(1), data_type(2), name(8), raw_data(9)."""
    if arr.dtype == np.float32:
        dt, raw = _FLOAT, arr.astype("<f4").tobytes()
    elif arr.dtype == np.int64:
        dt, raw = _INT64, arr.astype("<i8").tobytes()
    else:  # pragma: no cover - the builder only makes these two
        raise TypeError(f"unsupported initializer dtype {arr.dtype}")
    return b"".join([*(_int(1, d) for d in arr.shape), _int(2, dt), _str(8, name), _len(9, raw)])


def _attr(name: str, v: object) -> bytes:
    """AttributeProto: name(1), f(2), i(3), ints(8), type(20)."""
    if isinstance(v, bool) or not isinstance(v, (float, int, list, tuple)):  # pragma: no cover
        raise TypeError(f"unsupported attribute {name}={v!r}")
    if isinstance(v, float):
        return _str(1, name) + _f32(2, v) + _int(20, _ATTR_FLOAT)
    if isinstance(v, int):
        return _str(1, name) + _int(3, v) + _int(20, _ATTR_INT)
    return _str(1, name) + b"".join(_int(8, x) for x in v) + _int(20, _ATTR_INTS)  # type: ignore[union-attr]


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    """ValueInfoProto{name(1), type(2): TypeProto{tensor_type(1): {elem_type(1), shape(2): {dim(1)...}}}}."""
    shape = b"".join(_len(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _str(1, name) + _len(2, _len(1, _int(1, elem_type) + _len(2, shape)))


class _Graph:
    """Accumulates nodes and initialisers; names are deterministic (counter based)."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self._n = 0

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(_tensor(name, np.ascontiguousarray(arr)))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        """NodeProto: input(1), output(2), name(3), op_type(4), attribute(5); returns the output name."""
        self._n += 1
        name = f"{op.lower()}_{self._n}"
        out = output or name
        body = b"".join([*(_str(1, i) for i in inputs), _str(2, out), _str(3, name), _str(4, op),
                         *(_len(5, _attr(k, v)) for k, v in sorted(attrs.items()))])
        self.nodes.append(body)
        return out

    def model(self, name: str, inputs: list[bytes], outputs: list[bytes], doc: str,
              metadata: dict[str, str]) -> bytes:
        graph = b"".join([*(_len(1, n) for n in self.nodes), _str(2, name), *(_len(5, t) for t in self.inits),
                          *(_len(11, v) for v in inputs), *(_len(12, v) for v in outputs)])
        # ModelProto: ir_version(1), producer_name(2), doc_string(6), graph(7), opset_import(8), metadata_props(14)
        return b"".join([_int(1, IR_VERSION), _str(2, "lookthrough.sdk.models.dlib_onnx"), _str(6, doc),
                         _len(7, graph), _len(8, _str(1, "") + _int(2, OPSET)),
                         *(_len(14, _str(1, k) + _str(2, v)) for k, v in sorted(metadata.items()))])


# -- dlib network spec -> graph ----------------------------------------------------------------------------
class _Builder:
    """Emits the graph of a :class:`~sdk.models.dlib_arch.DlibResNetSpec` (the one definition of the network)."""

    def __init__(self, spec: DlibResNetSpec):
        self.spec = spec
        self.g = _Graph()

    def conv(self, c: ConvSpec, x: str, shape: Shape) -> tuple[str, Shape]:
        """``con`` with its ``affine`` folded in (float64, stored as float32), then ``Relu`` when enabled."""
        w = c.weight.astype(np.float64)
        b = c.bias.astype(np.float64)
        if c.affine:
            gamma, beta = c.gamma.astype(np.float64), c.beta.astype(np.float64)
            w = w * gamma[:, None, None, None]
            b = b * gamma + beta
        k = self.g._n + 1
        wn = self.g.init(f"conv{k}.weight", w.astype(np.float32))
        bn = self.g.init(f"conv{k}.bias", b.astype(np.float32))
        (py, px), (sy, sx) = c.pad, c.stride
        y = self.g.node("Conv", [x, wn, bn], kernel_shape=list(c.kernel), strides=[sy, sx], pads=[py, px, py, px])
        if c.relu:
            y = self.g.node("Relu", [y])
        return y, conv_shape(c, shape)

    def pool(self, p: PoolSpec, x: str, shape: Shape) -> tuple[str, Shape]:
        if p.kind == "global":  # avg_pool_everything
            return self.g.node("GlobalAveragePool", [x]), pool_shape(p, shape)
        (py, px), (sy, sx) = p.pad, p.stride
        op = "MaxPool" if p.kind == "max" else "AveragePool"
        y = self.g.node(op, [x], kernel_shape=list(p.kernel), strides=[sy, sx], pads=[py, px, py, px])
        return y, pool_shape(p, shape)

    def add_prev(self, a: str, sa: Shape, b: str, sb: Shape) -> tuple[str, Shape]:
        """dlib ``add_prev``: sum over the larger shape; the smaller operand zero-padded at the ends."""
        s = add_prev_shape(sa, sb)
        a, b = self.pad_to(a, sa, s), self.pad_to(b, sb, s)
        return self.g.node("Add", [a, b]), s

    def pad_to(self, x: str, shape: Shape, target: Shape) -> str:
        if shape == target:
            return x
        dc, dh, dw = (t - s for s, t in zip(shape, target))
        pads = self.g.init(f"pads{self.g._n + 1}", np.array([0, 0, 0, 0, 0, dc, dh, dw], np.int64))
        return self.g.node("Pad", [x, pads])  # mode "constant", value 0: the defaults

    def build(self) -> int:
        """Emit the whole network; returns the descriptor size."""
        spec, g = self.spec, self.g
        mean = np.array(spec.mean_rgb, np.float32).reshape(1, 3, 1, 1)
        x = g.node("Cast", [INPUT_NAME], to=_FLOAT)
        x = g.node("Transpose", [x], perm=[0, 3, 1, 2])
        x = g.node("Sub", [x, g.init("mean_rgb", mean)])
        x = g.node("Mul", [x, g.init("inv_256", np.array(1.0 / 256.0, np.float32))])  # exact: a power of two
        shape: Shape = (3, spec.input_size, spec.input_size)
        x, shape = self.conv(spec.stem, x, shape)
        x, shape = self.pool(spec.stem_pool, x, shape)
        for u in spec.units:
            y, ys = self.conv(u.conv1, x, shape)
            y, ys = self.conv(u.conv2, y, ys)
            if not u.down:  # ares: add_prev1<block<tag1>>
                x, shape = self.add_prev(y, ys, x, shape)
            else:  # ares_down: add_prev2<avg_pool<skip1<tag2<block<tag1>>>>>
                p, ps = self.pool(u.skip_pool, x, shape)
                x, shape = self.add_prev(p, ps, y, ys)
            if u.relu:
                x = g.node("Relu", [x])
        x, shape = self.pool(spec.head_pool, x, shape)
        x = g.node("Flatten", [x], axis=1)
        fc = spec.fc
        if fc.has_bias:
            x = g.node("MatMul", [x, g.init("fc.weight", fc.weight)])
            x = g.node("Add", [x, g.init("fc.bias", fc.bias)], output=OUTPUT_NAME)
        else:
            x = g.node("MatMul", [x, g.init("fc.weight", fc.weight)], output=OUTPUT_NAME)
        return fc.nout


def dlib_net_to_onnx(net: DlibNet, source_sha256: str = "") -> bytes:
    """ONNX model bytes for a parsed dlib face recognition network (see the module doc).

    Raises :class:`~sdk.errors.ModelFileError` naming ``net.path`` when the network is not dlib's
    ``anet_type`` family (150x150 RGB input, conv/affine/relu stem, residual units, global pool, fc); the layer
    list is read into a spec by :func:`sdk.models.dlib_arch.resnet_spec`, the one definition of the network."""
    return dlib_spec_to_onnx(resnet_spec(net), source_sha256)


def dlib_spec_to_onnx(spec: DlibResNetSpec, source_sha256: str = "") -> bytes:
    """ONNX model bytes of a :class:`~sdk.models.dlib_arch.DlibResNetSpec` with weights (what
    :func:`dlib_net_to_onnx` writes for a ``.dat``; the trainer's port builds its modules from the same spec)."""
    b = _Builder(spec)
    dim = b.build()
    n = "N"
    doc = ("dlib face recognition ResNet (dlib_face_recognition_resnet_model_v1 family), built by "
           "sdk.models.dlib_onnx from the .dat. Input: uint8 RGB chips (N,150,150,3) aligned like "
           "dlib.get_face_chip(img, shape, 150, 0.25). Output: raw (unnormalised) dlib descriptors.")
    meta = {"dlib_dat_sha256": source_sha256} if source_sha256 else {}
    return b.g.model("dlib_face_recognition_resnet",
                     [_value_info(INPUT_NAME, _UINT8, [n, spec.input_size, spec.input_size, 3])],
                     [_value_info(OUTPUT_NAME, _FLOAT, [n, dim])], doc, meta)


def build_dlib_onnx(dat_path: str | os.PathLike) -> bytes:
    """Read dlib's ``dlib_face_recognition_resnet_model_v1.dat`` and return an equivalent ONNX model (bytes).

    Input ``chips``: uint8 (N, 150, 150, 3) RGB; output ``descriptor``: float32 (N, 128), raw dlib
    descriptors (not normalised).  Deterministic: the same ``.dat`` bytes give the same model bytes.
    Raises :class:`~sdk.errors.ModelFileError` naming the file when it is missing, truncated, or not this
    network.
    """
    net, data = read_dat_with_bytes(dat_path)
    return dlib_net_to_onnx(net, hashlib.sha256(data).hexdigest())
