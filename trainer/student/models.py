"""Student networks: the architectures, their common input, and their weight files.

Every student takes float RGB in [0, 255], NCHW (:func:`to_input` builds it from uint8 RGB chips through the
:class:`sdk.preprocess.Preprocess` record of the student, :func:`trainer.preprocess.student_preprocess`):

* ``dlib``: the PyTorch port of dlib's ResNet (:class:`trainer.models.dlib_resnet.DlibResNet`, 150x150 dlib chips,
  128-d), which subtracts its means and divides by 256 itself;
* ``resnet18`` / ``mobilefacenet``: :mod:`trainer.models.student` networks on 112x112 ArcFace crops, wrapped in
  :class:`ArcInput` (the insightface normalisation ``x / 127.5 - 1`` inside the module).

Weight files: :func:`save_student` writes a weights-only checkpoint (:mod:`trainer.checkpoints`, module
``"student"``, JSON with arch / embedding width / preprocess / config); :func:`load_student_weights` reads that,
a training checkpoint, older student files or a dlib ``.dat``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

# ArcInput (the students' input normalisation inside the module) is defined with the networks in the runtime
from sdk.nets.students import ArcInput
from trainer.student.config import ARC_SIZE, ARCHS

log = logging.getLogger("trainer.student")

__all__ = ["ArcInput", "new_student", "student_arch", "student_cost", "student_crop", "to_input", "save_student",
           "load_student_weights", "student_meta"]


def new_student(arch: str, embedding_dim: int = 512) -> nn.Module:
    """An untrained student: ``resnet18`` / ``mobilefacenet`` at 112x112 wrapped in :class:`ArcInput`; ``dlib``
    is the packaged dlib ResNet (pretrained, 128-d, 150x150 input)."""
    if arch == "dlib":
        from trainer.models.dlib_resnet import DlibResNet

        return DlibResNet.from_dat()
    from trainer.models.student import build_student

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return ArcInput(build_student(arch, embedding_dim=int(embedding_dim), input_size=ARC_SIZE), arch)


def student_arch(net) -> str:
    """``"dlib"`` for a :class:`DlibResNet` (possibly DDP-wrapped), else the :class:`ArcInput`'s ``arch``."""
    net = getattr(net, "module", net)
    return str(getattr(net, "arch", "dlib"))


def student_crop(net) -> str:
    """The crop a student takes: ``"dlib150"`` (dlib students) or ``"arcface112"``."""
    return "dlib150" if student_arch(net) == "dlib" else "arcface112"


def to_input(chips_rgb_u8: torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB tensor -> (N, 3, S, S) float32 RGB in [0, 255]: the input of every student, built
    from the students' :class:`~sdk.preprocess.Preprocess` record (scale 1, offset 0, RGB, NCHW)."""
    from trainer.preprocess import apply_torch, student_preprocess

    # both crops share the transform (the record's crop only names the geometry)
    return apply_torch(student_preprocess("dlib150"), chips_rgb_u8, colour_in="rgb")


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


def student_meta(student) -> dict[str, str]:
    """safetensors metadata describing the student: ``{"model", "arch", "embedding_dim"}`` (strings)."""
    net = getattr(student, "module", student)
    arch = student_arch(net)
    model = "dlib_face_recognition_resnet_model_v1" if arch == "dlib" else f"lookthrough_student_{arch}"
    return {"model": model, "arch": arch, "embedding_dim": str(int(getattr(net, "embedding_dim", 128)))}


def save_student(student, path: str | Path, config: dict | None = None) -> Path:
    """The student's weights only (no optimiser, no loss), for export / evaluation / ``--init``: a weights-only
    checkpoint ``<path>`` (.safetensors) + ``<path>.json`` (module ``"student"``; ``dlib``: DlibResNet's state
    dict, the input of ``python -m export onnx --family embedder``; other archs: the wrapped network's state dict,
    insightface key names after the ``student.`` prefix).  ``config``: the training config to record."""
    from trainer.checkpoints import save_checkpoint
    from trainer.preprocess import student_preprocess

    net = getattr(student, "module", student)
    md = student_meta(net)
    body = net if md["arch"] == "dlib" else net.net
    stem = Path(path).with_suffix("")
    meta = {"kind": "student_weights", "arch": md["arch"], "embedding_dim": int(md["embedding_dim"]),
            "preprocess": {"student": student_preprocess(student_crop(net)).to_dict()}}
    if config is not None:
        meta["config"] = config
    return save_checkpoint(stem, {"student": body}, meta, weights_metadata=md)


def _infer_arch(sd: dict) -> tuple[str, int]:
    """``(arch, embedding_dim)`` of a student state dict (keys without the ``student.`` / ``net.`` prefixes)."""
    if "fc.weight" in sd and "layer1.0.conv1.weight" in sd:
        return "resnet18", int(sd["fc.weight"].shape[0])
    if "linear.weight" in sd and "gdconv.conv.weight" in sd:
        return "mobilefacenet", int(sd["linear.weight"].shape[0])
    return "dlib", 128


def load_student_weights(path: str | Path, arch: str | None = None) -> nn.Module:
    """The student in a file, eval mode: a weights-only checkpoint (:func:`save_student`), a training checkpoint
    (``ckpt/last.*``, module ``student``), an older student file (bare or ``student.``-prefixed keys) or a dlib
    ``.dat`` (-> :class:`DlibResNet`).

    The architecture is ``arch`` when given, else the file's ``arch`` record, else inferred from the keys;
    ``resnet18`` / ``mobilefacenet`` come back wrapped in :class:`ArcInput` (float RGB [0, 255] NCHW 112x112 in),
    ``dlib`` as a :class:`DlibResNet` (150x150 in)."""
    from trainer.checkpoints import load_checkpoint
    from trainer.models.dlib_resnet import DlibResNet

    p = Path(path)
    if p.suffix == ".dat":
        if arch not in (None, "dlib"):
            raise ValueError(f"{p} is a dlib .dat: it holds a dlib student, not {arch!r}")
        return DlibResNet.from_dat(p)
    ck = load_checkpoint(p, module="student")
    sd = ck.state("student")
    if sd and all(k.startswith("net.") for k in sd):
        sd = {k[len("net."):]: v for k, v in sd.items()}
    found, dim = _infer_arch(sd)
    recorded: Any = ck.meta.get("arch") or (ck.meta.get("config") or {}).get("arch")
    file_arch = recorded or found
    if arch is not None and arch != file_arch:
        raise ValueError(f"{p} holds a {file_arch!r} student, not {arch!r}")
    if file_arch == "dlib":
        net = DlibResNet()
        net.load_state_dict(sd)
        return net.eval()
    dim = int(ck.meta.get("embedding_dim") or dim)
    net = new_student(file_arch, dim)
    net.net.load_state_dict(sd)
    return net.eval()
