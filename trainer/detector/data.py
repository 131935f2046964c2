"""LTDet's training data: the labelled faces, the scene stream and the net's input.

* :func:`load_train_labels` -- MTCNN labels of LFW / CelebA (cached; held-out identities removed) or, for
  ``data="astronaut"``, :func:`astronaut_labels` (tests, smoke runs; no data folder needed);
* :func:`scene_renderer` -- the scene compositor over those faces with the *training* occluder families;
* :class:`SceneStream` -- map-style dataset: sample ``i`` is scene ``seed * 10_000_019 + i`` with its anchor targets
  (a pure function of ``(seed, i)``, so a resumed run sees the same batches whatever the worker count);
* :func:`to_input` -- uint8 BGR scenes -> the net's input through the :class:`sdk.preprocess.Preprocess` record
  :data:`PREPROCESS` (:data:`sdk.detect_onnx.LTDET_PREPROCESS`: RGB, ``x / 127.5 - 1``, NCHW), the record every
  checkpoint stores and the exporter writes into the bundle manifest.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from sdk.detect_onnx import LTDET_PREPROCESS
from trainer.detector.labels import LabelSet, build_or_load, is_eval_identity
from trainer.detector.occlusion import OccluderSampler
from trainer.detector.scenes import SceneConfig, SceneRenderer
from trainer.detector.targets import Anchors, match
from trainer.preprocess import apply_torch

__all__ = ["PREPROCESS", "SceneStream", "astronaut_labels", "load_eval_labels", "load_train_labels", "scene_renderer",
           "to_input"]

#: LTDet's input record: the whole frame, RGB, float32 ``x / 127.5 - 1``, NCHW (normalised outside the graph)
PREPROCESS = LTDET_PREPROCESS


def to_input(images_bgr: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 BGR ``(N, H, W, 3)`` (numpy or torch) -> float32 ``(N, 3, H, W)`` RGB in [-1, 1], the net's input
    (:func:`trainer.preprocess.apply_torch` of :data:`PREPROCESS`: bit-identical to the SDK's
    ``Preprocess.apply``), stored channels-last: the memory layout the shipped model was trained with (the convolutions
    round differently on an NCHW-contiguous copy, so this keeps a rerun of its recipe bit-identical)."""
    t = images_bgr if isinstance(images_bgr, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images_bgr))
    return apply_torch(PREPROCESS, t, colour_in="bgr").contiguous(memory_format=torch.channels_last)


def astronaut_labels() -> tuple[LabelSet, dict[str, np.ndarray]]:
    """A one-image label set from ``skimage.data.astronaut()`` (MTCNN on the clean image) and an image table
    for :class:`SceneRenderer`'s loader (key ``"astronaut"``)."""
    import cv2
    import skimage.data

    from sdk.detect import DetectorConfig, MTCNNDetector

    img = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    det = MTCNNDetector.from_package(DetectorConfig(max_side=None, threads=1))
    faces = [f for f in det.detect(img) if f.score >= 0.9][:1]
    ls = LabelSet(np.array(["astronaut"]), np.array(["astronaut"]), np.array(["skimage"]), np.array([0]),
                  np.array([len(faces)]), np.array([0 if faces else -1]),
                  np.array([f.box for f in faces], np.float32).reshape(-1, 4),
                  np.array([f.landmarks for f in faces], np.float32).reshape(-1, 5, 2),
                  np.array([f.score for f in faces], np.float32))
    return ls, {"astronaut": img}


def load_train_labels(data: str, cache: str | Path, per_identity: int) -> tuple[LabelSet, dict | None]:
    """``(labels, image table or None)`` of the training faces: ``data="astronaut"`` -> :func:`astronaut_labels`;
    else LFW (``<data>/lfw``) and CelebA (``<data>/celeba_subset``), ``per_identity`` images each, labelled by MTCNN
    once (``cache``), without the held-out identities and the images where MTCNN found no face."""
    if data == "astronaut":
        return astronaut_labels()
    ls = _all_labels(data, cache, per_identity)
    keep = np.array([(ls.main[i] >= 0) and not is_eval_identity(str(ls.identities[i])) for i in range(len(ls))])
    return ls.subset(keep), None


def _all_labels(data: str | Path, cache: str | Path, per_identity: int) -> LabelSet:
    """The label file of LFW (``<data>/lfw``) and CelebA (``<data>/celeba_subset``), built on first use."""
    root = Path(data)
    roots = [(t, root / d) for t, d in (("lfw", "lfw"), ("celeba", "celeba_subset")) if (root / d).is_dir()]
    if not roots:
        raise SystemExit(f"{root}: neither lfw/ nor celeba_subset/ found")
    return build_or_load(Path(cache), roots, per_identity)


def load_eval_labels(data: str | Path, cache: str | Path, per_identity: int) -> LabelSet:
    """MTCNN labels of the *held-out* identities (:func:`is_eval_identity`) of LFW / CelebA under ``data``, images
    with a main face only (the same label file as :func:`load_train_labels`; ``data="astronaut"``: the one image)."""
    if str(data) == "astronaut":
        return astronaut_labels()[0]
    ls = _all_labels(data, cache, per_identity)
    keep = np.array([(ls.main[i] >= 0) and is_eval_identity(str(ls.identities[i])) for i in range(len(ls))])
    return ls.subset(keep)


def scene_renderer(labels: LabelSet, table: dict | None, crop: int, templates: str | None,
                   occlude_prob: float = 0.7, tight_prob: float = 0.0, realistic_prob: float = 0.0,
                   cutouts: str | None = None, real: LabelSet | None = None, real_prob: float = 0.0,
                   lowres_prob: float = 0.0, hard_prob: float = 0.0) -> SceneRenderer:
    """Square ``crop`` x ``crop`` training scenes (px) over ``labels`` with the training occluder families
    (``templates``: MaskTheFace folder, or None for procedural occluders only), ``occlude_prob`` of the faces
    occluded; ``table``: in-memory BGR images by path (:func:`astronaut_labels`), None to read files.
    ``tight_prob``: share of tight one-face crops (:class:`SceneConfig`); ``realistic_prob`` / ``cutouts``: share of
    occluders from the realistic synthesizer, with harvested real masks (:class:`OccluderSampler`); ``real`` /
    ``real_prob``: pseudo-labelled real masked photos (:mod:`trainer.detector.real_labels`) and the share of face
    photos drawn from them (always read from files); ``lowres_prob``: share of composed scenes shown as a small photo
    enlarged; ``hard_prob``: share of scenes on rendered hard negatives (text, star fields; :class:`SceneConfig`)."""
    if table:
        def loader(p):
            return table[str(p)] if str(p) in table else cv2.imread(str(p), cv2.IMREAD_COLOR)
    else:
        loader = None
    cfg = SceneConfig(height=crop, width=crop, occlude_prob=occlude_prob, tight_prob=tight_prob, real_prob=real_prob,
                      lowres_prob=lowres_prob, hard_prob=hard_prob)
    return SceneRenderer(labels, cfg, OccluderSampler("train", templates or None, realistic_prob=realistic_prob,
                                                      cutouts_dir=cutouts or None), image_loader=loader, real=real)


class SceneStream:
    """Map-style dataset of ``length`` training scenes: item ``i`` = ``(image uint8 (H, W, 3) BGR, label int8 (A,),
    box float32 (A, 4), lmk float32 (A, 5, 2))`` of scene ``seed * 10_000_019 + i`` (:func:`match` targets)."""

    def __init__(self, renderer: SceneRenderer, anchors: Anchors, length: int, seed: int):
        self.r, self.anc, self.length, self.seed = renderer, anchors, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        sc = self.r.render(self.seed * 10_000_019 + int(i))
        t = match(self.anc, sc.boxes, sc.landmarks, sc.ignore)
        return sc.image, t["label"], t["box"], t["lmk"]
