"""The one inference seam: a :class:`Backend` runs a model graph on numpy arrays, by tensor name.

Stages never talk to an inference engine directly: they open a backend with :func:`sdk.backends.open_backend`
and call :meth:`Backend.run`. A new engine (TensorRT, torch on CUDA) is one module that implements this
protocol and registers its name with :func:`sdk.backends.register_engine`; no stage changes.

``run`` follows ONNX Runtime's calling convention (``run(output_names, {input_name: array})`` -> a list in
the order asked for) because every stage and test already speaks it; outputs are always host numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output.

    Attributes:
        name: tensor name in the graph.
        dtype: numpy dtype name (``"uint8"``, ``"float32"``, ``"float16"``, ``"int64"``, ...).
        shape: one entry per axis: an ``int`` for a fixed size, a ``str`` (symbolic name) or ``None`` for a
            dynamic one.
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def matches(self, dtype: str, shape: Sequence[int | str | None]) -> bool:
        """Same dtype and rank, and every fixed axis of both equal (dynamic axes match anything)."""
        if self.dtype != dtype or len(self.shape) != len(shape):
            return False
        return all(not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(self.shape, shape))

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name!r} {self.dtype} ({dims})"


#: compute precisions of :attr:`BackendConfig.precision`
PRECISIONS = ("auto", "fp32", "fp16")


@dataclass(frozen=True)
class BackendConfig:
    """Which engine runs a graph, and how.

    Attributes:
        engine: ``"auto"`` (chosen from the model's files and the device: :func:`sdk.backends.select.choose`) or a
            registered engine: ``"onnxruntime"`` (alias ``"ort"``), ``"torch"``, ``"tensorrt"`` (alias ``"trt"``).
        threads: intra-op CPU threads (0 = the engine's default, one per physical core).
        providers: ONNX Runtime execution providers, best first (e.g. ``"CUDAExecutionProvider"``); empty = chosen
            from ``device``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: torch: ``"fp16"`` runs the graph in half precision (``"auto"``: fp16 on CUDA, fp32 on the CPU);
            a TensorRT engine's precision is fixed when it is built.
        cuda_graphs: torch on CUDA: replay captured CUDA graphs per batch-size bucket (less launch overhead).
    """

    engine: str = "onnxruntime"
    threads: int = 0
    providers: tuple[str, ...] = ()
    device: str = "cpu"
    precision: str = "auto"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple([self.providers] if isinstance(self.providers, str)
                                                    else self.providers or ()))
        if int(self.threads) < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        device = str(self.device).lower()
        if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        object.__setattr__(self, "device", device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class ModelFiles:
    """One model in every form a bundle stage has it, by engine: what :func:`sdk.backends.open_backend` chooses from.

    Attributes:
        onnx: the ONNX graph (a path, or serialized bytes built in memory) -- ONNX Runtime.
        torch: the graph's weights + model config (``.safetensors``, :mod:`sdk.nets.graphs`) -- the torch backend.
        tensorrt: a TensorRT engine (``.plan``, its manifest ``.plan.json`` beside it) -- the TensorRT backend.
    """

    onnx: Path | bytes | None = None
    torch: Path | None = None
    tensorrt: Path | None = None

    def get(self, engine: str) -> Path | bytes | None:
        """The file of ``engine`` (``"onnxruntime"``, ``"torch"``, ``"tensorrt"``), ``None`` when the model has none."""
        return {"onnxruntime": self.onnx, "torch": self.torch, "tensorrt": self.tensorrt}.get(engine)

    @property
    def engines(self) -> tuple[str, ...]:
        """Engines this model can run on, in the order ``auto`` prefers them on a GPU."""
        return tuple(e for e in ("tensorrt", "torch", "onnxruntime") if self.get(e) is not None)

    @property
    def label(self) -> str | Path:
        """What to call the model in errors: its ONNX path, else the first file."""
        for f in (self.onnx, self.torch, self.tensorrt):
            if f is not None and not isinstance(f, bytes):
                return f
        return "<in-memory model>"

    @classmethod
    def of(cls, model: "str | Path | bytes | ModelFiles") -> "ModelFiles":
        """``model`` as :class:`ModelFiles`: bytes and ``.onnx`` are ONNX, ``.safetensors`` torch, ``.plan`` /
        ``.engine`` TensorRT (a bare path of another suffix counts as ONNX)."""
        if isinstance(model, ModelFiles):
            return model
        if isinstance(model, bytes):
            return cls(onnx=model)
        p = Path(model)
        if p.suffix == ".safetensors":
            return cls(torch=p)
        if p.suffix in (".plan", ".engine"):
            return cls(tensorrt=p)
        return cls(onnx=p)


@runtime_checkable
class Backend(Protocol):
    """A loaded graph ready to run on numpy arrays (see the module docstring)."""

    #: engine name, e.g. ``"onnxruntime"``.
    engine: str
    #: the graph's inputs and outputs, in graph order.
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    #: execution devices in use, best first (engine-specific names, e.g. ``"CPUExecutionProvider"``).
    providers: tuple[str, ...]

    @property
    def device(self) -> str:
        """Where the graph runs: ``"cpu"``, ``"cuda"``, ``"tensorrt"``, ..."""
        ...

    @property
    def id_suffix(self) -> str:
        """``""`` when results are the CPU reference's; otherwise a tag (``":ort-cuda"``) that model ids carry,
        so that galleries of numerically different runs are never mixed."""
        ...

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph: ``feeds`` by input name; returns the outputs named (all when ``None``), in that order."""
        ...
