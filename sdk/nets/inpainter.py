"""Face inpainter network: DeepFill v1-style coarse-to-fine generator with contextual attention (Yu et al. 2018),
sized for the edge (trained with the ID-GAN identity loss, Ge et al. TCSVT).

Images are 112x112 ArcFace crops, NCHW float in [-1, 1] (colour order as given -- the trainer feeds BGR, the
repository's crop convention). ``mask`` M is (B, 1, H, W), 1 = hole (occluded, to be completed), 0 = known.

Generator (``forward(x, mask)`` -> completed image)::

    input  = [x * (1 - M), M, ones]                               5 channels (holes zeroed)
    coarse = conv5 -> (s2) -> (s2) -> 28x28: 2 convs, dilated convs (2, 4, 8, 16), 2 convs
             -> up x2 -> convs -> up x2 -> convs -> 3 channels, tanh      -> y1
    xnow   = y1 * M + x * (1 - M)
    refine = two encoders on [xnow, M, ones] down to 28x28:
             (a) dilated conv branch (2, 4, 8, 16)
             (b) contextual attention branch: ReLU features -> ContextualAttention(f=b=feat, mask=M
                 max-pooled to 28x28, ksize 3, rate 2) -> 2 convs
             concat -> decoder as in the coarse net -> tanh                  -> y2
    output = x * (1 - M) + y2 * M                                  known pixels are returned exactly

Plain (not gated) convolutions with ELU, as DeepFill v1; no normalisation layers. The mask is downsampled for
the attention by max-pooling (a 4x4 block is a hole if any pixel of it is), so attention never copies
from a background patch that touches the hole. ``forward(..., return_stages=True)`` also returns the raw
coarse and fine outputs (the training losses need both). Exports to ONNX opset 17 (``dynamo=False``);
the attention's shapes are traced for the export size (112x112), the batch may be dynamic.

The WGAN-GP critics that train it live with the trainer (:mod:`trainer.models.inpainter`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .contextual_attention import ContextualAttention

__all__ = ["INPUT_SIZE", "InpainterConfig", "Generator"]

INPUT_SIZE = 112


@dataclass
class InpainterConfig:
    width: int = 12          #: base channels of the generator (features: w, 2w, 4w at 112, 56, 28 px)
    disc_width: int = 32     #: base channels of the critics
    local_size: int = 64     #: side of the local critic's resampled mask box
    min_box: int = 24        #: minimum side (px) of the local box
    softmax_scale: float = 10.0  #: contextual attention temperature

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin, cout, k=3, s=1, d=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride=s, padding=d * (k - 1) // 2, dilation=d)]
    if act:
        layers.append(nn.ELU())
    return layers


class _Up(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _encoder(cin: int, w: int) -> list:
    return (_conv(cin, w, 5) + _conv(w, 2 * w, 3, 2) + _conv(2 * w, 2 * w) + _conv(2 * w, 4 * w, 3, 2)
            + _conv(4 * w, 4 * w))


def _dilated(w: int) -> list:
    out = []
    for d in (2, 4, 8, 16):
        out += _conv(4 * w, 4 * w, 3, 1, d)
    return out


def _decoder(cin: int, w: int) -> list:
    return (_conv(cin, 4 * w) + _conv(4 * w, 4 * w) + [_Up()] + _conv(4 * w, 2 * w) + _conv(2 * w, 2 * w)
            + [_Up()] + _conv(2 * w, w) + _conv(w, w // 2) + _conv(w // 2, 3, act=False))


class Generator(nn.Module):
    """Coarse-to-fine inpainting generator; see the module docstring.

    ``forward(x, mask)``: x (B, 3, H, W) in [-1, 1] (hole pixels are ignored -- zeroed inside), mask
    (B, 1, H, W) in {0, 1} (1 = hole); H, W multiples of 8 (112 for the edge). Returns the completed
    image ``x * (1 - M) + y2 * M``; with ``return_stages=True`` returns ``(y1, y2, completed)``.
    """

    def __init__(self, config: InpainterConfig | None = None):
        super().__init__()
        self.config = config or InpainterConfig()
        w = self.config.width
        self.coarse = nn.Sequential(*_encoder(5, w), *_dilated(w), *_decoder(4 * w, w))
        self.conv_branch = nn.Sequential(*_encoder(5, w), *_dilated(w))
        self.attn_enc = nn.Sequential(*_encoder(5, w)[:-1], nn.ReLU())  # last ELU -> ReLU (DeepFill)
        self.attention = ContextualAttention(ksize=3, stride=1, rate=2, softmax_scale=self.config.softmax_scale)
        self.attn_post = nn.Sequential(*_conv(4 * w, 4 * w), *_conv(4 * w, 4 * w))
        self.refine_dec = nn.Sequential(*_decoder(8 * w, w))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_stages: bool = False):
        m = (mask > 0.5).to(x.dtype)
        known = 1.0 - m
        xin = x * known
        ones = torch.ones_like(m)
        y1 = torch.tanh(self.coarse(torch.cat([xin, m, ones], 1)))
        xnow = y1 * m + xin
        inp = torch.cat([xnow, m, ones], 1)
        a = self.conv_branch(inp)
        f = self.attn_enc(inp)
        ms = F.max_pool2d(m, 4)  # 112 -> 28, a block with any hole pixel is a hole
        f = self.attn_post(self.attention(f, f, ms))
        y2 = torch.tanh(self.refine_dec(torch.cat([a, f], 1)))
        out = xin + y2 * m
        if return_stages:
            return y1, y2, out
        return out
