"""Occlusion segmenter network: a tiny encoder-decoder that predicts the occlusion map M of an aligned face.

Input contract: float32 ``(N, 3, 112, 112)``, **BGR** channel order (OpenCV / SDK crops, no flip needed),
``x = pixel / 127.5 - 1`` in [-1, 1]; the 112x112 ArcFace-aligned crop (``sdk.align.ARCFACE_CROP``).
:class:`sdk.nets.graphs.SegmenterGraph` does it inside the graph (uint8 NHWC BGR in), for the ONNX export and the
torch backend alike; the trainer's :func:`trainer.models.segmenter.preprocess` applies the same record in torch.

Outputs (``forward``): ``(mask_logits (N, 1, 112, 112), occluded_logit (N,))``.

* ``mask_logits``: per-pixel logit of "this pixel is painted by an occluder" (sigmoid -> probability).
* ``occluded_logit``: logit of "any occluder is present" (the SDK's ``Match.occlusion``; unmasked faces
  skip completion).  A learned head (linear -> ReLU -> linear) on the global average- and max-pooled
  bottleneck features concatenated with the max and mean of the predicted mask probabilities; trained with
  BCE against ``M.any()``.

Architecture (``width = w``, default 24; depthwise-separable blocks ``DS`` = dw3x3(stride) -> BN -> ReLU ->
pw1x1 -> BN -> ReLU)::

    112^2 x 3    conv3x3 s2 + BN + ReLU      -> 56^2 x w        (stem)
    56^2  x w    DS                          -> 56^2 x w        e1
    56^2  x w    DS s2, DS                   -> 28^2 x 2w       e2
    28^2  x 2w   DS s2, DS                   -> 14^2 x 4w       e3
    14^2  x 4w   DS s2, DS, DS               -> 7^2  x 6w       e4 (bottleneck)
    up2(e4) ++ e3 -> DS -> 14^2 x 3w ; up2 ++ e2 -> DS -> 28^2 x 2w ; up2 ++ e1 -> DS -> 56^2 x w
    conv1x1 -> 1 logit at 56^2, bilinear x2 -> 112^2

Size at the default width 24: 121,378 parameters and 0.061 GFLOPs (2 x MACs) per 112x112 face
(:func:`count_flops` counts conv/linear MACs; BN folds into the convs at export).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["INPUT_SIZE", "SegmenterConfig", "DS", "OcclusionSegmenter"]

INPUT_SIZE = 112


@dataclass(frozen=True)
class SegmenterConfig:
    """Model hyper-parameters (stored in the checkpoint's JSON)."""

    width: int = 24
    input_size: int = INPUT_SIZE
    head_hidden: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class DS(nn.Sequential):
    """Depthwise-separable conv: dw3x3(stride) -> BN -> ReLU -> pw1x1 -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class OcclusionSegmenter(nn.Module):
    """Tiny UNet: ``forward(x) -> (mask_logits (N,1,112,112), occluded_logit (N,))`` (see module doc)."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.e1 = DS(w, w)
        self.e2 = nn.Sequential(DS(w, 2 * w, 2), DS(2 * w, 2 * w))
        self.e3 = nn.Sequential(DS(2 * w, 4 * w, 2), DS(4 * w, 4 * w))
        self.e4 = nn.Sequential(DS(4 * w, 6 * w, 2), DS(6 * w, 6 * w), DS(6 * w, 6 * w))
        self.d3 = DS(6 * w + 4 * w, 3 * w)
        self.d2 = DS(3 * w + 2 * w, 2 * w)
        self.d1 = DS(2 * w + w, w)
        self.out = nn.Conv2d(w, 1, 1)
        self.head = nn.Sequential(nn.Linear(12 * w + 2, config.head_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(config.head_hidden, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.out.bias, -2.0)  # start near "nothing occluded" (most pixels are clean)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        e1 = self.e1(s)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        e4 = self.e4(e3)
        d = self.d3(torch.cat([_up(e4), e3], 1))
        d = self.d2(torch.cat([_up(d), e2], 1))
        d = self.d1(torch.cat([_up(d), e1], 1))
        logits56 = self.out(d)
        p56 = torch.sigmoid(logits56).flatten(1)
        feats = torch.cat([e4.mean((2, 3)), e4.amax((2, 3)), p56.amax(1, keepdim=True), p56.mean(1, keepdim=True)], 1)
        occ = self.head(feats).squeeze(1)
        return _up(logits56), occ
