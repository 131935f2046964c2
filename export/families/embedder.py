"""Embedder family: student weights (``trainer/main.py student``; a dlib ``.dat``) -> the ``embed`` stage
(``kind: "onnx_embedder"``).

Graph (:class:`sdk.nets.graphs.EmbedderGraph`): ``"chips"`` uint8 **RGB** NHWC ``(N, S, S, 3)`` -> the raw
``"descriptor"`` ``(N, D)`` (the SDK L2-normalises). dlib-ResNet students read 150x150 dlib chips (``crop:
"dlib150"``, chips cut with dlib's 5-point shape predictor, reused from the base bundle) and subtract dlib's means
inside; ResNet-18 / MobileFaceNet students read 112x112 ArcFace crops and normalise inside (``ArcInput``). Default
base bundle: ``baseline``; ``--segment-from B`` also copies bundle B's segment stage.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from export.families import Family, Loaded, StageOptions


class EmbedderFamily(Family):
    name = "embedder"
    stage = "embed"
    kind = "onnx_embedder"
    stem = "student"
    base = "baseline"
    training_key = "training"
    inputs = ("chips",)
    outputs = ("descriptor",)
    batch_axis = "n"
    cosine_outputs = ("descriptor",)
    checkpoint_help = ("student weights: student.safetensors, a training checkpoint (ckpt/*.safetensors) or a dlib "
                       ".dat")

    def load(self, checkpoint: Path) -> Loaded:
        from trainer.preprocess import student_preprocess
        from trainer.student.graph import crop_of
        from trainer.student.models import load_student_weights

        from export._bundle import checkpoint_weights

        net = load_student_weights(checkpoint)
        return Loaded(net, _training_config(Path(checkpoint)), checkpoint_weights(checkpoint),
                      student_preprocess(crop_of(net)[0]), Path(checkpoint))

    def graph(self, net: Any) -> Any:
        from sdk.nets.graphs import EmbedderGraph

        return EmbedderGraph(net)

    def example_inputs(self, graph: Any) -> tuple:
        import torch

        s = graph.side()
        return (torch.zeros((2, s, s, 3), dtype=torch.uint8),)

    def parity_feeds(self, graph: Any) -> dict[str, np.ndarray]:
        """4 seeded noise chips and the astronaut's face (scikit-image, when installed), RGB."""
        s = graph.side()
        chips = np.random.default_rng(0).integers(0, 256, (4, s, s, 3), dtype=np.uint8)
        try:
            import cv2
            from skimage import data

            face = cv2.resize(data.astronaut()[30:230, 130:330], (s, s))  # RGB
            chips = np.concatenate([chips, face[None]])
        except ImportError:  # scikit-image is optional here
            pass
        return {"chips": chips}

    def graph_preprocess(self, loaded: Loaded):
        from trainer.preprocess import graph_input

        return graph_input(loaded.preprocess)  # uint8 RGB NHWC: the student's record folded into the graph

    def stage_config(self, loaded: Loaded, graph: Any, opts: StageOptions) -> dict:
        config: dict = {"dim": graph.dim(), "threads": int(opts.threads)}
        if loaded.preprocess.crop == "dlib150":
            config["chip_landmarks"] = "dlib5"
        return {**config, **opts.extra}

    def stage_files(self, loaded: Loaded, base_stage: dict | None) -> dict:
        if loaded.preprocess.crop != "dlib150":
            return {}
        sp = ((base_stage or {}).get("files") or {}).get("shape_predictor")
        if sp is None:
            raise ValueError("a dlib150 student needs dlib's 5-point shape predictor: the base bundle's embed stage "
                             "has none (use --base baseline)")
        return {"shape_predictor": sp}

    def training_meta(self, loaded: Loaded, weights: str) -> dict | None:
        meta = {"checkpoint": str(loaded.checkpoint), "weights": weights}
        if loaded.meta:
            meta["config"] = loaded.meta
        return meta

    def description(self, bundle_name: str, base: str, opts: StageOptions) -> str:
        return (f"{bundle_name}: MTCNN detector (the {base} bundle's) + a student embedder fine-tuned on synthetic "
                "masked faces to reproduce its teacher's relations on the clean faces (relational distillation), run "
                "by ONNX Runtime.")


def _training_config(checkpoint: Path) -> dict:
    """The training config beside a student file: ``ckpt/<name>.json``'s ``config`` or the run's ``config.json``."""
    for cfg in (checkpoint.with_suffix(".json"), checkpoint.parent / "config.json"):
        if cfg.is_file() and cfg.resolve() != checkpoint.resolve():
            try:
                raw = json.loads(cfg.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(raw, dict) and ("config" in raw or "lr" in raw):
                return raw.get("config", raw)
    return {}


FAMILY = EmbedderFamily()
