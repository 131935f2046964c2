"""Face inpainter, the trainer's side: the WGAN-GP critics (global + local) that train the generator (ID-GAN, Ge et al.
TCSVT), their mask boxes, parameter / FLOP counts, :func:`load_checkpoint` and :func:`export_onnx`.

The generator (:class:`Generator`, :class:`InpainterConfig`; architecture and tensor contract in its module
docstring) is defined once, in :mod:`sdk.nets.inpainter`, so the SDK's torch backend can rebuild it from bundle
weights without the trainer; it is re-exported here.

Critics (WGAN-GP: no normalisation, linear output):

* :class:`GlobalDiscriminator` -- the whole 112x112 image.
* :class:`LocalDiscriminator` -- the *bounding box of M*, made square (side = the longer box side, at
  least ``min_box`` px, clamped into the image) and resampled to ``local_size`` x ``local_size`` (64)
  with ``F.affine_grid``/``F.grid_sample`` (bilinear), one box per sample, batched
  (:func:`mask_boxes`, :func:`crop_boxes`). The same boxes must be used for real and fake images
  (the crop is linear, so WGAN-GP interpolates commute with it).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdk.nets.graphs import InpainterGraph
# the generator is defined once, in the runtime (the SDK's torch backend rebuilds it from bundle weights)
from sdk.nets.inpainter import INPUT_SIZE, Generator, InpainterConfig

__all__ = ["InpainterConfig", "Generator", "GlobalDiscriminator", "LocalDiscriminator", "mask_boxes",
           "crop_boxes", "count_params", "count_flops", "load_checkpoint", "export_onnx",
           "INPUT_SIZE"]


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
    torch.onnx.export(InpainterGraph(generator), (x, m), str(path), input_names=["image", "mask"], output_names=["completed"],
                      opset_version=17, dynamo=False, dynamic_axes=axes)
    generator.train(was)
    return path
