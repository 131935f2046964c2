"""The frozen teacher of student training: the dlib ResNet port, or any ONNX face embedder (:class:`OnnxTeacher`).

The teacher keeps its own crops -- 150x150 dlib chips for the dlib teacher, ``--teacher-crop`` for an ONNX one --
and its descriptors of the clean crops are computed once and cached (npy, :func:`teacher_descriptors`, file name
:func:`teacher_cache_name`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from trainer.student.config import ARC_SIZE, TEACHER_CROPS, TEACHER_INPUTS, StudentConfig
from trainer.student.data import MaskedChipDataset, arc_matrices

log = logging.getLogger("trainer.student")

__all__ = ["OnnxTeacher", "build_teacher", "teacher_dim", "teacher_crop", "teacher_matrices", "teacher_descriptors",
           "teacher_cache_name"]


class OnnxTeacher:
    """A frozen teacher from any ONNX face embedder, run by ONNX Runtime (CPU).

    Args:
        path: the ``.onnx`` file: one input ``(N, ...)`` image batch, first output ``(N, D)`` float descriptors.
        crop: ``"dlib150"`` (150x150 dlib chips) or ``"arcface112"`` (112x112 ArcFace crops): the crops the graph
            was trained on (:data:`TEACHER_CROPS`).
        input_kind: the graph's input convention, one of :data:`TEACHER_INPUTS` (``"uint8_nhwc_rgb"``: what
            ``python -m export onnx --family embedder`` writes; ``"float_nchw_rgb_pm1"``: the ArcFace / insightface
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


def teacher_descriptors(teacher, ds: MaskedChipDataset, cache: Path | None, batch: int = 64,
                        progress: bool = True) -> np.ndarray:
    """(N, Dt) float32 raw teacher descriptors of every clean crop of ``ds`` (cached in ``cache`` when given).

    ``teacher``: the dlib ResNet (exported to ONNX in memory, Dt = 128, ``ds`` of 150x150 dlib chips) or an
    :class:`OnnxTeacher` (Dt = its output width, ``ds`` of its own crops).  A cache file of another shape is
    recomputed."""
    from tqdm import tqdm

    dim = teacher_dim(teacher)
    if cache is not None and cache.is_file():
        out = np.load(cache, allow_pickle=False)
        if out.shape == (len(ds), dim):
            log.info("teacher descriptors from cache %s", cache)
            return out
    if isinstance(teacher, OnnxTeacher):
        run = teacher.descriptors
    else:
        from trainer.student.graph import export_onnx_bytes, ort_descriptors, ort_session

        sess = ort_session(export_onnx_bytes(teacher))

        def run(chips: np.ndarray) -> np.ndarray:
            return ort_descriptors(sess, chips)
    res = []
    for s in tqdm(range(0, len(ds), batch), desc="teacher (clean)", disable=not progress):
        chips = np.stack([ds.clean_bgr(i)[:, :, ::-1] for i in range(s, min(len(ds), s + batch))])
        res.append(run(chips))
    out = np.concatenate(res).astype(np.float32) if res else np.zeros((0, dim), np.float32)
    if cache is not None:
        import io

        from trainer.checkpoints import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, out)
        atomic_write_bytes(cache, buf.getvalue())  # a killed run never leaves a truncated cache behind
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
