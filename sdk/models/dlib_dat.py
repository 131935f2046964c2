"""Reader for dlib's serialized DNN files (``*.dat`` written by ``dlib::serialize(net)``), no dlib needed.

Only what ``dlib_face_recognition_resnet_model_v1.dat`` (dlib's ``anet_type``) uses is understood; any
other layer kind is rejected with a :class:`~sdk.errors.ModelFileError` (a ``ValueError``) naming the file.
Part of the SDK runtime (numpy only): :mod:`sdk.models.dlib_arch` reads the layer list into the one spec of the
network, which both the ONNX builder (:mod:`sdk.models.dlib_onnx`) and the trainer's PyTorch port walk.

The byte format (dlib/serialize.h, dlib/dnn/core.h, dlib/dnn/layers.h, dlib/cuda/tensor.h):

* integers: a control byte (bit 0x80 = negative, low 4 bits = byte count n <= 8), then n bytes of
  the absolute value, little endian.  ``0x00`` is the number 0.
* bool: one ASCII byte, ``'0'`` or ``'1'``.
* float / double: ``float_details``: mantissa (int64) then exponent (int16), both as integers above;
  value = mantissa * 2**exponent (exponents 32000..32002 are +inf, -inf, nan).
* std::string: length (integer above), then the raw bytes.
* tensor (resizable_tensor): int version (2), num_samples, k, nr, nc, then num_samples*k*nr*nc raw
  little-endian IEEE float32 values (not the compact float format).
* alias_tensor: int version (1), num_samples, k, nr, nc (a view into the layer's ``params``).
* the network nests outermost first: ``add_loss_layer`` = int version, loss details, subnet.
  ``add_layer`` (version 1/2) = int version, **subnet**, then the layer details, three bools
  (setup called, gradient stale, output/gradient disabled), tensors x_grad and cached_output and
  (version 2) params_grad.  The innermost ``add_layer`` (whose subnet is the input layer) = int
  version (2/3), input layer details, layer details, three bools, tensors x_grad, cached_output,
  grad_final and (version 3) an int sample_expansion_factor.  ``tag<N>``/``skip<N>`` wrappers are
  int version 1 then subnet: nothing else, and in particular not their id nor which kind they are,
  so the topology (which tag an ``add_prev`` adds) lives in the C++ type, not in the file.
  Hence the stream is: a run of wrapper versions (outer -> inner), the input layer, then every
  layer's details from the input side outwards.

``read_dat(path)`` returns a :class:`DlibNet` whose ``layers`` are in forward order (input side
first): one :class:`DlibLayer` per ``add_layer`` plus ``kind == "tag_or_skip"`` markers where a
tag/skip wrapper sat.  Parameters are numpy float32 arrays.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdk.errors import ModelFileError

__all__ = ["DlibLayer", "DlibNet", "parse_dat_bytes", "read_dat", "read_dat_with_bytes"]

_MAX_STR = 256  # no version string in dlib's dnn is longer; a larger length means foreign data
_MAX_NESTING = 10_000


@dataclass
class DlibLayer:
    kind: str  # con | affine | relu | max_pool | avg_pool | add_prev | fc | tag_or_skip
    version: str = ""  # the version string dlib wrote ("con_4", "affine_", ...); "" for markers
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # name -> np.ndarray(float32)

    def __repr__(self) -> str:  # short: shapes, not values
        shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        return f"DlibLayer({self.kind!r}, {self.version!r}, {self.attrs}, {shapes})"


@dataclass
class DlibNet:
    path: str
    loss: dict
    input: dict
    layers: list[DlibLayer]

    def of_kind(self, kind: str) -> list[DlibLayer]:
        return [layer for layer in self.layers if layer.kind == kind]


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.b = data
        self.i = 0
        self.path = path

    # -- errors ---------------------------------------------------------------------------------
    def fail(self, what: str) -> ModelFileError:
        return ModelFileError(self.path, f"not a dlib DNN file this reader understands: {what} "
                                         f"(at byte {self.i} of {len(self.b)})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.i + n > len(self.b):
            raise ModelFileError(self.path, f"truncated dlib file: needed {n} more byte(s) for {what} "
                                            f"at byte {self.i}, file has {len(self.b)}")

    # -- primitives -----------------------------------------------------------------------------
    def int(self, what: str = "integer") -> int:
        self.need(1, what)
        c = self.b[self.i]
        if c & 0x70:
            raise self.fail(f"bad integer control byte 0x{c:02x} for {what}")
        n = c & 0x0F
        if n > 8:
            raise self.fail(f"integer of {n} bytes for {what}")
        self.i += 1
        self.need(n, what)
        v = int.from_bytes(self.b[self.i:self.i + n], "little")
        self.i += n
        return -v if c & 0x80 else v

    def peek_int(self) -> int | None:
        j = self.i
        try:
            return self.int()
        except ValueError:
            return None
        finally:
            self.i = j

    def bool(self, what: str = "bool") -> bool:
        self.need(1, what)
        c = self.b[self.i]
        if c not in (0x30, 0x31):
            raise self.fail(f"bad bool byte 0x{c:02x} for {what}")
        self.i += 1
        return c == 0x31

    def float(self, what: str = "float") -> float:
        m = self.int(what + " mantissa")
        e = self.int(what + " exponent")
        if e == 32000:
            return math.inf
        if e == 32001:
            return -math.inf
        if e == 32002:
            return math.nan
        return math.ldexp(float(m), e)

    def str(self, what: str = "string") -> str:
        n = self.int(what + " length")
        if not 0 <= n <= _MAX_STR:
            raise self.fail(f"string length {n} for {what}")
        self.need(n, what)
        raw = self.b[self.i:self.i + n]
        self.i += n
        try:
            s = raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII bytes where {what} was expected") from None
        if not s.isprintable():
            raise self.fail(f"unprintable {what} {s!r}")
        return s

    def peek_str(self) -> str | None:
        j = self.i
        try:
            return self.str()
        except ValueError:
            return None
        finally:
            self.i = j

    def tensor(self, what: str = "tensor") -> np.ndarray:
        v = self.int(what + " version")
        if v != 2:
            raise self.fail(f"tensor version {v} for {what} (expected 2)")
        dims = [self.int(what + " dims") for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dims {dims} for {what}")
        count = dims[0] * dims[1] * dims[2] * dims[3]
        self.need(4 * count, f"{what} data ({dims})")
        arr = np.frombuffer(self.b, dtype="<f4", count=count, offset=self.i).astype(np.float32)
        self.i += 4 * count
        return arr.reshape(dims)

    def alias(self, what: str = "alias_tensor") -> tuple[int, int, int, int]:
        v = self.int(what + " version")
        if v != 1:
            raise self.fail(f"alias_tensor version {v} for {what} (expected 1)")
        dims = tuple(self.int(what + " dims") for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative alias dims {dims} for {what}")
        return dims  # type: ignore[return-value]


def _take(params: np.ndarray, offset: int, dims: tuple[int, ...], r: _Reader, what: str) -> np.ndarray:
    n = int(np.prod(dims))
    flat = params.reshape(-1)
    if offset + n > flat.size:
        raise r.fail(f"{what} {dims} at offset {offset} does not fit in params of size {flat.size}")
    return flat[offset:offset + n].reshape(dims).copy()


# -- layer details --------------------------------------------------------------------------------
def _read_details(r: _Reader) -> DlibLayer:
    start = r.i
    ver = r.str("layer version")
    if ver in ("con_4", "con_5", "con_6"):
        params = r.tensor("con params")
        a = {"num_filters": r.int(), "nr": r.int(), "nc": r.int(), "stride_y": r.int(),
             "stride_x": r.int(), "padding_y": r.int(), "padding_x": r.int()}
        fdims = r.alias("con filters")
        bdims = r.alias("con biases")
        for name in ("learning_rate_multiplier", "weight_decay_multiplier",
                     "bias_learning_rate_multiplier", "bias_weight_decay_multiplier"):
            a[name] = r.float(name)
        a["use_bias"] = r.bool("use_bias") if ver in ("con_5", "con_6") else True
        a["use_relu"] = r.bool("use_relu") if ver == "con_6" else False
        fn = int(np.prod(fdims))
        p = {"weight": _take(params, 0, fdims, r, "con filters")}
        if a["use_bias"] and params.size > fn:
            p["bias"] = _take(params, fn, (int(np.prod(bdims)),), r, "con biases")
        return DlibLayer("con", ver, a, p)
    if ver in ("affine_", "affine_2"):
        params = r.tensor("affine params")
        gdims = r.alias("affine gamma")
        bdims = r.alias("affine beta")
        a = {"mode": r.int("affine mode")}  # 0 = CONV_MODE (per channel), 1 = FC_MODE
        a["disabled"] = r.bool("affine disabled") if ver == "affine_2" else False
        gn = int(np.prod(gdims))
        p = {} if a["disabled"] else {
            "gamma": _take(params, 0, gdims, r, "affine gamma"),
            "beta": _take(params, gn, bdims, r, "affine beta")}
        return DlibLayer("affine", ver, a, p)
    if ver in ("bn_con2", "bn_fc2"):  # a batch-norm layer: convert to its affine (test-time) form
        params = r.tensor("bn params")
        gdims = r.alias("bn gamma")
        bdims = r.alias("bn beta")
        r.tensor("bn means")
        r.tensor("bn invstds")
        rmean = r.tensor("bn running_means").reshape(-1)
        rvar = r.tensor("bn running_variances").reshape(-1)
        r.int("num_updates")
        r.int("running_stats_window_size")
        for name in ("lr", "wd", "blr", "bwd"):
            r.float(name)
        eps = r.float("bn eps")
        gn = int(np.prod(gdims))
        g = _take(params, 0, gdims, r, "bn gamma")
        b = _take(params, gn, bdims, r, "bn beta")
        # the same arithmetic dlib's affine_(const bn_&) does, in float32
        g2 = (g.reshape(-1) / np.sqrt(rvar + np.float32(eps))).astype(np.float32)
        b2 = (b.reshape(-1) - g2 * rmean).astype(np.float32)
        mode = 0 if ver == "bn_con2" else 1
        return DlibLayer("affine", ver, {"mode": mode, "disabled": False, "from_bn": True},
                         {"gamma": g2.reshape(gdims), "beta": b2.reshape(bdims)})
    if ver in ("relu_", "relu_2"):
        disabled = r.bool("relu disabled") if ver == "relu_2" else False
        return DlibLayer("relu", ver, {"disabled": disabled})
    if ver in ("max_pool_2", "avg_pool_2"):
        a = {"nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(),
             "padding_y": r.int(), "padding_x": r.int()}
        return DlibLayer(ver[:-2], ver, a)
    if ver == "add_prev_":
        return DlibLayer("add_prev", ver)
    if ver in ("fc_2", "fc_3"):
        a = {"num_outputs": r.int(), "num_inputs": r.int()}
        params = r.tensor("fc params")
        wdims = r.alias("fc weights")
        bdims = r.alias("fc biases")
        a["bias_mode"] = r.int("fc bias mode")  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        for name in ("learning_rate_multiplier", "weight_decay_multiplier",
                     "bias_learning_rate_multiplier", "bias_weight_decay_multiplier"):
            a[name] = r.float(name)
        a["use_bias"] = r.bool("fc use_bias") if ver == "fc_3" else True
        wn = int(np.prod(wdims))
        # dlib's fc computes out = in (N x num_inputs) @ W (num_inputs x num_outputs)
        p = {"weight": _take(params, 0, wdims, r, "fc weights")}
        if a["bias_mode"] == 0 and a["use_bias"] and params.size > wn:
            p["bias"] = _take(params, wn, bdims, r, "fc biases")
        return DlibLayer("fc", ver, a, p)
    r.i = start
    raise r.fail(f"unsupported layer {ver!r}")


def _read_input(r: _Reader) -> dict:
    ver = r.str("input layer version")
    if ver not in ("input_rgb_image_sized", "input_rgb_image"):
        raise r.fail(f"unsupported input layer {ver!r}")
    out = {"kind": ver, "avg_red": r.float(), "avg_green": r.float(), "avg_blue": r.float()}
    if ver == "input_rgb_image_sized":
        out["nr"] = r.int("input nr")
        out["nc"] = r.int("input nc")
    return out


def _read_loss(r: _Reader) -> dict:
    ver = r.str("loss version")
    if ver == "loss_metric_2":
        return {"kind": ver, "margin": r.float("margin"), "dist_thresh": r.float("dist_thresh")}
    if ver == "loss_metric_":
        return {"kind": ver}
    raise r.fail(f"unsupported loss layer {ver!r}")


def _after_details(r: _Reader, version: int, innermost: bool) -> None:
    for what in ("this_layer_setup_called", "gradient_input_is_stale",
                 "get_output_and_gradient_input_disabled"):
        r.bool(what)
    r.tensor("x_grad")
    r.tensor("cached_output")
    if innermost:
        r.tensor("grad_final")
        if version >= 3:
            r.int("sample_expansion_factor")
    elif version == 2:
        r.tensor("params_grad")


def parse_dat_bytes(data: bytes, path: str = "<bytes>") -> DlibNet:
    """Parse the bytes of a dlib DNN ``.dat``; ``path`` only names the data in errors and in the result."""
    r = _Reader(data, path)
    if len(data) < 4:
        raise ModelFileError(path, f"truncated or empty dlib file ({len(data)} bytes)")
    v = r.peek_int()
    if v != 1:
        raise r.fail("does not start with add_loss_layer version 1")
    r.int()
    s = r.peek_str()
    if s is None or not s.startswith("loss_"):
        raise r.fail("no loss layer after the header")
    loss = _read_loss(r)

    wrappers: list[int] = []  # versions, outermost first
    while True:
        if len(wrappers) > _MAX_NESTING:
            raise r.fail("too many nested layers")
        ver = r.int("layer wrapper version")
        s = r.peek_str()
        if s is not None and s.startswith("input"):
            if ver not in (2, 3):
                raise r.fail(f"input add_layer version {ver}")
            inner_version = ver
            break
        if ver not in (1, 2):
            raise r.fail(f"layer wrapper version {ver}")
        wrappers.append(ver)
    inp = _read_input(r)
    layers = [_read_details(r)]
    _after_details(r, inner_version, innermost=True)
    for ver in reversed(wrappers):
        if ver == 1:
            layers.append(DlibLayer("tag_or_skip"))
        else:
            layers.append(_read_details(r))
            _after_details(r, ver, innermost=False)
    if r.i != len(data):
        raise r.fail(f"{len(data) - r.i} trailing byte(s) after the network")
    return DlibNet(path=path, loss=loss, input=inp, layers=layers)


def read_dat(path: str | os.PathLike) -> DlibNet:
    """Parse a dlib DNN ``.dat`` file.

    Raises :class:`~sdk.errors.ModelFileError` (a ``ValueError``) naming the file when it is missing,
    unreadable, truncated, or not a network this reader understands."""
    return read_dat_with_bytes(path)[0]


def read_dat_with_bytes(path: str | os.PathLike) -> tuple[DlibNet, bytes]:
    """Like :func:`read_dat`, also returning the file's bytes (for hashing)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(p, "not found")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelFileError(p, f"cannot read dlib file: {e}") from e
    return parse_dat_bytes(data, str(p)), data

