"""Embedding stage: aligned face -> L2-normalised identity vector (protocol :class:`sdk.stages.Embedder`).

What every embedder shares lives here: :class:`EmbedConfig` (the stage's one config), :class:`ChipGeometry`
(where crops come from), :class:`ChipEmbedder` (the base every embedder calls: crops, validation,
normalisation, the Recognizer step) and :func:`make_model_id` (the one place model ids are built). Embedders
take uint8 **BGR** crops, like every stage; each one's :class:`~sdk.preprocess.Preprocess` record turns them
into its network's input (colour order, dtype, layout).

Implementations: :class:`DlibResNetEmbedder` (kind ``"dlib_resnet"``: dlib itself, the reference) here;
:class:`sdk.embed_onnx.OnnxEmbedder` (``"onnx_embedder"``: any exported network) and
:class:`sdk.embed_onnx.DlibOnnxEmbedder` (``"dlib_resnet_onnx"``: dlib's network rebuilt as an ONNX graph) on a
backend in :mod:`sdk.embed_onnx`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdk import align
from sdk.bundle import file_digest  # noqa: F401 - re-exported: export/ and tools import it from here
from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess, legacy_input, raw_uint8
from sdk.stages import FaceBatch, FaceStage, RunConfig, StageKind, config_from, file_of
from sdk.types import Face

log = logging.getLogger(__name__)

#: chip landmark sources: dlib's own 5-point shape predictor, or the detector's landmarks
CHIP_LANDMARKS = ("dlib5", "mtcnn5", "mtcnn5w")
#: ``mtcnn5w``: least-squares weights of the 5 detector points (eyes, nose, mouth corners) in the chip fit, as
#: repeat counts (weights 2 / 1 / 0.5). Measured on LFW people in no test pair (LTDet's refined points vs the chip
#: of MTCNN + dlib's predictor): chip placement error 0.096 -> 0.075 IOD on clean faces, 0.118 -> 0.104 with a
#: training-family occluder painted on the photo (the mouth corners move with expression and hide under masks).
CHIP_POINT_REPEATS = {"mtcnn5w": (4, 4, 2, 1, 1)}
#: dlib's ResNet reads uint8 RGB 150x150 chips and normalises inside the network
DLIB_PREPROCESS = raw_uint8("dlib150", "rgb", "nhwc")


@dataclass(frozen=True)
class EmbedConfig(RunConfig):
    """Settings of the embed stage (manifest ``config``; plus :class:`~sdk.stages.RunConfig`'s fields).

    Attributes:
        chip_landmarks: for ``dlib150`` crops: ``"dlib5"`` (default) re-fits dlib's own 5-point shape predictor
            inside the detector's box and cuts exactly the chip dlib's ResNet was trained on
            (``get_face_chip(150, 0.25)``); ``"mtcnn5"`` warps the detector's 5 landmarks onto
            :data:`sdk.align.DLIB_150` (no second landmark model; slightly different chips: median descriptor
            distance 0.13 to dlib's pipeline); ``"mtcnn5w"`` does the same with the eyes weighted 2, the nose 1
            and the mouth corners 0.5 (:data:`CHIP_POINT_REPEATS`). Other crops always use the detector's landmarks.
        dim: embedding width (checked against the graph when it is static).
        jitters: dlib's test-time augmentation count (``dlib_resnet`` only; 0 = off).
    """

    threads: int = 0
    chip_landmarks: str = "dlib5"
    dim: int = 128
    jitters: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chip_landmarks not in CHIP_LANDMARKS:
            raise ValueError(f"chip_landmarks must be one of {CHIP_LANDMARKS}, got {self.chip_landmarks!r}")
        if int(self.dim) < 1 or int(self.jitters) < 0:
            raise ValueError(f"dim must be >= 1 and jitters >= 0, got {self.dim}, {self.jitters}")


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def make_model_id(family: str, weights: Path, geometry: str, device_suffix: str = "") -> str:
    """``"<family>:<sha256 of weights, 16 hex>:<geometry><device_suffix>"``: the id galleries store.

    ``family`` is ``"dlib_resnet_v1"`` (dlib's network, whatever runs it: descriptors agree to 1e-4, so galleries
    are shared; ``geometry`` is then the chip landmark source) or ``"onnx"`` (an exported network; ``geometry``
    is the :attr:`ChipGeometry.geometry_id`). ``device_suffix`` is the backend's
    :attr:`~sdk.backends.Backend.id_suffix` (empty on the CPU reference).
    """
    return f"{family}:{file_digest(Path(weights))[:16]}:{geometry}{device_suffix}"


class ChipGeometry:
    """Where an embedder's crops come from: a crop template and the landmarks that are warped onto it.

    Args:
        crop: ``"dlib150"`` or ``"arcface112"`` (:data:`sdk.align.TEMPLATES`).
        chip_landmarks: ``"dlib5"`` | ``"mtcnn5"`` | ``"mtcnn5w"`` (``dlib150`` only; see :class:`EmbedConfig`).
        shape_predictor: dlib's ``shape_predictor_5_face_landmarks.dat`` (``dlib150`` with ``"dlib5"``).

    Attributes:
        crop_spec: size and template; geometry_id: ``"dlib150:<chip_landmarks>"`` or the crop name.
    """

    def __init__(self, crop: str, chip_landmarks: str = "dlib5", shape_predictor: str | Path | None = None):
        if crop not in align.TEMPLATES:
            raise ValueError(f"crop must be one of {sorted(align.TEMPLATES)}, got {crop!r}")
        if chip_landmarks not in CHIP_LANDMARKS:
            raise ValueError(f"chip_landmarks must be one of {CHIP_LANDMARKS}, got {chip_landmarks!r}")
        self.crop = crop
        self.crop_spec = align.TEMPLATES[crop]
        self.landmarks = chip_landmarks if crop == "dlib150" else "mtcnn5"
        self.geometry_id = f"dlib150:{self.landmarks}" if crop == "dlib150" else crop
        self._sp = self._dlib = None
        if crop == "dlib150" and self.landmarks == "dlib5":
            import dlib  # only for the 5-point shape predictor

            if shape_predictor is None:
                raise ValueError("chip_landmarks='dlib5' needs shape_predictor_path (dlib's 5-point model)")
            self._sp = _load_dlib(Path(shape_predictor), dlib.shape_predictor)
            self._dlib = dlib

    def transforms(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """One (2, 3) float64 frame -> crop matrix per face (crop pixels = M @ [x, y, 1])."""
        out = []
        for face in faces:
            if self._sp is not None:
                x1, y1, x2, y2 = (int(round(float(v))) for v in face.box)
                shape = self._sp(frame, self._dlib.rectangle(x1, y1, x2, y2))  # colour order is irrelevant here
                out.append(dlib_chip_transform(self._dlib.get_face_chip_details(shape, 150, 0.25)))
            elif self.landmarks in CHIP_POINT_REPEATS:
                out.append(align.weighted_similarity_to_template(face.landmarks, self.crop_spec.template,
                                                                 CHIP_POINT_REPEATS[self.landmarks]))
            else:
                out.append(align.similarity_to_template(face.landmarks, self.crop_spec.template))
        return out

    def cut(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(N, h, w, 3)`` uint8 crops of ``faces`` from ``frame`` (colour order kept: BGR in, BGR out)."""
        return self.warp(frame, self.transforms(frame, faces))

    def warp(self, frame: np.ndarray, matrices: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, h, w, 3)`` uint8 crops of ``frame`` through the (2, 3) frame -> crop ``matrices``."""
        w, h = self.crop_spec.size
        crops = [align.warp(frame, m, self.crop_spec.size) for m in matrices]
        return np.stack(crops) if crops else np.zeros((0, h, w, 3), np.uint8)


class ChipEmbedder:
    """Base of every embedder: subclasses call ``super().__init__`` and implement :meth:`descriptors`.

    Args:
        geometry: where the crops come from.
        preprocess: the network's input record (its crop must be ``geometry``'s).
        config: the stage config.

    Attributes:
        dim, model_id (set by the subclass), geometry_id, crop_spec, preprocess, config.
        crop_order: ``"BGR"``: the colour order :meth:`crops` returns and :meth:`embed_crops` reads.
    """

    kind = "embedder"
    crop_order = "BGR"
    model_id: str

    def __init__(self, geometry: ChipGeometry, preprocess: Preprocess, config: EmbedConfig):
        if preprocess.crop != geometry.crop:
            raise BundleError(f"embed stage: preprocess crop {preprocess.crop!r} differs from the chip geometry "
                              f"{geometry.crop!r}")
        self.geometry = geometry
        self.preprocess = preprocess
        self.config = config
        self.dim = int(config.dim)
        self.crop_spec = geometry.crop_spec
        self.geometry_id = geometry.geometry_id

    @property
    def crop_size(self) -> tuple[int, int]:
        """``(width, height)`` of the crops, pixels."""
        return self.crop_spec.size

    def descriptors(self, crops: np.ndarray) -> np.ndarray:
        """(N, dim) float32 **raw** network outputs for checked ``(N, h, w, 3)`` uint8 BGR crops (N >= 1)."""
        raise NotImplementedError

    def prepare(self) -> "ChipEmbedder":
        """Run one forward pass so the first real call is not slower; returns self."""
        w, h = self.crop_size
        self.descriptors(np.zeros((1, h, w, 3), np.uint8))
        return self

    def connect(self, upstream: Mapping[str, FaceStage]) -> None:
        """Needs nothing before it (it cuts its own crops from the batch's, possibly completed, frame)."""

    def crop_transforms(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """One (2, 3) float64 frame -> crop matrix per face."""
        return self.geometry.transforms(frame, faces)

    def crops(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(N, h, w, 3)`` uint8 **BGR** crops of ``faces`` from the BGR ``frame``, as this network reads them."""
        return self.geometry.cut(frame, faces)

    def check_crops(self, crops: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """``crops`` as one ``(N, h, w, 3)`` uint8 array; ``ValueError`` naming the first bad one."""
        w, h = self.crop_size
        if isinstance(crops, np.ndarray) and crops.ndim == 4:
            crops = list(crops)
        for i, c in enumerate(crops):
            if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.shape != (h, w, 3):
                got = f"{c.dtype} {c.shape}" if isinstance(c, np.ndarray) else type(c).__name__
                raise ValueError(f"chip {i}: this embedder needs {w}x{h}x3 BGR uint8 crops, got {got}")
        return np.stack(crops) if len(crops) else np.zeros((0, h, w, 3), np.uint8)

    def embed_crops(self, crops: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """``(N, dim)`` float32 unit-norm embeddings of uint8 BGR crops (an array or a list of them)."""
        x = self.check_crops(crops)
        if not len(x):
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(self.descriptors(x))

    def embed(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(N, dim)`` float32 unit-norm embeddings for ``faces`` in the BGR ``frame``."""
        return self.embed_crops(self.crops(frame, faces))

    def process(self, batch: FaceBatch) -> None:
        """Cut this network's crops from ``batch.frame`` (timed as ``"align"``; kept in ``batch.chips`` with their
        matrices, for mask-aware views) and embed them (``"embed"``)."""
        with batch.timed("align"):
            mats = self.crop_transforms(batch.frame, batch.faces)
            crops = self.geometry.warp(batch.frame, mats)
        batch.chips, batch.chip_matrices = crops, np.asarray(mats, np.float64).reshape(-1, 2, 3)
        with batch.timed("embed"):
            batch.embeddings = self.embed_crops(crops)


class DlibResNetEmbedder(ChipEmbedder):
    """dlib's ResNet-34-style face recogniser (128-d, 99.38% on LFW by its authors), run by dlib itself.

    The reference the ONNX embedders are tested against. Crops: dlib's 150x150 chip (BGR in; the record
    :data:`DLIB_PREPROCESS` turns it into dlib's RGB). Output: (N, 128) float32 unit rows (the raw descriptor,
    of norm ~1.3-1.5, is normalised so cosine similarity applies). ``model_id`` covers the weights and the chip
    geometry (not ``jitters``, which averages descriptors of shifted chips of the same geometry).
    """

    kind = "dlib_resnet"

    def __init__(self, model_path: str | Path, shape_predictor_path: str | Path | None = None,
                 config: EmbedConfig = EmbedConfig()):
        import dlib  # imported here: only this embedder needs dlib's network

        super().__init__(ChipGeometry("dlib150", config.chip_landmarks, shape_predictor_path), DLIB_PREPROCESS,
                         config)
        self.model_path = Path(model_path)
        self._rec = _load_dlib(self.model_path, dlib.face_recognition_model_v1)
        self.model_id = make_model_id("dlib_resnet_v1", self.model_path, config.chip_landmarks)

    def descriptors(self, crops: np.ndarray) -> np.ndarray:
        """(N, 128) float32 raw dlib descriptors of (N, 150, 150, 3) uint8 BGR chips."""
        rgb = self.preprocess.apply(crops)
        desc = self._rec.compute_face_descriptor(list(rgb), int(self.config.jitters))
        return np.array([np.asarray(d) for d in desc], dtype=np.float32)


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


# ------------------------------------------------------------------------------------------------ bundle kind
def dlib_legacy_preprocess(values: Mapping[str, Any]) -> Preprocess:
    """dlib's network reads :data:`DLIB_PREPROCESS`; an old ``input``/``crop`` may only say the same."""
    if "input" in values or "crop" in values:
        stated = legacy_input(str(values.get("input", "uint8_nhwc_rgb")), str(values.get("crop", "dlib150")),
                              where="embed stage (dlib)")
        if stated != DLIB_PREPROCESS:
            raise BundleError(f"embed stage (dlib): dlib's network reads {DLIB_PREPROCESS.to_dict()}, the config "
                              f"says {stated.to_dict()}")
    return DLIB_PREPROCESS


def check_dlib_preprocess(preprocess: Preprocess, where: str) -> None:
    """:class:`BundleError` unless ``preprocess`` is :data:`DLIB_PREPROCESS` (dlib's network takes nothing else)."""
    if preprocess != DLIB_PREPROCESS:
        raise BundleError(f"{where}: dlib's network reads {DLIB_PREPROCESS.to_dict()}; the manifest's preprocess "
                          f"record says {preprocess.to_dict()}")


def _build(spec, preprocess: Preprocess, values: dict) -> DlibResNetEmbedder:
    where = f"stage {spec.name!r} ({spec.kind})"
    check_dlib_preprocess(preprocess, where)
    cfg = config_from(EmbedConfig, values, where)
    return DlibResNetEmbedder(file_of(spec, "model"), file_of(spec, "shape_predictor", required=False), cfg)


KINDS = (StageKind("embed", "dlib_resnet", _build, dlib_legacy_preprocess),)
