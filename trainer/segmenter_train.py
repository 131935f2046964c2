"""``python trainer/main.py segmenter`` (or ``python -m trainer.segmenter_train``): train the occlusion segmenter.

Data: the CelebA subset (folder per identity), detected + aligned once to the 112x112 ArcFace crop (cached
by :func:`trainer.data.faces.align_images` with the bundle's detector / embedder), split by identity
(train / held-out val). Occluders are painted on the fly by :class:`trainer.data.synthesis.MaskSynthesizer`
(all categories, real templates when ``--templates`` is given); ``clean_prob`` of the samples stay clean so
the presence head learns "unoccluded". Every sample is deterministic in (seed, sample index), so a resumed
run sees the same stream.

Loss: BCE + Dice on M (pixel logits), BCE on presence (``M.any()``). Adam, cosine learning-rate decay.

Outputs in ``--out``: ``model.safetensors`` + ``config.json`` (model config, train config, step), ``optim.safetensors``
(for ``--resume``), ``log.csv``, ``grids/step_*.png`` (rows: masked | predicted M | truth M; there is no
completion stage yet), and at the end ``eval.json``: mean IoU (prediction thresholded at 0.5) per category on
held-out identities, presence accuracy per category and overall.

Config: dataclass :class:`SegTrainConfig`; ``--config file.json`` (or ``.yaml`` when PyYAML is installed) sets
values, explicit command-line flags override it.

Example::

    python trainer/main.py segmenter --data ../shared/data/celeba_subset --templates ../shared/data/mask_templates \
        --out out/segmenter/v1 --steps 3000 --max-minutes 20
"""
from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from trainer._config_cli import dataclass_command

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
@dataclass
class FaceArrays:
    """Aligned faces in memory: ``crops`` (N,112,112,3) uint8 BGR, ``landmarks`` (N,5,2) crop px, identities."""

    crops: np.ndarray
    landmarks: np.ndarray
    identities: list[str]

    def subset(self, idx: Sequence[int]) -> "FaceArrays":
        idx = list(idx)
        return FaceArrays(self.crops[idx], self.landmarks[idx], [self.identities[i] for i in idx])


def load_faces(cfg: SegTrainConfig) -> FaceArrays:
    """Detect + align (cached) the CelebA-style tree at ``cfg.data`` into 112x112 ArcFace crops; or read the
    face pack ``cfg.faces`` (:mod:`trainer.data.pack`) when the config has one."""
    if getattr(cfg, "faces", None):
        from trainer.data.pack import load_face_pack

        faces = load_face_pack(cfg.faces)
        if cfg.images_per_identity:
            seen: dict[str, int] = {}
            keep = []
            for i, d in enumerate(faces.identities):
                seen[d] = seen.get(d, 0) + 1
                if seen[d] <= cfg.images_per_identity:
                    keep.append(i)
            faces = faces.subset(keep)
        log.info("faces: %d from pack %s", len(faces.crops), cfg.faces)
        return faces
    from sdk._registry import build_stage
    from sdk.align import ARCFACE_CROP
    from sdk.bundle import load_bundle
    from trainer.data.faces import DETECTED, align_images, read_bgr, warp_crop
    from trainer.data.readers import read_identity_tree

    samples = read_identity_tree(cfg.data, min_images=2)
    if cfg.images_per_identity:
        by: dict[str, list] = {}
        for s in samples:
            by.setdefault(s.identity, []).append(s)
        samples = [s for v in by.values() for s in v[: cfg.images_per_identity]]
    bundle = load_bundle(cfg.model or "baseline", verify_hash=False)
    det = build_stage(bundle.stages["detect"], {"max_side": None, "min_face_size": cfg.min_face_size})
    emb = build_stage(bundle.stages["embed"])
    aligned = align_images([str(s.path) for s in samples], det, emb, Path(cfg.cache), progress=cfg.progress)
    keep = np.nonzero(aligned.status == DETECTED)[0]
    log.info("faces: %s; training on the %d detected", aligned.counts(), len(keep))
    crops = np.zeros((len(keep), ARCFACE_CROP.height, ARCFACE_CROP.width, 3), np.uint8)
    lms = np.zeros((len(keep), 5, 2), np.float32)
    for k, i in enumerate(keep):
        img = read_bgr(aligned.paths[i])
        crops[k] = warp_crop(img, aligned.arc_m[i], ARCFACE_CROP.size)
        lms[k] = aligned.arc_landmarks(i)
    return FaceArrays(crops, lms, [samples[i].identity for i in keep])


def split_by_identity(faces: FaceArrays, val_fraction: float, seed: int) -> tuple[FaceArrays, FaceArrays]:
    """Identity-disjoint (train, val)."""
    ids = sorted(set(faces.identities))
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n_val = max(1, int(round(len(ids) * val_fraction))) if len(ids) > 1 else 0
    val_ids = set(ids[:n_val])
    tr = [i for i, d in enumerate(faces.identities) if d not in val_ids]
    va = [i for i, d in enumerate(faces.identities) if d in val_ids]
    return faces.subset(tr), faces.subset(va)


_FLIP_ORDER = [1, 0, 2, 4, 3]


def make_sample(synth, crop: np.ndarray, lm: np.ndarray, rng: np.random.Generator, clean_prob: float,
                category: str | None = None, augment: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(masked BGR crop, M uint8, category or "none"). ``category="none"`` forces a clean sample."""
    img, lm = crop, lm
    if augment:
        if rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
            lm = lm.copy()
            lm[:, 0] = img.shape[1] - 1 - lm[:, 0]
            lm = lm[_FLIP_ORDER]
        gain = rng.uniform(0.75, 1.25)
        bias = rng.uniform(-20, 20)
        img = np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    if category == NONE or (category is None and rng.random() < clean_prob):
        return img, np.zeros(img.shape[:2], np.uint8), NONE
    s = synth(img, lm, rng, category=category)
    return s.masked, s.mask, s.category


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

    from trainer.models.segmenter import preprocess

    was = model.training
    model.eval()
    ps, os_ = [], []
    with torch.no_grad():
        for s in range(0, len(x_u8), batch):
            lg, oc = model(preprocess(torch.from_numpy(np.ascontiguousarray(x_u8[s:s + batch]))))
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


def _save_optim(opt, path: Path) -> None:
    from trainer._io import save_tensors

    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{pid}.{k}"] = v if hasattr(v, "detach") else __import__("torch").as_tensor(v)
    save_tensors(tensors, path)


def _load_optim(opt, path: Path) -> None:
    from safetensors.torch import load_file

    t = load_file(str(path))
    sd = opt.state_dict()
    state: dict = {}
    for key, v in t.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def train(cfg: SegTrainConfig, faces: FaceArrays | None = None, synth=None) -> dict:
    """Train (or resume) per ``cfg``; returns the final ``eval.json`` dict (plus training stats)."""
    import torch
    from tqdm import tqdm

    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig
    from trainer.models.segmenter import (OcclusionSegmenter, SegmenterConfig, count_flops, count_params,
                                          load_checkpoint, preprocess, save_checkpoint)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if synth is None:
        synth = MaskSynthesizer(SynthesisConfig(templates_dir=Path(cfg.templates) if cfg.templates else None))
    if faces is None:
        faces = load_faces(cfg)
    train_f, val_f = split_by_identity(faces, cfg.val_fraction, cfg.seed)
    log.info("identity-disjoint split: %d train faces (%d ids) / %d val faces (%d ids)", len(train_f.crops),
             len(set(train_f.identities)), len(val_f.crops), len(set(val_f.identities)))
    val_small = build_val(val_f, synth, cfg.seed, limit=16)

    start = 0
    if cfg.resume and (out / "model.safetensors").is_file():
        model, ck = load_checkpoint(out)
        model.train()
        start = int(ck.get("step", 0))
        log.info("resumed from %s at step %d", out, start)
    else:
        model = OcclusionSegmenter(SegmenterConfig(width=cfg.width))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if start and (out / "optim.safetensors").is_file():
        _load_optim(opt, out / "optim.safetensors")
    params, flops = count_params(model), count_flops(model)
    log.info("model: %d params, %.3f GFLOPs per 112x112 face", params, flops / 1e9)

    ds = SynthStream(train_f, synth, cfg.steps * cfg.batch_size, cfg.clean_prob, cfg.seed)
    sampler = range(start * cfg.batch_size, cfg.steps * cfg.batch_size)
    dl = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                                     persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    csv_path = out / "log.csv"
    new_csv = not csv_path.is_file() or start == 0
    fcsv = open(csv_path, "w" if new_csv else "a", newline="")
    wr = csv.writer(fcsv)
    if new_csv:
        wr.writerow(["step", "loss", "bce", "dice", "pres", "lr", "seconds", "val_miou", "val_presence_acc"])

    def extra(step: int, **kw) -> dict:
        return {"step": step, "train": asdict(cfg), "params": params, "gflops": flops / 1e9, **kw}

    model.train()
    t0 = time.perf_counter()
    step = start
    stopped_early = False
    bar = tqdm(total=cfg.steps, initial=start, desc="segmenter", unit="step", disable=not cfg.progress)
    for x, m, present in dl:
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        logits, occ = model(preprocess(x))
        loss, parts = losses(logits, occ, m, present, cfg.dice_weight, cfg.presence_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", dice=f"{parts['dice']:.3f}")
        last = step >= cfg.steps or (cfg.max_minutes and time.perf_counter() - t0 > cfg.max_minutes * 60)
        val_cols = ["", ""]
        if step % cfg.ckpt_every == 0 or last:
            ev = evaluate(model, val_small)
            val_cols = [f"{ev['miou_occluded']:.4f}", f"{ev['presence_acc']:.4f}"]
            save_checkpoint(model, out, extra(step))
            _save_optim(opt, out / "optim.safetensors")
        if step % cfg.log_every == 0 or last or val_cols[0]:
            wr.writerow([step, f"{loss.item():.5f}", f"{parts['bce']:.5f}", f"{parts['dice']:.5f}",
                         f"{parts['pres']:.5f}", f"{lr:.6g}", f"{time.perf_counter() - t0:.1f}", *val_cols])
            fcsv.flush()
        if step % cfg.grid_every == 0 or last:
            save_grid(model, val_small, out / "grids" / f"step_{step:06d}.png")
        if last:
            stopped_early = step < cfg.steps
            break
    bar.close()
    fcsv.close()
    train_seconds = time.perf_counter() - t0
    if step == start:  # nothing left to train (resumed a finished run)
        save_checkpoint(model, out, extra(step))
    log.info("training: %d steps in %.0f s%s; evaluating on held-out identities", step - start, train_seconds,
             " (stopped by --max-minutes)" if stopped_early else "")
    val = build_val(val_f, synth, cfg.seed, limit=cfg.val_images)
    result = evaluate(model, val)
    result.update({"steps": step, "train_seconds_this_run": round(train_seconds, 1), "stopped_early": stopped_early,
                   "params": params, "gflops": flops / 1e9, "val_faces": int(min(len(val_f.crops), cfg.val_images or 10**9)),
                   "val_identities": len(set(val_f.identities)), "train_faces": len(train_f.crops),
                   "train_identities": len(set(train_f.identities)), "samples_seen": step * cfg.batch_size})
    save_checkpoint(model, out, extra(step, eval=result))
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------------------------ CLI
add_parser, run, main = dataclass_command(
    "segmenter", "train the occlusion segmenter (M + occlusion probability)", SegTrainConfig, train, __doc__, "python -m trainer.segmenter_train")


if __name__ == "__main__":
    raise SystemExit(main())
