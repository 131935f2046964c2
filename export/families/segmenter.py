"""Occlusion segmenter family: ``trainer/main.py segmenter`` runs -> the ``segment`` stage (``kind: "onnx_segmenter"``).

Graph (:class:`sdk.nets.graphs.SegmenterGraph`): ``"crops"`` uint8 **BGR** ArcFace crops ``(N, 112, 112, 3)``,
normalised inside (``x / 127.5 - 1``, NHWC -> NCHW; trained on BGR, so no channel flip) -> ``"mask_prob"``
``(N, 1, 112, 112)`` and ``"occluded_prob"`` ``(N,)``, float32 in [0, 1]. Manifest record: uint8 BGR NHWC of the
ArcFace crop (the checkpoint's record, applied inside the graph). Default base bundle: ``baseline`` (MTCNN + dlib).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.families import Family, Loaded, StageOptions


class SegmenterFamily(Family):
    name = "segmenter"
    stage = "segment"
    kind = "onnx_segmenter"
    stem = "segmenter"
    base = "baseline"
    training_key = "segmenter_training"
    inputs = ("crops",)
    outputs = ("mask_prob", "occluded_prob")
    batch_axis = "n"
    checkpoint_help = ("segmenter run folder (its ckpt/last.*) or checkpoint from trainer/main.py segmenter (older "
                       "model.safetensors + config.json folders load too)")

    def load(self, checkpoint: Path) -> Loaded:
        from sdk.preprocess import Preprocess
        from trainer.models.segmenter import load_checkpoint
        from trainer.preprocess import SEGMENTER

        from export._bundle import checkpoint_weights

        net, meta = load_checkpoint(checkpoint)
        raw = (meta.get("preprocess") or {}).get("model")
        return Loaded(net, meta, checkpoint_weights(checkpoint), Preprocess.from_dict(raw) if raw else SEGMENTER,
                      Path(checkpoint))

    def graph(self, net: Any) -> Any:
        from sdk.nets.graphs import SegmenterGraph

        return SegmenterGraph(net)

    def example_inputs(self, graph: Any) -> tuple:
        import torch

        s = int(graph.net.config.input_size)
        return (torch.zeros((2, s, s, 3), dtype=torch.uint8),)

    def parity_feeds(self, graph: Any) -> dict[str, np.ndarray]:
        s = int(graph.net.config.input_size)
        return {"crops": np.random.default_rng(0).integers(0, 256, (4, s, s, 3), dtype=np.uint8)}

    def graph_preprocess(self, loaded: Loaded):
        from trainer.preprocess import graph_input

        return graph_input(loaded.preprocess)

    def stage_config(self, loaded: Loaded, graph: Any, opts: StageOptions) -> dict:
        return {"threshold": float(opts.threshold), "threads": int(opts.threads), **opts.extra}

    def training_meta(self, loaded: Loaded, weights: str) -> dict | None:
        cfg = loaded.meta
        if cfg.get("step") is None:
            return None
        ev = cfg.get("eval") or {}
        return {"step": cfg.get("step"), "params": cfg.get("params"), "gflops": cfg.get("gflops"),
                "miou_per_category": {c: r.get("miou") for c, r in ev.get("per_category", {}).items() if "miou" in r},
                "presence_acc": ev.get("presence_acc")}

    def description(self, bundle_name: str, base: str, opts: StageOptions) -> str:
        return (f"{bundle_name}: the {base} bundle's stages plus an occlusion segmenter: a tiny UNet on the 112x112 "
                "ArcFace crop predicting the occlusion map M and a per-face occlusion probability (Match.occlusion).")


FAMILY = SegmenterFamily()
