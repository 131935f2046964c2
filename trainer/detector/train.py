"""``python trainer/main.py detector``: fine-tune LTDet on composed scenes of (occluded) faces.

Labels are MTCNN's on the clean photos (:mod:`trainer.detector.labels`, computed once and cached in
``<cache>``); occluders come from the training families only (:mod:`trainer.detector.occlusion`); scenes
are composed on the fly (:mod:`trainer.detector.scenes`, :class:`trainer.detector.data.SceneStream`: batch ``b``
is a pure function of ``(seed, b)``). Identities for which :func:`~trainer.detector.labels.is_eval_identity` holds
are never trained on.

Loop: the one skeleton (:func:`trainer.loops.run_loop`) with :class:`DetectorPlugin`: AdamW (backbone at
``lr * backbone_lr_mult``, the first ``--freeze`` convolutions frozen), linear warm-up then cosine decay, gradient
norm clipped at 5. The input is built from the :class:`sdk.preprocess.Preprocess` record
:data:`sdk.detect_onnx.LTDET_PREPROCESS` (RGB, ``x / 127.5 - 1``, NCHW), which every checkpoint records.

Outputs in ``--out`` (:mod:`trainer.detector.checkpoint`): ``ckpt/last.*`` (weights + JSON with the net config,
train config, preprocess record and step + AdamW / RNG state; every ``--save-every`` steps, at ``--max-minutes``
and at the end, atomically; the run resumes from it exactly, ``--no-resume`` starts afresh),
``detector.safetensors`` + ``detector.json`` (the trained net, refit included: the exporter's input),
``steps.csv`` (loss parts, learning rate, seconds per step), ``loss.png``, ``train_config.json``, and with
``--refit-scenes N`` ``refit.json``. An older run folder (``last.safetensors`` + ``net_config.json``) resumes too.

Example (the shipped model; ~1 h on 2 busy cores)::

    python trainer/main.py detector --data ../shared/data --templates ../shared/data/mask_templates \
        --out out/detector/v1 --steps 500 --batch-size 8 --crop 160 --freeze 11

Fine-tuning a trained LTDet for real masked photos (``ltdet-v3``; minutes on 2 cores)::

    python trainer/main.py detector --init sdk/models/ltdet-v1 --data ../shared/data \
        --templates ../shared/data/mask_templates --cutouts <cutouts> --out out/detector/v3 --steps 2000 \
        --batch-size 8 --crop 160 --freeze 11 --lr 3e-4 --warmup 50 --tight-prob 0.35 --realistic-prob 0.5 \
        --occlude-prob 0.75

``--init`` takes a bundle folder, an LTDet ``.onnx`` or a run folder; ``--tight-prob`` renders that share of the
scenes as one photo cut tight around its face (:class:`~trainer.detector.scenes.SceneConfig`), ``--realistic-prob``
draws that share of the occluders from the realistic synthesizer, with real masks harvested from the *harvest* part
of the real photos (``--cutouts``, ``tools/harvest_occluders.py``; :class:`~trainer.detector.occlusion.OccluderSampler`).

``--real-photos <folder> --real-prob P`` draws that share of the face photos from real masked photos: the *harvest* part
of the real-photo split, pseudo-labelled once by ``--real-labeller`` (an LTDet bundle, default ``ltdet-v3``) and MTCNN
(:mod:`trainer.detector.real_labels`; the validation part the evaluation scores is never read); they are cut tight,
shrunk and pasted like the LFW / CelebA photos, without a synthetic occluder.

``--hard-prob P`` puts that share of the scenes on rendered hard negatives (text in OpenCV's fonts, star fields:
:mod:`trainer.detector.textures`), a quarter of it as a small non-face photo alone (``ltdet-v5``:
``reports/detector/training-v5/README.md``).

``--data astronaut`` trains on scikit-image's astronaut alone (tests, smoke runs; no data folder needed).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from trainer.checkpoints import write_json
from trainer.detector._common import NetPluginMixin, add_command, plot_curves, warmup_cosine
from trainer.detector.checkpoint import FINAL, bundle_ref, load_net, load_trained_net, save_net
from trainer.detector.data import SceneStream, astronaut_labels, load_train_labels, scene_renderer, to_input
from trainer.detector.model import build_net
from trainer.detector.refit import collect, ridge_refit
from trainer.detector.targets import LossWeights, detector_loss, make_anchors
from trainer.loops import DistContext, LoopSettings, StepPlugin, run_loop

log = logging.getLogger(__name__)

__all__ = ["DetTrainConfig", "DetectorPlugin", "add_parser", "astronaut_labels", "load_checkpoint", "to_input",
           "train"]

#: compatibility name (``trainer.detector.checkpoint.load_net``): the trained net of a run folder / checkpoint
load_checkpoint = load_net


@dataclass
class DetTrainConfig:
    """Options of ``trainer/main.py detector`` (every field is a flag)."""

    data: str = "../shared/data"  #: folder with lfw/ and celeba_subset/, or 'astronaut' (tests, smoke runs)
    templates: str = ""  #: MaskTheFace templates folder (anchors.cfg + PNGs); empty = procedural occluders only
    out: str = "out/detector/run"  #: output folder (checkpoints, CSV log, config); the run resumes from it
    cache: str = "out/detector/labels_lfw_celeba.npz"  #: MTCNN label file (built on first use)
    per_identity: int = 2  #: images per identity to label (LFW + CelebA)
    init: str = "blazeface"  #: 'blazeface' (MediaPipe's weights), 'random', or an LTDet bundle / .onnx / run to tune
    steps: int = 3000  #: optimiser steps
    batch_size: int = 10  #: scenes per step
    crop: int = 224  #: training scene side (px, multiple of 32)
    lr: float = 1e-3  #: peak AdamW learning rate (heads); the backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 0.3  #: backbone learning-rate factor
    freeze: int = 2  #: keep the first N backbone convolutions frozen (saves backward time on CPU)
    weight_decay: float = 1e-4  #: AdamW weight decay
    warmup: int = 100  #: linear warm-up steps, then cosine decay to 5 % of lr
    occlude_prob: float = 0.7  #: share of pasted faces that get a (training-family) occluder
    tight_prob: float = 0.0  #: share of scenes that are one photo cut tight around its face (real-photo framing)
    realistic_prob: float = 0.0  #: share of occluders from the realistic synthesizer (surgical, cloth, harvested...)
    cutouts: str = ""  #: harvested real masks (tools/harvest_occluders.py, harvest part) for realistic occluders
    lowres_prob: float = 0.0  #: share of composed scenes shrunk and enlarged back (small photos run at 2x)
    hard_prob: float = 0.0  #: share of scenes on rendered hard negatives (text, star fields; 1/4 a small non-face photo)
    real_photos: str = ""  #: real-photo dataset folder (with_mask/): its harvest part, pseudo-labelled, as face photos
    real_prob: float = 0.0  #: share of face photos drawn from the pseudo-labelled real masked photos (--real-photos)
    real_labeller: str = "ltdet-v3"  #: LTDet bundle (folder or built-in name) that pseudo-labels them, with MTCNN
    real_cache: str = ""  #: pseudo-label file; empty = out/detector/realmask_<labeller name>.npz
    lmk_weight: float = 2.0  #: weight of the landmark loss
    workers: int = 1  #: DataLoader worker processes rendering scenes
    threads: int = 2  #: torch intra-op threads
    save_every: int = 200  #: checkpoint period (steps)
    refit_scenes: int = 0  #: after training, refit the landmark / box-centre heads in closed form on this many scenes
    seed: int = 0  #: scene seeds and init
    resume: bool = True  #: continue from out/ckpt/last (or an older run's last.safetensors) when it exists
    max_minutes: float = 0.0  #: stop (checkpoint, refit, detector.*) after this many minutes of training; 0 = no limit
    progress: bool = True  #: tqdm progress bars


def _lr_at(cfg: DetTrainConfig, step: int) -> float:
    return warmup_cosine(cfg.lr, step, cfg.steps, cfg.warmup)


class DetectorPlugin(NetPluginMixin, StepPlugin):
    """LTDet on the loop skeleton: one epoch of ``cfg.steps`` batches of ``cfg.batch_size`` scenes, AdamW with
    warm-up + cosine lr; at the end the optional closed-form refit, ``detector.*``, ``loss.png``."""

    kind = "detector"
    csv_fields = ("step", "loss", "cls", "box", "lmk", "npos", "lr", "seconds")

    def __init__(self, cfg: DetTrainConfig, renderer):
        self.cfg, self.renderer = cfg, renderer
        self.out = Path(cfg.out)
        self.net = build_net(cfg.init) if cfg.init in ("blazeface", "random") else load_trained_net(cfg.init).train()
        self.anchors = make_anchors(cfg.crop, cfg.crop, self.net.cfg.strides, self.net.cfg.anchors)
        for k, conv in enumerate(self.net.backbone.convs.values()):
            if k < cfg.freeze:
                conv.requires_grad_(False)
        heads = [p for n, p in self.net.named_parameters() if not n.startswith("backbone.")]
        self.opt = torch.optim.AdamW([{"params": [p for p in self.net.backbone.parameters() if p.requires_grad],
                                       "mult": cfg.backbone_lr_mult},
                                      {"params": heads, "mult": 1.0}], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sizes = torch.from_numpy(self.anchors.sizes)
        self.weights = LossWeights(lmk=cfg.lmk_weight)
        self.ds = SceneStream(renderer, self.anchors, cfg.steps * cfg.batch_size, cfg.seed)
        self.steps, self.batch_size, self.workers, self.seed = cfg.steps, cfg.batch_size, cfg.workers, cfg.seed
        self.lr = _lr_at(cfg, 0)
        self.parts: dict[str, float] = {}

    def start_epoch(self, epoch: int, ctx: DistContext) -> None:
        self.net.train()

    def step(self, batch, epoch: int, step: int, ctx: DistContext) -> dict:
        images, label, box, lmk = batch
        self.lr = _lr_at(self.cfg, step)
        for g in self.opt.param_groups:
            g["lr"] = self.lr * g["mult"]
        tg = {"label": label.long(), "box": box, "lmk": lmk}
        loss, self.parts = detector_loss(self.net(to_input(images)), tg, self.sizes, self.weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        return self.parts

    def postfix(self, parts: Mapping[str, Any]) -> dict[str, str]:
        return {k: f"{float(parts[k]):.3f}" for k in ("loss", "cls", "lmk")}

    def log_row(self, step: int, epoch: int, batch: int, parts: Mapping[str, Any], extra: Mapping[str, Any],
                step_seconds: float, total_seconds: float) -> dict:
        return {"step": step, **{k: round(float(parts[k]), 5) for k in ("loss", "cls", "box", "lmk", "npos")},
                "lr": f"{self.lr:.6g}", "seconds": round(step_seconds, 3)}

    def finish(self, step: int, start_step: int, stopped_early: bool, train_seconds: float,
               weights_sha1) -> tuple[dict, None]:
        cfg = self.cfg
        net = copy.deepcopy(self.net).eval()  # ckpt/last keeps the trained state; the refit goes to detector.*
        extra: dict = {"config": dataclasses.asdict(cfg), "step": step}
        if cfg.refit_scenes > 0:
            data = collect(net, self.renderer, self.anchors, cfg.refit_scenes, cfg.batch_size, cfg.seed + 1)
            rep = ridge_refit(net, data)
            write_json(self.out / "refit.json", rep)
            extra["refit"] = rep
        save_net(net, self.out / FINAL, extra)
        plot_curves(self.out / "steps.csv", self.out / "loss.png", ("loss", "cls", "box", "lmk"),
                    "detector training loss (moving average)")
        return {"out": str(self.out), "steps": step, "final": self.parts, "stopped_early": stopped_early,
                "seconds": round(train_seconds, 1)}, None


def train(cfg: DetTrainConfig) -> dict:
    """Train (or resume, ``cfg.resume``) as configured; returns a summary dict (``steps``, ``final`` loss parts of
    this run's last step, ``seconds``)."""
    if cfg.crop % 32:
        raise SystemExit(f"--crop must be a multiple of 32, got {cfg.crop}")
    torch.set_num_threads(max(1, cfg.threads))
    labels, table = load_train_labels(cfg.data, cfg.cache, cfg.per_identity)
    log.info("training faces: %d images", len(labels))
    real = None
    if cfg.real_prob > 0:
        from trainer.detector.real_labels import build_or_load_real

        cache = cfg.real_cache or f"out/detector/realmask_{Path(cfg.real_labeller).name}.npz"
        real = build_or_load_real(cfg.real_photos, cfg.real_labeller, cache, progress=cfg.progress)
        log.info("real masked photos: %d with a sure face (%s)", len(real), cache)
    renderer = scene_renderer(labels, table, cfg.crop, cfg.templates, cfg.occlude_prob, cfg.tight_prob,
                              cfg.realistic_prob, cfg.cutouts, real, cfg.real_prob, cfg.lowres_prob,
                              cfg.hard_prob)

    def make(ctx: DistContext, ck) -> DetectorPlugin:
        torch.manual_seed(cfg.seed)  # the same initial weights (init "random") in every run
        return DetectorPlugin(cfg, renderer)

    settings = LoopSettings(out=Path(cfg.out), ckpt_every=cfg.save_every, log_every=1, resume=cfg.resume,
                            progress=cfg.progress, max_minutes=cfg.max_minutes, csv_name="steps.csv")
    return run_loop(make, settings)


def _check(cfg: DetTrainConfig) -> None:
    if cfg.init not in ("blazeface", "random") and not Path(cfg.init).exists() and bundle_ref(cfg.init) is None:
        raise SystemExit(f"--init: {cfg.init} is neither 'blazeface', 'random' nor an LTDet bundle (folder or built-in "
                         "name) / .onnx / run folder")
    if cfg.realistic_prob > 0 and cfg.cutouts and not Path(cfg.cutouts).is_dir():
        raise SystemExit(f"--cutouts folder not found: {cfg.cutouts}")
    if cfg.real_prob > 0 and not (Path(cfg.real_photos) / "with_mask").is_dir():
        raise SystemExit(f"--real-prob needs --real-photos, the real-photo dataset folder with with_mask/ "
                         f"(tools/get_extra_data.py --source face-mask-detection); got {cfg.real_photos!r}")
    if cfg.real_prob > 0 and bundle_ref(cfg.real_labeller) is None:
        raise SystemExit(f"--real-labeller: {cfg.real_labeller} is not an LTDet bundle (folder or built-in name)")
    for name in ("tight_prob", "realistic_prob", "occlude_prob", "real_prob", "lowres_prob", "hard_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise SystemExit(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(cfg, name)}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``detector`` on ``trainer/main.py``."""
    return add_command(subparsers, "detector", "train the masked-face detector (LTDet) on composed scenes", __doc__,
                       DetTrainConfig, train, _check)
