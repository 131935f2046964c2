"""``python trainer/main.py detector-stem``: make LTDet faster by distilling its first stage into a cheap stem.

Most of LTDet's time on a 640x480 frame goes to BlazeFace's first stage (a 5x5 stride-2 convolution and three
blocks on a 320x240 map). This command keeps the trained net (``--teacher``: a bundle, an LTDet ``.onnx`` or a
detector run folder) and replaces that stage by a :class:`~trainer.detector.model.FastStem` (``--stride 4``: a 4x4
stride-4 convolution and ``--blocks`` depthwise/pointwise blocks at stride 4; ``--stride 2``: a 3x3 stride-2
convolution, the blocks at stride 2 and a depthwise stride-2 convolution), trained with everything after the cut
frozen (or tuned at ``--tune-rest`` x the learning rate) to reproduce the teacher:

* ``feat``: mean squared error between the stem's output and the teacher's tensor at the cut (stride 4),
  divided by the teacher tensor's mean square;
* ``cls``: binary cross-entropy of the student's anchor logits against the teacher's probabilities (anchors the
  teacher scores higher weigh more: ``1 + 10 p``);
* ``reg``: L1 between the student's and the teacher's box and landmark offsets, relative to the teacher's box
  size, weighted by the teacher's probability (anchors with ``p > 0.05``).

Scenes are the detector's training scenes (:func:`trainer.detector.data.scene_renderer`: training identities,
training occluder families and backgrounds). Validation at every checkpoint (``val_*`` columns) on fixed scenes
of held-out identities with held-out occluders: the same three terms and ``val_agree``, the share of the teacher's
detections (probability >= 0.5) the student scores >= 0.5 too.

Outputs in ``--out``: ``ckpt/last.*`` (resumable), ``detector.safetensors`` + ``detector.json`` (the student as a
detector checkpoint: ``python -m export.onnx_detector --checkpoint <out>`` bundles it), ``steps.csv``,
``loss.png``.

Example (~30 min on 2 cores)::

    python trainer/main.py detector-stem --teacher sdk/models/ltdet-v1 --data ../shared/data \
        --templates ../shared/data/mask_templates --out out/detector/stem-v1 --steps 1500
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from trainer.detector._common import NetPluginMixin, add_command, plot_curves, warmup_cosine
from trainer.detector.model import DetectorNet, with_stem
from trainer.detector.checkpoint import load_trained_net
from trainer.loops import DistContext, LoopSettings, StepPlugin, run_loop

log = logging.getLogger(__name__)

__all__ = ["StemConfig", "StemPlugin", "distill_terms", "load_teacher", "train"]


@dataclass
class StemConfig:
    """Options of ``trainer/main.py detector-stem`` (every field is a flag)."""

    teacher: str = "sdk/models/ltdet-v1"  #: LTDet bundle folder, LTDet .onnx, or detector run folder / checkpoint
    data: str = "../shared/data"  #: folder with lfw/ and celeba_subset/, or 'astronaut' (tests, smoke runs)
    templates: str = ""  #: MaskTheFace templates folder; empty = procedural occluders only
    out: str = "out/detector/stem"  #: output folder; the run resumes from it
    cache: str = "out/detector/labels_lfw_celeba.npz"  #: MTCNN label file (shared with the detector)
    per_identity: int = 2  #: images per identity to label (LFW + CelebA)
    cut: int = 33  #: teacher tensor the stem replaces (33: stride 4, 32 channels, BlazeFace front)
    width: int = 48  #: stem channels
    blocks: int = 2  #: stem residual blocks (at the stem's stride)
    stride: int = 4  #: 4: 4x4 stride-4 first convolution (cheapest, loses small faces); 2: 3x3 stride-2 (keeps them)
    steps: int = 1500  #: optimiser steps
    batch_size: int = 12  #: scenes per step
    crop: int = 256  #: scene side (px, multiple of 32)
    lr: float = 3e-3  #: peak AdamW learning rate (warm-up 50 steps, cosine to 5 %)
    weight_decay: float = 1e-5  #: AdamW weight decay
    cls_weight: float = 1.0  #: weight of the score term
    reg_weight: float = 1.0  #: weight of the box / landmark term
    tune_rest: float = 0.0  #: also train the layers after the cut and the heads at lr x this (0 = frozen)
    init: str = ""  #: start from this stem run folder / detector checkpoint with a stem (else a new stem)
    occlude_prob: float = 0.7  #: share of pasted faces with a training-family occluder
    val_scenes: int = 24  #: held-out validation scenes
    workers: int = 1  #: DataLoader worker processes rendering scenes
    threads: int = 2  #: torch intra-op threads
    save_every: int = 250  #: checkpoint (and validation) period, steps
    seed: int = 0  #: scene seeds and the stem's init
    resume: bool = True  #: continue from out/ckpt/last when it exists
    max_minutes: float = 0.0  #: stop (checkpoint, detector.*) after this many minutes; 0 = no limit
    progress: bool = True  #: tqdm progress bars


#: the trained net of a bundle, an LTDet ``.onnx`` or a run folder (:func:`~.checkpoint.load_trained_net`)
load_teacher = load_trained_net


def _lr_at(cfg: StemConfig, step: int) -> float:
    return warmup_cosine(cfg.lr, step, cfg.steps, min(50, max(1, cfg.steps // 10)))


def _cut_tensor(net: DetectorNet, x: torch.Tensor, cut: int) -> torch.Tensor:
    return net.stem(x) if net.stem is not None else net.backbone(x, until=cut)


def distill_terms(student: DetectorNet, teacher: DetectorNet, x: torch.Tensor, cut: int) -> dict[str, torch.Tensor]:
    """``feat``, ``cls``, ``reg`` (see the module doc) and ``agree`` of the student on input ``x``."""
    with torch.no_grad():
        tcut = _cut_tensor(teacher, x, cut)
        tout = teacher.backbone(None, start={cut: tcut})
        theads = _heads(teacher, tout)
    s = student.stem(x)
    sheads = _heads(student, student.backbone(None, start={cut: s}))
    feat = F.mse_loss(s, tcut) / tcut.pow(2).mean().clamp_min(1e-6)
    cls, reg, agree_n, agree_d = 0.0, 0.0, 0.0, 0.0
    for (slg, sbx, slm), (tlg, tbx, tlm) in zip(sheads, theads):
        p = torch.sigmoid(tlg)
        cls = cls + (F.binary_cross_entropy_with_logits(slg, p, reduction="none") * (1 + 10 * p)).mean()
        size = torch.sqrt(tbx[..., 2].abs() * tbx[..., 3].abs()).clamp_min(4.0)
        w = p * (p > 0.05)
        err = (sbx - tbx).abs().sum(-1) / size + (slm - tlm).abs().sum((-1, -2)) / size
        reg = reg + (w * err).sum() / w.sum().clamp_min(1.0)
        hit = p >= 0.5
        agree_n = agree_n + float((hit & (torch.sigmoid(slg) >= 0.5)).sum())
        agree_d = agree_d + float(hit.sum())
    return {"feat": feat, "cls": cls, "reg": reg, "agree": torch.tensor(agree_n / max(agree_d, 1.0))}


def _heads(net: DetectorNet, feats) -> list:
    out = []
    for f, cls, box, lmk in zip(feats, net.cls, net.box, net.lmk):
        n = f.shape[0]
        out.append((cls(f).permute(0, 2, 3, 1).reshape(n, -1), box(f).permute(0, 2, 3, 1).reshape(n, -1, 4),
                    lmk(f).permute(0, 2, 3, 1).reshape(n, -1, 5, 2)))
    return out


class _Images:
    """Map-style dataset of scene images: item ``i`` = uint8 BGR scene ``seed * 10_000_019 + i``."""

    def __init__(self, renderer, length: int, seed: int):
        self.r, self.length, self.seed = renderer, int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.r.render(self.seed * 10_000_019 + int(i)).image


class StemPlugin(NetPluginMixin, StepPlugin):
    """The stem on the loop skeleton (AdamW on the stem only, warm-up + cosine, gradient norm clipped at 5)."""

    kind = "detector"
    csv_fields = ("step", "loss", "feat", "cls", "reg", "agree", "lr", "val_feat", "val_cls", "val_reg", "val_agree",
                  "seconds")

    def __init__(self, cfg: StemConfig, teacher: DetectorNet, renderer, val: torch.Tensor):
        self.cfg, self.teacher, self.val = cfg, teacher.eval(), val
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        if cfg.init:
            self.net = load_teacher(cfg.init)
            if self.net.stem is None or self.net.cfg.stem.get("cut") != cfg.cut:
                raise SystemExit(f"--init {cfg.init}: not a net with a stem at tensor {cfg.cut}")
        else:
            self.net = with_stem(teacher, cfg.cut, cfg.width, cfg.blocks, cfg.stride)
        rest = [p for n, p in self.net.named_parameters() if not n.startswith("stem.")]
        for prm in rest:
            prm.requires_grad_(cfg.tune_rest > 0)
        groups = [{"params": list(self.net.stem.parameters()), "mult": 1.0}]
        if cfg.tune_rest > 0:
            groups.append({"params": rest, "mult": cfg.tune_rest})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ds = _Images(renderer, cfg.steps * cfg.batch_size, cfg.seed)
        self.steps, self.batch_size, self.workers, self.seed = cfg.steps, cfg.batch_size, cfg.workers, cfg.seed
        self.lr = _lr_at(cfg, 0)

    def start_epoch(self, epoch: int, ctx: DistContext) -> None:
        self.net.eval()  # no batch norm or dropout anywhere: eval mode only keeps the frozen part as it is

    def step(self, batch, epoch: int, step: int, ctx: DistContext) -> dict:
        from trainer.detector.data import to_input

        self.lr = _lr_at(self.cfg, step)
        for g in self.opt.param_groups:
            g["lr"] = self.lr * g["mult"]
        t = distill_terms(self.net, self.teacher, to_input(batch), self.cfg.cut)
        loss = t["feat"] + self.cfg.cls_weight * t["cls"] + self.cfg.reg_weight * t["reg"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.net.parameters() if p.requires_grad], 5.0)
        self.opt.step()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in t.items()}}

    def postfix(self, parts: Mapping[str, Any]) -> dict[str, str]:
        return {k: f"{float(parts[k]):.3f}" for k in ("loss", "feat", "agree")}

    def at_checkpoint(self, step: int) -> dict[str, Any]:
        with torch.no_grad():
            t = [distill_terms(self.net, self.teacher, self.val[a:a + 8], self.cfg.cut)
                 for a in range(0, len(self.val), 8)]
        return {f"val_{k}": f"{float(np.mean([float(x[k]) for x in t])):.5f}" for k in ("feat", "cls", "reg", "agree")}

    def log_row(self, step: int, epoch: int, batch: int, parts: Mapping[str, Any], extra: Mapping[str, Any],
                step_seconds: float, total_seconds: float) -> dict:
        return {"step": step, **{k: round(float(parts[k]), 5) for k in ("loss", "feat", "cls", "reg", "agree")},
                "lr": f"{self.lr:.6g}", **extra, "seconds": round(step_seconds, 3)}

    def finish(self, step: int, start_step: int, stopped_early: bool, train_seconds: float,
               weights_sha1) -> tuple[dict, None]:
        from trainer.detector.checkpoint import FINAL, save_net

        net = copy.deepcopy(self.net).eval()
        val = self.at_checkpoint(step)
        save_net(net, self.out / FINAL, {"config": dataclasses.asdict(self.cfg), "step": step, "validation": val})
        plot_curves(self.out / "steps.csv", self.out / "loss.png", ("loss", "feat", "cls", "reg"),
                    "stem distillation (moving average)", twin=("val_agree", "teacher detections kept (held-out)"))
        return {"out": str(self.out), "steps": step, "validation": val, "stopped_early": stopped_early,
                "seconds": round(train_seconds, 1)}, None


def train(cfg: StemConfig) -> dict:
    """Train (or resume) the stem as configured; returns a summary dict (``steps``, ``validation``, ``seconds``)."""
    from trainer.detector.data import load_eval_labels, load_train_labels, scene_renderer, to_input
    from trainer.detector.occlusion import OccluderSampler
    from trainer.detector.scenes import SceneConfig, SceneRenderer

    if cfg.crop % 32:
        raise SystemExit(f"--crop must be a multiple of 32, got {cfg.crop}")
    torch.set_num_threads(max(1, cfg.threads))
    teacher = load_teacher(cfg.teacher)
    labels, table = load_train_labels(cfg.data, cfg.cache, cfg.per_identity)
    renderer = scene_renderer(labels, table, cfg.crop, cfg.templates, cfg.occlude_prob)
    val_labels = load_eval_labels(cfg.data, cfg.cache, cfg.per_identity)
    loader = (lambda p: table[str(p)]) if table else None
    vr = SceneRenderer(val_labels, SceneConfig(height=cfg.crop, width=cfg.crop, occlude_prob=1.0,
                                               background_split="eval"),
                       OccluderSampler("eval", cfg.templates or None), image_loader=loader)
    val = to_input(np.stack([vr.render(7_000_000 + i).image for i in range(cfg.val_scenes)]))

    def make(ctx: DistContext, ck) -> StemPlugin:
        return StemPlugin(cfg, teacher, renderer, val)

    settings = LoopSettings(out=Path(cfg.out), ckpt_every=cfg.save_every, log_every=1, resume=cfg.resume,
                            progress=cfg.progress, max_minutes=cfg.max_minutes, csv_name="steps.csv")
    return run_loop(make, settings)


def _check(cfg: StemConfig) -> None:
    if not Path(cfg.teacher).exists():
        raise SystemExit(f"teacher not found: {cfg.teacher}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``detector-stem`` on ``trainer/main.py``."""
    return add_command(subparsers, "detector-stem", "distil LTDet's first stage into a cheap stem (speed)",
                       __doc__, StemConfig, train, check=_check)
