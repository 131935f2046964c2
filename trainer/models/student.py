"""Student embedding networks, the trainer's side: :func:`preprocess` (uint8 RGB -> the students' [-1, 1] input),
parameter / FLOP counts and :func:`model_cost`.

The networks (:class:`ResNet18Embed` -- the paper's ResNet-18 student in insightface's IR form -- and
:class:`MobileFaceNet`; architectures, input contract and costs in its module docstring) are defined once, in
:mod:`sdk.nets.students`, so the SDK's torch backend can rebuild them from bundle weights without the trainer; they
are re-exported here.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# the networks are defined once, in the runtime (the SDK's torch backend rebuilds them from bundle weights)
from sdk.nets.students import (INPUT_SIZE, STUDENTS, Bottleneck, ConvBlock, IBasicBlock,  # noqa: F401
                               MobileFaceNet, ResNet18Embed, build_student)

__all__ = [
    "ResNet18Embed",
    "MobileFaceNet",
    "STUDENTS",
    "build_student",
    "preprocess",
    "count_params",
    "count_flops",
    "model_cost",
    "INPUT_SIZE",
]


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB, NHWC (or one HWC image) -> float32 NCHW ``(x / 255 - 0.5) / 0.5`` in [-1, 1].

    No resizing: pass aligned ``INPUT_SIZE`` x ``INPUT_SIZE`` chips (or whatever ``input_size`` the model
    was built for)."""
    t = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (N, H, W, 3), got {tuple(t.shape)}")
    return ((t.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - 0.5) / 0.5).contiguous()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: int | None = None) -> int:
    """FLOPs (2 x MACs) of one forward pass on a single (1, 3, S, S) image, eval mode, counted by
    ``FlopCounterMode`` (convolutions and matmuls; BN / PReLU / adds are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    s = input_size or getattr(model, "input_size", INPUT_SIZE)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, s, s))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_cost(name: str, **kw) -> dict:
    """{"params": ..., "gflops": ..., "gmacs": ...} of ``build_student(name, **kw)``."""
    m = build_student(name, **kw)
    flops = count_flops(m)
    return {"params": count_params(m), "gflops": flops / 1e9, "gmacs": flops / 2e9}


if __name__ == "__main__":  # python -m trainer.models.student
    for n in STUDENTS:
        c = model_cost(n)
        print(f"{n:14s} {c['params'] / 1e6:6.2f} M params  {c['gflops']:.3f} GFLOPs  ({c['gmacs']:.3f} GMACs)")
