"""Inference backends: one :class:`Backend` interface (``base.py``), one module per engine.

``ort`` (ONNX Runtime) is the only engine so far. Add one (TensorRT, torch-CUDA) by writing a class that
satisfies :class:`Backend` and registering an opener for it with :func:`register_engine`; stages pick it
through their config's ``engine`` field (``BackendConfig.engine``) and need no change.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from sdk.backends.base import Backend, BackendConfig, TensorInfo
from sdk.errors import BundleError

#: ``opener(model, config, name, what) -> Backend``; ``model`` is a file path or serialized graph bytes.
Opener = Callable[[str | Path | bytes, BackendConfig, str | Path | None, str], Backend]
_ENGINES: dict[str, Opener] = {}


def register_engine(name: str, opener: Opener) -> None:
    """Make ``name`` usable as ``BackendConfig.engine``."""
    _ENGINES[name] = opener


def engines() -> list[str]:
    """Names of the registered engines."""
    _builtin()
    return sorted(_ENGINES)


def _builtin() -> None:
    if "onnxruntime" not in _ENGINES:
        from sdk.backends import ort

        register_engine("onnxruntime", ort.OrtBackend.open)


def open_backend(model: str | Path | bytes, config: BackendConfig = BackendConfig(), *,
                 name: str | Path | None = None, what: str = "model") -> Backend:
    """Load ``model`` (a file path or serialized graph bytes) on the engine ``config.engine`` names.

    Args:
        name: what to call the model in errors (default: the path).
        what: the model's role in errors, e.g. ``"an occlusion segmenter"``.

    Raises:
        BundleError: unknown engine.
        ModelFileError: the file is missing or the engine cannot load it (the message names the file).
    """
    _builtin()
    opener = _ENGINES.get(config.engine)
    if opener is None:
        raise BundleError(f"unknown inference engine {config.engine!r}; this SDK has {sorted(_ENGINES)}")
    return opener(model, config, name, what)


__all__ = ["Backend", "BackendConfig", "TensorInfo", "open_backend", "register_engine", "engines"]
