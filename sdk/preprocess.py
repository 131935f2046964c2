"""One record of how a stage's graph wants its input: :class:`Preprocess`.

Every model stage in a bundle manifest carries one ``"preprocess"`` object, written by the exporter from the
same record the trainer used, and read by the SDK. Nobody normalises by a private convention::

    "preprocess": {"crop": "arcface112", "colour": "bgr", "dtype": "float32",
                   "scale": 0.00784313725490196, "offset": -1.0, "layout": "nchw"}

The SDK cuts crops as uint8 BGR ``(N, H, W, 3)`` (OpenCV order); :meth:`Preprocess.apply` turns them into the
graph's input: colour order first, then ``x * scale + offset`` in ``dtype`` (per channel when ``scale`` /
``offset`` are 3-tuples, in the *graph's* colour order), then the layout. ``scale=1, offset=0, dtype=uint8``
means the graph normalises inside itself (it still says so here, so every reader agrees).

Arithmetic (:meth:`Preprocess.normalise`): float32, computed as ``x / (1 / scale) + offset``. For the usual
scales (``1/127.5``, ``1/128``, ``1/255``) ``1 / scale`` is exact, so this reproduces the common training code
``x / 127.5 - 1`` and ``(x - 127.5) / 128`` bit for bit (``x * float32(1/127.5)`` differs in the last bit for
111 of the 256 byte values). Readers on other frameworks (the trainer's torch mirror) should divide the same way.

Layouts: ``"nhwc"``, ``"nchw"`` and ``"nwhc"`` (width-major, as MTCNN's Keras-exported networks read images).

Crops (see :mod:`sdk.align`): ``"arcface112"`` (112x112 ArcFace template), ``"dlib150"`` (dlib's 150x150 chip),
``"frame"`` (the whole frame, for detectors; the detector owns its resizing).

This module is numpy-only: the trainer mirrors :meth:`Preprocess.apply` on torch tensors with the same fields.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from sdk.errors import BundleError

CROPS = ("arcface112", "dlib150", "frame")
COLOURS = ("bgr", "rgb", "grey")
DTYPES = ("uint8", "float32", "float16")
LAYOUTS = ("nhwc", "nchw", "nwhc")


def _as_scalar_or_triple(v: Any, what: str) -> float | tuple[float, float, float]:
    if isinstance(v, (list, tuple)):
        if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise BundleError(f"preprocess {what!r} must be a number or 3 numbers, got {v!r}")
        t = tuple(float(x) for x in v)
        if not all(np.isfinite(t)):
            raise BundleError(f"preprocess {what!r} must be finite, got {v!r}")
        return t  # type: ignore[return-value]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
        raise BundleError(f"preprocess {what!r} must be a finite number or 3 numbers, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Preprocess:
    """How uint8 BGR crops become a graph's input tensor.

    Attributes:
        crop: crop geometry name (:data:`CROPS`).
        colour: channel order the graph expects: ``"bgr"``, ``"rgb"`` or ``"grey"`` (1 channel, ITU-R 601 luma).
        dtype: input dtype: ``"uint8"``, ``"float32"`` or ``"float16"``.
        scale, offset: ``x_graph = x_uint8 * scale + offset`` (per channel when 3-tuples, graph colour order).
        layout: ``"nhwc"``, ``"nchw"`` or ``"nwhc"``.
    """

    crop: str = "arcface112"
    colour: str = "bgr"
    dtype: str = "uint8"
    scale: float | tuple[float, float, float] = 1.0
    offset: float | tuple[float, float, float] = 0.0
    layout: str = "nhwc"

    def __post_init__(self) -> None:
        for name, allowed in (("crop", CROPS), ("colour", COLOURS), ("dtype", DTYPES), ("layout", LAYOUTS)):
            v = getattr(self, name)
            if v not in allowed:
                raise BundleError(f"preprocess {name!r} must be one of {list(allowed)}, got {v!r}")
        scale = _as_scalar_or_triple(self.scale, "scale")
        offset = _as_scalar_or_triple(self.offset, "offset")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "offset", offset)
        if self.dtype == "uint8" and (scale != 1.0 or offset != 0.0):
            raise BundleError("preprocess: dtype 'uint8' takes the crop as it is (scale 1, offset 0); "
                              f"got scale {scale!r}, offset {offset!r}")
        if 0.0 in (scale if isinstance(scale, tuple) else (scale,)):
            raise BundleError(f"preprocess 'scale' must be non-zero, got {scale!r}")
        if self.colour == "grey" and (isinstance(scale, tuple) or isinstance(offset, tuple)):
            raise BundleError("preprocess: a 'grey' input has one channel; scale/offset must be single numbers")

    # -- manifest I/O ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "preprocess") -> "Preprocess":
        """Parse a manifest ``"preprocess"`` object; :class:`BundleError` naming ``where`` on anything odd."""
        if not isinstance(raw, Mapping):
            raise BundleError(f"{where}: must be an object, got {type(raw).__name__}")
        known = {"crop", "colour", "dtype", "scale", "offset", "layout"}
        unknown = set(raw) - known
        if unknown:
            raise BundleError(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(known)}")
        try:
            return cls(**dict(raw))
        except BundleError as e:
            raise BundleError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        for k in ("scale", "offset"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    # -- the one implementation ------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1 if self.colour == "grey" else 3

    def input_shape(self, height: int, width: int, batch: int | str = "N") -> tuple:
        """The graph input's shape for crops of ``height x width`` (``batch`` may be a symbolic name)."""
        c = self.channels
        return {"nhwc": (batch, height, width, c), "nchw": (batch, c, height, width),
                "nwhc": (batch, width, height, c)}[self.layout]

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """float32 ``x / (1 / scale) + offset`` of values ``x`` in [0, 255] (channels last, graph colour order).

        The arithmetic of :meth:`apply` without the colour, dtype and layout steps; detectors use it on the
        float pixels of resized patches. See the module docstring for why it divides.
        """
        x = np.asarray(x, np.float32)
        inv = np.float32(1.0) / np.asarray(self.scale, np.float64)  # exact for 1/127.5, 1/128, 1/255
        return x / inv.astype(np.float32) + np.asarray(self.offset, np.float32)

    def value_range(self) -> tuple[float, float]:
        """``(lowest, highest)`` graph value of a pixel: what bytes 0 and 255 map to (smallest over channels)."""
        lo = self.normalise(np.zeros(3 if isinstance(self.scale, tuple) or isinstance(self.offset, tuple) else 1))
        hi = self.normalise(np.full(lo.shape, 255.0))
        return float(np.minimum(lo, hi).min()), float(np.maximum(lo, hi).max())

    def invert(self, y: np.ndarray) -> np.ndarray:
        """A graph's image *output* in this record's convention -> uint8 BGR ``(N, H, W, 3)``.

        For graphs that return images (the inpainter): the layout is undone, values are clipped to
        :meth:`value_range`, mapped back by ``(y - offset) * (1 / scale)``, rounded half to even and cast to
        uint8, and the colour order is turned back into BGR (a grey output is repeated into 3 channels).
        """
        y = np.asarray(y)
        if y.ndim != 4:
            raise ValueError(f"expected a 4-d {self.layout.upper()} image batch, got shape {y.shape}")
        if self.layout == "nchw":
            y = y.transpose(0, 2, 3, 1)
        elif self.layout == "nwhc":
            y = y.transpose(0, 2, 1, 3)
        if self.dtype != "uint8":
            lo, hi = self.value_range()
            inv = np.float32(1.0) / np.asarray(self.scale, np.float64)
            x = (np.clip(y.astype(np.float32, copy=False), lo, hi) - np.asarray(self.offset, np.float32)) \
                * inv.astype(np.float32)
            y = np.rint(x).clip(0, 255).astype(np.uint8)
        if self.colour == "rgb":
            y = y[..., ::-1]
        elif self.colour == "grey":
            y = np.repeat(y[..., :1], 3, axis=3)
        return np.ascontiguousarray(y)

    def apply(self, crops_bgr: np.ndarray) -> np.ndarray:
        """uint8 BGR crops ``(N, H, W, 3)`` -> the graph's input array (contiguous, ``dtype``, ``layout``).

        Raises:
            TypeError: ``crops_bgr`` is not a uint8 array.
            ValueError: it is not ``(N, H, W, 3)``.
        """
        if not isinstance(crops_bgr, np.ndarray) or crops_bgr.dtype != np.uint8:
            raise TypeError(f"crops must be a uint8 numpy array (N, H, W, 3) BGR, got "
                            f"{getattr(crops_bgr, 'dtype', type(crops_bgr).__name__)}")
        if crops_bgr.ndim != 4 or crops_bgr.shape[-1] != 3:
            raise ValueError(f"crops must be (N, H, W, 3) BGR, got shape {crops_bgr.shape}")
        if self.dtype == "float32" and self.layout == "nchw" and self.colour in ("rgb", "bgr"):
            return self._float_nchw(crops_bgr)
        if self.colour == "rgb":
            x = crops_bgr[..., ::-1]
        elif self.colour == "grey":
            b, g, r = (crops_bgr[..., i].astype(np.float32) for i in range(3))
            x = 0.299 * r + 0.587 * g + 0.114 * b
            x = np.rint(x).clip(0, 255).astype(np.uint8)[..., None]
        else:
            x = crops_bgr
        if self.dtype != "uint8":
            x = self.normalise(x).astype(self.dtype, copy=False)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        elif self.layout == "nwhc":
            x = x.transpose(0, 2, 1, 3)
        return np.ascontiguousarray(x)


    def _float_nchw(self, crops_bgr: np.ndarray) -> np.ndarray:
        """:meth:`apply` for float32 NCHW colour input in two passes per channel (divide, add) written straight
        into the output: the same float32 arithmetic as :meth:`normalise`, so bit-identical, ~3x faster on a
        640x480 frame than casting, normalising and transposing whole arrays."""
        n, h, w, _ = crops_bgr.shape
        out = np.empty((n, 3, h, w), np.float32)
        inv = (np.float32(1.0) / np.asarray(self.scale, np.float64)).astype(np.float32) * np.ones(3, np.float32)
        off = np.asarray(self.offset, np.float32) * np.ones(3, np.float32)
        order = (2, 1, 0) if self.colour == "rgb" else (0, 1, 2)
        for c, src in enumerate(order):
            np.divide(crops_bgr[..., src], inv[c], out=out[:, c], dtype=np.float32)
            np.add(out[:, c], off[c], out=out[:, c])
        return out


def pm1(crop: str, colour: str = "bgr", layout: str = "nchw") -> Preprocess:
    """The ``[-1, 1]`` float convention (``x / 127.5 - 1``) for ``crop`` in ``colour`` order."""
    return Preprocess(crop=crop, colour=colour, dtype="float32", scale=1.0 / 127.5, offset=-1.0, layout=layout)


def raw_uint8(crop: str, colour: str = "bgr", layout: str = "nhwc") -> Preprocess:
    """uint8 crops as they are: the graph normalises inside itself."""
    return Preprocess(crop=crop, colour=colour, dtype="uint8", layout=layout)


def legacy_input(text: str, crop: str, where: str = "stage") -> Preprocess:
    """The record a version-1 manifest's ``config.input`` string stands for.

    Version-1 strings are ``"uint8_<layout>_<colour>"`` (e.g. ``"uint8_nhwc_rgb"``): uint8 crops, normalised
    inside the graph. Kinds with other old conventions (the inpainter's ``"bgr"``) map them themselves.

    Raises:
        BundleError: any other string (naming ``where``).
    """
    parts = str(text).split("_")
    if len(parts) != 3 or parts[0] != "uint8" or parts[1] not in LAYOUTS or parts[2] not in COLOURS:
        raise BundleError(f"{where}: input {text!r} is not a known convention (version-1 manifests know "
                          "'uint8_<layout>_<colour>', e.g. 'uint8_nhwc_bgr'; version 2 states a 'preprocess' record)")
    try:
        return raw_uint8(crop, parts[2], parts[1])
    except BundleError as e:
        raise BundleError(f"{where}: {e}") from None
