"""Model families as small adapters: what the one exporter (:mod:`export.exporter`) needs to know about each.

A family says how to load its checkpoint (through :mod:`trainer.checkpoints`), which graph wraps the network for
export (:mod:`sdk.nets.graphs`: the same graph the SDK's torch backend runs), how that graph is traced to ONNX
(example inputs, tensor names, batch axis), what it is fed in the parity check, the graph's input record
(:class:`sdk.preprocess.Preprocess`), and its bundle stage (stage, kind, config, the bundle it extends):

==========  ========  ==============  ==========================  =============================  ===============
family      stage     kind            checkpoint                  graph                          default base
==========  ========  ==============  ==========================  =============================  ===============
segmenter   segment   onnx_segmenter  segmenter run / checkpoint  uint8 BGR crops -> M, p        baseline
embedder    embed     onnx_embedder   student weights / run, .dat uint8 RGB chips -> descriptor  baseline
inpainter   complete  onnx_inpainter  inpainter run / checkpoint  image, mask -> completed       default
==========  ========  ==============  ==========================  =============================  ===============

Adding a family = one module here with a :class:`Family` subclass, listed in :data:`FAMILIES`, plus its graph in
:mod:`sdk.nets.graphs`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sdk.preprocess import Preprocess

__all__ = ["Loaded", "StageOptions", "Family", "FAMILIES", "family", "family_names"]


@dataclass
class Loaded:
    """A family's checkpoint, loaded.

    Attributes:
        net: the network (eval mode, float32, CPU).
        meta: the checkpoint's JSON (training config, step, eval ...); empty for weight-only files.
        weights: the weights file that was read (its SHA-256 goes into the manifest).
        preprocess: the record the network was trained with (from the checkpoint, else the family's default).
        checkpoint: what the user passed.
    """

    net: Any
    meta: dict
    weights: Path
    preprocess: "Preprocess"
    checkpoint: Path


@dataclass
class StageOptions:
    """The bundle-stage options of an export (CLI flags); a family uses the ones that concern it.

    Attributes:
        threads: ONNX Runtime intra-op threads written into the stage config.
        threshold: segmenter: pixel / face occlusion threshold.
        min_occlusion, dilate: inpainter: complete faces at least this occluded; grow the mask by this many px.
        extra: further stage config values.
    """

    threads: int = 1
    threshold: float = 0.5
    min_occlusion: float = 0.5
    dilate: int = 1
    extra: dict = field(default_factory=dict)


class Family:
    """Base of the family adapters (see the module docstring); subclasses set the class attributes and methods."""

    #: family name (CLI ``--family``), bundle stage, manifest kind
    name: str = ""
    stage: str = ""
    kind: str = ""
    #: file stem inside the bundle (``<stem>.onnx``, ``<stem>.safetensors``)
    stem: str = ""
    #: bundle whose other stages a new bundle copies by default
    base: str = "baseline"
    #: top-level manifest key of the training summary (kept from the per-family exporters)
    training_key: str = "training"
    #: ONNX tensor names and the batch axis name
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    batch_axis: str = "n"
    #: outputs compared by cosine distance in the parity check
    cosine_outputs: tuple[str, ...] = ()
    #: the ``--checkpoint`` help text
    checkpoint_help: str = ""

    def load(self, checkpoint: Path) -> Loaded:
        """Read the checkpoint (run folder, checkpoint stem / file, older layouts)."""
        raise NotImplementedError

    def graph(self, net: Any) -> Any:
        """The network wrapped as the stage's graph (:mod:`sdk.nets.graphs`)."""
        raise NotImplementedError

    def example_inputs(self, graph: Any) -> tuple:
        """Tensors the ONNX trace runs on."""
        raise NotImplementedError

    def trace_options(self) -> dict:
        """Extra :func:`export._onnx.trace_onnx` keywords."""
        return {}

    def parity_feeds(self, graph: Any) -> dict[str, np.ndarray]:
        """Named inputs (numpy) of the parity check: seeded noise plus a real face where one is available."""
        raise NotImplementedError

    def graph_preprocess(self, loaded: Loaded) -> "Preprocess":
        """The graph's input record for the manifest (uint8 when the graph normalises inside)."""
        raise NotImplementedError

    def stage_config(self, loaded: Loaded, graph: Any, opts: StageOptions) -> dict:
        """The stage's manifest ``config``."""
        raise NotImplementedError

    def stage_files(self, loaded: Loaded, base_stage: dict | None) -> dict:
        """Files the stage keeps besides its model files (e.g. the embedder's shape predictor), by role."""
        return {}

    def training_meta(self, loaded: Loaded, weights: str) -> dict | None:
        """The training summary written under :attr:`training_key` (``None``: none)."""
        return None

    def description(self, bundle_name: str, base: str, opts: StageOptions) -> str:
        """Default bundle description."""
        raise NotImplementedError

    def check_base(self, manifest: dict, base: str) -> None:
        """Raise ``ValueError`` when the base bundle cannot take this stage (default: anything goes)."""

    def onnx_bytes(self, net: Any) -> bytes:
        """The ``onnx`` format's graph of ``net`` (float32 weights) as bytes."""
        from export._onnx import trace_onnx

        graph = self.graph(net)
        return trace_onnx(graph, self.example_inputs(graph), self.inputs, self.outputs, self.batch_axis,
                          **self.trace_options())

    def torch_reference(self, graph: Any):
        """``feeds -> outputs``: the graph in torch, float32 on the CPU (the parity reference)."""
        import torch

        g = graph.float().eval()

        def run(feeds):
            with torch.no_grad():
                out = g(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.inputs))
            out = out if isinstance(out, (tuple, list)) else (out,)
            return [o.numpy() for o in out]

        return run


#: family name -> module defining ``FAMILY`` (imported on first use: torch only when a family is used)
FAMILIES: dict[str, str] = {"segmenter": "export.families.segmenter", "embedder": "export.families.embedder",
                            "inpainter": "export.families.inpainter"}


def family_names() -> list[str]:
    return list(FAMILIES)


def family(name: str) -> Family:
    """The adapter of ``name``.

    Raises:
        ValueError: unknown family (naming the known ones).
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; families: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY
