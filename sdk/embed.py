"""Embedding stage: aligned face -> L2-normalised identity vector.

Every embedder has the same tiny protocol: construct (loads weights), ``prepare()`` (optional warm-up),
``crop_transforms(frame, faces)`` (one 2x3 frame->crop matrix per face), ``crops(frame, faces)`` (the
aligned crops this model reads, in ``crop_order`` colour, ``crop_size`` pixels), ``embed_crops(crops) ->
(N, D) float32`` with unit-norm rows, ``embed(frame, faces)`` (both), plus ``dim`` and ``model_id``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from sdk import align
from sdk.errors import ModelFileError
from sdk.types import Face

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the Recognizer needs from an embedding model."""

    dim: int
    model_id: str

    def prepare(self) -> None: ...

    crop_size: tuple[int, int]
    crop_order: str

    def crop_transforms(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]: ...

    def crops(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]: ...

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...

    def embed(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray: ...


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class DlibConfig:
    """How chips for dlib's ResNet are cut.

    Attributes:
        chip_landmarks: ``"dlib5"`` (default) re-fits dlib's own 5-point shape predictor inside the detector's
            box and cuts exactly the chip dlib's ResNet was trained on (``get_face_chip(150, 0.25)``);
            ``"mtcnn5"`` warps the detector's 5 landmarks onto :data:`sdk.align.DLIB_150` (no second
            landmark model; slightly different chips: median descriptor distance 0.13 to dlib's pipeline).
        jitters: dlib's test-time augmentation count (0 = off; each jitter costs one more forward pass).
    """

    chip_landmarks: str = "dlib5"
    jitters: int = 0


class DlibResNetEmbedder:
    """dlib's ResNet-34-style face recogniser (128-d, 99.38% on LFW by its authors) on 150x150 RGB chips.

    Input: BGR uint8 frame and detected faces. Output: (N, 128) float32, unit-norm rows (the raw dlib
    descriptor, of norm ~1.3-1.5, is normalised so cosine similarity applies; on LFW the best cosine
    threshold is ~0.90, see the README's accuracy table). ``model_id`` covers the weights and the chip
    geometry (not ``jitters``, which averages descriptors of shifted chips of the same geometry).
    """

    dim = 128
    #: chip size (w, h) in pixels and colour order of what :meth:`embed_crops` reads
    crop_size = (150, 150)
    crop_order = "RGB"

    def __init__(self, model_path: str | Path, shape_predictor_path: str | Path | None = None,
                 config: DlibConfig = DlibConfig()):
        import dlib  # imported here: only this embedder needs it

        self.config = config
        self.model_path = Path(model_path)
        self._rec = _load_dlib(self.model_path, dlib.face_recognition_model_v1)
        self._sp = None
        if config.chip_landmarks == "dlib5":
            if shape_predictor_path is None:
                raise ValueError("chip_landmarks='dlib5' needs shape_predictor_path")
            self._sp = _load_dlib(Path(shape_predictor_path), dlib.shape_predictor)
        elif config.chip_landmarks != "mtcnn5":
            raise ValueError(f"chip_landmarks must be 'dlib5' or 'mtcnn5', got {config.chip_landmarks!r}")
        self._dlib = dlib
        # the chip geometry is part of the model: descriptors of dlib5 and mtcnn5 chips are not comparable
        self.model_id = f"dlib_resnet_v1:{file_digest(self.model_path)[:16]}:{config.chip_landmarks}"
        #: what decides the crops (not the weights): alignment caches are shared between equal geometries
        self.geometry_id = f"dlib150:{config.chip_landmarks}"

    def prepare(self) -> None:
        """Run one forward pass so the first real call is not slower."""
        self._rec.compute_face_descriptor(np.zeros((150, 150, 3), np.uint8))

    def crop_transforms(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """One 2x3 float64 frame->chip matrix per face (chip pixels = M @ [x, y, 1])."""
        out = []
        for face in faces:
            if self._sp is not None:
                x1, y1, x2, y2 = (int(round(float(v))) for v in face.box)
                shape = self._sp(frame, self._dlib.rectangle(x1, y1, x2, y2))  # colour order is irrelevant here
                out.append(dlib_chip_transform(self._dlib.get_face_chip_details(shape, 150, 0.25)))
            else:
                out.append(align.similarity_to_template(face.landmarks, align.DLIB_150))
        return out

    def crops(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """150x150x3 **RGB** uint8 chips (from a BGR frame), one per face, as dlib's ResNet expects."""
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        return [align.warp(rgb, m, self.crop_size) for m in self.crop_transforms(frame, faces)]

    def embed(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """(N, 128) float32 unit-norm embeddings for ``faces`` in the BGR ``frame``."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_crops(self.crops(frame, faces))

    def embed_crops(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 unit-norm embeddings of 150x150x3 RGB uint8 chips."""
        if not chips:
            return np.zeros((0, self.dim), np.float32)
        for i, c in enumerate(chips):
            if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != (150, 150, 3):
                got = f"{c.dtype} {c.shape}" if isinstance(c, np.ndarray) else type(c).__name__
                raise ValueError(f"chip {i}: dlib's ResNet needs 150x150x3 RGB uint8 chips, got {got}")
        desc = self._rec.compute_face_descriptor(list(chips), self.config.jitters)
        return l2_normalise(np.array([np.asarray(d) for d in desc], dtype=np.float32))


def dlib_chip_transform(details: object) -> np.ndarray:
    """2x3 float64 matrix mapping frame pixels to the chip that ``dlib.extract_image_chip(details)`` cuts.

    Verified pixel-for-pixel (max difference 1 grey level) against ``dlib.get_face_chip``.
    """
    rc = details.rect
    cx, cy = (rc.left() + rc.right()) / 2.0, (rc.top() + rc.bottom()) / 2.0
    s = (details.cols - 1) / max(rc.right() - rc.left(), 1e-6)
    a = -details.angle
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * s
    t = np.array([(details.cols - 1) / 2.0, (details.rows - 1) / 2.0]) - rot @ np.array([cx, cy])
    return np.hstack([rot, t[:, None]])


def _load_dlib(path: Path, loader):
    """Load a dlib ``.dat`` model, turning every failure into a :class:`ModelFileError` naming the file."""
    if not path.is_file():
        raise ModelFileError(path, "not found")
    try:
        return loader(str(path))
    except RuntimeError as e:  # dlib raises RuntimeError('Error deserializing ...') on bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(path, f"not a valid dlib {loader.__name__} model ({first})") from None
