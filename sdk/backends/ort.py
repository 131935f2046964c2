"""ONNX Runtime: :class:`OrtBackend` (the :class:`~sdk.backends.base.Backend` of every ONNX stage) and
:func:`open_session`, the one way sessions are opened.

Every failure to open a model becomes a :class:`~sdk.errors.ModelFileError` that names the file (or, for a
graph built in memory, the file it was built from) and what it was meant to be.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from sdk.backends.base import BackendConfig, TensorInfo
from sdk.errors import ModelFileError

CPU = "CPUExecutionProvider"

#: ONNX tensor type strings -> numpy dtype names
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64",
           "tensor(bool)": "bool"}


def open_session(model: str | Path | bytes, *, threads: int = 0, providers: Sequence[str] | None = None,
                 name: str | Path | None = None, what: str = "ONNX model") -> ort.InferenceSession:
    """An ``InferenceSession`` for ``model`` (a path, or serialized ONNX bytes).

    Args:
        model: ``.onnx`` file path or the model's bytes.
        threads: intra-op threads (0 = ONNX Runtime's default: one per core).
        providers: execution providers, best first (default: CPU only).
        name: what to call the model in errors (default: the path).
        what: the model's role in errors, e.g. ``"MTCNN rnet"``.

    Raises:
        ModelFileError: missing file, or ONNX Runtime cannot load it (truncated, foreign, invalid graph).
    """
    label = name if name is not None else (model if not isinstance(model, bytes) else "<in-memory model>")
    if not isinstance(model, bytes):
        model = Path(model)
        if not model.is_file():
            raise ModelFileError(label, f"not found ({what})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                    providers=list(providers) if providers else [CPU])
    except Exception as e:  # noqa: BLE001 - ORT raises InvalidProtobuf, Fail, InvalidGraph, NoSuchFile, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(label, f"cannot be loaded as {what} ({first[:200]})") from None


def _info(arg: ort.NodeArg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) or d is None else str(d) for d in (arg.shape or ()))
    return TensorInfo(arg.name, _DTYPES.get(arg.type, arg.type), shape)


class OrtBackend:
    """A graph on ONNX Runtime (see :class:`sdk.backends.base.Backend`).

    ``run`` is thread-safe (ONNX Runtime sessions may be run from several threads at once).

    Attributes:
        session: the underlying ``onnxruntime.InferenceSession``.
    """

    engine = "onnxruntime"

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.inputs = tuple(_info(a) for a in session.get_inputs())
        self.outputs = tuple(_info(a) for a in session.get_outputs())
        self.providers = tuple(session.get_providers())

    @classmethod
    def open(cls, model: str | Path | bytes, config: BackendConfig = BackendConfig(),
             name: str | Path | None = None, what: str = "ONNX model") -> "OrtBackend":
        """Load ``model`` (path or bytes) with ``config``'s threads and providers (see :func:`open_session`)."""
        return cls(open_session(model, threads=config.threads, providers=config.providers or None, name=name,
                                what=what))

    @property
    def device(self) -> str:
        return self.providers[0].removesuffix("ExecutionProvider").lower() if self.providers else "cpu"

    @property
    def id_suffix(self) -> str:
        accel = [p for p in self.providers if p != CPU]
        return ":ort-" + accel[0].removesuffix("ExecutionProvider").lower() if accel else ""

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(list(output_names) if output_names is not None else None, dict(feeds))

    def __repr__(self) -> str:
        return f"OrtBackend(inputs={[str(i) for i in self.inputs]}, providers={list(self.providers)})"
