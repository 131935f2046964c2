"""The one inference seam: a :class:`Backend` runs a model graph on numpy arrays, by tensor name.

Stages never talk to an inference engine directly: they open a backend with :func:`sdk.backends.open_backend`
and call :meth:`Backend.run`. A new engine (TensorRT, torch on CUDA) is one module that implements this
protocol and registers its name with :func:`sdk.backends.register_engine`; no stage changes.

``run`` follows ONNX Runtime's calling convention (``run(output_names, {input_name: array})`` -> a list in
the order asked for) because every stage and test already speaks it; outputs are always host numpy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class BackendConfig:
    """Which engine runs a graph, and how.

    Attributes:
        engine: registered engine name (``"onnxruntime"``, the only one so far).
        threads: intra-op CPU threads (0 = the engine's default, one per physical core).
        providers: engine-specific execution devices, best first (ONNX Runtime execution providers such as
            ``"CUDAExecutionProvider"``); empty = CPU.
    """

    engine: str = "onnxruntime"
    threads: int = 0
    providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple([self.providers] if isinstance(self.providers, str)
                                                    else self.providers or ()))
        if int(self.threads) < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


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
