"""Inference backends: one :class:`Backend` interface (``base.py``), one module per engine.

=============  ============================  ===============================================  =====================
engine         module                        runs                                             on
=============  ============================  ===============================================  =====================
onnxruntime    ``ort.py``                    the stage's ``.onnx`` graph                      CPU (default), CUDA EP
torch          ``torch_cuda.py``             the family's torch graph rebuilt from the        CUDA (fp16, batched,
                                             bundle's ``.safetensors`` (:mod:`sdk.nets`)      CUDA graphs), CPU
tensorrt       ``tensorrt.py``               a ``.plan`` engine + its ``.plan.json`` sidecar  CUDA
=============  ============================  ===============================================  =====================

A stage opens its model with :func:`open_backend` and a :class:`BackendConfig`; ``engine="auto"`` picks from the
model's files and the device (:mod:`sdk.backends.select`). All three take the same named numpy inputs and return
host numpy outputs, so no stage changes with the engine. Add one by writing a class that satisfies
:class:`Backend` and registering an opener for it with :func:`register_engine`. torch and tensorrt are imported
only when a model is opened on them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from sdk.backends.base import Backend, BackendConfig, ModelFiles, TensorInfo

log = logging.getLogger(__name__)

#: ``opener(model, config, name, what) -> Backend``; ``model`` is the engine's file path or serialized graph bytes.
Opener = Callable[[str | Path | bytes, BackendConfig, str | Path | None, str], Backend]
_ENGINES: dict[str, Opener] = {}


def register_engine(name: str, opener: Opener) -> None:
    """Make ``name`` usable as ``BackendConfig.engine``."""
    _ENGINES[name] = opener


def engines() -> list[str]:
    """Names of the registered engines."""
    _builtin()
    return sorted(_ENGINES)


def _open_torch(model, config, name, what):
    from sdk.backends.torch_cuda import TorchBackend

    return TorchBackend.open(model, config, name, what)


def _open_tensorrt(model, config, name, what):
    from sdk.backends.tensorrt import TensorRTBackend

    return TensorRTBackend.open(model, config, name, what)


def _open_ort(model, config, name, what):
    from sdk.backends.ort import OrtBackend

    return OrtBackend.open(model, config, name, what)


def _builtin() -> None:
    for engine, opener in (("onnxruntime", _open_ort), ("torch", _open_torch), ("tensorrt", _open_tensorrt)):
        _ENGINES.setdefault(engine, opener)


def open_backend(model: str | Path | bytes | ModelFiles, config: BackendConfig = BackendConfig(), *,
                 name: str | Path | None = None, what: str = "model") -> Backend:
    """Load ``model`` on the engine ``config.engine`` names (``"auto"``: chosen, :func:`sdk.backends.select.choose`).

    Args:
        model: a :class:`ModelFiles` (a stage's model in every form its bundle has), or one file path / serialized
            ONNX bytes (``.onnx`` / bytes: ONNX, ``.safetensors``: torch, ``.plan``: TensorRT).
        name: what to call the model in errors (default: the path).
        what: the model's role in errors, e.g. ``"an occlusion segmenter"``.

    Raises:
        BundleError: unknown engine, or a forced engine the model has no file for.
        ModelFileError: the file is missing or the engine cannot load it (the message names the file).
        BackendUnavailableError: the engine or device is not usable here (one line, with the way out).
    """
    from sdk.backends.select import choose, engine_name

    _builtin()
    files = ModelFiles.of(model)
    if config.engine in _ENGINES and config.engine not in ("onnxruntime", "torch", "tensorrt"):
        # a registered third-party engine: it gets the ONNX graph
        return _ENGINES[config.engine](files.onnx if files.onnx is not None else files.label, config, name, what)
    engine_name(config.engine)  # BundleError naming the engines for an unknown one
    choice = choose(files, config, what)
    if choice.reason != "forced":
        log.debug("%s: %s on %s (%s)", what, choice.engine, choice.config.device, choice.reason)
    return _ENGINES[choice.engine](files.get(choice.engine), choice.config, name, what)


__all__ = ["Backend", "BackendConfig", "ModelFiles", "TensorInfo", "open_backend", "register_engine", "engines"]
