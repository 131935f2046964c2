"""``python trainer/main.py inpainter`` (or ``python -m trainer.inpainter_train``): train the face inpainter.

Model: :mod:`trainer.models.inpainter` -- DeepFill v1-style coarse-to-fine generator with contextual attention
(Yu et al. 2018), a global and a local (mask bounding box) WGAN-GP critic; optional ID-GAN identity-diversity
loss (Ge et al., TCSVT, eq. 6) through the differentiable dlib teacher port (:mod:`trainer.losses.inpaint`).

Data: the CelebA subset aligned once to 112x112 ArcFace crops (cached, as in ``segmenter``), split by
identity (train / held-out val). Each sample: a face (flipped / brightness-jittered), an occluder painted by
:class:`trainer.data.synthesis.MaskSynthesizer` (category weights: the synthesizer's defaults unless
``--category-weights`` is given as JSON); the occluder's mask M is the hole. The generator sees the clean
face with M zeroed (= the occluded face with M zeroed); the target is the clean face. Sample ``i`` is
deterministic in ``(seed, i)``, so a resumed run sees the same stream.

Losses (generator): ``l1_weight * (discounted_l1(coarse) + discounted_l1(fine))`` (DeepFill spatial discount,
gamma 0.99) + ``ae_weight * (known-pixel L1 of coarse and fine)`` + ``adv_weight * (-D_g(X) - D_l(X))`` +
``id_weight * L_R`` (``--id-loss``; identity centres f_id = mean teacher descriptor of each training
identity's clean faces). Critics: WGAN losses + ``gp_weight`` x gradient penalty, ``n_critic`` critic
updates per generator update. Adam (lr 1e-4, betas (0.5, 0.9)) for both.

Loop: the one skeleton (:func:`trainer.loops.run_loop`) with :class:`InpainterPlugin`; images enter the networks
through the :class:`sdk.preprocess.Preprocess` record :data:`trainer.preprocess.INPAINTER` (BGR, ``x / 127.5 - 1``,
NCHW), recorded in every checkpoint for the exporter.

Outputs in ``--out``: ``ckpt/last.*`` (:mod:`trainer.checkpoints`: generator + both critics, JSON with the model
config, train config, preprocess record and step, both optimisers and the RNG state; ``--resume`` continues
exactly from it), ``snapshots/step_<N>.*`` (generator weights every ``--snapshot-every`` steps), ``log.csv``,
``grids/step_*.png`` (rows: masked | M | completed | truth), ``eval.json``: PSNR / SSIM of the completed region
(M) on held-out identities, overall and per category, with OpenCV Telea inpainting as a reference.

Example::

    python trainer/main.py inpainter --data ../shared/data/celeba_subset --out out/inpainter/v1 \
        --steps 2000 --max-minutes 15 --no-id-loss
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from trainer._config_cli import dataclass_command
from trainer.data.face_arrays import FaceArrays, flip_face, split_by_identity
from trainer.data.faces import load_faces_for
from trainer.loops import DistContext, LoopSettings, StepPlugin, run_loop

log = logging.getLogger("trainer.inpainter")


@dataclass
class InpaintTrainConfig:
    """Training options (every field is a ``--flag`` of the ``inpainter`` command)."""

    data: str = "../shared/data/celeba_subset"  #: folder with one sub-folder per identity
    faces: str | None = None  #: face pack (.npz from ``pack-faces``) used instead of detecting faces in ``data``
    templates: str | None = None  #: mask_templates folder (real masks); None = procedural occluders only
    out: str = "out/inpainter/run"  #: output folder (checkpoints, logs, grids, eval.json)
    model: str | None = None  #: bundle whose detector / embedder align the faces (default: built-in baseline)
    cache: str = "out/cache"  #: alignment cache folder
    teacher: str | None = None  #: dlib .dat for the identity loss (default: the packaged one)
    images_per_identity: int = 10  #: use at most this many images of each identity (0 = all)
    min_face_size: int = 60  #: detector minimum face size (px) for the alignment pass
    val_fraction: float = 0.15  #: fraction of identities held out
    seed: int = 0
    width: int = 12  #: generator base width (12: ~1.35 GFLOPs per 112x112 face)
    disc_width: int = 32  #: critic base width
    batch_size: int = 8
    steps: int = 2000  #: generator updates
    max_minutes: float = 0.0  #: stop (checkpoint + eval) after this many minutes of training; 0 = no limit
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.9
    n_critic: int = 1  #: critic updates per generator update
    l1_weight: float = 1.2  #: spatially discounted L1 on the hole (coarse + fine)
    ae_weight: float = 1.2  #: L1 on known pixels (coarse + fine)
    adv_weight: float = 0.001  #: WGAN generator loss (global + local)
    gp_weight: float = 10.0  #: WGAN-GP penalty
    gamma: float = 0.99  #: spatial discount base
    id_loss: bool = False  #: add the ID-GAN identity-diversity loss (dlib teacher)
    id_weight: float = 0.005  #: weight of L_R (eq. 6); with dlib, |R^l(X) - R^l(Y)| ~ 200 at init -> L_R ~ 100
    alpha_l: float = 0.5
    alpha_h: float = 0.05
    beta: float = 0.5
    category_weights: str | None = None  #: JSON dict category -> weight (default: the synthesizer's)
    grey_prob: float = 0.0  #: fraction of training faces turned greyscale (grey cameras, greyscale LFW)
    threads: int = 0  #: torch intra-op threads (0 = torch default)
    device: str = "cpu"  #: cpu | cuda | cuda:N | auto (cuda when available)
    workers: int = 0  #: DataLoader worker processes for mask synthesis (0 = in the training process)
    log_every: int = 10
    grid_every: int = 100
    ckpt_every: int = 100
    snapshot_every: int = 0  #: also keep the generator's weights every N steps (snapshots/generator_<step>.safetensors)
    val_images: int = 40  #: held-out faces in the final evaluation (0 = all); each gets every category
    resume: bool = False  #: continue from ``out`` if it holds a checkpoint
    progress: bool = True  #: tqdm progress bars


# ------------------------------------------------------------------------------------------------ data
def _augment(img: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal flip (p 0.5) and brightness / contrast jitter of a BGR crop and its landmarks."""
    if rng.random() < 0.5:
        img, lm = flip_face(img, lm)
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-15, 15)
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8), lm


class InpaintStream:
    """Map-style dataset; item ``i`` (deterministic in ``(seed, i)``) = ``(clean uint8 HWC, M float32 HW,
    identity label int64)``."""

    def __init__(self, faces, labels: np.ndarray, synth, length: int, seed: int, grey_prob: float = 0.0):
        self.faces, self.labels, self.synth, self.length, self.seed = faces, labels, synth, length, seed
        self.grey_prob = float(grey_prob)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, int(i)])
        j = int(rng.integers(len(self.faces.crops)))
        img, lm = _augment(self.faces.crops[j], self.faces.landmarks[j], rng)
        if self.grey_prob and rng.random() < self.grey_prob:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        s = self.synth(img, lm, rng)
        return s.clean, s.mask.astype(np.float32), np.int64(self.labels[j])


def build_val(faces, synth, seed: int, limit: int = 0) -> dict[str, np.ndarray]:
    """Fixed held-out set: every face x every category, no augmentation."""
    from trainer.data.synthesis import CATEGORIES

    n = len(faces.crops) if not limit else min(limit, len(faces.crops))
    xs, ms, cs = [], [], []
    for j in range(n):
        for ci, c in enumerate(CATEGORIES):
            rng = np.random.default_rng([seed, 7919, j, ci])
            s = synth(faces.crops[j], faces.landmarks[j], rng, category=c)
            xs.append(s.clean)
            ms.append(s.mask)
            cs.append(c)
    return {"x": np.stack(xs), "m": np.stack(ms).astype(np.float32), "cat": np.array(cs)}


def to_tensor(x_u8, m=None):
    """uint8 NHWC BGR crops -> the generator's input, float NCHW in [-1, 1] (the :data:`trainer.preprocess.INPAINTER`
    record); and M (N, H, W) -> (N, 1, H, W) float."""
    import torch

    from trainer.preprocess import INPAINTER, apply_torch

    x = apply_torch(INPAINTER, torch.as_tensor(np.ascontiguousarray(x_u8)))
    if m is None:
        return x
    return x, torch.as_tensor(np.ascontiguousarray(m)).float().unsqueeze(1)


def to_u8(x) -> np.ndarray:
    """float NCHW [-1, 1] -> uint8 NHWC."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8) \
        .permute(0, 2, 3, 1).cpu().numpy()


def complete(gen, x_u8: np.ndarray, m: np.ndarray, batch: int = 32) -> np.ndarray:
    """Completed uint8 crops for uint8 truth crops ``x_u8`` with holes ``m`` (N, H, W) (on ``gen``'s device)."""
    import torch

    was = gen.training
    gen.eval()
    dev = next(gen.parameters()).device
    outs = []
    with torch.no_grad():
        for s in range(0, len(x_u8), batch):
            x, mm = to_tensor(x_u8[s:s + batch], m[s:s + batch])
            outs.append(to_u8(gen(x.to(dev), mm.to(dev))))
    gen.train(was)
    return np.concatenate(outs)


def evaluate(gen, val: dict[str, np.ndarray]) -> dict:
    """PSNR / SSIM of the completed region (M) vs the truth, overall and per category; + OpenCV Telea."""
    from trainer.eval.metrics import psnr_batch, ssim_batch

    pred = complete(gen, val["x"], val["m"])
    masks = [mm > 0.5 for mm in val["m"]]
    keep = np.array([mm.any() for mm in masks])
    telea = np.stack([cv2.inpaint(np.ascontiguousarray(x * (1 - mm[..., None].astype(np.uint8))),
                                  mm.astype(np.uint8), 3, cv2.INPAINT_TELEA) for x, mm in zip(val["x"], masks)])
    res: dict = {"per_category": {}}
    ps = np.full(len(pred), np.nan)
    ss = np.full(len(pred), np.nan)
    pt = np.full(len(pred), np.nan)
    st = np.full(len(pred), np.nan)
    idx = np.nonzero(keep)[0]
    ps[idx] = psnr_batch([pred[i] for i in idx], [val["x"][i] for i in idx], [masks[i] for i in idx])
    ss[idx] = ssim_batch([pred[i] for i in idx], [val["x"][i] for i in idx], [masks[i] for i in idx])
    pt[idx] = psnr_batch([telea[i] for i in idx], [val["x"][i] for i in idx], [masks[i] for i in idx])
    st[idx] = ssim_batch([telea[i] for i in idx], [val["x"][i] for i in idx], [masks[i] for i in idx])
    ps, pt = np.minimum(ps, 100.0), np.minimum(pt, 100.0)
    for c in dict.fromkeys(val["cat"].tolist()):
        sel = (val["cat"] == c) & keep
        res["per_category"][c] = {"n": int(sel.sum()), "psnr": float(np.mean(ps[sel])), "ssim": float(np.mean(ss[sel])),
                                  "telea_psnr": float(np.mean(pt[sel])), "telea_ssim": float(np.mean(st[sel]))}
    res.update({"psnr_hole": float(np.nanmean(ps)), "ssim_hole": float(np.nanmean(ss)),
                "telea_psnr_hole": float(np.nanmean(pt)), "telea_ssim_hole": float(np.nanmean(st)),
                "n": int(keep.sum())})
    return res


def save_grid(gen, val: dict[str, np.ndarray], path: Path, rows: int = 8) -> None:
    """PNG grid, one row per sample: masked (hole grey) | M | completed | truth."""
    n = len(val["x"])
    idx = np.linspace(0, n - 1, min(rows, n)).astype(int)
    pred = complete(gen, val["x"][idx], val["m"][idx])
    lines = []
    for k, i in enumerate(idx):
        m3 = val["m"][i][..., None] > 0.5
        masked = np.where(m3, 128, val["x"][i]).astype(np.uint8)
        mv = cv2.cvtColor((val["m"][i] * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        lines.append(np.concatenate([masked, mv, pred[k], val["x"][i]], 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(lines, 0))


# ------------------------------------------------------------------------------------------------ training
class Trainer:
    """The networks, optimisers and one WGAN-GP training step (usable without data files, e.g. in tests)."""

    def __init__(self, cfg: InpaintTrainConfig, id_loss=None, model_config: dict | None = None):
        import torch

        from trainer.models.inpainter import GlobalDiscriminator, Generator, InpainterConfig, LocalDiscriminator

        self.cfg = cfg
        mc = InpainterConfig(**model_config) if model_config else InpainterConfig(width=cfg.width,
                                                                                  disc_width=cfg.disc_width)
        self.G = Generator(mc)
        self.Dg = GlobalDiscriminator(mc)
        self.Dl = LocalDiscriminator(mc)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(list(self.Dg.parameters()) + list(self.Dl.parameters()), lr=cfg.lr, betas=betas)
        self.id_loss = id_loss

    def critics(self) -> dict:
        return {"global": self.Dg, "local": self.Dl}

    def to(self, device) -> "Trainer":
        """Move the networks (and the identity loss) to ``device``; optimiser state follows lazily."""
        for mod in (self.G, self.Dg, self.Dl, self.id_loss):
            if mod is not None:
                mod.to(device)
        for opt in (self.opt_g, self.opt_d):
            for st in opt.state.values():
                for k, v in st.items():
                    if hasattr(v, "to"):
                        st[k] = v.to(device)
        return self

    def step(self, x, m, labels=None, w=None) -> dict:
        """One update of the critics (``n_critic`` times) and of the generator; returns the loss parts.

        ``w``: the spatial-discount weights of ``m`` (computed here when None; pass them precomputed on the CPU
        when training on a GPU, the distance transform is a CPU routine)."""
        import torch

        from trainer.losses.inpaint import (d_wgan_loss, discounted_l1, g_wgan_loss, gradient_penalty, known_l1,
                                            spatial_discount)
        from trainer.models.inpainter import mask_boxes

        cfg = self.cfg
        boxes = mask_boxes(m, self.Dl.config.min_box)
        w = spatial_discount(m, cfg.gamma) if w is None else w
        real_l = self.Dl.crop(x, boxes)
        parts: dict = {}
        for k in range(max(1, cfg.n_critic)):
            with torch.no_grad():
                fake = self.G(x, m)
            fake_l = self.Dl.crop(fake, boxes)
            d = (d_wgan_loss(self.Dg(x), self.Dg(fake)) + d_wgan_loss(self.Dl(real_l), self.Dl(fake_l)))
            gp = gradient_penalty(self.Dg, x, fake) + gradient_penalty(self.Dl, real_l, fake_l)
            loss_d = d + cfg.gp_weight * gp
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            parts.update(d_loss=d.item(), gp=gp.item())
        y1, y2, out = self.G(x, m, return_stages=True)
        l1 = discounted_l1(y1, x, m, w) + discounted_l1(y2, x, m, w)
        ae = known_l1(y1, x, m) + known_l1(y2, x, m)
        adv = g_wgan_loss(self.Dg(out)) + g_wgan_loss(self.Dl(out, boxes))
        loss = cfg.l1_weight * l1 + cfg.ae_weight * ae + cfg.adv_weight * adv
        if self.id_loss is not None and labels is not None:
            lid, p = self.id_loss(out, x, labels)
            loss = loss + cfg.id_weight * lid
            parts.update(id=lid.item(), **p)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        parts.update(g_loss=loss.item(), l1=l1.item(), ae=ae.item(), adv=adv.item())
        return parts

    def modules(self) -> dict:
        """Everything a checkpoint holds: the generator and both critics."""
        return {"generator": self.G, "global": self.Dg, "local": self.Dl}

    def optimizers(self) -> dict:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def meta(self) -> dict:
        """Checkpoint JSON: the generator's config, its input record, the training config."""
        from trainer.preprocess import INPAINTER

        return {"kind": "inpainter", "models": {"generator": self.G.config.to_dict()},
                "preprocess": {"generator": INPAINTER.to_dict()}, "config": asdict(self.cfg)}

    def save(self, out: Path, extra: dict) -> None:
        """A checkpoint of everything (networks, optimisers, RNG) at ``<out>/ckpt/last``, ``extra`` in its JSON."""
        from trainer.checkpoints import save_checkpoint
        from trainer.loops import LAST

        save_checkpoint(Path(out) / LAST, self.modules(), {**self.meta(), **extra}, self.optimizers(), rng=True)

    def load(self, out: Path) -> dict:
        """Restore networks and optimisers from ``out`` (a run folder or checkpoint); returns its JSON."""
        from trainer.checkpoints import load_checkpoint

        ck = load_checkpoint(out)
        ck.restore(self.modules(), self.optimizers(), strict=False)
        self.G.train()
        return ck.meta


def resolve_device(name: str):
    """``torch.device`` for a config's ``device`` (``auto``: cuda when available); clear error when missing."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"device {name!r} asked for but this torch sees no CUDA device "
                             f"(torch {torch.__version__}); use --device cpu")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return dev


def build_id_loss(cfg: InpaintTrainConfig, train_f, labels: np.ndarray, n_ids: int, device=None):
    """IdentityDiversityLoss with the dlib teacher and centres from the training identities' clean faces."""
    from trainer.losses.inpaint import DlibIdentityFeatures, IdentityDiversityLoss, identity_centres
    from trainer.models.dlib_resnet import DlibResNet

    import torch

    rec = DlibIdentityFeatures(DlibResNet.from_dat(cfg.teacher))
    if device is not None:
        rec.to(device)
    dev = next(rec.parameters()).device
    t0 = time.perf_counter()
    centres = identity_centres(rec, to_tensor(train_f.crops).to(dev), torch.as_tensor(labels), n_ids)
    log.info("identity centres: %d ids from %d clean faces in %.0f s", n_ids, len(labels), time.perf_counter() - t0)
    return IdentityDiversityLoss(rec, centres, cfg.alpha_l, cfg.alpha_h, cfg.beta)


#: loss columns of ``log.csv``
LOG_COLS = ("g_loss", "l1", "ae", "adv", "d_loss", "gp", "id", "id_low", "id_high", "id_div")


class InpainterPlugin(StepPlugin):
    """The inpainter on the loop skeleton: one epoch of ``cfg.steps`` generator updates (each after ``n_critic``
    critic updates, :meth:`Trainer.step`), a quick held-out PSNR at every checkpoint, grids and generator snapshots."""

    kind = "inpainter"
    csv_fields = ("step", *LOG_COLS, "seconds", "val_psnr_hole")

    def __init__(self, cfg: InpaintTrainConfig, tr: Trainer, train_f: FaceArrays, val_f: FaceArrays, labels, synth,
                 device):
        from trainer.models.inpainter import count_flops, count_params

        self.cfg, self.tr, self.train_f, self.val_f, self.synth, self.device = cfg, tr, train_f, val_f, synth, device
        self.out = Path(cfg.out)
        self.n_ids = int(labels.max()) + 1 if len(labels) else 0
        self.val_small = build_val(val_f, synth, cfg.seed, limit=2)
        self.params = {"generator": count_params(tr.G), "global_critic": count_params(tr.Dg),
                       "local_critic": count_params(tr.Dl)}
        self.flops = count_flops(tr.G)
        log.info("generator: %d params, %.3f GFLOPs per 112x112 face", self.params["generator"], self.flops / 1e9)
        self.ds = InpaintStream(train_f, labels, synth, cfg.steps * cfg.batch_size, cfg.seed, cfg.grey_prob)
        self.steps, self.batch_size, self.workers, self.seed = cfg.steps, cfg.batch_size, cfg.workers, cfg.seed

    def modules(self) -> dict:
        return self.tr.modules()

    def optimizers(self) -> dict:
        return self.tr.optimizers()

    def meta(self) -> dict:
        return {**self.tr.meta(), "params": self.params, "gflops": self.flops / 1e9}

    def begin(self, fresh: bool, ctx: DistContext) -> None:
        self.tr.to(self.device)  # after the skeleton restored a checkpoint (its tensors load on the CPU)
        log.info("training on %s", self.device)

    def step(self, batch, epoch: int, step: int, ctx: DistContext) -> dict:
        from trainer.losses.inpaint import spatial_discount

        clean, m, lab = batch
        x, mm = to_tensor(clean.numpy(), m.numpy())
        w = spatial_discount(mm, self.cfg.gamma)
        dev = self.device
        return self.tr.step(x.to(dev, non_blocking=True), mm.to(dev, non_blocking=True), lab.to(dev),
                            w.to(dev, non_blocking=True))

    def postfix(self, parts) -> dict[str, str]:
        return {"l1": f"{parts['l1']:.3f}", "d": f"{parts['d_loss']:.2f}"}

    def at_checkpoint(self, step: int) -> dict:
        return {"val_psnr_hole": f"{evaluate(self.tr.G, self.val_small)['psnr_hole']:.3f}"}

    def log_row(self, step: int, epoch: int, batch: int, parts: Mapping[str, Any], extra: Mapping[str, Any],
                step_seconds: float, total_seconds: float) -> dict:
        return {"step": step, **{c: f"{parts[c]:.5f}" for c in LOG_COLS if c in parts},
                "seconds": f"{total_seconds:.1f}", **extra}

    def after_step(self, step: int, final: bool) -> None:
        cfg = self.cfg
        if cfg.snapshot_every and step % cfg.snapshot_every == 0:
            from trainer.checkpoints import save_checkpoint

            save_checkpoint(self.out / "snapshots" / f"step_{step:06d}", {"generator": self.tr.G},
                            {**self.tr.meta(), "step": step})
        if step % cfg.grid_every == 0 or final:
            save_grid(self.tr.G, self.val_small, self.out / "grids" / f"step_{step:06d}.png")

    def finish(self, step: int, start_step: int, stopped_early: bool, train_seconds: float,
               weights_sha1) -> tuple[dict, dict]:
        from trainer.checkpoints import write_json

        cfg = self.cfg
        log.info("training: %d steps in %.0f s; evaluating on held-out identities", step - start_step, train_seconds)
        val = build_val(self.val_f, self.synth, cfg.seed, limit=cfg.val_images)
        result = evaluate(self.tr.G, val)
        result.update({"steps": step, "train_seconds_this_run": round(train_seconds, 1),
                       "stopped_early": step < cfg.steps, "id_loss": cfg.id_loss, "params": self.params,
                       "gflops": self.flops / 1e9, "val_faces": int(len(val["x"]) // 7),
                       "val_identities": len(set(self.val_f.identities)), "train_faces": len(self.train_f.crops),
                       "train_identities": self.n_ids, "samples_seen": step * cfg.batch_size})
        if self.train_f.counts:
            result["data"] = self.train_f.counts
        write_json(self.out / "eval.json", result)
        return result, {"eval": result}


def train(cfg: InpaintTrainConfig, faces: FaceArrays | None = None, synth=None) -> dict:
    """Train (or resume, ``cfg.resume``) per ``cfg``; returns the final ``eval.json`` dict (plus training stats)."""
    import torch

    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if synth is None:
        kw = {"templates_dir": Path(cfg.templates) if cfg.templates else None}
        if cfg.category_weights:
            kw["weights"] = json.loads(cfg.category_weights)
        synth = MaskSynthesizer(SynthesisConfig(**kw))
    if faces is None:
        faces = load_faces_for(cfg)
    train_f, val_f = split_by_identity(faces, cfg.val_fraction, cfg.seed)
    ids = sorted(set(train_f.identities))
    id_index = {d: k for k, d in enumerate(ids)}
    labels = np.array([id_index[d] for d in train_f.identities], np.int64)
    log.info("identity-disjoint split: %d train faces (%d ids) / %d val faces (%d ids)", len(train_f.crops),
             len(ids), len(val_f.crops), len(set(val_f.identities)))

    def make(ctx: DistContext, ck) -> InpainterPlugin:
        id_loss = build_id_loss(cfg, train_f, labels, len(ids), device) if cfg.id_loss else None
        mc = (ck.meta.get("models") or {}).get("generator") if ck is not None else None
        return InpainterPlugin(cfg, Trainer(cfg, id_loss, mc), train_f, val_f, labels, synth, device)

    settings = LoopSettings(out=Path(cfg.out), ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, resume=cfg.resume,
                            progress=cfg.progress, max_minutes=cfg.max_minutes, csv_name="log.csv", device=str(device))
    return run_loop(make, settings)


# ------------------------------------------------------------------------------------------------ CLI
add_parser, run, main = dataclass_command(
    "inpainter", "train the GAN face inpainter (contextual attention, ID-GAN loss)", InpaintTrainConfig, train, __doc__, "python -m trainer.inpainter_train")


if __name__ == "__main__":
    raise SystemExit(main())
