"""Student training on the loop skeleton: :class:`StudentPlugin` and :func:`train`.

One optimiser step (:meth:`StudentPlugin.step`)::

    L = lambda_i * L_instance(s(masked), t(clean)) + lambda_p * L_pair + lambda_t * L_triplet  [+ w_ce * ArcFace CE]
        [+ pairwise_beta * L_dist(s(masked), s(clean)) (+ w_ce * ArcFace CE of s(clean))]       (--pairwise)

Epochs of identity-balanced PK batches (``(seed, epoch)``-deterministic), validation after every epoch (and
before training), ``ckpt/last.*`` every ``ckpt_every`` steps and at epoch ends, ``ckpt/epoch<N>.*``; the
skeleton (:func:`trainer.loops.run_loop`) does the logging, checkpoints, exact resume and DDP.

Outputs (``out``): ``steps.csv`` (losses per step), ``val.csv``, ``loss.png``, ``config.json``, ``ckpt/``,
``student.safetensors`` + ``student.json`` (weights only, :func:`trainer.student.models.save_student`) and
``summary.json``.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from trainer.checkpoints import Checkpoint, write_json
from trainer.loops import DistContext, LoopSettings, Plugin, run_loop
from trainer.student.config import ARC_SIZE, StudentConfig
from trainer.student.prepare import Prepared

log = logging.getLogger("trainer.student")

__all__ = ["StudentPlugin", "train", "capstone_terms", "set_epoch_lr", "plot_losses", "CSV_FIELDS"]

#: run-time options a resumed run takes from the command line instead of the checkpoint's config
RUNTIME_FIELDS = ("epochs", "resume", "progress", "threads", "workers", "ckpt_every")


def plot_losses(steps_csv: Path, png: Path) -> None:
    """``png``: the losses of ``steps_csv`` per step (raw + 20-step mean, log scale)."""
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


CSV_FIELDS = ["step", "epoch", "batch", "lr", "total", "instance", "pair", "triplet", "ce", "pairwise", "pairwise_kept",
              "seconds"]


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



class MixedSynthesizer:
    """Draws each occluder from one of two synthesizers (``p_first`` for the first), by the sample's own rng, so
    runs stay reproducible per ``(seed, epoch, index)``. Both take ``(image, landmarks, rng)``."""

    def __init__(self, first, second, p_first: float = 0.5):
        self.first, self.second, self.p_first = first, second, float(p_first)

    def __call__(self, image, landmarks, rng):
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return (self.first if rng.random() < self.p_first else self.second)(image, landmarks, rng)


def training_synthesizer(cfg, templates_synth):
    """The training occluder source of ``cfg.occluders``: the template synthesizer, the realistic training
    families (:class:`trainer.data.occluders.OccluderSynthesizer`, ``split="train"``), or half each."""
    if cfg.occluders == "templates":
        return templates_synth
    from trainer.data.occluders import OccluderConfig, OccluderSynthesizer

    realistic = OccluderSynthesizer(OccluderConfig(split="train", cutouts_dir=cfg.cutouts,
                                                   templates_dir=cfg.templates))
    log.info("training occluders: %s (realistic families: %s)", cfg.occluders, ", ".join(realistic.available()))
    return realistic if cfg.occluders == "realistic" else MixedSynthesizer(templates_synth, realistic)


def with_extra_faces(batches: list[list[int]], extra_idx: np.ndarray, per_batch: int, seed: int,
                     epoch: int) -> list[list[int]]:
    """``batches`` (dataset indices) each followed by ``per_batch`` unlabelled extra faces: a permutation of
    ``extra_idx`` drawn per ``(seed, epoch)``, cycled when the epoch has more slots than extra faces."""
    rng = np.random.default_rng([seed, epoch, 7])
    need = len(batches) * per_batch
    order = np.concatenate([rng.permutation(extra_idx) for _ in range(-(-need // len(extra_idx)))])[:need]
    return [b + order[i * per_batch:(i + 1) * per_batch].tolist() for i, b in enumerate(batches)]


class StudentPlugin(Plugin):
    """A student run on the loop skeleton (see the module docstring).  Built by :func:`train`."""

    kind = "student"
    csv_fields = CSV_FIELDS
    supports_ddp = True

    def __init__(self, cfg: StudentConfig, ctx: DistContext, detector=None, embedder=None,
                 prepared: Prepared | None = None):
        import torch

        from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig
        from trainer.losses.distill import identity_centres
        from trainer.models.dlib_resnet import DlibResNet
        from trainer.student.build import build_models
        from trainer.student.data import MaskedChipDataset, arc_matrices
        from trainer.student.models import student_cost
        from trainer.student.prepare import prepare_data
        from trainer.student.teacher import build_teacher, teacher_crop, teacher_dim, teacher_matrices
        from trainer.student.validate import Validator

        self.cfg, self.ctx = cfg, ctx
        torch.set_num_threads(max(1, cfg.threads))
        cv2.setNumThreads(1)
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.out)
        run_cfg = cfg if ctx.main else dataclasses.replace(cfg, progress=False)  # progress bars on rank 0 only
        # an ONNX teacher is opened once (descriptor cache, validation baseline); the dlib one comes from build_models
        onnx_teacher = build_teacher(cfg) if cfg.teacher_onnx else None
        if prepared is not None:
            prep = prepared
        else:  # rank 0 builds the alignment + teacher caches; the others wait, then read them
            if not ctx.main:
                ctx.barrier()
            prep = prepare_data(run_cfg, onnx_teacher or DlibResNet.from_dat().eval(), detector, embedder)
            if ctx.main:
                ctx.barrier()
        self.prep = prep
        t_dim = teacher_dim(onnx_teacher) if onnx_teacher is not None else 128
        if prep.teacher.ndim != 2 or prep.teacher.shape[1] != t_dim:
            raise ValueError(f"the prepared teacher descriptors are {prep.teacher.shape}, the teacher is {t_dim}-d")
        n_train_ids = len(prep.train_ids)
        self.tr_lab = prep.labels[prep.train_idx]
        centres = None
        if cfg.instance == "soft" or cfg.ce_weight > 0:
            centres = identity_centres(torch.from_numpy(prep.teacher[prep.train_idx]), torch.from_numpy(self.tr_lab),
                                       n_train_ids)
        teacher, student, loss_mod, head, opt = build_models(cfg, n_train_ids, centres, teacher=onnx_teacher)
        self.student, self.loss_mod, self.head, self.opt = student, loss_mod, head, opt
        self.cost = student_cost(student, cfg.input_size)
        self.pairwise = cfg.pairwise != "none"
        if ctx.main:
            log.info("student %s: %d-d embedding, %dx%d RGB input, %.2f M params, %.3f GFLOPs per image%s",
                     cfg.arch, cfg.student_dim, cfg.input_size, cfg.input_size, self.cost["params"] / 1e6,
                     self.cost["gflops"], f" (preset {cfg.preset})" if cfg.preset else "")
            log.info("teacher: %s (%d-d, %s crops)%s", teacher if onnx_teacher is not None else "dlib ResNet", t_dim,
                     teacher_crop(teacher), "; instance term through a learned projection"
                     if isinstance(loss_mod.projection, torch.nn.Linear) and cfg.instance != "none" else "")
            if self.pairwise:
                log.info("capstone pairwise distillation: %s, beta %g%s%s", cfg.pairwise, cfg.pairwise_beta,
                         ", correctly classified samples only" if cfg.pairwise_correct_only else "",
                         ", ArcFace CE on clean + masked" if head is not None and cfg.pairwise_clean_ce else "")
        # DDP averages the student's gradients; the loss/head parameters (if any) are all-reduced by the context
        self.model = ctx.wrap(student)
        self.extra_params = [q for q in list(loss_mod.parameters()) + (list(head.parameters()) if head else [])
                             if q.requires_grad]
        tdir = Path(cfg.templates) if cfg.templates else None
        synth = training_synthesizer(cfg, MaskSynthesizer(SynthesisConfig(templates_dir=tdir,
                                                                          weights=dict(cfg.mask_weights))))
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
        upper = None
        if cfg.upper_view_prob > 0:
            from sdk.views import MaskAwareConfig

            upper = MaskAwareConfig(upper_cut=cfg.upper_cut, fill=cfg.upper_fill)
        views = {"upper_view_prob": cfg.upper_view_prob, "upper_view": upper}
        teacher_ds = MaskedChipDataset(prep.paths, t_m, prep.landmarks, prep.labels, synth, cfg.mask_prob,
                                       cfg.seed, val_synth, chip_size=t_size, completer=completer, **views)
        if (cfg.arch == "dlib") == (teacher_crop(teacher) == "dlib150"):  # student and teacher see the same crops
            self.ds = teacher_ds
        else:
            self.ds = MaskedChipDataset(prep.paths, arc_matrices(prep.landmarks), prep.landmarks, prep.labels, synth,
                                        cfg.mask_prob, cfg.seed, val_synth, chip_size=ARC_SIZE, completer=completer,
                                        **views)
        self.teacher_t = torch.from_numpy(prep.teacher)
        if ctx.main:
            write_json(self.out / "config.json", cfg.to_json())
        self.validator = Validator(self.ds, prep.val_idx, prep.teacher, teacher, cfg.val_pairs, cfg.seed,
                                   cfg.progress, teacher_ds=None if self.ds is teacher_ds else teacher_ds) \
            if len(prep.val_idx) and ctx.main else None
        if self.validator is not None:
            log.info("validation baseline (%s teacher): %s", "ONNX" if onnx_teacher is not None else "dlib",
                     self.validator.baseline)
        self.val_rows: list[dict] = []
        self.epoch_times: list[float] = []
        self._t_epoch = 0.0
        self._first_epoch = True

    # -- what is saved -----------------------------------------------------------------------------------------------
    def modules(self) -> dict:
        return {"student": self.student, "loss": self.loss_mod, **({"head": self.head} if self.head is not None else {})}

    def optimizers(self) -> dict:
        return {"opt": self.opt}

    def agreement_modules(self) -> dict:
        return {"student": self.student, "loss": self.loss_mod}

    def meta(self) -> dict:
        from trainer.preprocess import student_preprocess

        cfg = self.cfg
        return {"config": cfg.to_json(), "arch": cfg.arch, "embedding_dim": cfg.student_dim,
                "preprocess": {"student": student_preprocess(cfg.crop).to_dict()},
                "identities": {"train": self.prep.train_ids, "val": self.prep.val_ids}}

    def weights_metadata(self) -> dict[str, str]:
        from trainer.student.models import student_meta

        return student_meta(self.student)

    # -- the schedule ------------------------------------------------------------------------------------------------
    def num_epochs(self) -> int:
        return self.cfg.epochs

    def _global_batches(self) -> int:
        n = max(1, len(self.prep.train_idx) // self.cfg.batch_size)
        if len(self.prep.extra_idx):  # an epoch lasts until every extra face was seen once
            n = max(n, -(-len(self.prep.extra_idx) // self.cfg.extra_per_batch))
        return self.cfg.steps_per_epoch or n

    def batches_per_epoch(self, epoch: int, world: int) -> int:
        # an epoch is n PK batches; with several processes rank r takes batches r::world, so an epoch is
        # n // world optimiser steps ("batch" in logs and checkpoints counts those steps)
        n = self._global_batches()
        return max(1, n // world) if world > 1 else n

    def batches(self, epoch: int, first: int, ctx: DistContext):
        import torch
        from torch.utils.data import DataLoader

        from trainer.student.data import collate, pk_batches, worker_init

        cfg = self.cfg
        n = self.batches_per_epoch(epoch, ctx.world)
        batches = pk_batches(self.tr_lab, cfg.p_identities, cfg.k_images, n * ctx.world, cfg.seed, epoch)
        batches = [[int(self.prep.train_idx[j]) for j in b] for b in batches]
        if len(self.prep.extra_idx):
            batches = with_extra_faces(batches, self.prep.extra_idx, cfg.extra_per_batch, cfg.seed, epoch)
        batches = [[(j, epoch) for j in b] for b in ctx.shard(batches)]
        # a private generator: creating the loader does not draw from the global RNG (exact resume)
        return DataLoader(self.ds, batch_sampler=batches[first:], collate_fn=collate, num_workers=cfg.workers,
                          worker_init_fn=worker_init if cfg.workers else None,
                          generator=torch.Generator().manual_seed(cfg.seed * 1009 + epoch))

    # -- hooks -------------------------------------------------------------------------------------------------------
    def begin(self, fresh: bool, ctx: DistContext) -> None:
        if fresh and self.validator is not None:
            v = {"epoch": 0, "step": 0, **self.validator(self.student), **self.validator.baseline}
            self.val_rows.append(v)
            log.info("val before training: %s", v)

    def start_epoch(self, epoch: int, ctx: DistContext) -> None:
        cfg = self.cfg
        self.student.train()
        self.loss_mod.train()
        lr_now = set_epoch_lr(self.opt, cfg, epoch)
        if ctx.main and cfg.lr_step_epochs > 0 and (self._first_epoch
                                                    or cfg.lr_factor(epoch) != cfg.lr_factor(epoch - 1)):
            log.info("epoch %d: lr %.3g", epoch + 1, lr_now)
        self._first_epoch = False
        self._t_epoch = time.perf_counter()

    def step(self, batch: Any, epoch: int, step: int, ctx: DistContext) -> dict:
        import torch

        from trainer.student.models import to_input

        cfg = self.cfg
        masked, clean, labels, index = batch
        if self.pairwise:
            # one forward of the masked + clean chips (one DDP forward per step; BatchNorm students see the
            # statistics of both halves), split back into s(masked), s(clean)
            emb = self.model(to_input(torch.cat([masked, clean])))
            s, s_clean = emb[:len(masked)], emb[len(masked):]
        else:
            s = self.model(to_input(masked))
        t = self.teacher_t.index_select(0, index)
        logits = self.head(s, labels) if self.head is not None else None
        total, parts = self.loss_mod(s, t, logits=logits, labels=labels)
        if self.pairwise:
            pw, kept, ce_clean = capstone_terms(cfg, s, s_clean, labels, self.head)
            total = total + cfg.pairwise_beta * pw + cfg.ce_weight * ce_clean
            parts = {**parts, "ce": parts["ce"] + ce_clean.detach(), "pairwise": pw.detach(),
                     "pairwise_kept": kept.detach(), "total": total.detach()}
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        ctx.allreduce_grads(self.extra_params)
        self.opt.step()
        ctx.allreduce_buffers(self.loss_mod)
        return parts

    def log_row(self, step: int, epoch: int, batch: int, parts, extra, step_seconds: float,
                total_seconds: float) -> dict:
        return {"step": step, "epoch": epoch + 1, "batch": batch, "lr": self.opt.param_groups[0]["lr"],
                **{k: f"{float(v):.6g}" for k, v in parts.items()}, "seconds": f"{step_seconds:.3f}"}

    def postfix(self, parts) -> dict[str, str]:
        post = dict(loss=f"{float(parts['total']):.4f}", i=f"{float(parts['instance']):.3f}",
                    p=f"{float(parts['pair']):.4f}", t=f"{float(parts['triplet']):.4f}")
        if self.pairwise:
            post.update(pw=f"{float(parts['pairwise']):.4f}", kept=f"{float(parts['pairwise_kept']):.2f}")
        return post

    def end_epoch(self, epoch: int, step: int) -> None:
        self.epoch_times.append(time.perf_counter() - self._t_epoch)
        if self.validator is not None:
            v = {"epoch": epoch + 1, "step": step, **self.validator(self.student), **self.validator.baseline}
            self.val_rows.append(v)
            log.info("val after epoch %d (%.0f s): %s", epoch + 1, self.epoch_times[-1], v)

    def finish(self, step: int, start_step: int, stopped_early: bool, train_seconds: float,
               weights_sha1: list[str] | None) -> tuple[dict, dict | None]:
        from trainer.student.models import save_student

        cfg, prep, out = self.cfg, self.prep, self.out
        if self.val_rows:
            vcsv = out / "val.csv"
            new = not vcsv.is_file()
            with vcsv.open("a", newline="") as f:
                w = csv.DictWriter(f, list(self.val_rows[0]))
                if new:
                    w.writeheader()
                w.writerows(self.val_rows)
        save_student(self.student, out / "student.safetensors", config=cfg.to_json())
        plot_losses(out / "steps.csv", out / "loss.png")
        summary = {"steps": step, "epoch_seconds": [round(x, 1) for x in self.epoch_times], "val": self.val_rows,
                   "train_images": int(len(prep.train_idx)), "val_images": int(len(prep.val_idx)),
                   "extra_images": int(len(prep.extra_idx)),
                   "train_identities": len(prep.train_ids), "val_identities": len(prep.val_ids),
                   "student": str(out / "student.safetensors"), "arch": cfg.arch, "embedding_dim": cfg.student_dim,
                   "student_params": self.cost["params"], "student_gflops": round(self.cost["gflops"], 4)}
        if prep.counts:
            summary["data"] = prep.counts
        if weights_sha1 is not None:
            summary.update({"world_size": self.ctx.world, "weights_sha1": weights_sha1})
        write_json(out / "summary.json", summary)
        return summary, None


def _resumed_config(cfg: StudentConfig, ck: Checkpoint | None) -> StudentConfig:
    """A resumed run trains with its checkpoint's config, except the run-time options (:data:`RUNTIME_FIELDS`)."""
    if ck is None or not isinstance(ck.meta.get("config"), dict):
        return cfg
    return StudentConfig.from_json({**ck.meta["config"], **{k: getattr(cfg, k) for k in RUNTIME_FIELDS}})


def train(cfg: StudentConfig, detector=None, embedder=None, prepared: Prepared | None = None) -> dict:
    """Run (or resume) a training; returns a summary dict (also written to ``<out>/summary.json``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) this joins (or creates) the default process group and trains with
    DistributedDataParallel (:class:`trainer.loops.DistContext`); a group created here is destroyed at the end.
    ``prepared`` skips data preparation (tests, notebooks)."""
    settings = LoopSettings(out=Path(cfg.out), ckpt_every=cfg.ckpt_every, log_every=1, resume=cfg.resume,
                            progress=cfg.progress, epoch_checkpoints=True, csv_name="steps.csv",
                            device=str(getattr(cfg, "device", "cpu")))

    def make(ctx: DistContext, ck: Checkpoint | None) -> StudentPlugin:
        run_cfg = _resumed_config(cfg, ck)
        if ck is None and ctx.main:  # a fresh run: no rows of an older run in val.csv (the skeleton starts steps.csv)
            (Path(cfg.out) / "val.csv").unlink(missing_ok=True)
        return StudentPlugin(run_cfg, ctx, detector, embedder, prepared)

    return run_loop(make, settings)
