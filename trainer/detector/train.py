"""``python trainer/main.py detector``: fine-tune LTDet on composed scenes of (occluded) faces.

Labels are MTCNN's on the clean photos (:mod:`trainer.detector.labels`, computed once and cached in
``<cache>``); occluders come from the training families only (:mod:`trainer.detector.occlusion`); scenes
are composed on the fly (:mod:`trainer.detector.scenes`). Identities for which
:func:`~trainer.detector.labels.is_eval_identity` holds are never trained on.

Outputs in ``--out``: ``last.safetensors`` (model + AdamW state, written every ``--save-every`` steps and at the
end, atomically; the run resumes from it), ``model.safetensors`` + ``net_config.json`` (the trained net),
``steps.csv`` (loss parts, learning rate, seconds per step), ``train_config.json``.

Example (the shipped model; ~1.5 h on 2 busy cores)::

    python trainer/main.py detector --data ../shared/data --templates ../shared/data/mask_templates \
        --out out/detector/v1 --steps 3000

``--data astronaut`` trains on scikit-image's astronaut alone (tests, smoke runs; no data folder needed).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from trainer._config_cli import add_dataclass_args, dataclass_from_args
from trainer._io import save_tensors
from trainer.detector.labels import LabelSet, build_or_load, is_eval_identity, label_images
from trainer.detector.model import DetectorNet, NetConfig, build_net
from trainer.detector.occlusion import OccluderSampler
from trainer.detector.scenes import SceneConfig, SceneRenderer
from trainer.detector.targets import LossWeights, detector_loss, make_anchors, match

log = logging.getLogger(__name__)

__all__ = ["DetTrainConfig", "add_parser", "astronaut_labels", "load_checkpoint", "to_input", "train"]


@dataclass
class DetTrainConfig:
    """Options of ``trainer/main.py detector`` (every field is a flag)."""

    data: str = "../shared/data"  #: folder with lfw/ and celeba_subset/, or 'astronaut' (tests, smoke runs)
    templates: str = ""  #: MaskTheFace templates folder (anchors.cfg + PNGs); empty = procedural occluders only
    out: str = "out/detector/run"  #: output folder (checkpoints, CSV log, config); the run resumes from it
    cache: str = "out/detector/labels_lfw_celeba.npz"  #: MTCNN label file (built on first use)
    per_identity: int = 2  #: images per identity to label (LFW + CelebA)
    init: str = "blazeface"  #: 'blazeface' (MediaPipe's short-range weights) or 'random'
    steps: int = 3000  #: optimiser steps
    batch_size: int = 10  #: scenes per step
    crop: int = 224  #: training scene side (px, multiple of 32)
    lr: float = 1e-3  #: peak AdamW learning rate (heads); the backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 0.3  #: backbone learning-rate factor
    freeze: int = 2  #: keep the first N backbone convolutions frozen (saves backward time on CPU)
    weight_decay: float = 1e-4  #: AdamW weight decay
    warmup: int = 100  #: linear warm-up steps, then cosine decay to 5 % of lr
    occlude_prob: float = 0.7  #: share of pasted faces that get a (training-family) occluder
    lmk_weight: float = 2.0  #: weight of the landmark loss
    workers: int = 1  #: DataLoader worker processes rendering scenes
    threads: int = 2  #: torch intra-op threads
    save_every: int = 200  #: checkpoint period (steps)
    refit_scenes: int = 0  #: after training, refit the landmark / box-centre heads in closed form on this many scenes
    seed: int = 0  #: scene seeds and init


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


def load_train_labels(cfg: DetTrainConfig) -> tuple[LabelSet, dict | None]:
    if cfg.data == "astronaut":
        return astronaut_labels()
    root = Path(cfg.data)
    roots = [(t, root / d) for t, d in (("lfw", "lfw"), ("celeba", "celeba_subset")) if (root / d).is_dir()]
    if not roots:
        raise SystemExit(f"{root}: neither lfw/ nor celeba_subset/ found")
    ls = build_or_load(Path(cfg.cache), roots, cfg.per_identity)
    keep = np.array([(ls.main[i] >= 0) and not is_eval_identity(str(ls.identities[i])) for i in range(len(ls))])
    return ls.subset(keep), None


def to_input(images_bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR (N, H, W, 3) -> float32 NCHW RGB in [-1, 1] (the net's input)."""
    x = torch.from_numpy(np.ascontiguousarray(images_bgr[..., ::-1]))
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


class _Scenes(IterableDataset):
    def __init__(self, renderer: SceneRenderer, anchors, first: int, seed: int):
        self.r, self.anc, self.first, self.seed = renderer, anchors, first, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        k = self.first + wid
        while True:
            sc = self.r.render(self.seed * 10_000_019 + k)
            t = match(self.anc, sc.boxes, sc.landmarks, sc.ignore)
            yield sc.image, t["label"], t["box"], t["lmk"]
            k += nw


def _collate(items):
    imgs, lab, box, lmk = zip(*items)
    return (to_input(np.stack(imgs)), {"label": torch.from_numpy(np.stack(lab)).long(),
                                       "box": torch.from_numpy(np.stack(box)), "lmk": torch.from_numpy(np.stack(lmk))})


def save_model(net: DetectorNet, out: Path, extra: dict | None = None) -> Path:
    """``model.safetensors`` + ``net_config.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "net_config.json").write_text(json.dumps(net.cfg.to_json()))
    return save_tensors(net.state_dict(), out / "model.safetensors",
                        metadata={"extra": json.dumps(extra or {})})


def load_checkpoint(path: str | Path) -> DetectorNet:
    """A trained net from a run folder (``model.safetensors`` + ``net_config.json``) or a ``.safetensors``
    file with ``net_config.json`` beside it. No pickle."""
    from safetensors.torch import load_file

    p = Path(path)
    f = p / "model.safetensors" if p.is_dir() else p
    cfg_file = f.parent / "net_config.json"
    if not f.is_file() or not cfg_file.is_file():
        raise FileNotFoundError(f"{p}: expected model.safetensors and net_config.json")
    net = DetectorNet(NetConfig.from_json(json.loads(cfg_file.read_text())))
    state = load_file(str(f))
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} or state
    net.load_state_dict(state)
    return net.eval()


def _lr_at(cfg: DetTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _save_last(net, opt, step: int, path: Path) -> None:
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v):
                tensors[f"opt.{i}.{k}"] = v.reshape(-1) if v.ndim == 0 else v
    save_tensors(tensors, path, metadata={"step": str(step)})


def _load_last(net, opt, path: Path) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file

    t = load_file(str(path))
    net.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        st = {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"opt.{i}.")}
        if st:
            if "step" in st:
                st["step"] = st["step"].reshape(())
            opt.state[p] = st
    with safe_open(str(path), "pt") as f:
        return int(f.metadata()["step"])


def train(cfg: DetTrainConfig) -> dict:
    """Train (or resume) as configured; returns a summary dict."""
    if cfg.crop % 32:
        raise SystemExit(f"--crop must be a multiple of 32, got {cfg.crop}")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    labels, table = load_train_labels(cfg)
    log.info("training faces: %d images", len(labels))
    loader_fn = (lambda p: table[str(p)]) if table else None
    renderer = SceneRenderer(labels, SceneConfig(height=cfg.crop, width=cfg.crop, occlude_prob=cfg.occlude_prob),
                             OccluderSampler("train", cfg.templates or None), image_loader=loader_fn)
    net = build_net(cfg.init)
    for k, conv in enumerate(net.backbone.convs.values()):
        if k < cfg.freeze:
            conv.requires_grad_(False)
    anc = make_anchors(cfg.crop, cfg.crop, net.cfg.strides, net.cfg.anchors)
    sizes = torch.from_numpy(anc.sizes)
    heads = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": [p for p in net.backbone.parameters() if p.requires_grad],
                              "mult": cfg.backbone_lr_mult},
                             {"params": heads, "mult": 1.0}], lr=cfg.lr, weight_decay=cfg.weight_decay)
    (out / "net_config.json").write_text(json.dumps(net.cfg.to_json()))  # last.safetensors loads with it
    last = out / "last.safetensors"
    step = _load_last(net, opt, last) if last.is_file() else 0
    if step:
        log.info("resuming %s at step %d", last, step)
    weights = LossWeights(lmk=cfg.lmk_weight)
    ds = _Scenes(renderer, anc, step * cfg.batch_size, cfg.seed)
    dl = DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=_collate,
                    persistent_workers=False, prefetch_factor=2 if cfg.workers else None)
    csv_path = out / "steps.csv"
    new_csv = not csv_path.is_file() or step == 0
    fcsv = open(csv_path, "w" if new_csv else "a", newline="")
    wr = csv.writer(fcsv)
    if new_csv:
        wr.writerow(["step", "loss", "cls", "box", "lmk", "npos", "lr", "seconds"])
    net.train()
    it = iter(dl)
    bar = tqdm(total=cfg.steps, initial=step, desc="detector", unit="step")
    parts: dict[str, float] = {}
    t_start = time.perf_counter()
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            x, tg = next(it)
            lr = _lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr * g["mult"]
            loss, parts = detector_loss(net(x), tg, sizes, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            step += 1
            dt = time.perf_counter() - t0
            wr.writerow([step] + [round(parts[k], 5) for k in ("loss", "cls", "box", "lmk", "npos")]
                        + [f"{lr:.6g}", round(dt, 3)])
            bar.set_postfix(loss=f"{parts['loss']:.3f}", cls=f"{parts['cls']:.3f}", lmk=f"{parts['lmk']:.3f}")
            bar.update(1)
            if step % cfg.save_every == 0 or step == cfg.steps:
                fcsv.flush()
                _save_last(net, opt, step, last)
    finally:
        bar.close()
        fcsv.close()
    net.eval()
    extra: dict = {"steps": step}
    if cfg.refit_scenes > 0:
        from trainer.detector.refit import collect, ridge_refit

        rep = ridge_refit(net, collect(net, renderer, anc, cfg.refit_scenes, cfg.batch_size, cfg.seed + 1))
        (out / "refit.json").write_text(json.dumps(rep, indent=1))
        extra["refit"] = rep
    save_model(net, out, extra)
    _plot(csv_path, out / "loss.png")
    return {"out": str(out), "steps": step, "final": parts, "seconds": round(time.perf_counter() - t_start, 1)}


def _plot(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    s = np.array([float(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in ("loss", "cls", "box", "lmk"):
        v = np.array([float(r[k]) for r in rows])
        n = max(1, len(v) // 50)
        ax.plot(s[n - 1:], np.convolve(v, np.ones(n) / n, "valid"), label=k)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("detector training loss (moving average)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(args, DetTrainConfig)
    if cfg.data != "astronaut" and not Path(cfg.data).is_dir():
        raise SystemExit(f"data folder not found: {cfg.data}")
    if cfg.templates and not Path(cfg.templates).is_dir():
        raise SystemExit(f"templates folder not found: {cfg.templates}")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    print(json.dumps(train(cfg), indent=1))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``detector`` on ``trainer/main.py``."""
    p = subparsers.add_parser("detector", help="train the masked-face detector (LTDet) on composed scenes",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, DetTrainConfig)
    p.set_defaults(fn=run)
    return p
