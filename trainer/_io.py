"""Checkpoint writing shared by the trainers: safetensors (no pickle), written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch


def save_tensors(tensors: Mapping[str, "torch.Tensor"], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (detached, moved to CPU, made contiguous) to ``path`` via a temporary file + rename,
    so an interrupted save never leaves a truncated checkpoint behind. Returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path
