"""The trainer's side of :class:`sdk.preprocess.Preprocess`: model inputs built from the same record the SDK reads.

Every trainable stage names its input as one :class:`~sdk.preprocess.Preprocess` (crop, colour order, dtype,
scale / offset, layout); the training loop builds its batches with :func:`apply_torch` (a torch mirror of
:meth:`Preprocess.apply`, bit-identical to it on the same uint8 BGR crops, ``tests/test_trainer_preprocess.py``) and
the checkpoint's JSON records the record (``"preprocess"``), so the exporter can write it into the bundle manifest.

The records of this repository's models (:data:`STAGE_PREPROCESS`):

* ``segmenter`` / ``inpainter``: 112x112 ArcFace crop, BGR, float32 ``x / 127.5 - 1`` (scale ``1/127.5``,
  offset ``-1``), NCHW.
* students: float32 RGB in [0, 255], NCHW (scale 1, offset 0) -- ``dlib150`` chips for the dlib ResNet (which
  subtracts its means and divides by 256 inside), ``arcface112`` crops for ResNet-18 / MobileFaceNet (which
  normalise inside, :class:`trainer.student.models.ArcInput`).

An exported graph that takes uint8 crops and normalises inside itself is described in the manifest by
:func:`graph_input` (the same crop and colour order, uint8, NHWC).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdk.preprocess import Preprocess, pm1, raw_uint8

if TYPE_CHECKING:
    import torch

__all__ = ["apply_torch", "graph_input", "student_preprocess", "SEGMENTER", "INPAINTER", "STAGE_PREPROCESS"]

#: the occlusion segmenter's input: 112x112 ArcFace crop, BGR, [-1, 1], NCHW
SEGMENTER = pm1("arcface112", colour="bgr", layout="nchw")
#: the inpainter generator's image input: the same convention
INPAINTER = pm1("arcface112", colour="bgr", layout="nchw")


def student_preprocess(crop: str) -> Preprocess:
    """A student's input: float32 RGB [0, 255] NCHW of ``crop`` (``"dlib150"`` or ``"arcface112"``)."""
    return Preprocess(crop=crop, colour="rgb", dtype="float32", scale=1.0, offset=0.0, layout="nchw")


STAGE_PREPROCESS: dict[str, Preprocess] = {"segmenter": SEGMENTER, "inpainter": INPAINTER,
                                           "student_dlib": student_preprocess("dlib150"),
                                           "student_arcface": student_preprocess("arcface112")}

_DTYPES = {"uint8": "uint8", "float32": "float32", "float16": "float16"}


def apply_torch(pre: Preprocess, crops: "torch.Tensor", colour_in: str = "bgr") -> "torch.Tensor":
    """uint8 crops ``(N, H, W, 3)`` (``colour_in`` order: ``"bgr"``, as the SDK cuts them, or ``"rgb"``) -> the
    model's input tensor, exactly as :meth:`Preprocess.apply` computes it (float32 ``x / (1 / scale) + offset``, then
    cast to ``dtype``, then ``layout``).

    Raises:
        TypeError: ``crops`` is not a uint8 tensor.
        ValueError: it is not ``(N, H, W, 3)`` or ``colour_in`` is neither ``"bgr"`` nor ``"rgb"``.
    """
    import torch

    if not isinstance(crops, torch.Tensor) or crops.dtype != torch.uint8:
        raise TypeError(f"crops must be a uint8 tensor (N, H, W, 3), got {getattr(crops, 'dtype', type(crops))}")
    if crops.dim() != 4 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be (N, H, W, 3), got shape {tuple(crops.shape)}")
    if colour_in not in ("bgr", "rgb"):
        raise ValueError(f"colour_in must be 'bgr' or 'rgb', got {colour_in!r}")
    x = crops
    if pre.colour == "grey":
        bgr = x if colour_in == "bgr" else x.flip(-1)
        b, g, r = (bgr[..., i].to(torch.float32) for i in range(3))
        x = (0.299 * r + 0.587 * g + 0.114 * b).round().clamp(0, 255).to(torch.uint8)[..., None]
    elif pre.colour != colour_in:
        x = x.flip(-1)
    if pre.dtype != "uint8":
        # the SDK's arithmetic (Preprocess.normalise): divide by float32(1 / scale), then add the offset
        inv = torch.tensor(np.float32(1.0) / np.asarray(pre.scale, np.float64), dtype=torch.float32)
        offset = torch.tensor(pre.offset, dtype=torch.float32)
        x = x.to(torch.float32) / inv + offset
        x = x.to(getattr(torch, _DTYPES[pre.dtype]))
    if pre.layout == "nchw":
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


def graph_input(pre: Preprocess) -> Preprocess:
    """The record of an exported graph that takes uint8 crops and applies ``pre`` inside itself: same crop and
    colour order, ``uint8``, NHWC (what the exported segmenter / embedder graphs take)."""
    return raw_uint8(pre.crop, colour=pre.colour, layout="nhwc")
