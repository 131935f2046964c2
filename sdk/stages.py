"""The stage protocols: what the Recognizer needs from each stage kind, and the per-call record they share.

    frame (BGR uint8) -> Detector.detect -> faces -> [Segmenter -> Completer ->] Embedder -> gallery match

Every stage has ``kind`` (its manifest kind), ``preprocess`` (its :class:`~sdk.preprocess.Preprocess` record),
``config`` (its typed config dataclass), ``prepare()`` (warm-up, returns the stage) and its stage call
(``detect`` / ``segment`` / ``complete`` / ``embed_crops``). The stages after detection are *face stages*:
besides their own call they implement ``process(batch)``, their step on a :class:`FaceBatch`, so the
Recognizer runs whatever face stages a bundle has in one loop, and ``connect(upstream)``, which checks at
load time that the stages before them give what they need.

A :class:`FaceBatch` is created per call and never shared, so one Recognizer may serve several threads.

Implementations live with their stage (``detect.py``, ``segment.py``, ``complete.py``, ``embed.py``,
``embed_onnx.py``); each module declares its manifest kinds as :class:`StageKind` records in ``KINDS``, which
:mod:`sdk._registry` collects.
"""
from __future__ import annotations

import dataclasses
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from sdk.align import CropSpec
from sdk.backends import Backend, BackendConfig, ModelFiles, TensorInfo
from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess
from sdk.types import Face

if TYPE_CHECKING:
    from sdk.bundle import StageSpec

#: face stages in pipeline order (``detect`` runs before them, matching after)
FACE_STAGES = ("segment", "complete", "embed")


# ------------------------------------------------------------------------------------------ per-call record
@contextmanager
def timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Add the seconds spent in the ``with`` block to ``timings[stage]`` (nothing when ``timings`` is None)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


@dataclass
class OcclusionRegions:
    """What a segment stage found, on its crops (``N`` faces).

    Attributes:
        crop_spec: geometry of the crops.
        crops: ``(N, h, w, 3)`` uint8 BGR crops cut from the batch's frame.
        matrices: ``(N, 2, 3)`` float64 frame -> crop matrices.
        masks: ``(N, h, w)`` float32 occlusion maps M in [0, 1].
        holes: ``(N, h, w)`` uint8 {0, 1}: ``masks`` at the segmenter's threshold.
        probs: ``(N,)`` float32 per-face occlusion probabilities.
    """

    crop_spec: CropSpec
    crops: np.ndarray
    matrices: np.ndarray
    masks: np.ndarray
    holes: np.ndarray
    probs: np.ndarray


@dataclass
class FaceBatch:
    """The working state of one call on the faces of one frame (created per call, never shared).

    Attributes:
        frame: ``(H, W, 3)`` uint8 BGR frame the next stage reads. A complete stage replaces it by a completed
            *copy*; the caller's array is never written.
        faces: the faces, in the caller's order.
        timings: seconds per stage name (``"segment"``, ``"complete"``, ``"align"``, ``"embed"``) are written
            here when it is a dict (the caller's: per call, thread-safe).
        regions: the segment stage's output (``None`` without one).
        completed: ``(N,)`` bool, faces a complete stage filled.
        embeddings: ``(N, dim)`` float32 unit rows once an embed stage ran.
        chips: ``(N, h, w, 3)`` uint8 BGR crops the embed stage embedded (``None`` before it ran).
        chip_matrices: ``(N, 2, 3)`` float64 frame -> chip matrices of ``chips``.
    """

    frame: np.ndarray
    faces: list[Face]
    timings: dict[str, float] | None = None
    regions: OcclusionRegions | None = None
    completed: np.ndarray = field(default=None)  # type: ignore[assignment]
    embeddings: np.ndarray | None = None
    chips: np.ndarray | None = None
    chip_matrices: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.faces = list(self.faces)
        if self.completed is None:
            self.completed = np.zeros(len(self.faces), bool)

    @property
    def occlusion(self) -> list[float | None]:
        """Per-face occlusion probability (``None`` each without a segment stage)."""
        if self.regions is None:
            return [None] * len(self.faces)
        return [float(p) for p in self.regions.probs]

    def timed(self, stage: str):
        """Context manager: add the seconds spent in the block to ``timings[stage]`` (when they are collected)."""
        return timed(self.timings, stage)


# ---------------------------------------------------------------------------------------------- protocols
@runtime_checkable
class Stage(Protocol):
    """What every stage has."""

    kind: str
    preprocess: Preprocess

    def prepare(self) -> "Stage":
        """Warm up (first-call latency); returns the stage."""
        ...


@runtime_checkable
class Detector(Stage, Protocol):
    """``detect``: a BGR uint8 frame -> faces (boxes + 5 landmarks), best score first."""

    def detect(self, frame: np.ndarray) -> list[Face]: ...


@runtime_checkable
class FaceStage(Stage, Protocol):
    """A stage that runs on the faces of a frame (see the module docstring)."""

    def process(self, batch: FaceBatch) -> None:
        """Do this stage's step on ``batch`` (reads and writes its fields)."""
        ...

    def connect(self, upstream: Mapping[str, "FaceStage"]) -> None:
        """Check at load time that the stages before this one (by stage name) give what it needs.

        Raises:
            BundleError: naming what is missing.
        """
        ...


@runtime_checkable
class Segmenter(FaceStage, Protocol):
    """``segment``: aligned crops -> occlusion maps M and per-face occlusion probabilities."""

    crop_spec: CropSpec

    def segment(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, h, w, 3)`` uint8 BGR crops -> ``(masks (N, h, w) float32 in [0, 1], probs (N,) float32)``."""
        ...

    def binary_masks(self, masks: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Completer(FaceStage, Protocol):
    """``complete``: aligned crops + holes -> the crops with the holes filled (known pixels unchanged)."""

    crop_spec: CropSpec

    def complete(self, crops: np.ndarray, holes: np.ndarray) -> np.ndarray:
        """``(N, h, w, 3)`` uint8 BGR crops, ``(N, h, w)`` holes (1 = fill) -> ``(N, h, w, 3)`` uint8 BGR."""
        ...


@runtime_checkable
class Embedder(FaceStage, Protocol):
    """``embed``: faces of a frame -> L2-normalised identity vectors.

    ``model_id`` names the weights, the crop geometry and (off the CPU reference) the device: galleries store
    it and refuse embeddings of another model.
    """

    dim: int
    model_id: str
    #: what decides the crops (not the weights): alignment caches are shared between equal geometries
    geometry_id: str
    crop_spec: CropSpec

    def crop_transforms(self, frame: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]: ...

    def crops(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """``(N, h, w, 3)`` uint8 **BGR** crops of ``faces`` cut from the BGR ``frame``."""
        ...

    def embed_crops(self, crops: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """``(N, h, w, 3)`` uint8 BGR crops -> ``(N, dim)`` float32 unit rows."""
        ...


#: the protocol each stage name's objects satisfy
PROTOCOLS: dict[str, type] = {"detect": Detector, "segment": Segmenter, "complete": Completer, "embed": Embedder}


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class RunConfig:
    """How a stage runs its graph (the fields every model stage config has; manifest ``config`` keys, overridden by
    :class:`sdk.recognizer.RecognizerConfig`'s ``backend`` / ``device`` / ``precision`` / ``cuda_graphs``).

    Attributes:
        threads: intra-op CPU threads (0 = the engine's default).
        providers: ONNX Runtime execution providers, best first (empty = chosen from ``device``).
        batch_size: faces per engine call (bounds memory on large batches).
        engine: ``"auto"`` (from the stage's files and the device, :mod:`sdk.backends.select`), ``"onnxruntime"`` /
            ``"ort"``, ``"torch"``, ``"tensorrt"`` / ``"trt"`` (:func:`sdk.backends.engines`).
        device: ``"auto"`` (CUDA when visible), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: torch backend: ``"auto"`` (fp16 on CUDA), ``"fp32"``, ``"fp16"``.
        cuda_graphs: torch backend on CUDA: replay captured CUDA graphs.
    """

    threads: int = 1
    providers: tuple[str, ...] = ()
    batch_size: int = 32
    engine: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple([self.providers] if isinstance(self.providers, str)
                                                    else self.providers or ()))
        if int(self.threads) < 0 or int(self.batch_size) < 1:
            raise ValueError(f"threads must be >= 0 and batch_size >= 1, got {self.threads}, {self.batch_size}")
        _ = self.backend  # validates device and precision

    @property
    def backend(self) -> BackendConfig:
        return BackendConfig(engine=self.engine, threads=int(self.threads), providers=self.providers,
                             device=self.device, precision=self.precision, cuda_graphs=bool(self.cuda_graphs))


def config_from(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build the config dataclass ``cls`` from manifest values (lists become tuples).

    Raises:
        BundleError: an unknown key (naming the known ones) or a value the dataclass refuses.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise BundleError(f"{where}: unknown config keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in values.items():
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            v = tuple(v)
        kw[k] = v
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: {e}") from None


def expect_input(backend: Backend, preprocess: Preprocess, size: tuple[int, int], path: str | Path,
                 what: str, name: str | None = None) -> TensorInfo:
    """The graph input ``name`` (the only/first one when ``None``), checked against ``preprocess``.

    Args:
        size: ``(width, height)`` of the crops.
        path: the model file (named in the error).
        what: the model's role in the error, e.g. ``"an occlusion segmenter"``.

    Raises:
        ModelFileError: no such input, or its dtype / shape is not what the record says.
    """
    w, h = size
    inputs = {i.name: i for i in backend.inputs}
    info = inputs.get(name) if name is not None else (backend.inputs[0] if backend.inputs else None)
    want = preprocess.input_shape(h, w, batch="N")
    if info is None or not info.matches(preprocess.dtype, want):
        got = [str(i) for i in backend.inputs]
        raise ModelFileError(path, f"not {what} for this preprocess record: expected input "
                                   f"{name or ''} {preprocess.dtype} {want} ({preprocess.layout.upper()} "
                                   f"{preprocess.colour.upper()}, crop {preprocess.crop}), got inputs {got}")
    return info


# --------------------------------------------------------------------------------------------- manifest kinds
def file_of(spec: "StageSpec", role: str, required: bool = True) -> Path | None:
    """Path of ``spec``'s file ``role`` (``None`` when absent and not ``required``).

    Raises:
        BundleError: a required role is missing (naming the roles the stage has).
    """
    if role in spec.files:
        return spec.files[role].path
    if required:
        raise BundleError(f"stage {spec.name!r} ({spec.kind}) needs a file with role {role!r} "
                          f"(has {sorted(spec.files)})")
    return None


#: manifest file roles that hold the same model for different engines (``model`` is the ONNX graph)
ENGINE_ROLES = {"model": "onnx", "torch": "torch", "tensorrt": "tensorrt"}


def model_files(spec: "StageSpec") -> ModelFiles:
    """The stage's model in every form its bundle has (file roles ``model``, ``torch``, ``tensorrt``).

    Raises:
        BundleError: the stage has none of them.
    """
    found = {field: spec.files[role].path for role, field in ENGINE_ROLES.items() if role in spec.files}
    if not found:
        raise BundleError(f"stage {spec.name!r} ({spec.kind}) needs a model file (role 'model', 'torch' or "
                          f"'tensorrt'), has {sorted(spec.files)}")
    return ModelFiles(**found)


@dataclass(frozen=True)
class StageKind:
    """How a manifest ``kind`` becomes a stage object.

    Attributes:
        stage: stage name (``"detect"``, ``"segment"``, ``"complete"``, ``"embed"``).
        kind: the manifest's ``kind`` string.
        build: ``build(spec, preprocess, values) -> stage``; ``values`` are the manifest's ``config`` with the
            caller's options applied and the legacy ``crop`` / ``input`` keys removed.
        legacy_preprocess: the kind's known convention for manifests without a ``"preprocess"`` record
            (version 1), from its ``config`` values (``crop``, ``input``).
    """

    stage: str
    kind: str
    build: Callable[["StageSpec", Preprocess, dict[str, Any]], Stage]
    legacy_preprocess: Callable[[Mapping[str, Any]], Preprocess]
