"""``python trainer/main.py segmenter`` (or ``python -m trainer.segmenter_train``): train the occlusion segmenter.

Data: the CelebA subset (folder per identity), detected + aligned once to the 112x112 ArcFace crop (cached
by :func:`trainer.data.faces.align_images` with the bundle's detector / embedder), split by identity
(train / held-out val). Occluders are painted on the fly by :class:`trainer.data.synthesis.MaskSynthesizer`
(all categories, real templates when ``--templates`` is given); ``clean_prob`` of the samples stay clean so
the presence head learns "unoccluded". Every sample is deterministic in (seed, sample index), so a resumed
run sees the same stream.

Loss: BCE + Dice on M (pixel logits), BCE on presence (``M.any()``). Adam, cosine learning-rate decay.

Loop: the one skeleton (:func:`trainer.loops.run_loop`) with :class:`SegmenterPlugin`; the model's input is built
from its :class:`sdk.preprocess.Preprocess` record (:data:`trainer.preprocess.SEGMENTER`: BGR, ``x / 127.5 - 1``,
NCHW), which every checkpoint records for the exporter.

Outputs in ``--out``: ``ckpt/last.*`` (:mod:`trainer.checkpoints`: weights + JSON with the model config, train
config, preprocess record and step + optimiser/RNG state; ``--resume`` continues exactly from it), ``log.csv``,
``grids/step_*.png`` (rows: masked | predicted M | truth M), and at the end ``eval.json``: mean IoU (prediction
thresholded at 0.5) per category on held-out identities, presence accuracy per category and overall.
Unreadable images and images without a detected face are counted (``eval.json`` ``data``) and left out.

Config: dataclass :class:`SegTrainConfig`; ``--config file.json`` (or ``.yaml`` when PyYAML is installed) sets
values, explicit command-line flags override it.

Example::

    python trainer/main.py segmenter --data ../shared/data/celeba_subset --templates ../shared/data/mask_templates \
        --out out/segmenter/v1 --steps 3000 --max-minutes 20
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from trainer._config_cli import dataclass_command
from trainer.data.face_arrays import FaceArrays, flip_face, split_by_identity
from trainer.data.faces import load_faces_for
from trainer.loops import DistContext, LoopSettings, StepPlugin, run_loop

log = logging.getLogger("trainer.segmenter")

NONE = "none"


@dataclass
class SegTrainConfig:
    """Training options (every field is a ``--flag`` of the ``segmenter`` command)."""

    data: str = "../shared/data/celeba_subset"  #: folder with one sub-folder per identity
    faces: str | None = None  #: face pack (.npz from ``pack-faces``) used instead of detecting faces in ``data``
    templates: str | None = None  #: mask_templates folder (real masks); None = procedural occluders only
    out: str = "out/segmenter/run"  #: output folder (checkpoints, logs, grids, eval.json)
    model: str | None = None  #: bundle whose detector / embedder align the faces (default: built-in baseline)
    cache: str = "out/cache"  #: alignment cache folder
    images_per_identity: int = 10  #: use at most this many images of each identity (0 = all)
    min_face_size: int = 60  #: detector minimum face size (px) for the alignment pass
    val_fraction: float = 0.15  #: fraction of identities held out
    seed: int = 0
    width: int = 24  #: model width (see trainer.models.segmenter)
    batch_size: int = 32
    steps: int = 3000  #: optimisation steps (the cosine schedule spans them)
    max_minutes: float = 0.0  #: stop (checkpoint + eval) after this many minutes of training; 0 = no limit
    lr: float = 3e-3
    weight_decay: float = 0.0
    clean_prob: float = 0.2  #: fraction of samples left unoccluded
    #: training occluders: templates (MaskSynthesizer categories) | mixed (half templates, half the realistic training
    #: families of trainer.data.occluders) | realistic (those families only); held-out families are never drawn
    occluders: str = "templates"
    cutouts: str | None = None  #: harvested cutout folder (tools/harvest_occluders.py; its harvest part is drawn)
    dice_weight: float = 1.0
    presence_weight: float = 0.5
    workers: int = 1  #: DataLoader worker processes for synthesis
    threads: int = 0  #: torch intra-op threads (0 = torch default)
    log_every: int = 25
    grid_every: int = 250
    ckpt_every: int = 250
    val_images: int = 0  #: held-out images used by the final evaluation (0 = all); each gets every category
    resume: bool = False  #: continue from ``out`` if it holds a checkpoint
    progress: bool = True  #: tqdm progress bars


# ------------------------------------------------------------------------------------------------ data
def make_sample(synth, crop: np.ndarray, lm: np.ndarray, rng: np.random.Generator, clean_prob: float,
                category: str | None = None, augment: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(masked BGR crop, M uint8, category or "none"). ``category="none"`` forces a clean sample."""
    img, lm = crop, lm
    if augment:
        if rng.random() < 0.5:
            img, lm = flip_face(img, lm)
        gain = rng.uniform(0.75, 1.25)
        bias = rng.uniform(-20, 20)
        img = np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    if category == NONE or (category is None and rng.random() < clean_prob):
        return img, np.zeros(img.shape[:2], np.uint8), NONE
    s = synth(img, lm, rng, category=category)
    return s.masked, s.mask, s.category


class MixedOccluders:
    """The segmenter's occluder source for ``--occluders mixed|realistic``: a requested ``category`` (the per-category
    validation) comes from the template synthesizer; otherwise ``p_realistic`` of the samples get a realistic training
    family (:class:`trainer.data.occluders.OccluderSynthesizer`, ``split="train"``), chosen by the sample's rng."""

    def __init__(self, templates, realistic, p_realistic: float = 0.5):
        self.templates, self.realistic, self.p_realistic = templates, realistic, float(p_realistic)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, category: str | None = None):
        if category is None and rng.random() < self.p_realistic:
            return self.realistic(image, landmarks, rng)
        return self.templates(image, landmarks, rng, category=category)


def training_occluders(cfg: SegTrainConfig, templates_synth):
    """The occluder source of ``cfg.occluders`` around ``templates_synth`` (ValueError for an unknown choice)."""
    if cfg.occluders == "templates":
        return templates_synth
    if cfg.occluders not in ("mixed", "realistic"):
        raise ValueError(f"occluders must be templates, mixed or realistic, got {cfg.occluders!r}")
    from trainer.data.occluders import OccluderConfig, OccluderSynthesizer

    realistic = OccluderSynthesizer(OccluderConfig(split="train", cutouts_dir=cfg.cutouts, templates_dir=cfg.templates))
    log.info("segmenter occluders: %s (realistic families: %s)", cfg.occluders, ", ".join(realistic.available()))
    return MixedOccluders(templates_synth, realistic, 1.0 if cfg.occluders == "realistic" else 0.5)


class SynthStream:
    """Map-style dataset: sample ``i`` is deterministic in ``(seed, i)`` (a random face, flipped / jittered,
    then an occluder, or clean with ``clean_prob``). Returns ``(crop uint8 HWC BGR, M float32, present)``."""

    def __init__(self, faces: FaceArrays, synth, length: int, clean_prob: float, seed: int):
        self.faces, self.synth, self.length, self.clean_prob, self.seed = faces, synth, length, clean_prob, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, int(i)])
        j = int(rng.integers(len(self.faces.crops)))
        img, m, _ = make_sample(self.synth, self.faces.crops[j], self.faces.landmarks[j], rng, self.clean_prob)
        return img, m.astype(np.float32), np.float32(m.any())


def build_val(faces: FaceArrays, synth, seed: int, limit: int = 0,
              categories: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Fixed held-out set: every face x every category (+ "none"), no augmentation."""
    from trainer.data.synthesis import CATEGORIES

    cats = list(categories or CATEGORIES) + [NONE]
    n = len(faces.crops) if not limit else min(limit, len(faces.crops))
    xs, ms, cs = [], [], []
    for j in range(n):
        for ci, c in enumerate(cats):
            rng = np.random.default_rng([seed, 7919, j, ci])
            img, m, _ = make_sample(synth, faces.crops[j], faces.landmarks[j], rng, 0.0, category=c, augment=False)
            xs.append(img)
            ms.append(m)
            cs.append(c)
    return {"x": np.stack(xs), "m": np.stack(ms).astype(np.float32), "cat": np.array(cs)}


# ------------------------------------------------------------------------------------------------ training
def losses(logits, occ, m, present, dice_weight: float, presence_weight: float):
    import torch.nn.functional as F
    import torch

    bce = F.binary_cross_entropy_with_logits(logits.squeeze(1), m)
    p = torch.sigmoid(logits.squeeze(1))
    dice = 1.0 - (2.0 * (p * m).sum() + 1.0) / (p.sum() + m.sum() + 1.0)
    pres = F.binary_cross_entropy_with_logits(occ, present)
    return bce + dice_weight * dice + presence_weight * pres, {"bce": bce.item(), "dice": dice.item(), "pres": pres.item()}


def predict(model, x_u8: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(mask probabilities (N,112,112), occluded probabilities (N,)) for uint8 BGR crops."""
    import torch

    from trainer.preprocess import SEGMENTER, apply_torch

    was = model.training
    model.eval()
    ps, os_ = [], []
    with torch.no_grad():
        for s in range(0, len(x_u8), batch):
            lg, oc = model(apply_torch(SEGMENTER, torch.from_numpy(np.ascontiguousarray(x_u8[s:s + batch]))))
            ps.append(torch.sigmoid(lg[:, 0]).numpy())
            os_.append(torch.sigmoid(oc).numpy())
    model.train(was)
    return np.concatenate(ps), np.concatenate(os_)


def evaluate(model, val: dict[str, np.ndarray], threshold: float = 0.5) -> dict:
    """Per category: mean IoU of the thresholded mask (occluded samples), presence accuracy; "none": mean
    false-positive area. Overall: mean IoU over occluded samples and presence accuracy over all."""
    prob, occ = predict(model, val["x"])
    pred = prob >= threshold
    truth = val["m"] >= 0.5
    inter = (pred & truth).sum((1, 2))
    union = (pred | truth).sum((1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    present = truth.any((1, 2))
    pres_ok = (occ >= 0.5) == present
    out: dict = {"per_category": {}}
    for c in dict.fromkeys(val["cat"].tolist()):
        sel = val["cat"] == c
        row = {"n": int(sel.sum()), "presence_acc": float(pres_ok[sel].mean())}
        if c == NONE:
            row["false_positive_area"] = float(pred[sel].mean())
        else:
            row["miou"] = float(iou[sel & present].mean()) if (sel & present).any() else float("nan")
        out["per_category"][c] = row
    occl = present
    out["miou_occluded"] = float(iou[occl].mean()) if occl.any() else float("nan")
    out["miou_categories_mean"] = float(np.nanmean([r["miou"] for c, r in out["per_category"].items() if c != NONE]))
    out["presence_acc"] = float(pres_ok.mean())
    out["threshold"] = threshold
    return out


def save_grid(model, val: dict[str, np.ndarray], path: Path, rows: int = 8) -> None:
    """PNG grid, one row per sample: masked | predicted M | truth M (completion: no stage yet)."""
    n = len(val["x"])
    idx = np.linspace(0, n - 1, min(rows, n)).astype(int)
    prob, _ = predict(model, val["x"][idx])
    lines = []
    for k, i in enumerate(idx):
        pm = cv2.cvtColor((prob[k] * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        tm = cv2.cvtColor((val["m"][i] * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        lines.append(np.concatenate([val["x"][i], pm, tm], 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(lines, 0))


class SegmenterPlugin(StepPlugin):
    """The segmenter on the loop skeleton: one epoch of ``cfg.steps`` batches, Adam with cosine lr decay, a quick
    held-out evaluation (``val_small``) at every checkpoint, grids every ``grid_every`` steps."""

    kind = "segmenter"
    csv_fields = ("step", "loss", "bce", "dice", "pres", "lr", "seconds", "val_miou", "val_presence_acc")

    def __init__(self, cfg: SegTrainConfig, train_f: FaceArrays, val_f: FaceArrays, synth, model_config: dict | None):
        import torch

        from trainer.models.segmenter import OcclusionSegmenter, SegmenterConfig, count_flops, count_params

        self.cfg, self.train_f, self.val_f, self.synth = cfg, train_f, val_f, synth
        self.out = Path(cfg.out)
        self.val_small = build_val(val_f, synth, cfg.seed, limit=16)
        mc = SegmenterConfig(**model_config) if model_config else SegmenterConfig(width=cfg.width)
        self.model = OcclusionSegmenter(mc)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.params, self.flops = count_params(self.model), count_flops(self.model)
        log.info("model: %d params, %.3f GFLOPs per 112x112 face", self.params, self.flops / 1e9)
        self.ds = SynthStream(train_f, synth, cfg.steps * cfg.batch_size, cfg.clean_prob, cfg.seed)
        self.steps, self.batch_size, self.workers, self.seed = cfg.steps, cfg.batch_size, cfg.workers, cfg.seed
        self.lr = cfg.lr

    def modules(self) -> dict:
        return {"model": self.model}

    def optimizers(self) -> dict:
        return {"opt": self.opt}

    def meta(self) -> dict:
        from trainer.preprocess import SEGMENTER

        return {"models": {"model": self.model.config.to_dict()}, "preprocess": {"model": SEGMENTER.to_dict()},
                "config": asdict(self.cfg), "params": self.params, "gflops": self.flops / 1e9}

    def start_epoch(self, epoch: int, ctx: DistContext) -> None:
        self.model.train()

    def step(self, batch, epoch: int, step: int, ctx: DistContext) -> dict:
        from trainer.preprocess import SEGMENTER, apply_torch

        cfg = self.cfg
        x, m, present = batch
        self.lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps)))
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        logits, occ = self.model(apply_torch(SEGMENTER, x))
        loss, parts = losses(logits, occ, m, present, cfg.dice_weight, cfg.presence_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), **parts}

    def postfix(self, parts) -> dict[str, str]:
        return {"loss": f"{parts['loss']:.3f}", "dice": f"{parts['dice']:.3f}"}

    def at_checkpoint(self, step: int) -> dict:
        ev = evaluate(self.model, self.val_small)
        return {"val_miou": f"{ev['miou_occluded']:.4f}", "val_presence_acc": f"{ev['presence_acc']:.4f}"}

    def log_row(self, step: int, epoch: int, batch: int, parts: Mapping[str, Any], extra: Mapping[str, Any],
                step_seconds: float, total_seconds: float) -> dict:
        return {"step": step, **{k: f"{float(parts[k]):.5f}" for k in ("loss", "bce", "dice", "pres")},
                "lr": f"{self.lr:.6g}", "seconds": f"{total_seconds:.1f}", **extra}

    def after_step(self, step: int, final: bool) -> None:
        if step % self.cfg.grid_every == 0 or final:
            save_grid(self.model, self.val_small, self.out / "grids" / f"step_{step:06d}.png")

    def finish(self, step: int, start_step: int, stopped_early: bool, train_seconds: float,
               weights_sha1) -> tuple[dict, dict]:
        from trainer.checkpoints import write_json

        cfg = self.cfg
        log.info("training: %d steps in %.0f s%s; evaluating on held-out identities", step - start_step,
                 train_seconds, " (stopped by --max-minutes)" if stopped_early else "")
        val = build_val(self.val_f, self.synth, cfg.seed, limit=cfg.val_images)
        result = evaluate(self.model, val)
        result.update({"steps": step, "train_seconds_this_run": round(train_seconds, 1),
                       "stopped_early": step < cfg.steps, "params": self.params, "gflops": self.flops / 1e9,
                       "val_faces": int(min(len(self.val_f.crops), cfg.val_images or 10**9)),
                       "val_identities": len(set(self.val_f.identities)), "train_faces": len(self.train_f.crops),
                       "train_identities": len(set(self.train_f.identities)), "samples_seen": step * cfg.batch_size})
        if self.train_f.counts:
            result["data"] = self.train_f.counts
        write_json(self.out / "eval.json", result)
        return result, {"eval": result}


def train(cfg: SegTrainConfig, faces: FaceArrays | None = None, synth=None) -> dict:
    """Train (or resume, ``cfg.resume``) per ``cfg``; returns the final ``eval.json`` dict (plus training stats).

    ``faces``: aligned faces to use instead of loading ``cfg.data`` / ``cfg.faces``; ``synth``: the occluder
    synthesizer (default: all categories, real templates when ``cfg.templates``)."""
    import torch

    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if synth is None:
        synth = training_occluders(cfg, MaskSynthesizer(SynthesisConfig(
            templates_dir=Path(cfg.templates) if cfg.templates else None)))
    if faces is None:
        faces = load_faces_for(cfg)
    train_f, val_f = split_by_identity(faces, cfg.val_fraction, cfg.seed)
    log.info("identity-disjoint split: %d train faces (%d ids) / %d val faces (%d ids)", len(train_f.crops),
             len(set(train_f.identities)), len(val_f.crops), len(set(val_f.identities)))

    def make(ctx: DistContext, ck) -> SegmenterPlugin:
        torch.manual_seed(cfg.seed)
        return SegmenterPlugin(cfg, train_f, val_f, synth, (ck.meta.get("models") or {}).get("model") if ck else None)

    settings = LoopSettings(out=Path(cfg.out), ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, resume=cfg.resume,
                            progress=cfg.progress, max_minutes=cfg.max_minutes, csv_name="log.csv")
    return run_loop(make, settings)


# ------------------------------------------------------------------------------------------------ CLI
add_parser, run, main = dataclass_command(
    "segmenter", "train the occlusion segmenter (M + occlusion probability)", SegTrainConfig, train, __doc__, "python -m trainer.segmenter_train")


if __name__ == "__main__":
    raise SystemExit(main())
