"""``python trainer/main.py student``: a student fine-tuned / trained on masked faces -- raw, or completed by the inpainter.

Students (``--arch``):

* ``dlib`` (default): a copy of the teacher (the dlib ResNet port), fine-tuned on 150x150 dlib chips, 128-d.
* ``resnet18``: the paper's student, ResNet-18 (insightface IR-18) + one embedding layer
  (:class:`trainer.models.student.ResNet18Embed`, ``--embedding-dim``, 512 by default), trained from scratch on
  112x112 ArcFace crops.
* ``mobilefacenet``: :class:`trainer.models.student.MobileFaceNet` (~1 M parameters), from scratch on 112x112
  ArcFace crops.

Whatever the student, the teacher keeps its own crops -- 150x150 dlib chips for the dlib teacher (descriptors of
the clean chips are precomputed; the validator's teacher baseline embeds the teacher's own masked chips).  The
non-dlib students carry their input normalisation inside the module (:class:`trainer.student.models.ArcInput`: ``x / 127.5 - 1``), so
every student takes float RGB in [0, 255], NCHW.  Presets (``--preset paper|cpu``, :data:`trainer.student.config.PRESETS`) fill the
fields a command line did not set.

Teacher (``--teacher-onnx PATH``): instead of the dlib ResNet port, any ONNX face embedder
(:class:`trainer.student.teacher.OnnxTeacher`):
``--teacher-crop dlib150|arcface112`` says which crops it sees, ``--teacher-input`` its input convention
(``uint8_nhwc_rgb``: (N, H, W, 3) uint8 RGB as ``python -m export onnx --family embedder`` writes; ``float_nchw_rgb_pm1``: (N, 3, H, W)
float32 RGB ``(x / 255 - 0.5) / 0.5``, the insightface convention; :data:`trainer.student.config.TEACHER_INPUTS`).  Its clean-crop
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
* data quality: images that cannot be read are left out, images without a detected face are kept at the set's
  median landmarks (``--no-keep-undetected`` leaves them out); both are counted in the log and ``summary.json``.
* outputs (``out``): ``steps.csv`` (losses per step), ``val.csv``, ``loss.png``, ``config.json``, ``ckpt/last.*``
  (``.safetensors`` weights + ``.json`` config + ``.optim.safetensors`` optimiser and RNG state: one checkpoint
  format, written atomically, no pickle -- :mod:`trainer.checkpoints`), ``ckpt/epoch<N>.*``,
  ``student.safetensors`` + ``student.json`` (the student's weights only; the input of
  ``python -m export onnx --family embedder``; read any of them back with :func:`trainer.student.models.load_student_weights`),
  ``summary.json``.

Run: ``python trainer/main.py student --data ../shared/data/celeba_subset --templates ../shared/data/mask_templates
--epochs 2 --out out/student`` (or ``python -m trainer.student ...``; ``--resume`` continues exactly from
``out/ckpt/last.*``).  The paper's student: ``--preset paper --out out/student_paper``; a few-minute CPU smoke
run: ``--preset cpu --out out/student_cpu``.

Several processes (DistributedDataParallel): ``python -m torch.distributed.run --nproc_per_node 2 -m
trainer.student ...`` (``torchrun``).  When ``WORLD_SIZE > 1`` every rank builds the same epoch's PK batches
(same seeds) and rank ``r`` trains on batches ``r::WORLD_SIZE``, so an epoch of ``N`` batches takes
``N // WORLD_SIZE`` optimiser steps; gradients are averaged across ranks (DDP for the student, an all-reduce
for the loss/head parameters), the logged losses are the mean over ranks, and only rank 0 writes caches, logs,
checkpoints and plots.  Backend: ``gloo`` (``nccl`` only when a ``device`` field says cuda and CUDA exists).
A resumed run must use the same number of processes when it restarts mid-epoch.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.student.config import ARCHS, PAIRWISE, PRESETS, TEACHER_CROPS, TEACHER_INPUTS, StudentConfig

__all__ = ["add_args", "config_from_args", "add_parser", "run", "main"]


# -------------------------------------------------------------------------------------------------- CLI
def add_args(p: argparse.ArgumentParser) -> None:
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
    add("--keep-undetected", action=argparse.BooleanOptionalAction,
        help="images where the detector finds no face: train on them at the set's median landmarks (default: on, "
             "as student-v1 was trained); --no-keep-undetected leaves them out. Either way they are counted in the "
             "log and summary.json; unreadable images are always left out and counted")
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
    add("--occluders", choices=("templates", "realistic", "mixed"), default=d.occluders,
        help="training occluders: 'templates' = the MaskTheFace templates + procedural categories "
             "(trainer.data.synthesis); 'realistic' = the 3-D-fitted families of trainer.data.occluders (training "
             "families only, never a held-out one); 'mixed' = half each")
    add("--cutouts", default=d.cutouts,
        help="cutout folder of tools/harvest_occluders.py: adds real masks harvested from the training photos "
             "to the realistic families (its validation part is never drawn)")
    add("--upper-view-prob", type=float, default=d.upper_view_prob,
        help="fraction of training chips shown as their upper-face view (mask-aware matching, sdk/views.py: rows "
             "below the cut painted grey), distilled towards the teacher's clean full-face embedding; 0 = off")
    add("--upper-cut", type=float, default=d.upper_cut,
        help="upper view cut: eyes_y + CUT * (nose_y - eyes_y) in chip pixels (match.mask_aware.upper_cut)")
    add("--upper-fill", type=int, default=d.upper_fill, help="grey level of the painted rows (match.mask_aware.fill)")
    add("--extra-faces", metavar="FACES_JSONL",
        help="unlabelled clean faces: the faces.jsonl of tools/build_face_list.py; its detected faces of "
             "--extra-sources join every batch (--extra-per-batch of them) for the label-free terms (hard "
             "instance, pair, triplet). An epoch then lasts until every extra face was seen once. Needs --instance "
             "hard, --ce-weight 0 and --pairwise none")
    add("--extra-sources", nargs="+", default=list(d.extra_sources),
        help="face-list sources to train on (celeba, lfw-nonpair, utkface, extra). Leave lfw-nonpair out when "
             "the bundle is calibrated with python -m trainer.calibrate: those people are its calibration faces")
    add("--extra-per-batch", type=int, default=d.extra_per_batch, help="extra faces added to every PK batch")
    add("--exclude", metavar="TXT",
        help="image paths (one per line) never trained on, e.g. the face-list images that match an LFW test "
             "image (tools/identity_overlap.py --write-matches)")
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
    add_args(p)
    p.set_defaults(fn=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train from parsed :func:`add_args` options; prints the summary as JSON."""
    from trainer.student.loop import train

    summary = train(config_from_args(args))
    print(json.dumps(summary, indent=1, default=float))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.student`` (also ``python -m trainer.student_train``)."""
    p = argparse.ArgumentParser(prog="python -m trainer.student", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
