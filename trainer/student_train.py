"""Student training: a student fine-tuned / trained on masked faces -- raw, or completed by the inpainter.

Students (``--arch``):

* ``dlib`` (default): a copy of the teacher (the dlib ResNet port), fine-tuned on 150x150 dlib chips, 128-d.
* ``resnet18``: the paper's student, ResNet-18 (insightface IR-18) + one embedding layer
  (:class:`trainer.models.student.ResNet18Embed`, ``--embedding-dim``, 512 by default), trained from scratch on
  112x112 ArcFace crops.
* ``mobilefacenet``: :class:`trainer.models.student.MobileFaceNet` (~1 M parameters), from scratch on 112x112
  ArcFace crops.

Whatever the student, the teacher keeps its own crops -- 150x150 dlib chips for the dlib teacher (descriptors of
the clean chips are precomputed; the validator's teacher baseline embeds the teacher's own masked chips).  The
non-dlib students carry their input normalisation inside the module (:class:`ArcInput`: ``x / 127.5 - 1``), so
every student takes float RGB in [0, 255], NCHW.  Presets (``--preset paper|cpu``, :data:`PRESETS`) fill the
fields a command line did not set.

Teacher (``--teacher-onnx PATH``): instead of the dlib ResNet port, any ONNX face embedder (:class:`OnnxTeacher`):
``--teacher-crop dlib150|arcface112`` says which crops it sees, ``--teacher-input`` its input convention
(``uint8_nhwc_rgb``: (N, H, W, 3) uint8 RGB as ``export.onnx_embedder`` writes; ``float_nchw_rgb_pm1``: (N, 3, H, W)
float32 RGB ``(x / 255 - 0.5) / 0.5``, the insightface convention; :data:`TEACHER_INPUTS`).  Its clean-crop
descriptors are computed by ONNX Runtime and cached under a key with the file's sha256 and the crop; the teacher
width Dt is the graph's output width (the instance terms go through the learned projection, soft-instance centres
are Dt-d); the validator's baseline runs the ONNX teacher on its own masked crops.  No dlib teacher is built.

Capstone variant (``--pairwise mse|cosine|margin_cosine``, Liu & Shao 2022 eq. 5): the student embeds the masked and
the clean chip of every sample (one forward of the concatenated batch) and the loss adds
``pairwise_beta * pairwise_distill(s(masked), s(clean))`` (:func:`trainer.losses.margin.pairwise_distill`),
optionally only over the samples the ArcFace head classifies correctly on both (``--pairwise-correct-only``, needs
``--ce-weight > 0``); with CE, the ArcFace CE also applies to the clean embeddings (``ArcFace(gamma_r) +
ArcFace(gamma_m)``).  ``steps.csv`` logs ``pairwise`` and ``pairwise_kept`` (fraction distilled).  The pure recipe
ArcFace + beta * MSE: ``--pairwise mse --ce-weight 1 --instance none --lambda-p 0 --lambda-t 0``.

``--completion <inpainter>`` trains on *completed* faces (the paper's pipeline: the occluder's pixels are filled by
the GAN inpainter through the 112x112 ArcFace crop, :mod:`trainer.data.completion`, before the student sees the
chip); without it the student sees the raw masked chip (the "no completion" ablation).

The ``dlib`` student starts as an exact copy of the frozen teacher (the PyTorch port of dlib's ResNet,
:class:`trainer.models.dlib_resnet.DlibResNet`) and is fine-tuned on *masked* 150x150 dlib chips to reproduce
the teacher's relations on the *clean* versions of the same faces (relational de-occlusion distillation,
:class:`trainer.losses.distill.RelationalDistillLoss`, without the completion network)::

    L = lambda_i * L_instance(s(masked), t(clean)) + lambda_p * L_pair + lambda_t * L_triplet  [+ w_ce * ArcFace CE]
        [+ pairwise_beta * L_dist(s(masked), s(clean)) (+ w_ce * ArcFace CE of s(clean))]       (--pairwise)

* data: a folder-per-identity tree (the CelebA subset).  Faces are detected and aligned once with the
  baseline bundle (cached, :func:`trainer.data.faces.align_images`); each sample re-warps the student's chip
  (BGR; the dlib chip, or the 112x112 ArcFace crop for resnet18 / mobilefacenet), paints a synthetic occluder on
  it with probability ``mask_prob`` (real templates + procedural,
  :class:`trainer.data.synthesis.MaskSynthesizer`, seeded by ``(seed, epoch, index)``: reproducible and
  resumable) and converts to RGB.  Teacher descriptors of the clean chips are computed once and cached (npy).
* split: identity-disjoint, ``val_fraction`` of the identities are held out.  Validation = pair verification
  on held-out identities, clean image vs masked image (template masks), for the student and -- in the same run,
  same pairs -- the dlib teacher baseline; plus clean vs clean for the student (unmasked faces must stay good).
* batches: identity-balanced, P identities x K images.
* outputs (``out``): ``steps.csv`` (losses per step), ``val.csv``, ``loss.png``, ``ckpt/last.safetensors`` +
  ``ckpt/last.json`` (weights + optimiser state, no pickle), ``ckpt/epoch<N>.safetensors``,
  ``student.safetensors`` (the student's weights only, metadata ``arch`` / ``embedding_dim``; for ``dlib`` the
  input of ``python -m export.onnx_embedder``; read any of them back with :func:`load_student_weights`).

Run: ``python -m trainer.student_train --data ../shared/data/celeba_subset --templates ../shared/data/mask_templates
--epochs 2 --out out/student`` (``--resume`` continues from ``out/ckpt/last.*``).  The paper's student:
``--preset paper --out out/student_paper``; a few-minute CPU smoke run: ``--preset cpu --out out/student_cpu``.

Several processes (DistributedDataParallel): ``python -m torch.distributed.run --nproc_per_node 2 -m
trainer.student_train ...`` (``torchrun``).  When ``WORLD_SIZE > 1`` every rank builds the same epoch's PK batches
(same seeds) and rank ``r`` trains on batches ``r::WORLD_SIZE``, so an epoch of ``N`` batches takes
``N // WORLD_SIZE`` optimiser steps; gradients are averaged across ranks (DDP for the student, an all-reduce
for the loss/head parameters), the logged losses are the mean over ranks, and only rank 0 writes caches, logs,
checkpoints and plots.  Backend: ``gloo`` (``nccl`` only when a ``device`` field says cuda and CUDA exists).
A resumed run must use the same number of processes when it restarts mid-epoch.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

log = logging.getLogger("trainer.student")

#: occluder categories sampled for training (no "block": the ID-GAN square is an evaluation condition)
TRAIN_MASK_WEIGHTS = {"simple": 0.45, "complex": 0.25, "human_body": 0.1, "hybrid": 0.1, "sunglasses": 0.05,
                      "scarf": 0.05}


@dataclass
class StudentConfig:
    """Everything a training run depends on (stored in every checkpoint's JSON)."""

    data: str = "../shared/data/celeba_subset"
    templates: str | None = "../shared/data/mask_templates"
    out: str = "out/student"
    cache: str | None = None              # alignment + teacher cache (default <out>/cache)
    model: str | None = None              # bundle used for detection/alignment (default: baseline)
    init: str | None = None               # student init: dlib .dat / safetensors (default: packaged dlib .dat)
    arch: str = "dlib"                    # dlib (teacher copy, 150 px chips) | resnet18 | mobilefacenet (112 px crops)
    embedding_dim: int = 512              # student embedding width (ignored for dlib: 128)
    preset: str | None = None             # the preset the fields were filled from (record only; see from_preset)
    epochs: int = 2
    p_identities: int = 8                 # P identities per batch
    k_images: int = 4                     # K images per identity  (batch = P * K)
    steps_per_epoch: int = 0              # 0: len(train images) // batch
    max_per_identity: int = 10            # cap images per identity (0 = all)
    lr: float = 1e-5                      # Adam at 1e-4 wrecks the dlib weights within 2 steps (val 0.94 -> 0.77)
    optimizer: str = "adam"               # adam | sgd
    weight_decay: float = 0.0
    lr_step_epochs: int = 0               # lr x 0.1 every N epochs (0: constant); derived from the epoch (resumable)
    instance: str = "hard"                # hard | soft | none
    lambda_i: float = 1.0
    lambda_p: float = 1.0
    lambda_t: float = 2.0
    ce_weight: float = 0.0                # > 0 adds ArcFace CE on training identities
    head_lr_mult: float = 100.0           # ArcFace head learning rate = lr * head_lr_mult (the backbone is pretrained)
    # capstone (Liu & Shao 2022, eq. 5): distil the masked embedding towards the *clean* embedding of the same
    # image through the same student: L += pairwise_beta * pairwise_distill(s(masked), s(clean))
    pairwise: str = "none"                # none | mse | cosine | margin_cosine
    pairwise_beta: float = 1.0            # weight beta of the pairwise term
    pairwise_correct_only: bool = False   # distil only samples the ArcFace head gets right on masked AND clean
    pairwise_margin: float = 0.5          # m of margin_cosine (radians)
    pairwise_clean_ce: bool = True        # with pairwise: ArcFace CE on the clean embeddings too (eq. 5)
    # teacher: None = the dlib ResNet port (150x150 dlib chips, 128-d); else any ONNX face embedder
    teacher_onnx: str | None = None       # .onnx embedder used as the (frozen) teacher
    teacher_crop: str = "dlib150"         # dlib150 | arcface112: the crops the ONNX teacher sees
    teacher_input: str = "uint8_nhwc_rgb"  # the ONNX teacher's input convention (TEACHER_INPUTS)
    mask_prob: float = 0.8                # fraction of samples that get an occluder
    completion: str | None = None         # inpainter generator.safetensors: train on completed faces (None: masked)
    mask_weights: dict = field(default_factory=lambda: dict(TRAIN_MASK_WEIGHTS))
    val_fraction: float = 0.1
    val_pairs: int = 1200                 # genuine + impostor pairs (half each) for validation
    threads: int = 2
    workers: int = 1                      # DataLoader worker processes (0 = in-process)
    seed: int = 0
    ckpt_every: int = 50                  # steps between "last" checkpoints (and at every epoch end)
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.lr_step_epochs < 0:
            raise ValueError(f"lr_step_epochs must be >= 0, got {self.lr_step_epochs}")
        if self.pairwise not in PAIRWISE:
            raise ValueError(f"pairwise must be one of {', '.join(PAIRWISE)}, got {self.pairwise!r}")
        if self.pairwise_beta < 0:
            raise ValueError(f"pairwise_beta must be >= 0, got {self.pairwise_beta}")
        if self.pairwise_correct_only and not self.ce_weight > 0:
            raise ValueError("pairwise_correct_only selects the samples the ArcFace head classifies correctly: it "
                             f"needs the ArcFace CE term (ce_weight > 0), got ce_weight={self.ce_weight} "
                             "(the capstone recipe is ArcFace + beta * pairwise distillation: pass --ce-weight 1)")
        if self.pairwise_correct_only and self.pairwise == "none":
            raise ValueError("pairwise_correct_only selects the samples of the pairwise term: set pairwise "
                             "(--pairwise mse|cosine|margin_cosine)")
        if self.teacher_crop not in TEACHER_CROPS:
            raise ValueError(f"teacher_crop must be one of {', '.join(TEACHER_CROPS)}, got {self.teacher_crop!r}")
        if self.teacher_input not in TEACHER_INPUTS:
            raise ValueError(f"teacher_input must be one of {', '.join(TEACHER_INPUTS)}, got {self.teacher_input!r}")

    @property
    def batch_size(self) -> int:
        return self.p_identities * self.k_images

    @property
    def student_dim(self) -> int:
        """Width of the student's embedding: 128 for ``dlib``, else ``embedding_dim``."""
        return 128 if self.arch == "dlib" else int(self.embedding_dim)

    @property
    def input_size(self) -> int:
        """Side of the student's square input in pixels: 150 (dlib chip) or 112 (ArcFace crop)."""
        return 150 if self.arch == "dlib" else ARC_SIZE

    def lr_factor(self, epoch: int) -> float:
        """Step schedule: the lr multiplier during 0-based ``epoch`` (``0.1 ** (epoch // lr_step_epochs)``)."""
        return 0.1 ** (int(epoch) // self.lr_step_epochs) if self.lr_step_epochs > 0 else 1.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "StudentConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_preset(cls, preset: str | None, **explicit: Any) -> "StudentConfig":
        """A config whose fields come from ``explicit`` first, then from ``PRESETS[preset]``, then the defaults.

        A preset only fills the fields the caller did not pass: ``from_preset("paper", lr=0.01)`` trains with
        lr 0.01 and every other paper setting (this is what ``--preset`` does with the flags on the command
        line).  ``preset=None`` is plain ``StudentConfig(**explicit)``."""
        if preset is None:
            return cls(**explicit)
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **explicit, "preset": preset})


#: student architectures (``StudentConfig.arch``)
ARCHS = ("dlib", "resnet18", "mobilefacenet")
#: capstone pairwise masked/clean distillation kinds (``StudentConfig.pairwise``, :func:`pairwise_distill`)
PAIRWISE = ("none", "mse", "cosine", "margin_cosine")
#: crops an ONNX teacher can see (``StudentConfig.teacher_crop``): side in pixels
TEACHER_CROPS = {"dlib150": 150, "arcface112": 112}
#: ONNX teacher input conventions (``StudentConfig.teacher_input``): what the graph's single input expects
TEACHER_INPUTS = {
    "uint8_nhwc_rgb": "(N, H, W, 3) uint8 RGB, preprocessing inside the graph (what export.onnx_embedder writes)",
    "float_nchw_rgb_pm1": "(N, 3, H, W) float32 RGB, (x / 255 - 0.5) / 0.5 in [-1, 1] (ArcFace / insightface)",
    "float_nchw_bgr_pm1": "(N, 3, H, W) float32 BGR, (x / 255 - 0.5) / 0.5 in [-1, 1]",
    "float_nchw_rgb_255": "(N, 3, H, W) float32 RGB in [0, 255] (this trainer's students, normalisation inside)",
}
#: side of the ArcFace crop the non-dlib students see (sdk.align.ARCFACE_112 template)
ARC_SIZE = 112

#: ``--preset`` values: fields filled when the user did not set them (``StudentConfig.from_preset``).
PRESETS: dict[str, dict[str, Any]] = {
    # Look Through Masks (Li et al., ACM MM 2020) sec. 3.4 / 4.1: ResNet-18 + one 512-d embedding layer, batch 128,
    # SGD momentum 0.9, lr 0.1 divided by 10 every 24 epochs, weight decay 5e-4, lambda_p = 1, lambda_t = 2, the
    # soft instance term, CE.  The paper gives no epoch count: 60 is our choice (two lr drops, then 12 epochs at
    # 1e-3).  All images of every identity.  The ArcFace head trains at the backbone's lr (no pretrained backbone).
    "paper": dict(arch="resnet18", embedding_dim=512, p_identities=32, k_images=4, optimizer="sgd", lr=0.1,
                  lr_step_epochs=24, weight_decay=5e-4, lambda_i=1.0, lambda_p=1.0, lambda_t=2.0, instance="soft",
                  ce_weight=1.0, head_lr_mult=1.0, epochs=60, max_per_identity=0),
    # a smoke run that finishes in minutes on 2 CPU cores: MobileFaceNet (128-d), 20 batches of 8 x 4, Adam 1e-3,
    # the paper's loss terms.
    "cpu": dict(arch="mobilefacenet", embedding_dim=128, p_identities=8, k_images=4, epochs=1, steps_per_epoch=20,
                optimizer="adam", lr=1e-3, lr_step_epochs=0, weight_decay=0.0, lambda_p=1.0, lambda_t=2.0,
                instance="soft", ce_weight=1.0, head_lr_mult=1.0),
}


# ------------------------------------------------------------------------------------------------- data
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Deterministic synthesis seed of sample ``index`` in ``epoch``."""
    return (seed * 1_000_003 + epoch * 7_919_033 + index * 104_729 + 17) % (2**63)


class MaskedChipDataset:
    """``ds[(index, epoch)] -> (masked RGB uint8 (S,S,3), clean RGB uint8 (S,S,3), label int, index int)``.

    ``paths``/``chip_m``/``landmarks`` come from :class:`trainer.data.faces.AlignedSet` (frame->chip matrices and
    frame landmarks); ``S = chip_size``: 150 with the dlib chip matrices, 112 with ArcFace-crop matrices
    (``similarity_to_template(landmarks, ARCFACE_112)``, :func:`arc_matrices`).  The occluder is synthesised on
    the chip from the chip's landmarks.  ``epoch < 0`` means validation: always masked (``val_synth``), seed
    independent of epoch.  Picklable (DataLoader workers): the synthesizer reloads its templates lazily.
    """

    def __init__(self, paths: Sequence[str], chip_m: np.ndarray, landmarks: np.ndarray, labels: Sequence[int],
                 synth, mask_prob: float, seed: int, val_synth=None, chip_size: int = 150, completer=None):
        self.paths = list(paths)
        self.chip_m = np.asarray(chip_m, np.float64)
        self.landmarks = np.asarray(landmarks, np.float32)
        self.labels = np.asarray(labels, np.int64)
        self.synth, self.val_synth = synth, val_synth
        self.mask_prob, self.seed, self.chip_size = float(mask_prob), int(seed), int(chip_size)
        self.completer = completer  # trainer.data.completion.ChipCompleter: masked chips are completed

    def _complete(self, i: int, masked: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """``masked`` chip of image ``i`` with its hole filled by the inpainter (through the ArcFace crop)."""
        if self.completer is None or not hole.any():
            return masked
        from sdk.align import ARCFACE_112, similarity_to_template
        from trainer.data.completion import chip_to_arc

        mat = chip_to_arc(self.chip_m[i], similarity_to_template(self.landmarks[i], ARCFACE_112))
        return self.completer(masked[None], hole[None], mat[None])[0]

    def __len__(self) -> int:
        return len(self.paths)

    def clean_bgr(self, i: int) -> np.ndarray:
        from sdk.align import warp

        img = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        if img is None:
            return np.zeros((self.chip_size, self.chip_size, 3), np.uint8)
        return warp(img, self.chip_m[i], (self.chip_size, self.chip_size))

    def chip_landmarks(self, i: int) -> np.ndarray:
        m = self.chip_m[i]
        return (self.landmarks[i] @ m[:, :2].T + m[:, 2]).astype(np.float32)

    def __getitem__(self, key) -> tuple[np.ndarray, np.ndarray, int, int]:
        i, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        clean = self.clean_bgr(i)
        sd = sample_seed(self.seed, epoch, i)
        if epoch < 0:
            synth = self.val_synth or self.synth
            r = synth(clean, self.chip_landmarks(i), sd, category="simple")
            masked = self._complete(i, r.masked, r.mask)
        else:
            rng = np.random.default_rng(sd)
            if rng.random() < self.mask_prob:
                r = self.synth(clean, self.chip_landmarks(i), rng)
                masked = self._complete(i, r.masked, r.mask)
            else:
                masked = clean
        return (np.ascontiguousarray(masked[:, :, ::-1]), np.ascontiguousarray(clean[:, :, ::-1]),
                int(self.labels[i]), i)


def pk_batches(labels: np.ndarray, p: int, k: int, n_batches: int, seed: int, epoch: int) -> list[list[int]]:
    """Identity-balanced batches: each has ``p`` distinct identities x ``k`` images (with repetition only when an
    identity has fewer than ``k`` images).  Deterministic in ``(seed, epoch)``."""
    rng = random.Random(seed * 1009 + epoch)
    by_id: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_id.setdefault(int(y), []).append(i)
    ids = sorted(by_id)
    if len(ids) < p:
        raise ValueError(f"need at least P={p} identities, have {len(ids)}")
    pools = {y: [] for y in ids}
    order: list[int] = []
    out = []
    while len(out) < n_batches:
        batch = []
        chosen = []
        while len(chosen) < p:
            if not order:
                order = ids[:]
                rng.shuffle(order)
            y = order.pop()
            if y not in chosen:
                chosen.append(y)
        for y in chosen:
            for _ in range(k):
                if not pools[y]:
                    pools[y] = by_id[y][:]
                    rng.shuffle(pools[y])
                batch.append(pools[y].pop())
        out.append(batch)
    return out


def _collate(items):
    import torch

    masked = torch.from_numpy(np.stack([it[0] for it in items]))
    clean = torch.from_numpy(np.stack([it[1] for it in items]))
    labels = torch.tensor([it[2] for it in items], dtype=torch.int64)
    index = torch.tensor([it[3] for it in items], dtype=torch.int64)
    return masked, clean, labels, index


def _worker_init(_):
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def arc_matrices(landmarks: np.ndarray) -> np.ndarray:
    """(N, 2, 3) float64 frame -> 112x112 ArcFace-crop matrices from (N, 5, 2) frame landmarks (MTCNN order)."""
    from sdk.align import ARCFACE_112, similarity_to_template

    lms = np.asarray(landmarks, np.float32)
    out = np.zeros((len(lms), 2, 3), np.float64)
    for i, lm in enumerate(lms):
        out[i] = similarity_to_template(lm, ARCFACE_112)
    return out


# ---------------------------------------------------------------------------------------------- helpers
def to_input(chips_rgb_u8):
    """(N, S, S, 3) uint8 RGB tensor -> (N, 3, S, S) float32 RGB in [0, 255]: the input of every student (the
    DlibResNet takes it as is, the others normalise inside the module, :class:`ArcInput`)."""
    return chips_rgb_u8.permute(0, 3, 1, 2).float().contiguous()


def _arc_input_cls():
    """:class:`ArcInput`, defined lazily so importing this module does not import torch."""
    global _ARC_INPUT
    if _ARC_INPUT is None:
        from torch import nn

        class ArcInput(nn.Module):
            """``net(x / 127.5 - 1)``: float RGB [0, 255] NCHW in, the wrapped network's output out.

            Puts the insightface normalisation ``(x / 255 - 0.5) / 0.5`` (:func:`trainer.models.student.preprocess`)
            inside the module, so the training loop feeds every student the same [0, 255] tensors and an exported
            graph takes uint8-range RGB.  ``arch``, ``embedding_dim`` and ``input_size`` (112) describe the student;
            the wrapped network is ``.net`` (its state dict keys carry a ``net.`` prefix here)."""

            def __init__(self, net: nn.Module, arch: str):
                super().__init__()
                self.net, self.arch = net, arch
                self.embedding_dim = int(net.embedding_dim)
                self.input_size = int(getattr(net, "input_size", ARC_SIZE))

            def forward(self, x):
                """(N, 3, S, S) float RGB in [0, 255] -> (N, embedding_dim) raw (un-normalised) embeddings."""
                return self.net(x / 127.5 - 1.0)

        ArcInput.__qualname__ = "ArcInput"  # importable (and picklable) as trainer.student_train.ArcInput
        ArcInput.__module__ = __name__
        _ARC_INPUT = ArcInput
    return _ARC_INPUT


_ARC_INPUT = None


def __getattr__(name: str):
    """``trainer.student_train.ArcInput`` (built on first access: importing this module does not import torch)."""
    if name == "ArcInput":
        return _arc_input_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_student(arch: str, embedding_dim: int = 512):
    """An untrained student: ``resnet18`` / ``mobilefacenet`` at 112x112 wrapped in :class:`ArcInput`; ``dlib``
    is the packaged dlib ResNet (pretrained, 128-d, 150x150 input)."""
    if arch == "dlib":
        from trainer.models.dlib_resnet import DlibResNet

        return DlibResNet.from_dat()
    from trainer.models.student import build_student

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return _arc_input_cls()(build_student(arch, embedding_dim=int(embedding_dim), input_size=ARC_SIZE), arch)


def student_arch(net) -> str:
    """``"dlib"`` for a :class:`DlibResNet` (possibly DDP-wrapped), else the :class:`ArcInput`'s ``arch``."""
    net = getattr(net, "module", net)
    return str(getattr(net, "arch", "dlib"))


def student_cost(net, input_size: int) -> dict:
    """``{"params", "gflops"}`` of one forward of ``net`` on a (1, 3, input_size, input_size) image (FLOPs =
    2 x multiply-accumulates of convolutions and matmuls, :func:`trainer.models.student.count_flops`)."""
    from trainer.models.student import count_flops, count_params

    try:
        flops = count_flops(net, input_size)
    except Exception as e:  # noqa: BLE001 - the cost is informative only
        log.debug("FLOP count failed: %s", e)
        flops = float("nan")
    return {"params": int(count_params(net)), "gflops": float(flops) / 1e9}


# ---------------------------------------------------------------------------------------------- teachers
class OnnxTeacher:
    """A frozen teacher from any ONNX face embedder, run by ONNX Runtime (CPU).

    Args:
        path: the ``.onnx`` file: one input ``(N, ...)`` image batch, first output ``(N, D)`` float descriptors.
        crop: ``"dlib150"`` (150x150 dlib chips) or ``"arcface112"`` (112x112 ArcFace crops): the crops the graph
            was trained on (:data:`TEACHER_CROPS`).
        input_kind: the graph's input convention, one of :data:`TEACHER_INPUTS` (``"uint8_nhwc_rgb"``: what
            ``python -m export.onnx_embedder`` writes; ``"float_nchw_rgb_pm1"``: the ArcFace / insightface
            convention ``(x / 255 - 0.5) / 0.5``, RGB, NCHW).
        threads: ONNX Runtime intra-op threads (0 = one per core).
        batch: images per ``session.run`` (a graph with a static batch dimension uses that instead).

    :meth:`descriptors` takes what every chip here is: uint8 RGB ``(N, S, S, 3)`` with ``S = input_size``, and
    converts it to the graph's convention.  ``dim`` is the width of the graph's output (from its static shape,
    else from one forward pass on a black image); ``sha256`` the file's digest (part of the descriptor cache
    key).  Raises :class:`sdk.errors.ModelFileError` naming the file when it is missing, cannot be loaded
    (truncated, not ONNX) or its input / output do not match ``crop`` / ``input_kind``.
    """

    arch = "onnx"

    def __init__(self, path: str | Path, crop: str = "dlib150", input_kind: str = "uint8_nhwc_rgb", threads: int = 0,
                 batch: int = 64):
        from sdk.backends.ort import open_session
        from sdk.embed import file_digest
        from sdk.errors import ModelFileError

        if crop not in TEACHER_CROPS:
            raise ValueError(f"teacher crop must be one of {', '.join(TEACHER_CROPS)}, got {crop!r}")
        if input_kind not in TEACHER_INPUTS:
            raise ValueError(f"teacher input must be one of {', '.join(TEACHER_INPUTS)}, got {input_kind!r}")
        self.path, self.crop, self.input_kind = Path(path), crop, input_kind
        self.input_size = TEACHER_CROPS[crop]
        self.batch = int(batch)
        self._sess = open_session(self.path, threads=threads, what="an ONNX teacher embedder")
        self.sha256 = file_digest(self.path)
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(ins) != 1 or not outs:
            raise ModelFileError(self.path, f"an ONNX teacher needs 1 input and an output, got {len(ins)} inputs, "
                                            f"{len(outs)} outputs")
        i, o = ins[0], outs[0]
        size = self.input_size
        want_type = "tensor(uint8)" if input_kind.startswith("uint8") else "tensor(float)"
        want_shape = [size, size, 3] if "_nhwc_" in input_kind else [3, size, size]
        shp = list(i.shape)
        if (i.type != want_type or len(shp) != 4
                or any(isinstance(d, int) and d != w for d, w in zip(shp[1:], want_shape))):
            raise ModelFileError(self.path, f"input {i.name!r} is {i.type} {shp}; --teacher-input {input_kind} "
                                            f"--teacher-crop {crop} expects {want_type} [N, "
                                            f"{', '.join(map(str, want_shape))}]")
        #: a graph exported with a fixed batch size gets exactly that many images per run (zero-padded)
        self.static_batch = int(shp[0]) if isinstance(shp[0], int) and shp[0] > 0 else None
        if self.static_batch:
            self.batch = self.static_batch
        oshp = list(o.shape)
        if o.type != "tensor(float)" or len(oshp) != 2:
            raise ModelFileError(self.path, f"output {o.name!r} is {o.type} {oshp}; an ONNX teacher must return "
                                            "float [N, D] descriptors")
        self._in, self._out = i.name, o.name
        if isinstance(oshp[1], int) and oshp[1] > 0:
            self.dim = int(oshp[1])
        else:
            self.dim = int(self.descriptors(np.zeros((1, size, size, 3), np.uint8), check_dim=False).shape[1])
        self.embedding_dim = self.dim

    @property
    def key(self) -> str:
        """What decides the descriptors: ``onnx:<sha256>:<crop>:<input_kind>``."""
        return f"onnx:{self.sha256}:{self.crop}:{self.input_kind}"

    def _feed(self, chips: np.ndarray) -> np.ndarray:
        """uint8 RGB (n, S, S, 3) -> the graph's input array (``input_kind``)."""
        if self.input_kind == "uint8_nhwc_rgb":
            return np.ascontiguousarray(chips, np.uint8)
        x = chips[..., ::-1] if "_bgr_" in self.input_kind else chips
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)
        return x if self.input_kind.endswith("_255") else (x / 255.0 - 0.5) / 0.5

    def descriptors(self, chips: np.ndarray, check_dim: bool = True) -> np.ndarray:
        """(N, dim) float32 raw teacher descriptors of uint8 RGB chips (N, S, S, 3), S = ``input_size``."""
        chips = np.asarray(chips)
        size = self.input_size
        if chips.ndim != 4 or chips.shape[1:] != (size, size, 3) or chips.dtype != np.uint8:
            raise ValueError(f"the ONNX teacher ({self.crop}) needs uint8 RGB chips (N, {size}, {size}, 3), got "
                             f"{chips.dtype} {chips.shape}")
        out = []
        for s in range(0, len(chips), self.batch):
            part = chips[s:s + self.batch]
            n = len(part)
            if self.static_batch and n < self.static_batch:
                part = np.concatenate([part, np.zeros((self.static_batch - n,) + part.shape[1:], np.uint8)])
            out.append(np.asarray(self._sess.run([self._out], {self._in: self._feed(part)})[0], np.float32)[:n])
        if not out:
            return np.zeros((0, self.dim), np.float32)
        res = np.concatenate(out).astype(np.float32, copy=False)
        if check_dim and res.shape[1] != self.dim:
            raise ValueError(f"{self.path}: returned {res.shape[1]}-d descriptors, expected {self.dim}")
        return res

    def __repr__(self) -> str:
        return f"OnnxTeacher({str(self.path)!r}, crop={self.crop!r}, input_kind={self.input_kind!r}, dim={self.dim})"


def build_teacher(cfg: StudentConfig, threads: int | None = None):
    """The frozen teacher of ``cfg``: an :class:`OnnxTeacher` when ``cfg.teacher_onnx`` is set, else the dlib
    ResNet port (:class:`trainer.models.dlib_resnet.DlibResNet`, eval mode, no gradients) from ``cfg.init`` when
    that is a dlib ``.dat``, else from the packaged ``.dat``."""
    if cfg.teacher_onnx:
        return OnnxTeacher(cfg.teacher_onnx, cfg.teacher_crop, cfg.teacher_input,
                           threads=cfg.threads if threads is None else threads)
    from trainer.models.dlib_resnet import DlibResNet

    init_dat = bool(cfg.init) and str(cfg.init).endswith(".dat")
    teacher = DlibResNet.from_dat(cfg.init if init_dat else None).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    return teacher


def teacher_dim(teacher) -> int:
    """Width of the teacher's descriptors: the ONNX graph's output width, 128 for the dlib ResNet."""
    return int(teacher.dim) if isinstance(teacher, OnnxTeacher) else 128


def teacher_crop(teacher) -> str:
    """The crops the teacher sees: ``"dlib150"`` or ``"arcface112"`` (an :class:`OnnxTeacher`'s ``crop``)."""
    return teacher.crop if isinstance(teacher, OnnxTeacher) else "dlib150"


def teacher_matrices(teacher, chip_m: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, int]:
    """``(frame->crop matrices (N, 2, 3), crop side)`` of the teacher's crops: the dlib chip matrices ``chip_m``
    (150) or the ArcFace-crop matrices fitted to the frame ``landmarks`` (112, :func:`arc_matrices`)."""
    if teacher_crop(teacher) == "arcface112":
        return arc_matrices(landmarks), ARC_SIZE
    return np.asarray(chip_m, np.float64), 150


@dataclass
class Prepared:
    """Aligned train/val data and the teacher's clean descriptors."""

    paths: list[str]
    identities: list[str]
    labels: np.ndarray          # (N,) index into identities
    train_idx: np.ndarray
    val_idx: np.ndarray
    chip_m: np.ndarray
    landmarks: np.ndarray
    teacher: np.ndarray         # (N, Dt) raw teacher descriptors of its clean crops (Dt = 128 for dlib)
    train_ids: list[str]
    val_ids: list[str]


def select_samples(data: str | Path, max_per_identity: int):
    from trainer.data.readers import read_identity_tree

    samples = read_identity_tree(data, min_images=2)
    out, count = [], {}
    for s in samples:
        count[s.identity] = count.get(s.identity, 0) + 1
        if not max_per_identity or count[s.identity] <= max_per_identity:
            out.append(s)
    return out


def teacher_descriptors(teacher, ds: MaskedChipDataset, cache: Path | None, batch: int = 64,
                        progress: bool = True) -> np.ndarray:
    """(N, Dt) float32 raw teacher descriptors of every clean crop of ``ds`` (cached in ``cache`` when given).

    ``teacher``: the dlib ResNet (exported to ONNX in memory, Dt = 128, ``ds`` of 150x150 dlib chips) or an
    :class:`OnnxTeacher` (Dt = its output width, ``ds`` of its own crops).  A cache file of another shape is
    recomputed."""
    from tqdm import tqdm

    dim = teacher_dim(teacher)
    if cache is not None and cache.is_file():
        out = np.load(cache)
        if out.shape == (len(ds), dim):
            log.info("teacher descriptors from cache %s", cache)
            return out
    if isinstance(teacher, OnnxTeacher):
        run = teacher.descriptors
    else:
        from export.onnx_embedder import export_onnx_bytes, ort_descriptors, ort_session

        sess = ort_session(export_onnx_bytes(teacher))

        def run(chips: np.ndarray) -> np.ndarray:
            return ort_descriptors(sess, chips)
    res = []
    for s in tqdm(range(0, len(ds), batch), desc="teacher (clean)", disable=not progress):
        chips = np.stack([ds.clean_bgr(i)[:, :, ::-1] for i in range(s, min(len(ds), s + batch))])
        res.append(run(chips))
    out = np.concatenate(res).astype(np.float32) if res else np.zeros((0, dim), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
        log.info("teacher descriptors (%s) cached in %s", getattr(teacher, "key", "dlib"), cache)
    return out


def teacher_cache_name(teacher, paths: Sequence[str], chip_m: np.ndarray, init: str | None) -> str:
    """File name of the teacher-descriptor cache: ``teacher-<hash>.npy`` over the image paths and the teacher's
    frame->crop matrices, plus ``init`` for the dlib teacher (unchanged from earlier runs) or, for an
    :class:`OnnxTeacher`, ``teacher-onnx-<hash>.npy`` with its :attr:`OnnxTeacher.key` (file sha256, crop, input
    convention) in the hash: another ONNX file or crop is another cache."""
    h = hashlib.sha1("|".join(paths).encode())
    h.update(np.ascontiguousarray(np.asarray(chip_m, np.float64)).tobytes())
    if isinstance(teacher, OnnxTeacher):
        h.update(teacher.key.encode())
        return f"teacher-onnx-{h.hexdigest()[:16]}.npy"
    h.update(str(init).encode())
    return f"teacher-{h.hexdigest()[:16]}.npy"


def prepare_data(cfg: StudentConfig, teacher, detector=None, embedder=None) -> Prepared:
    """Read, split (identity-disjoint), align (cached) and compute the teacher's clean descriptors (cached).

    ``teacher``: the dlib ResNet (descriptors of the 150x150 dlib chips) or an :class:`OnnxTeacher` (of its own
    crops, ``teacher.crop``)."""
    from trainer.data.faces import align_images
    from trainer.data.readers import identity_split

    samples = select_samples(cfg.data, cfg.max_per_identity)
    cache = Path(cfg.cache) if cfg.cache else Path(cfg.out) / "cache"
    if detector is None or embedder is None:
        from sdk._registry import build_stage
        from sdk.bundle import load_bundle

        bundle = load_bundle(cfg.model)
        detector = build_stage(bundle.stages["detect"], {"max_side": None})
        embedder = build_stage(bundle.stages["embed"])
    paths = [str(s.path) for s in samples]
    aligned = align_images(paths, detector, embedder, cache, progress=cfg.progress)
    val_frac = cfg.val_fraction
    split = identity_split(samples, (1.0 - val_frac, val_frac, 0.0), seed=cfg.seed)
    train_ids, val_ids = list(split.train), list(split.val)
    if not val_ids and val_frac > 0 and len(train_ids) > 1:  # tiny sets: hold out one identity at least
        val_ids, train_ids = train_ids[-1:], train_ids[:-1]
    # labels: training identities first (0..T-1, the ArcFace classes), held-out ones after
    order = train_ids + val_ids
    lab_of = {name: i for i, name in enumerate(order)}
    labels = np.array([lab_of[s.identity] for s in samples], np.int64)
    tr = np.array([i for i, s in enumerate(samples) if s.identity in set(train_ids)], np.int64)
    va = np.array([i for i, s in enumerate(samples) if s.identity in set(val_ids)], np.int64)
    t_m, t_size = teacher_matrices(teacher, aligned.chip_m, aligned.landmarks)
    ds = MaskedChipDataset(aligned.paths, t_m, aligned.landmarks, labels, None, 0.0, cfg.seed, chip_size=t_size)
    name = teacher_cache_name(teacher, paths, t_m, cfg.init)
    t = teacher_descriptors(teacher, ds, cache / name, progress=cfg.progress)
    return Prepared(aligned.paths, order, labels, tr, va, aligned.chip_m, aligned.landmarks, t, train_ids, val_ids)


def val_pairs(labels: np.ndarray, idx: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n_pairs/2`` genuine and as many impostor pairs among ``idx`` (positions into ``idx``)."""
    rng = np.random.default_rng(seed)
    lab = labels[idx]
    gen = [(a, b) for a in range(len(idx)) for b in range(len(idx)) if a != b and lab[a] == lab[b]]
    half = n_pairs // 2
    if len(gen) > half:
        gen = [gen[j] for j in rng.choice(len(gen), half, replace=False)]
    imp = []
    while len(imp) < len(gen) and len(set(lab.tolist())) > 1:
        a, b = rng.integers(0, len(idx), 2)
        if lab[a] != lab[b]:
            imp.append((int(a), int(b)))
    pairs = np.array(gen + imp, np.int64).reshape(-1, 2)
    same = np.array([True] * len(gen) + [False] * len(imp))
    return pairs[:, 0], pairs[:, 1], same


def pair_accuracy(ea: np.ndarray, eb: np.ndarray, same: np.ndarray, folds: int = 10) -> float:
    """k-fold verification accuracy (threshold chosen on the other folds) of cosine scores."""
    from trainer.eval import cosine_pair_scores, lfw_10fold

    if len(same) < 2 * folds or same.all() or not same.any():
        return float("nan")
    f = np.random.default_rng(0).permutation(len(same)) % folds
    return float(lfw_10fold(cosine_pair_scores(ea, eb), same, f).accuracy_mean)


def embed_chips(net, chips: np.ndarray, batch: int = 64, threads: int = 0) -> np.ndarray:
    """(N, D) raw descriptors of uint8 RGB chips (N, S, S, 3).

    A :class:`DlibResNet` (S = 150, D = 128) is exported to ONNX and run by ONNX Runtime (bit-compatible to ~1e-6
    with torch and ~5x faster on CPU than torch's eager forward); any other student (S = 112, D = its embedding
    width) runs in torch, eval mode, ``torch.no_grad()``, ``batch`` chips at a time (training mode restored).
    An :class:`OnnxTeacher` embeds its own crops (S = its ``input_size``, D = its ``dim``)."""
    if isinstance(net, OnnxTeacher):
        return net.descriptors(chips)
    if student_arch(net) != "dlib":
        return torch_embed(net, chips, batch, threads)
    from export.onnx_embedder import export_onnx_bytes, ort_descriptors, ort_session

    if not len(chips):
        return np.zeros((0, 128), np.float32)
    return ort_descriptors(ort_session(export_onnx_bytes(net), threads), chips, batch)


def torch_embed(net, chips: np.ndarray, batch: int = 64, threads: int = 0) -> np.ndarray:
    """(N, D) float32 raw embeddings of uint8 RGB chips (N, S, S, 3) by ``net`` (float RGB [0, 255] NCHW input)
    in torch: eval mode, no gradients, ``batch`` chips per forward; ``threads > 0`` sets torch's intra-op threads
    for the call.  The module's training flag is restored."""
    import torch

    net = getattr(net, "module", net)
    dim = int(getattr(net, "embedding_dim", 128))
    if not len(chips):
        return np.zeros((0, dim), np.float32)
    old_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    was = net.training
    net.eval()
    try:
        out = []
        with torch.no_grad():
            for s in range(0, len(chips), batch):
                x = to_input(torch.from_numpy(np.ascontiguousarray(chips[s:s + batch])))
                out.append(net(x).float().numpy())
    finally:
        net.train(was)
        torch.set_num_threads(old_threads)
    return np.concatenate(out).astype(np.float32)


class Validator:
    """Held-out pair verification, clean (a) vs masked (b); the teacher baseline is computed once.

    ``ds`` yields the *student's* chips (150x150 dlib chips or 112x112 ArcFace crops).  The teacher always sees
    its own crops (the dlib teacher: 150x150 dlib chips; an :class:`OnnxTeacher`: its ``crop``):
    ``teacher_clean`` are their precomputed descriptors and, when the student's chips are not the teacher's,
    ``teacher_ds`` (the same images with the teacher's crop matrices) gives the teacher's masked crops -- same
    synthesis seed per image (``sample_seed(seed, -1, i)``), the occluder placed from the crop's own landmarks.
    ``teacher_ds=None``: the teacher embeds ``ds``'s masked chips (student and teacher see the same crops)."""

    def __init__(self, ds: MaskedChipDataset, val_idx: np.ndarray, teacher_clean: np.ndarray, teacher, n_pairs: int,
                 seed: int, progress: bool = True, teacher_ds: MaskedChipDataset | None = None):
        from tqdm import tqdm

        self.idx = np.asarray(val_idx)
        self.a, self.b, self.same = val_pairs(ds.labels, self.idx, n_pairs, seed)
        empty = np.zeros((0, ds.chip_size, ds.chip_size, 3), np.uint8)
        items = [ds[(int(i), -1)] for i in tqdm(self.idx, desc="val chips", disable=not progress)]
        self.masked = np.stack([it[0] for it in items]) if items else empty
        self.clean = np.stack([it[1] for it in items]) if items else empty
        if teacher_ds is None:
            self.teacher_masked = self.masked
        else:
            t_items = [teacher_ds[(int(i), -1)][0]
                       for i in tqdm(self.idx, desc="val chips (teacher)", disable=not progress)]
            self.teacher_masked = np.stack(t_items) if t_items else \
                np.zeros((0, teacher_ds.chip_size, teacher_ds.chip_size, 3), np.uint8)
        tc = teacher_clean[self.idx]
        tm = embed_chips(teacher, self.teacher_masked)
        self.baseline = {"teacher_clean_vs_masked": pair_accuracy(tc[self.a], tm[self.b], self.same),
                         "teacher_clean_vs_clean": pair_accuracy(tc[self.a], tc[self.b], self.same),
                         "pairs": int(len(self.same))}

    def __call__(self, student) -> dict[str, float]:
        was = student.training
        student.eval()
        sm, sc = embed_chips(student, self.masked), embed_chips(student, self.clean)
        student.train(was)
        return {"student_clean_vs_masked": pair_accuracy(sc[self.a], sm[self.b], self.same),
                "student_clean_vs_clean": pair_accuracy(sc[self.a], sc[self.b], self.same),
                "student_masked_vs_masked": pair_accuracy(sm[self.a], sm[self.b], self.same)}


# ------------------------------------------------------------------------------------------ checkpoints
def _arch_meta(student) -> dict[str, str]:
    """safetensors metadata describing the student: ``{"arch", "embedding_dim"}`` (strings)."""
    net = getattr(student, "module", student)
    return {"arch": student_arch(net), "embedding_dim": str(int(getattr(net, "embedding_dim", 128)))}


def save_student(student, path: str | Path) -> Path:
    """The student's weights only (no optimiser, no loss), for export / evaluation: ``path`` (.safetensors) with
    metadata ``{"format": "pt", "model", "arch", "embedding_dim"}``.  ``dlib``: DlibResNet's state dict (the
    input of ``python -m export.onnx_embedder``); other archs: the wrapped network's state dict (insightface key
    names for resnet18, no ``net.`` prefix; the input normalisation has no parameters).  No pickle."""
    from trainer._io import save_tensors

    net = getattr(student, "module", student)
    arch = student_arch(net)
    if arch == "dlib":
        sd, model = net.state_dict(), "dlib_face_recognition_resnet_model_v1"
    else:
        sd, model = net.net.state_dict(), f"lookthrough_student_{arch}"
    return save_tensors({k: v.detach().clone() for k, v in sd.items()}, path,
                        {"format": "pt", "model": model, **_arch_meta(net)})


def save_checkpoint(path: Path, student, loss_mod, head, opt, meta: dict) -> None:
    """``path`` (.safetensors: weights + optimiser tensors) and ``path.with_suffix('.json')`` (config, progress,
    optimiser hyper-parameters).  No pickle anywhere."""
    import torch
    from trainer._io import save_tensors

    tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
    tensors.update({f"loss.{k}": v for k, v in loss_mod.state_dict().items()})
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    osd = opt.state_dict()
    shapes = {}
    for pid, st in osd["state"].items():
        for name, v in st.items():
            key = f"opt.{pid}.{name}"
            t = torch.as_tensor(v)
            shapes[key] = list(t.shape)
            tensors[key] = t.reshape(-1) if t.dim() == 0 else t
    arch = student_arch(student)
    save_tensors({k: v.clone() for k, v in tensors.items()}, path,
                 {"format": "pt", "model": f"lookthrough_student_{arch}", **_arch_meta(student)})
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    js = {**meta, "optimizer": {"param_groups": groups, "shapes": shapes}}
    path.with_suffix(".json").write_text(json.dumps(js, indent=1))


def load_checkpoint(path: Path, student, loss_mod=None, head=None, opt=None) -> dict:
    """Inverse of :func:`save_checkpoint`; returns the JSON meta."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    student.load_state_dict(part("student."))
    if loss_mod is not None and part("loss."):
        loss_mod.load_state_dict(part("loss."))
    if head is not None and part("head."):
        head.load_state_dict(part("head."))
    if opt is not None and "optimizer" in meta:
        shapes = meta["optimizer"]["shapes"]
        state: dict[int, dict[str, Any]] = {}
        for k, v in part("opt.").items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v.reshape(shapes[f"opt.{k}"])
        opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta


def _infer_arch(sd: dict) -> tuple[str, int]:
    """``(arch, embedding_dim)`` of a student state dict (keys without the ``student.`` / ``net.`` prefixes)."""
    if "fc.weight" in sd and "layer1.0.conv1.weight" in sd:
        return "resnet18", int(sd["fc.weight"].shape[0])
    if "linear.weight" in sd and "gdconv.conv.weight" in sd:
        return "mobilefacenet", int(sd["linear.weight"].shape[0])
    return "dlib", 128


def load_student_weights(path: str | Path, arch: str | None = None):
    """The student in a file, eval mode: a training checkpoint (``student.`` keys), a bare state dict
    (``student.safetensors``, :func:`save_student`) or a dlib ``.dat`` (-> :class:`DlibResNet`).

    The architecture is ``arch`` when given, else the file's ``arch`` metadata, else inferred from the keys
    (older dlib files carry no ``arch``); ``resnet18`` / ``mobilefacenet`` come back wrapped in
    :class:`ArcInput` (float RGB [0, 255] NCHW 112x112 in), ``dlib`` as a :class:`DlibResNet` (150x150 in)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from trainer.models.dlib_resnet import DlibResNet

    p = Path(path)
    if p.suffix == ".dat":
        if arch not in (None, "dlib"):
            raise ValueError(f"{p} is a dlib .dat: it holds a dlib student, not {arch!r}")
        return DlibResNet.from_dat(p)
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    t = load_file(str(p))
    sd = {k[len("student."):]: v for k, v in t.items() if k.startswith("student.")} or t
    if sd and all(k.startswith("net.") for k in sd):
        sd = {k[len("net."):]: v for k, v in sd.items()}
    found, dim = _infer_arch(sd)
    file_arch = meta.get("arch") or found
    if arch is not None and arch != file_arch:
        raise ValueError(f"{p} holds a {file_arch!r} student, not {arch!r}")
    if file_arch == "dlib":
        net = DlibResNet()
        net.load_state_dict(sd)
        return net.eval()
    dim = int(meta.get("embedding_dim", dim))
    net = new_student(file_arch, dim)
    net.net.load_state_dict(sd)
    return net.eval()


def plot_losses(steps_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(steps_csv.open()))
    if not rows:
        return
    step = np.array([int(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in ("total", "instance", "pair", "triplet", "ce", "pairwise"):
        v = np.array([float(r.get(key) or 0.0) for r in rows])
        if not np.any(v):
            continue
        w = min(20, len(v))
        sm = np.convolve(v, np.ones(w) / w, mode="valid")
        ax.plot(step, v, alpha=0.2)
        ax.plot(step[w - 1:], sm, label=key, color=ax.lines[-1].get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("student distillation losses (raw + 20-step mean)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- training
CSV_FIELDS = ["step", "epoch", "batch", "lr", "total", "instance", "pair", "triplet", "ce", "pairwise", "pairwise_kept",
              "seconds"]


def build_models(cfg: StudentConfig, n_train_ids: int, teacher_centres=None, teacher=None):
    """``(teacher, student, loss_mod, head, opt)`` for ``cfg``.

    * teacher: ``teacher`` when given, else :func:`build_teacher` -- the frozen dlib ResNet (a ``.dat``
      ``cfg.init`` for the dlib arch, else the packaged one), 128-d, or the :class:`OnnxTeacher` of
      ``cfg.teacher_onnx`` (Dt = its output width).
    * student: ``dlib``: a copy of the dlib ResNet (or ``cfg.init``); ``resnet18`` / ``mobilefacenet``: untrained
      (or ``cfg.init`` of that arch), wrapped in :class:`ArcInput`; all take float RGB [0, 255] NCHW.
    * loss: :class:`RelationalDistillLoss` (student_dim -> Dt; a learned linear projection for the instance
      term unless the student is the dlib copy of the dlib teacher).  ``teacher_centres``: (n_train_ids, Dt)
      teacher identity centres (needed for ``instance="soft"``).
    * head: ArcFace over the student's embedding when ``ce_weight > 0``; its class weights start at the teacher's
      identity centres for the dlib student taught by the dlib teacher (the student starts *as* the teacher),
      randomly otherwise.
    * opt: Adam / SGD (momentum 0.9); param group 0 = student + loss, group 1 = head at ``lr * head_lr_mult``.
    """
    import torch

    from trainer.losses.distill import RelationalDistillLoss
    from trainer.losses.margin import ArcFaceHead

    dlib = cfg.arch == "dlib"
    init_dat = bool(cfg.init) and str(cfg.init).endswith(".dat")
    if init_dat and not dlib:
        raise ValueError(f"--init {cfg.init}: a dlib .dat cannot initialise a {cfg.arch} student")
    if teacher is None:
        teacher = build_teacher(cfg)
    t_dim = teacher_dim(teacher)
    same_space = dlib and not isinstance(teacher, OnnxTeacher)  # the dlib student starts as the dlib teacher
    if cfg.init:
        student = load_student_weights(cfg.init, arch=cfg.arch)
        if not dlib and student.embedding_dim != cfg.student_dim:
            raise ValueError(f"--init {cfg.init} is {student.embedding_dim}-d, the config asks for {cfg.student_dim}")
    else:
        student = new_student(cfg.arch, cfg.student_dim)
    student.train()
    dim = cfg.student_dim
    soft = cfg.instance == "soft"
    if teacher_centres is not None and tuple(teacher_centres.shape[1:]) != (t_dim,):
        raise ValueError(f"teacher_centres are {tuple(teacher_centres.shape)}, the teacher is {t_dim}-d")
    loss_mod = RelationalDistillLoss(dim, t_dim, instance=cfg.instance, lambda_i=cfg.lambda_i, lambda_p=cfg.lambda_p,
                                     lambda_t=cfg.lambda_t, ce_weight=cfg.ce_weight,
                                     # a student trained from scratch (or taught by another network) lives on its
                                     # own scale: the instance term always compares it through a learned
                                     # projection (also at equal widths)
                                     projection="identity" if same_space else "linear",
                                     n_classes=n_train_ids if soft else None,
                                     teacher_centres=teacher_centres if soft else None, student_centres="ema")
    head = ArcFaceHead(dim, n_train_ids) if cfg.ce_weight > 0 else None
    if head is not None and teacher_centres is not None and same_space:
        # the student starts as the teacher: class weights = the teacher's identity centres, so the CE term
        # starts from a sensible classifier instead of pulling the pretrained features towards random ones
        with torch.no_grad():
            head.weight.copy_(torch.nn.functional.normalize(teacher_centres.float(), dim=1))
    params = [{"params": [q for q in list(student.parameters()) + list(loss_mod.parameters()) if q.requires_grad]}]
    if head is not None:
        params.append({"params": list(head.parameters()), "lr": cfg.lr * cfg.head_lr_mult})
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be adam | sgd, got {cfg.optimizer!r}")
    return teacher, student, loss_mod, head, opt


def capstone_terms(cfg: StudentConfig, s, s_clean, labels, head) -> tuple[Any, Any, Any]:
    """The capstone's extra terms for one batch: ``(pairwise, kept, ce_clean)``.

    Args:
        cfg: ``pairwise`` (kind), ``pairwise_margin``, ``pairwise_correct_only``, ``pairwise_clean_ce``.
        s, s_clean: (B, D) student embeddings of the masked and of the clean chips of the same samples (same
            network, same forward pass).
        labels: (B,) int64 training identities (the ArcFace classes).
        head: the :class:`ArcFaceHead` (``None`` without CE).

    Returns:
        ``pairwise``: :func:`trainer.losses.margin.pairwise_distill` of ``(s, s_clean)`` (0-d, in the graph;
        gradients reach both branches; with ``pairwise_correct_only`` summed over the selected rows and divided by
        B, the capstone's "dynamic balancing").  ``kept``: 0-d float, the fraction of rows distilled -- those the
        head classifies correctly on *both* images from its margin-free logits ``head(x)``
        (:func:`correctly_classified`), 1 without ``pairwise_correct_only``.  ``ce_clean``: ArcFace CE of the
        clean embeddings (capstone eq. 5, ``ArcFace(gamma_r)``), 0-d; 0 without a head or without
        ``pairwise_clean_ce``.
    """
    import torch
    import torch.nn.functional as F

    from trainer.losses.margin import correctly_classified, pairwise_distill

    keep = None
    if cfg.pairwise_correct_only:
        if head is None:
            raise ValueError("pairwise_correct_only needs the ArcFace head (ce_weight > 0)")
        with torch.no_grad():
            keep = correctly_classified(labels, head(s.detach()), head(s_clean.detach()))
    pw = pairwise_distill(s, s_clean, kind=cfg.pairwise, margin=cfg.pairwise_margin, correct_mask=keep)
    kept = keep.float().mean() if keep is not None else torch.ones((), dtype=s.dtype)
    if head is not None and cfg.pairwise_clean_ce:
        ce_clean = F.cross_entropy(head(s_clean, labels), labels)
    else:
        ce_clean = s_clean.sum() * 0.0
    return pw, kept, ce_clean


def set_epoch_lr(opt, cfg: StudentConfig, epoch: int) -> float:
    """Set every param group's lr for 0-based ``epoch`` from the config (group 0: ``lr``, group 1 (head):
    ``lr * head_lr_mult``, both times :meth:`StudentConfig.lr_factor`); returns group 0's lr.  Derived from the
    epoch alone, so a resumed run continues the schedule.  No-op (constant lr, as before) when
    ``lr_step_epochs == 0``."""
    if cfg.lr_step_epochs <= 0:
        return float(opt.param_groups[0]["lr"])
    f = cfg.lr_factor(epoch)
    bases = [cfg.lr, cfg.lr * cfg.head_lr_mult]
    for g, base in zip(opt.param_groups, bases):
        g["lr"] = base * f
    return float(opt.param_groups[0]["lr"])


def dist_env() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment (``(0, 0, 1)`` outside torchrun)."""
    return (int(os.environ.get("RANK", "0") or 0), int(os.environ.get("LOCAL_RANK", "0") or 0),
            int(os.environ.get("WORLD_SIZE", "1") or 1))


def state_sha1(module) -> str:
    """SHA-1 over a module's state dict (sorted keys, names, dtypes, shapes and bytes): equal weights, equal hash."""
    h = hashlib.sha1()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).numpy().tobytes())
    return h.hexdigest()


def train(cfg: StudentConfig, detector=None, embedder=None, prepared: Prepared | None = None) -> dict:
    """Run (or resume) a training; returns a summary dict (also written to ``<out>/summary.json``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) this joins (or creates) the default process group and trains with
    DistributedDataParallel; a group created here is destroyed at the end."""
    rank, local_rank, world = dist_env()
    if world <= 1:
        return _train(cfg, detector, embedder, prepared, 0, 1)
    import torch
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        use_cuda = str(getattr(cfg, "device", "cpu")).startswith("cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        return _train(cfg, detector, embedder, prepared, dist.get_rank(), dist.get_world_size())
    finally:
        if own and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: StudentConfig, detector, embedder, prepared: Prepared | None, rank: int, world: int) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig
    from trainer.losses.distill import identity_centres

    ddp = world > 1
    main = rank == 0
    if ddp:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(max(1, cfg.threads))
    cv2.setNumThreads(1)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckdir = out / "ckpt"
    last = ckdir / "last.safetensors"
    if cfg.resume and last.is_file():
        saved = json.loads(last.with_suffix(".json").read_text())["config"]
        keep = {"epochs", "resume", "progress", "threads", "workers", "ckpt_every"}
        cfg = StudentConfig.from_json({**saved, **{k: getattr(cfg, k) for k in keep}})
    run_cfg = cfg if main else dataclasses.replace(cfg, progress=False)  # progress bars on rank 0 only

    from trainer.models.dlib_resnet import DlibResNet

    # an ONNX teacher is opened once (descriptor cache, validation baseline); the dlib one comes from build_models
    onnx_teacher = build_teacher(cfg) if cfg.teacher_onnx else None
    if prepared is not None:
        prep = prepared
    else:
        # rank 0 builds the alignment + teacher caches; the others wait, then read them
        if ddp and not main:
            dist.barrier()
        prep = prepare_data(run_cfg, onnx_teacher or DlibResNet.from_dat().eval(), detector, embedder)
        if ddp and main:
            dist.barrier()
    t_dim = teacher_dim(onnx_teacher) if onnx_teacher is not None else 128
    if prep.teacher.ndim != 2 or prep.teacher.shape[1] != t_dim:
        raise ValueError(f"the prepared teacher descriptors are {prep.teacher.shape}, the teacher is {t_dim}-d")
    n_train_ids = len(prep.train_ids)
    tr_lab = prep.labels[prep.train_idx]
    centres = None
    if cfg.instance == "soft" or cfg.ce_weight > 0:
        centres = identity_centres(torch.from_numpy(prep.teacher[prep.train_idx]), torch.from_numpy(tr_lab), n_train_ids)
    teacher, student, loss_mod, head, opt = build_models(cfg, n_train_ids, centres, teacher=onnx_teacher)
    cost = student_cost(student, cfg.input_size)
    pairwise = cfg.pairwise != "none"
    if main:
        log.info("student %s: %d-d embedding, %dx%d RGB input, %.2f M params, %.3f GFLOPs per image%s",
                 cfg.arch, cfg.student_dim, cfg.input_size, cfg.input_size, cost["params"] / 1e6, cost["gflops"],
                 f" (preset {cfg.preset})" if cfg.preset else "")
        log.info("teacher: %s (%d-d, %s crops)%s", teacher if onnx_teacher is not None else "dlib ResNet", t_dim,
                 teacher_crop(teacher), "; instance term through a learned projection"
                 if isinstance(loss_mod.projection, torch.nn.Linear) and cfg.instance != "none" else "")
        if pairwise:
            log.info("capstone pairwise distillation: %s, beta %g%s%s", cfg.pairwise, cfg.pairwise_beta,
                     ", correctly classified samples only" if cfg.pairwise_correct_only else "",
                     ", ArcFace CE on clean + masked" if head is not None and cfg.pairwise_clean_ce else "")
    # DDP averages the student's gradients; the loss/head parameters (if any) are all-reduced by hand
    model = DistributedDataParallel(student) if ddp else student
    extra_params = [q for q in list(loss_mod.parameters()) + (list(head.parameters()) if head else [])
                    if q.requires_grad]

    tdir = Path(cfg.templates) if cfg.templates else None
    synth = MaskSynthesizer(SynthesisConfig(templates_dir=tdir, weights=dict(cfg.mask_weights)))
    val_synth = MaskSynthesizer(SynthesisConfig(templates_dir=tdir, template_prob=1.0 if tdir else 0.7,
                                                recolor_prob=0.0))
    completer = None
    if cfg.completion:
        from trainer.data.completion import ChipCompleter

        completer = ChipCompleter(cfg.completion)
        log.info("training on completed faces: inpainter %s", completer.model)
    # the dlib student sees 150x150 dlib chips; the others 112x112 ArcFace crops of the same frames (the teacher
    # keeps its own crops -- dlib chips, or an ONNX teacher's --teacher-crop: prep.teacher holds their
    # descriptors, teacher_ds gives its masked crops for the validation baseline)
    t_m, t_size = teacher_matrices(teacher, prep.chip_m, prep.landmarks)
    teacher_ds = MaskedChipDataset(prep.paths, t_m, prep.landmarks, prep.labels, synth, cfg.mask_prob,
                                   cfg.seed, val_synth, chip_size=t_size, completer=completer)
    if (cfg.arch == "dlib") == (teacher_crop(teacher) == "dlib150"):  # student and teacher see the same crops
        ds = teacher_ds
    else:
        ds = MaskedChipDataset(prep.paths, arc_matrices(prep.landmarks), prep.landmarks, prep.labels, synth,
                               cfg.mask_prob, cfg.seed, val_synth, chip_size=ARC_SIZE, completer=completer)
    teacher_t = torch.from_numpy(prep.teacher)

    start_epoch, start_batch, step = 0, 0, 0
    if cfg.resume and last.is_file():
        meta = load_checkpoint(last, student, loss_mod, head, opt)
        start_epoch, start_batch, step = meta["epoch"], meta["batch"], meta["step"]
        if start_batch and int(meta.get("world_size", 1)) != world:
            raise ValueError(f"{last} was saved mid-epoch by {meta.get('world_size', 1)} process(es); resume it "
                             f"with as many (got {world})")
        log.info("resumed from %s: epoch %d batch %d step %d", last, start_epoch, start_batch, step)
    elif not cfg.resume and main:
        for f in ("steps.csv", "val.csv"):
            (out / f).unlink(missing_ok=True)
    if main:
        (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=1))

    validator = Validator(ds, prep.val_idx, prep.teacher, teacher, cfg.val_pairs, cfg.seed, cfg.progress,
                          teacher_ds=None if ds is teacher_ds else teacher_ds) \
        if len(prep.val_idx) and main else None
    if validator is not None:
        log.info("validation baseline (%s teacher): %s", "ONNX" if onnx_teacher is not None else "dlib",
                 validator.baseline)

    steps_csv = out / "steps.csv"
    fcsv = wcsv = None
    if main:
        new_csv = not steps_csv.is_file() or steps_csv.stat().st_size == 0
        header = CSV_FIELDS
        if not new_csv:  # a resumed run keeps its file's columns (older runs have no pairwise columns)
            with steps_csv.open(newline="") as f:
                header = next(csv.reader(f), None) or CSV_FIELDS
        fcsv = steps_csv.open("a", newline="")
        wcsv = csv.DictWriter(fcsv, header, extrasaction="ignore")
        if new_csv:
            wcsv.writeheader()
    val_rows = []
    if start_epoch == 0 and start_batch == 0 and validator is not None:
        v = {"epoch": 0, "step": 0, **validator(student), **validator.baseline}
        val_rows.append(v)
        log.info("val before training: %s", v)
    # an epoch is n_batches PK batches; with several processes rank r takes batches r::world, so an epoch is
    # n_batches // world optimiser steps ("batch" in logs and checkpoints counts those steps)
    n_batches = cfg.steps_per_epoch or max(1, len(prep.train_idx) // cfg.batch_size)
    if ddp:
        n_batches = max(1, n_batches // world)
    epoch_times = []

    def meta_at(epoch, batch):
        m = {"config": cfg.to_json(), "epoch": epoch, "batch": batch, "step": step,
             "identities": {"train": prep.train_ids, "val": prep.val_ids}}
        if ddp:
            m["world_size"] = world
        return m

    def save(path, epoch, batch):
        if main:
            save_checkpoint(path, student, loss_mod, head, opt, meta_at(epoch, batch))

    for epoch in range(start_epoch, cfg.epochs):
        batches = pk_batches(tr_lab, cfg.p_identities, cfg.k_images, n_batches * world, cfg.seed, epoch)
        batches = [[(int(prep.train_idx[j]), epoch) for j in b] for b in batches[rank::world]]
        first = start_batch if epoch == start_epoch else 0
        loader = DataLoader(ds, batch_sampler=batches[first:], collate_fn=_collate, num_workers=cfg.workers,
                            worker_init_fn=_worker_init if cfg.workers else None)
        student.train()
        loss_mod.train()
        lr_now = set_epoch_lr(opt, cfg, epoch)
        if main and cfg.lr_step_epochs > 0 and (epoch == start_epoch
                                                or cfg.lr_factor(epoch) != cfg.lr_factor(epoch - 1)):
            log.info("epoch %d: lr %.3g", epoch + 1, lr_now)
        t_ep = time.perf_counter()
        bar = tqdm(total=n_batches, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not run_cfg.progress)
        for bi, (masked, clean, labels, index) in enumerate(loader, start=first):
            t0 = time.perf_counter()
            if pairwise:
                # one forward of the masked + clean chips (one DDP forward per step; BatchNorm students see the
                # statistics of both halves), split back into s(masked), s(clean)
                emb = model(to_input(torch.cat([masked, clean])))
                s, s_clean = emb[:len(masked)], emb[len(masked):]
            else:
                s = model(to_input(masked))
            t = teacher_t.index_select(0, index)
            logits = head(s, labels) if head is not None else None
            total, parts = loss_mod(s, t, logits=logits, labels=labels)
            if pairwise:
                pw, kept, ce_clean = capstone_terms(cfg, s, s_clean, labels, head)
                total = total + cfg.pairwise_beta * pw + cfg.ce_weight * ce_clean
                parts = {**parts, "ce": parts["ce"] + ce_clean.detach(), "pairwise": pw.detach(),
                         "pairwise_kept": kept.detach(), "total": total.detach()}
            opt.zero_grad(set_to_none=True)
            total.backward()
            if ddp:
                _allreduce_mean_grads(extra_params, world)
            opt.step()
            if ddp:
                _allreduce_mean_buffers(loss_mod, world)
                parts = _allreduce_mean_parts(parts, world)
            step += 1
            if not main:
                continue
            row = {"step": step, "epoch": epoch + 1, "batch": bi + 1, "lr": opt.param_groups[0]["lr"],
                   **{k: f"{float(v):.6g}" for k, v in parts.items()}, "seconds": f"{time.perf_counter() - t0:.3f}"}
            wcsv.writerow(row)
            fcsv.flush()
            bar.update(1)
            post = dict(loss=f"{float(parts['total']):.4f}", i=f"{float(parts['instance']):.3f}",
                        p=f"{float(parts['pair']):.4f}", t=f"{float(parts['triplet']):.4f}")
            if pairwise:
                post.update(pw=f"{float(parts['pairwise']):.4f}", kept=f"{float(parts['pairwise_kept']):.2f}")
            bar.set_postfix(**post)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and bi + 1 < n_batches:
                save(last, epoch, bi + 1)
        bar.close()
        epoch_times.append(time.perf_counter() - t_ep)
        save(last, epoch + 1, 0)
        save(ckdir / f"epoch{epoch + 1}.safetensors", epoch + 1, 0)
        if validator is not None:
            v = {"epoch": epoch + 1, "step": step, **validator(student), **validator.baseline}
            val_rows.append(v)
            log.info("val after epoch %d (%.0f s): %s", epoch + 1, epoch_times[-1], v)
    hashes = None
    if ddp:
        # DDP broadcasts rank 0's buffers (BatchNorm running statistics) before every forward, so the ranks' buffers
        # differ only by the last step's update: take rank 0's, as its checkpoints did
        for b in student.buffers():
            dist.broadcast(b, 0)
    if ddp:  # every rank's final weights (student + loss buffers): they must agree
        mine = state_sha1(student) + ":" + state_sha1(loss_mod)
        hashes = [None] * world
        dist.all_gather_object(hashes, mine)
        if len(set(hashes)) != 1:
            log.warning("rank %d: ranks ended with different weights: %s", rank, hashes)
    if not main:
        dist.barrier()  # wait for rank 0's outputs
        return {"steps": step, "rank": rank, "world_size": world, "weights_sha1": hashes}
    fcsv.close()
    if val_rows:
        vcsv = out / "val.csv"
        new = not vcsv.is_file()
        with vcsv.open("a", newline="") as f:
            w = csv.DictWriter(f, list(val_rows[0]))
            if new:
                w.writeheader()
            w.writerows(val_rows)
    save_student(student, out / "student.safetensors")
    plot_losses(steps_csv, out / "loss.png")
    summary = {"steps": step, "epoch_seconds": [round(x, 1) for x in epoch_times], "val": val_rows,
               "train_images": int(len(prep.train_idx)), "val_images": int(len(prep.val_idx)),
               "train_identities": n_train_ids, "val_identities": len(prep.val_ids),
               "student": str(out / "student.safetensors"), "arch": cfg.arch, "embedding_dim": cfg.student_dim,
               "student_params": cost["params"], "student_gflops": round(cost["gflops"], 4)}
    if ddp:
        summary.update({"world_size": world, "weights_sha1": hashes})
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    if ddp:
        dist.barrier()
    return summary


def _allreduce_mean_grads(params, world: int) -> None:
    """Average the gradients of ``params`` (those DDP does not own) over the ranks; a missing grad counts as 0."""
    import torch
    import torch.distributed as dist

    for q in params:
        if q.grad is None:
            q.grad = torch.zeros_like(q)
        dist.all_reduce(q.grad)
        q.grad.div_(world)


def _allreduce_mean_buffers(module, world: int) -> None:
    """Average the floating-point buffers of ``module`` (EMA centres) over the ranks so they stay identical."""
    import torch.distributed as dist

    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world)


def _allreduce_mean_parts(parts: dict, world: int) -> dict:
    """Logged loss parts averaged over the ranks (same keys, 0-d tensors)."""
    import torch
    import torch.distributed as dist

    keys = sorted(parts)
    v = torch.stack([torch.as_tensor(float(parts[k]), dtype=torch.float64) for k in keys])
    dist.all_reduce(v)
    v /= world
    return {k: v[i] for i, k in enumerate(keys)}


# -------------------------------------------------------------------------------------------------- CLI
def _add_args(p: argparse.ArgumentParser) -> None:
    """The student options.  Every option defaults to ``None`` in the namespace ("not given"), so that
    :func:`config_from_args` can tell the flags on the command line from the ones a ``--preset`` fills; the help
    shows the value used when neither sets it."""
    d = StudentConfig()

    def add(*flags: str, default: Any = None, help: str = "", **kw: Any) -> None:
        shown = f" (default: {default})" if default is not None and "action" not in kw else ""
        p.add_argument(*flags, default=None, help=help + shown, **kw)

    add("--preset", choices=sorted(PRESETS),
        help="fill every setting not given on the command line from a preset (explicit flags win).  'paper': the "
             "Look-Through-Masks student -- --arch resnet18 --embedding-dim 512, batch 128 = 32 identities x 4 "
             "images, SGD momentum 0.9, lr 0.1 x0.1 every 24 epochs, weight decay 5e-4, soft instance term, "
             "lambda_p 1, lambda_t 2, ArcFace CE weight 1 (head at the backbone lr), all images per identity, "
             "60 epochs (our choice: the paper does not give the number of epochs).  'cpu': a run that finishes in "
             "minutes on a laptop CPU -- MobileFaceNet 128-d, 8 x 4 batches, 1 epoch of 20 steps, Adam lr 1e-3, the "
             "same loss terms")
    add("--data", default=d.data, help="folder-per-identity training data (CelebA subset)")
    add("--templates", default=d.templates, help="mask_templates folder ('' for procedural masks only)")
    add("--out", default=d.out, help="run folder (CSV logs, checkpoints, loss.png, student.safetensors)")
    add("--cache", help="alignment + teacher-descriptor cache (default <out>/cache)")
    add("--model", help="bundle used for detection/alignment (default: baseline)")
    add("--arch", choices=ARCHS, default=d.arch,
        help="student network: 'dlib' = a copy of the dlib teacher fine-tuned on 150x150 dlib chips (128-d); "
             "'resnet18' = the paper's ResNet-18 (insightface IR-18) + embedding layer, 'mobilefacenet' = "
             "MobileFaceNet (~1 M params), both trained from scratch on 112x112 ArcFace crops (the teacher keeps its "
             "dlib chips)")
    add("--embedding-dim", type=int, default=d.embedding_dim,
        help="embedding width of resnet18 / mobilefacenet (ignored by dlib: 128); a learned linear projection maps "
             "it to the teacher's 128-d for the instance term")
    add("--init", help="student initial weights: .dat (dlib) or .safetensors of the chosen --arch (default: dlib's "
                       ".dat for dlib, random for the others)")
    add("--epochs", type=int, default=d.epochs)
    add("--p-identities", type=int, default=d.p_identities, help="identities per batch (P)")
    add("--k-images", type=int, default=d.k_images, help="images per identity in a batch (K)")
    add("--steps-per-epoch", type=int, default=d.steps_per_epoch,
        help="PK batches per epoch (0: train images // batch); split across torchrun processes")
    add("--max-per-identity", type=int, default=d.max_per_identity, help="cap images per identity (0 = all)")
    add("--lr", type=float, default=d.lr, help="learning rate (the dlib student is pretrained: keep it small)")
    add("--lr-step-epochs", type=int, default=d.lr_step_epochs,
        help="multiply the lr by 0.1 every N epochs (0 = constant); follows the epoch, so --resume continues it")
    add("--optimizer", choices=("adam", "sgd"), default=d.optimizer, help="sgd uses momentum 0.9")
    add("--weight-decay", type=float, default=d.weight_decay)
    add("--instance", choices=("hard", "soft", "none"), default=d.instance,
        help="instance term: hard = l1(t_i, s_i), soft = relative to the identity centres (paper eq. 17)")
    add("--lambda-i", type=float, default=d.lambda_i, help="instance term weight")
    add("--lambda-p", type=float, default=d.lambda_p, help="pair (distance) term weight")
    add("--lambda-t", type=float, default=d.lambda_t, help="triplet (angle) term weight")
    add("--ce-weight", type=float, default=d.ce_weight, help="> 0: add ArcFace CE on the training identities")
    add("--head-lr-mult", type=float, default=d.head_lr_mult,
        help="ArcFace head lr = lr x this (the dlib student's head starts at the teacher's identity centres; "
             "the presets use 1)")
    add("--pairwise", choices=PAIRWISE, default=d.pairwise,
        help="capstone variant (Liu & Shao 2022, eq. 5): the student also embeds the clean chip of every sample and "
             "the loss adds --pairwise-beta x a distance between its masked and clean embeddings: 'mse' = squared "
             "L2 (summed over the dimensions), 'cosine' = 1 - cos, 'margin_cosine' = 1 - cos(angle + "
             "--pairwise-margin); with --ce-weight > 0 the ArcFace CE also applies to the clean embeddings (see "
             "--no-pairwise-clean-ce).  Composes with the relational terms; the pure capstone recipe is "
             "--pairwise mse --ce-weight 1 --instance none --lambda-p 0 --lambda-t 0")
    add("--pairwise-beta", type=float, default=d.pairwise_beta, help="weight beta of the pairwise term")
    add("--pairwise-correct-only", action="store_true",
        help="distil only the samples the ArcFace head classifies correctly (margin-free logits) on both the masked "
             "and the clean image; the sum is still divided by the batch size, so the term grows with the training "
             "accuracy (the capstone's dynamic balancing).  Needs --ce-weight > 0; the kept fraction is logged as "
             "pairwise_kept")
    add("--pairwise-margin", type=float, default=d.pairwise_margin,
        help="angular margin m (radians) of --pairwise margin_cosine")
    add("--pairwise-clean-ce", action=argparse.BooleanOptionalAction,
        help="with --pairwise and --ce-weight > 0: ArcFace CE on the clean embeddings too, i.e. CE(masked) + "
             "CE(clean) as in the capstone's eq. 5 (default: on; the ce column logs the sum)")
    add("--teacher-onnx", metavar="PATH",
        help="use any ONNX face embedder as the frozen teacher instead of the dlib ResNet: its descriptors of the "
             "clean crops are computed once with ONNX Runtime and cached (key: the file's sha256, the crop and the "
             "input convention); the teacher's width comes from the graph's output (the instance term goes through "
             "a learned projection).  The dlib student still starts from dlib's weights unless --init is given")
    add("--teacher-crop", choices=tuple(TEACHER_CROPS), default=d.teacher_crop,
        help="crops the ONNX teacher sees: 'dlib150' = 150x150 dlib chips, 'arcface112' = 112x112 ArcFace crops "
             "(insightface template)")
    add("--teacher-input", choices=tuple(TEACHER_INPUTS), default=d.teacher_input,
        help="the ONNX teacher's input: " + "; ".join(f"'{k}' = {v}" for k, v in TEACHER_INPUTS.items()))
    add("--mask-prob", type=float, default=d.mask_prob, help="fraction of training samples with an occluder")
    add("--completion",
        help="train on completed faces: inpainter .onnx, bundle with a 'complete' stage, trainer run folder "
             "(generator.safetensors) or 'telea'; default: raw masked faces")
    add("--val-fraction", type=float, default=d.val_fraction, help="held-out identity fraction")
    add("--val-pairs", type=int, default=d.val_pairs)
    add("--threads", type=int, default=d.threads, help="torch intra-op threads")
    add("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    add("--seed", type=int, default=d.seed)
    add("--ckpt-every", type=int, default=d.ckpt_every)
    add("--resume", action="store_true", help="continue from <out>/ckpt/last.safetensors (its saved config wins, "
                                               "except --epochs and the run-time options)")
    add("--no-progress", dest="progress", action="store_false")


def config_from_args(args: argparse.Namespace) -> StudentConfig:
    """The :class:`StudentConfig` of parsed :func:`_add_args` options: the flags given (non-``None``), then the
    ``--preset``'s values, then the dataclass defaults."""
    known = {f.name for f in fields(StudentConfig)}
    kw = {k: v for k, v in vars(args).items() if k in known and k != "preset" and v is not None}
    if kw.get("templates") == "":
        kw["templates"] = None
    return StudentConfig.from_preset(getattr(args, "preset", None), **kw)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``student`` subcommand on ``subparsers`` (``trainer/main.py``)."""
    p = subparsers.add_parser("student", help="train a student on masked faces by distillation from dlib "
                                              "(--arch, --preset)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    p.set_defaults(fn=run)
    return p


def run(args: argparse.Namespace) -> int:
    summary = train(config_from_args(args))
    print(json.dumps(summary, indent=1, default=float))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.student_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
