"""Inpainter family: ``trainer/main.py inpainter`` runs -> the ``complete`` stage (``kind: "onnx_inpainter"``).

Graph (:class:`sdk.nets.graphs.InpainterGraph`): ``"image"`` ``(N, 3, 112, 112)`` float32 in [-1, 1] (the ArcFace
crop in **BGR** order, ``x / 127.5 - 1``: the inpainter is trained on BGR crops, so there is no channel flip) and
``"mask"`` ``(N, 1, 112, 112)`` float32 {0, 1} (1 = hole) -> ``"completed"`` ``(N, 3, 112, 112)`` in [-1, 1], known
pixels composited back. The manifest's record is the float one (the SDK normalises, the graph blends in float).

Default base bundle: ``default-v1`` (MTCNN + occlusion segmenter + dlib ResNet, full-face matching); the base must have a segment stage,
whose holes the inpainter fills. Parity inputs (:func:`parity_inputs`): the astronaut's ArcFace crop and its mirror
image under a surgical-mask-shaped hole, plus noise crops under random rectangles. ``trt-onnx`` is this family's
alone (the attention as one TensorRT plugin node, :mod:`export._plugin_onnx`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.families import Family, Loaded, StageOptions

log = logging.getLogger(__name__)

SIZE = 112
#: MTCNN landmarks of the astronaut in ``skimage.data.astronaut()`` (the default detector's output).
ASTRO_LM = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)


def parity_inputs(n_random: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(crops, holes)``: (N, 112, 112, 3) uint8 BGR ArcFace crops and (N, 112, 112) uint8 {0, 1} holes.

    The astronaut (scikit-image, when installed) and its mirror image under a surgical-mask-shaped hole drawn
    from the ArcFace template landmarks, then ``n_random`` noise crops under random rectangles."""
    import cv2

    from sdk.align import ARCFACE_112, align
    from sdk.occluders import surgical_mask_polygon

    rng = np.random.default_rng(seed)
    crops, holes = [], []
    mask_hole = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask_hole, [np.round(surgical_mask_polygon(ARCFACE_112)).astype(np.int32)], 1)
    try:
        from skimage import data

        frame = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # RGB -> BGR
        face = align(frame, ASTRO_LM)
        crops += [face, np.ascontiguousarray(face[:, ::-1])]
        holes += [mask_hole, mask_hole]
    except ImportError:  # scikit-image is optional here
        log.info("scikit-image not installed: parity on noise crops only")
    for _ in range(n_random):
        crops.append(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        h, w = rng.integers(SIZE // 5, SIZE // 2, 2)
        y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
        hole = np.zeros((SIZE, SIZE), np.uint8)
        hole[y:y + h, x:x + w] = 1
        holes.append(hole)
    return np.stack(crops), np.stack(holes)


def graph_feeds(crops: np.ndarray, holes: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs for uint8 BGR crops and {0, 1} holes: the SDK's preprocessing (``x / 127.5 - 1``, NCHW)."""
    from sdk.complete import to_model_input

    return {"image": to_model_input(crops), "mask": np.ascontiguousarray(holes[:, None], dtype=np.float32)}


def torch_completed(generator: Any, crops: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """(N, 3, 112, 112) float32 in [-1, 1]: the torch generator on uint8 BGR crops + holes (the SDK's preprocessing)."""
    return FAMILY.torch_reference(FAMILY.graph(generator))(graph_feeds(crops, holes))[0]


class InpainterFamily(Family):
    name = "inpainter"
    stage = "complete"
    kind = "onnx_inpainter"
    stem = "inpainter"
    base = "default-v1"  # the teacher, full-face matching: completion is measured against it (issue #9.5)
    training_key = "inpainter_training"
    inputs = ("image", "mask")
    outputs = ("completed",)
    batch_axis = "batch"
    checkpoint_help = ("inpainter run folder (its ckpt/last.*, trainer/main.py inpainter --out) or checkpoint; older "
                       "generator.safetensors + config.json folders load too")

    def load(self, checkpoint: Path) -> Loaded:
        from sdk.preprocess import Preprocess
        from trainer.models.inpainter import load_checkpoint
        from trainer.preprocess import INPAINTER

        from export._bundle import checkpoint_weights

        gen, meta = load_checkpoint(checkpoint)
        raw = (meta.get("preprocess") or {}).get("generator")
        return Loaded(gen, meta, checkpoint_weights(checkpoint, module="generator"),
                      Preprocess.from_dict(raw) if raw else INPAINTER, Path(checkpoint))

    def graph(self, net: Any) -> Any:
        from sdk.nets.graphs import InpainterGraph

        return InpainterGraph(net, SIZE)

    def example_inputs(self, graph: Any) -> tuple:
        import torch

        return torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 1, SIZE, SIZE)

    def trace_options(self) -> dict:
        return {"constant_folding": None}  # torch's default, as trainer.models.inpainter.export_onnx traces it

    def parity_feeds(self, graph: Any) -> dict[str, np.ndarray]:
        return graph_feeds(*parity_inputs())

    def graph_preprocess(self, loaded: Loaded):
        return loaded.preprocess  # float BGR NCHW in [-1, 1]: the SDK normalises, the graph blends in float

    def stage_config(self, loaded: Loaded, graph: Any, opts: StageOptions) -> dict:
        return {"threads": int(opts.threads), "min_occlusion": float(opts.min_occlusion), "dilate": int(opts.dilate),
                **opts.extra}

    def check_base(self, manifest: dict, base: str) -> None:
        if not (manifest.get("stages") or {}).get("segment"):
            raise ValueError(f"bundle {base!s} has no segment stage; the complete stage needs one "
                             "(use e.g. --base default-v1)")

    def training_meta(self, loaded: Loaded, weights: str) -> dict | None:
        cfg = loaded.meta
        ev = cfg.get("eval") or {}
        return {"run": str(loaded.checkpoint), "step": cfg.get("step"), "params": cfg.get("params"),
                "gflops": cfg.get("gflops"), "model": cfg.get("model") or (cfg.get("models") or {}).get("generator"),
                "id_loss": ev.get("id_loss"), "psnr_hole": ev.get("psnr_hole"), "ssim_hole": ev.get("ssim_hole"),
                "telea_psnr_hole": ev.get("telea_psnr_hole"), "weights": weights}

    def description(self, bundle_name: str, base: str, opts: StageOptions) -> str:
        return (f"{bundle_name}: the {base} bundle's stages (MTCNN detector, occlusion segmenter, embedder) plus our "
                "GAN face inpainter (DeepFill v1-style generator with contextual attention) on the 112x112 ArcFace BGR "
                f"crop: faces with occlusion probability >= {opts.min_occlusion:g} have the segmenter's mask completed "
                "and pasted back into a copy of the frame before embedding.")


FAMILY = InpainterFamily()
