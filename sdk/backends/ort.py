"""ONNX Runtime sessions, opened one way for every stage.

Every failure to open a model becomes a :class:`~sdk.errors.ModelFileError` that names the file (or, for a
graph built in memory, the file it was built from) and what it was meant to be.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnxruntime as ort

from sdk.errors import ModelFileError

CPU = "CPUExecutionProvider"


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
