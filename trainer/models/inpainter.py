"""Face inpainter: DeepFill v1-style coarse-to-fine generator with contextual attention (Yu et al. 2018),
sized for the edge, plus the WGAN-GP critics (global + local) used to train it (ID-GAN, Ge et al. TCSVT).

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

Critics (WGAN-GP: no normalisation, linear output):

* :class:`GlobalDiscriminator` -- the whole 112x112 image.
* :class:`LocalDiscriminator` -- the *bounding box of M*, made square (side = the longer box side, at
  least ``min_box`` px, clamped into the image) and resampled to ``local_size`` x ``local_size`` (64)
  with ``F.affine_grid``/``F.grid_sample`` (bilinear), one box per sample, batched
  (:func:`mask_boxes`, :func:`crop_boxes`). The same boxes must be used for real and fake images
  (the crop is linear, so WGAN-GP interpolates commute with it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .contextual_attention import ContextualAttention

__all__ = ["InpainterConfig", "Generator", "GlobalDiscriminator", "LocalDiscriminator", "mask_boxes",
           "crop_boxes", "count_params", "count_flops", "load_checkpoint", "export_onnx",
           "INPUT_SIZE"]

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


def _critic(w: int, n_down: int, size: int) -> nn.Sequential:
    layers: list = []
    cin = 3
    for i in range(n_down):
        cout = w * min(2 ** i, 4)
        layers += [nn.Conv2d(cin, cout, 5, 2, 2), nn.LeakyReLU(0.2)]
        cin = cout
        size = (size + 1) // 2
    layers += [nn.Flatten(), nn.Linear(cin * size * size, 1)]
    return nn.Sequential(*layers)


class GlobalDiscriminator(nn.Module):
    """WGAN critic on the whole image: 4 stride-2 5x5 convs (112 -> 7) + linear. (B,3,112,112) -> (B,)."""

    def __init__(self, config: InpainterConfig | None = None, size: int = INPUT_SIZE):
        super().__init__()
        self.config = config or InpainterConfig()
        self.net = _critic(self.config.disc_width, 4, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def mask_boxes(mask: torch.Tensor, min_box: int = 24) -> torch.Tensor:
    """Square box around each sample's hole: (B, 4) float (x0, y0, side_x, side_y) in pixels.

    Side = max(box width, box height, min_box) (<= image side), centred on the box and clamped into the
    image. A sample without hole gets the whole image.
    """
    B, _, H, W = mask.shape
    m = mask[:, 0] > 0.5
    rows, cols = m.any(2), m.any(1)  # (B, H), (B, W)
    ar_h = torch.arange(H, device=mask.device, dtype=torch.float32)
    ar_w = torch.arange(W, device=mask.device, dtype=torch.float32)
    big = 1e9
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -big).amax(1) + 1
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -big).amax(1) + 1
    has = rows.any(1)
    side = torch.maximum(torch.maximum(y1 - y0, x1 - x0), torch.full_like(y0, float(min_box)))
    side = torch.minimum(side, torch.full_like(side, float(min(H, W))))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    by = torch.clamp(cy - side / 2, min=0.0)
    by = torch.minimum(by, H - side)
    bx = torch.clamp(cx - side / 2, min=0.0)
    bx = torch.minimum(bx, W - side)
    full = torch.tensor([0.0, 0.0, float(W), float(H)], device=mask.device)
    box = torch.stack([bx, by, side, side], 1)
    return torch.where(has[:, None], box, full)


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each sample's box (x0, y0, w, h pixels, edges) to ``size`` x ``size``, bilinear, batched.

    ``F.affine_grid`` with align_corners=False: output normalised u in [-1, 1] maps to input normalised
    ``(2 * (x0 + (u + 1) / 2 * w)) / W - 1``, i.e. scale w/W and offset (2 x0 + w) / W - 1.
    """
    B, C, H, W = x.shape
    x0, y0, bw, bh = boxes.unbind(1)
    theta = torch.zeros(B, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = bw / W
    theta[:, 0, 2] = (2 * x0 + bw) / W - 1
    theta[:, 1, 1] = bh / H
    theta[:, 1, 2] = (2 * y0 + bh) / H - 1
    grid = F.affine_grid(theta, [B, C, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class LocalDiscriminator(nn.Module):
    """WGAN critic on the hole's square bounding box resampled to ``local_size`` (64): 3 stride-2 convs.

    ``forward(x, boxes)`` with boxes from :func:`mask_boxes` (computed once per batch and shared by the
    real and the fake image), or ``forward(crops)`` on already cropped (B, 3, s, s) patches.
    """

    def __init__(self, config: InpainterConfig | None = None):
        super().__init__()
        self.config = config or InpainterConfig()
        self.net = _critic(self.config.disc_width, 3, self.config.local_size)

    def crop(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return crop_boxes(x, boxes, self.config.local_size)

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        if boxes is not None:
            x = self.crop(x, boxes)
        return self.net(x).squeeze(1)


# --------------------------------------------------------------------------------------------- utilities
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: Generator, size: int = INPUT_SIZE) -> float:
    """FLOPs of one ``size`` x ``size`` completion (``torch.utils.flop_counter.FlopCounterMode``: convs,
    matmuls -- incl. the contextual attention's score and paste matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = torch.zeros(1, 3, size, size, device=dev)
    m = torch.zeros(1, 1, size, size, device=dev)
    m[:, :, size // 4: size // 2, size // 4: 3 * size // 4] = 1
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, m)
    model.train(was)
    return float(fc.get_total_flops())


def load_checkpoint(path, discriminators: dict[str, nn.Module] | None = None) -> tuple[Generator, dict]:
    """``(generator in eval mode, checkpoint JSON)`` from an inpainter run folder, a checkpoint stem / file
    (:mod:`trainer.checkpoints`; a generator snapshot too) or an older run folder (``generator.safetensors`` +
    ``config.json``); loads the critics in place when given and saved (modules ``"global"`` / ``"local"``)."""
    from trainer.checkpoints import CheckpointError
    from trainer.checkpoints import load_checkpoint as load

    ck = load(path, module="generator")
    cfg = (ck.meta.get("models") or {}).get("generator")
    if cfg is None:
        raise CheckpointError(f"{path}: no generator config in the checkpoint (an older bare snapshot: build "
                              "Generator(InpainterConfig(width=...)) and load Checkpoint.state('generator'))")
    g = Generator(InpainterConfig(**cfg))
    g.load_state_dict(ck.state("generator"), strict=True)
    for n, d in (discriminators or {}).items():
        if ck.has(n):
            d.load_state_dict(ck.state(n), strict=True)
    return g.eval(), ck.meta


class _Completion(nn.Module):
    """``forward(x, mask) -> completed`` only (what the ONNX graph computes)."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.generator(x, mask)


def export_onnx(generator: Generator, path, size: int = INPUT_SIZE, dynamic_batch: bool = True) -> Path:
    """Export ``forward(x, mask) -> completed`` to ONNX opset 17 (``dynamo=False``); inputs ``image``
    (B, 3, size, size) in [-1, 1] and ``mask`` (B, 1, size, size), output ``completed``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was = generator.training
    generator.eval()
    x = torch.zeros(1, 3, size, size)
    m = torch.zeros(1, 1, size, size)
    axes = {"image": {0: "batch"}, "mask": {0: "batch"}, "completed": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(_Completion(generator), (x, m), str(path), input_names=["image", "mask"], output_names=["completed"],
                      opset_version=17, dynamo=False, dynamic_axes=axes)
    generator.train(was)
    return path
