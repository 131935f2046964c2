"""Occlusion segmenter, the trainer's side: :func:`preprocess` (the model's input in torch), parameter / FLOP counts
and :func:`load_checkpoint`.

The network itself (:class:`OcclusionSegmenter`, :class:`SegmenterConfig`; architecture, input contract and
outputs in its module docstring) is defined once, in :mod:`sdk.nets.segmenter`, so the SDK's torch backend can
rebuild it from bundle weights without the trainer; it is re-exported here.
"""
from __future__ import annotations

import torch
import torch.nn as nn

# the network is defined once, in the runtime (the SDK's torch backend rebuilds it from bundle weights)
from sdk.nets.segmenter import DS, INPUT_SIZE, OcclusionSegmenter, SegmenterConfig, _up  # noqa: F401

__all__ = ["INPUT_SIZE", "SegmenterConfig", "DS", "OcclusionSegmenter", "preprocess", "count_params", "count_flops",
           "load_checkpoint"]


def preprocess(bgr_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) BGR -> float32 (N, 3, H, W) BGR in [-1, 1] (the model's input contract): the
    :data:`trainer.preprocess.SEGMENTER` record applied in torch."""
    from trainer.preprocess import SEGMENTER, apply_torch

    return apply_torch(SEGMENTER, bgr_u8)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: int = INPUT_SIZE) -> float:
    """FLOPs (2 x multiply-accumulates of convs and linears) of one ``size`` x ``size`` face."""
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            macs += out.numel() // out.shape[0] * k
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was)
    for h in hs:
        h.remove()
    return 2.0 * macs


# ------------------------------------------------------------------------------------------------ checkpoints
def load_checkpoint(path) -> tuple[OcclusionSegmenter, dict]:
    """``(model in eval mode, checkpoint JSON)`` from a segmenter run folder, a checkpoint stem / file
    (:mod:`trainer.checkpoints`, module ``"model"``) or an older run folder (``model.safetensors`` + ``config.json``).
    The JSON has ``step``, ``models["model"]`` (the :class:`SegmenterConfig`), ``preprocess`` and, after a finished
    run, ``eval``."""
    from trainer.checkpoints import load_checkpoint as load

    ck = load(path)
    model = OcclusionSegmenter(SegmenterConfig(**((ck.meta.get("models") or {}).get("model") or {})))
    model.load_state_dict(ck.state("model"), strict=True)
    return model.eval(), ck.meta
