"""PyTorch port of dlib's face recognition ResNet, the trainer's side: :func:`preprocess` (uint8 RGB chips -> the
network's input) and :class:`DlibResNet` with its weight files (``save_safetensors`` / ``load``).

The network (architecture built from the ``.dat``'s layer spec, parity with dlib, ONNX export notes: see its
module docstring) is defined once, in :mod:`sdk.nets.dlib_resnet`, so the SDK's torch backend can rebuild it from
bundle weights without the trainer; :class:`DlibResNet` here adds the trainer's atomic file writer to it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sdk.models.dlib_arch import CHIP_SIZE, default_dat_path
from sdk.nets import dlib_resnet as _net
from sdk.nets.dlib_resnet import DLIB_MEAN_RGB, Affine, ResUnit, _add_prev  # noqa: F401

__all__ = ["DlibResNet", "preprocess", "default_dat_path", "DLIB_MEAN_RGB", "CHIP_SIZE"]


def preprocess(chips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB chips, NHWC (or one HWC chip) -> float32 NCHW tensor in [0, 255], the input of ``forward``."""
    t = torch.as_tensor(np.ascontiguousarray(chips)) if isinstance(chips, np.ndarray) else chips
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB chips shaped (N, H, W, 3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).to(torch.float32).contiguous()


class DlibResNet(_net.DlibResNet):
    """:class:`sdk.nets.dlib_resnet.DlibResNet` plus its weight files (the trainer's checkpoint writer)."""

    def save_safetensors(self, path: str | os.PathLike) -> None:
        """The state dict alone (bare keys) as safetensors, written atomically."""
        from trainer.checkpoints import save_tensors

        save_tensors(self.state_dict(), path, {"format": "pt", "model": "dlib_face_recognition_resnet_model_v1"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DlibResNet":
        """Load from ``save_safetensors`` output, or from a dlib ``.dat``."""
        p = Path(path)
        if p.suffix == ".dat":
            return cls.from_dat(p)
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(p)))
        return model.eval()
