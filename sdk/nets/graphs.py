"""The graphs stages run: each family's network wrapped to take what its SDK stage hands a backend.

One class per family. The exporter traces it into ONNX (``export/families/``) and the torch backend
(:mod:`sdk.backends.torch_cuda`) runs it from bundle weights, so both engines compute the same graph, with the same
named inputs and outputs, and a stage cannot tell them apart:

================  =====================================================  ==============================================
graph             inputs                                                 outputs
================  =====================================================  ==============================================
SegmenterGraph    ``crops`` uint8 (N, S, S, 3) **BGR** ArcFace crops      ``mask_prob`` float32 (N, 1, S, S) in [0, 1],
                  (normalised inside: ``x / 127.5 - 1``)                 ``occluded_prob`` float32 (N,) in [0, 1]
EmbedderGraph     ``chips`` uint8 (N, S, S, 3) **RGB** (S = 150 dlib,    ``descriptor`` float32 (N, D) raw (not unit)
                  112 ArcFace; the network normalises inside)
InpainterGraph    ``image`` float32 (N, 3, S, S) BGR in [-1, 1],          ``completed`` float32 (N, 3, S, S) in [-1, 1]
                  ``mask`` float32 (N, 1, S, S) {0, 1} (1 = hole)
================  =====================================================  ==============================================

Inside a graph, uint8 inputs become the dtype of the graph's weights (float32, or float16 when the torch backend
runs it in half precision); float inputs are cast to it by the backend.

**The torch weight file** (``<family>.safetensors`` in a bundle, export format ``torch``): the graph's state dict
(float32) and, in the safetensors header's metadata, ``format`` = :data:`TORCH_FORMAT`, ``format_version``,
``graph`` (the family) and ``net`` (JSON: the network's class name and config dataclass values). :func:`load_graph`
rebuilds the network from that config and loads the tensors -- safetensors and JSON only, no pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sdk.errors import ModelFileError

__all__ = ["TORCH_FORMAT", "TORCH_FORMAT_VERSION", "TensorSpec", "SegmenterGraph", "EmbedderGraph",
           "InpainterGraph", "GRAPHS", "net_spec", "build_net", "graph_metadata", "load_graph", "compute_dtype"]

TORCH_FORMAT = "lookthrough.torch_graph"
TORCH_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """One graph input / output: name, numpy dtype name, shape (``"N"`` = the batch axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class SegmenterGraph(nn.Module):
    """uint8 NHWC BGR crops -> ``(mask_prob (N, 1, S, S), occluded_prob (N,))`` of an
    :class:`~sdk.nets.segmenter.OcclusionSegmenter` (sigmoids of its logits)."""

    family = "segmenter"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = crops.permute(0, 3, 1, 2).to(compute_dtype(self)) / 127.5 - 1.0
        logits, occ = self.net(x)
        return torch.sigmoid(logits), torch.sigmoid(occ)

    def io(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        s = int(self.net.config.input_size)
        return ([TensorSpec("crops", "uint8", ("N", s, s, 3))],
                [TensorSpec("mask_prob", "float32", ("N", 1, s, s)), TensorSpec("occluded_prob", "float32", ("N",))])


class EmbedderGraph(nn.Module):
    """uint8 NHWC RGB chips -> raw descriptors ``(N, D)`` of a student (:class:`~sdk.nets.students.ArcInput`) or
    the dlib port (:class:`~sdk.nets.dlib_resnet.DlibResNet`); both normalise their input themselves."""

    family = "embedder"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.net(chips.permute(0, 3, 1, 2).to(compute_dtype(self)))

    def side(self) -> int:
        """Side of the square chips the network reads (150: dlib chips; the student's ``input_size`` otherwise)."""
        return 150 if _is_dlib(self.net) else int(self.net.input_size)

    def dim(self) -> int:
        """Width of the descriptor."""
        return int(getattr(self.net, "embedding_dim", 0) or self.net.fc.out_features)

    def io(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        s = self.side()
        return ([TensorSpec("chips", "uint8", ("N", s, s, 3))], [TensorSpec("descriptor", "float32", ("N", self.dim()))])


class InpainterGraph(nn.Module):
    """``forward(image, mask) -> completed`` of a :class:`~sdk.nets.inpainter.Generator` (only the completed image,
    known pixels composited back)."""

    family = "inpainter"

    def __init__(self, generator: nn.Module, size: int = 112):
        super().__init__()
        self.generator = generator
        self.size = int(size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.generator(x, mask)

    def io(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        s = self.size
        return ([TensorSpec("image", "float32", ("N", 3, s, s)), TensorSpec("mask", "float32", ("N", 1, s, s))],
                [TensorSpec("completed", "float32", ("N", 3, s, s))])


#: family -> graph class
GRAPHS: dict[str, type[nn.Module]] = {"segmenter": SegmenterGraph, "embedder": EmbedderGraph,
                                      "inpainter": InpainterGraph}


def _is_dlib(net: nn.Module) -> bool:
    from sdk.nets.dlib_resnet import DlibResNet

    return isinstance(net, DlibResNet)


# --------------------------------------------------------------------------------------------- network configs
def net_spec(net: nn.Module) -> dict[str, Any]:
    """``{"name": class name, "config": {...}}``: what :func:`build_net` needs to rebuild ``net`` (weights aside).

    Raises:
        ValueError: ``net`` is not one of the families' networks.
    """
    from sdk.nets.dlib_resnet import DlibResNet
    from sdk.nets.inpainter import Generator
    from sdk.nets.segmenter import OcclusionSegmenter
    from sdk.nets.students import ArcInput

    if isinstance(net, OcclusionSegmenter):
        return {"name": "OcclusionSegmenter", "config": net.config.to_dict()}
    if isinstance(net, Generator):
        return {"name": "Generator", "config": net.config.to_dict()}
    if isinstance(net, ArcInput):
        return {"name": "ArcInput", "config": {"arch": net.arch, "embedding_dim": int(net.embedding_dim),
                                               "input_size": int(net.input_size)}}
    if isinstance(net, DlibResNet):
        from sdk.models.dlib_arch import packaged_spec

        if net.spec != packaged_spec().geometry():
            raise ValueError("a dlib ResNet of another geometry than the packaged .dat's cannot be rebuilt from "
                             "a config")
        return {"name": "DlibResNet", "config": {}}
    raise ValueError(f"no network config for a {type(net).__name__}: not a LookThrough family network")


def _build_segmenter(cfg: dict) -> nn.Module:
    from sdk.nets.segmenter import OcclusionSegmenter, SegmenterConfig

    return OcclusionSegmenter(SegmenterConfig(**cfg))


def _build_generator(cfg: dict) -> nn.Module:
    from sdk.nets.inpainter import Generator, InpainterConfig

    return Generator(InpainterConfig(**cfg))


def _build_arc_input(cfg: dict) -> nn.Module:
    from sdk.nets.students import ArcInput, build_student

    return ArcInput(build_student(cfg["arch"], embedding_dim=int(cfg["embedding_dim"]),
                                  input_size=int(cfg["input_size"])), cfg["arch"])


def _build_dlib(cfg: dict) -> nn.Module:
    from sdk.nets.dlib_resnet import DlibResNet

    return DlibResNet()


_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {"OcclusionSegmenter": _build_segmenter,
                                                     "Generator": _build_generator, "ArcInput": _build_arc_input,
                                                     "DlibResNet": _build_dlib}


def build_net(spec: dict[str, Any]) -> nn.Module:
    """The untrained network of ``spec`` (:func:`net_spec`'s output).

    Raises:
        ValueError: unknown network name or config values it refuses.
    """
    name = spec.get("name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown network {name!r}; known: {sorted(_BUILDERS)}")
    try:
        return _BUILDERS[name](dict(spec.get("config") or {}))
    except (TypeError, KeyError) as e:
        raise ValueError(f"network {name}: config {spec.get('config')} is not usable ({e})") from None


# --------------------------------------------------------------------------------------------- weight files
def graph_metadata(graph: nn.Module) -> dict[str, str]:
    """The safetensors metadata of ``graph``'s weight file (see the module docstring)."""
    net = graph.generator if isinstance(graph, InpainterGraph) else graph.net
    return {"format": TORCH_FORMAT, "format_version": str(TORCH_FORMAT_VERSION), "graph": graph.family,
            "net": json.dumps(net_spec(net), sort_keys=True)}


def load_graph(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(graph in eval mode, float32 on the CPU, metadata)`` from a torch weight file.

    Raises:
        ModelFileError: missing file, not a safetensors file, not a LookThrough graph, or tensors that do not fit
            the network its config describes (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "not found (torch weight file)")
    try:
        from safetensors import safe_open
    except ImportError:
        raise ModelFileError(path, "needs the safetensors package to load (pip install safetensors)") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError, OSError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(path, f"is not a safetensors file ({first[:160]})") from None
    if meta.get("format") != TORCH_FORMAT:
        raise ModelFileError(path, f"is not a LookThrough torch graph (metadata format {meta.get('format')!r}, "
                                   f"expected {TORCH_FORMAT!r})")
    if int(meta.get("format_version", 0)) > TORCH_FORMAT_VERSION:
        raise ModelFileError(path, f"torch graph format_version {meta.get('format_version')} is newer than this SDK "
                                   f"reads ({TORCH_FORMAT_VERSION})")
    family = meta.get("graph")
    if family not in GRAPHS:
        raise ModelFileError(path, f"unknown graph {family!r}; known: {sorted(GRAPHS)}")
    try:
        spec = json.loads(meta.get("net", ""))
        graph = GRAPHS[family](build_net(spec))
        graph.load_state_dict(tensors, strict=True)
    except (ValueError, RuntimeError) as e:  # json.JSONDecodeError is a ValueError
        first = str(e).strip().splitlines()[0]
        raise ModelFileError(path, f"does not fit its {family} network ({first[:200]})") from None
    return graph.float().eval(), {**meta, "net": spec}
