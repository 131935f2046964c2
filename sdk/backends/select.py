"""Which engine runs a model: :func:`choose` (``engine="auto"`` or a forced one) from the model's files and the device.

``auto`` on a machine with a visible CUDA device prefers, per model: a TensorRT engine (when the bundle stage has one
and the ``tensorrt`` package imports), the torch backend (when the stage has torch weights and torch sees the GPU),
ONNX Runtime's CUDA provider (when this onnxruntime build has it), and ONNX Runtime on the CPU last. On the CPU it is
ONNX Runtime (the reference), or torch when the stage has only torch weights. A forced engine must have its file
(:class:`~sdk.errors.BundleError` naming the command that writes it) and its device
(:class:`~sdk.errors.BackendUnavailableError`, one line). Nothing here imports torch unless a model has torch
weights and the device is CUDA or ``auto``.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace

from sdk.backends.base import BackendConfig, ModelFiles
from sdk.errors import BackendUnavailableError, BundleError

log = logging.getLogger(__name__)

__all__ = ["ENGINE_ALIASES", "engine_name", "cuda_visible", "ort_cuda_providers", "Choice", "choose",
           "EXPORT_HINT"]

#: names accepted for an engine (``RecognizerConfig.backend``, a stage config's ``engine``)
ENGINE_ALIASES = {"auto": "auto", "ort": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch",
                  "tensorrt": "tensorrt", "trt": "tensorrt"}
#: how to add an engine's files to a bundle
EXPORT_HINT = {"torch": "python -m export torch --family F --checkpoint RUN --out BUNDLE",
               "tensorrt": "python -m export trt --bundle BUNDLE --out BUNDLE_TRT (on a machine with TensorRT)",
               "onnxruntime": "python -m export onnx --family F --checkpoint RUN --out BUNDLE"}
CPU_PROVIDER, CUDA_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"


def engine_name(name: str) -> str:
    """The canonical engine name of ``name`` (``"ort"`` -> ``"onnxruntime"`` ...).

    Raises:
        BundleError: an unknown name (naming the known ones).
    """
    try:
        return ENGINE_ALIASES[str(name).lower()]
    except KeyError:
        raise BundleError(f"unknown inference engine {name!r}; engines: auto, onnxruntime (ort), torch, "
                          "tensorrt (trt)") from None


def cuda_visible(probe_torch: bool = False) -> bool:
    """Whether a CUDA device is visible: the SDK's own C++ core asks the driver (no torch); when the core was built
    without CUDA and ``probe_torch``, torch is asked (imported only then)."""
    try:
        from sdk import _native

        info = _native.cuda_info()
        if info.get("compiled"):
            return int(info.get("device_count", 0)) > 0
    except Exception:  # noqa: BLE001 - a core without CUDA, or no core: fall through
        pass
    if probe_torch and importlib.util.find_spec("torch") is not None:
        import torch

        return bool(torch.cuda.is_available())
    return False


def ort_cuda_providers() -> tuple[str, ...]:
    """``("CUDAExecutionProvider", "CPUExecutionProvider")`` when this onnxruntime has CUDA, else ``()``."""
    import onnxruntime as ort

    return (CUDA_PROVIDER, CPU_PROVIDER) if CUDA_PROVIDER in ort.get_available_providers() else ()


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _torch_cuda(device: str) -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@dataclass(frozen=True)
class Choice:
    """The engine chosen for a model, the config to open it with, and why (for the log)."""

    engine: str
    config: BackendConfig
    reason: str


def choose(files: ModelFiles, config: BackendConfig, what: str = "model") -> Choice:
    """The engine and device ``files`` runs on under ``config`` (``engine`` / ``device`` may be ``"auto"``).

    Raises:
        BundleError: a forced engine the model has no file for (naming the command that writes it).
        BackendUnavailableError: a forced CUDA device / engine that is not usable here (one line).
    """
    engine = engine_name(config.engine)
    device = config.device
    if engine == "auto" and config.providers:  # explicit ONNX Runtime providers: ONNX Runtime
        engine = "onnxruntime"
    if engine != "auto":
        if files.get(engine) is None:
            raise BundleError(f"{what} has no {engine} model file (it has: {', '.join(files.engines) or 'none'}); "
                              f"add one with: {EXPORT_HINT[engine]}")
        if engine == "tensorrt" and device == "cpu":
            raise BackendUnavailableError(f"{what}: a TensorRT engine runs on CUDA only, device='cpu' was asked; "
                                          "run the bundle on ONNX Runtime (backend='ort') instead")
        if device == "auto":
            device = "cuda" if engine == "tensorrt" or cuda_visible(probe_torch=engine == "torch") else "cpu"
        return Choice(engine, _config(config, engine, device), "forced")
    if device == "auto":
        device = "cuda" if cuda_visible(probe_torch=files.torch is not None) else "cpu"
    if device == "cpu":
        for e in ("onnxruntime", "torch"):
            if files.get(e) is not None:
                return Choice(e, _config(config, e, "cpu"), "CPU")
        raise BackendUnavailableError(f"{what} has only a TensorRT engine, which needs a CUDA device; this machine has "
                                      "none (export the ONNX graph too: python -m export onnx ...)")
    if files.tensorrt is not None and _tensorrt_importable():
        return Choice("tensorrt", _config(config, "tensorrt", device), "CUDA, a TensorRT engine")
    if files.torch is not None and _torch_cuda(device):
        return Choice("torch", _config(config, "torch", device), "CUDA, torch weights")
    if files.onnx is not None:
        cuda = ort_cuda_providers()
        if cuda:
            return Choice("onnxruntime", replace(_config(config, "onnxruntime", device), providers=cuda),
                          "CUDA, ONNX Runtime's CUDA provider")
        log.warning("%s: a CUDA device is visible, but the bundle has no TensorRT engine / torch weights this machine "
                    "can run and onnxruntime has no CUDA provider: running on the CPU", what)
        return Choice("onnxruntime", _config(config, "onnxruntime", "cpu"), "CPU fallback")
    if files.tensorrt is not None:
        from sdk.backends.tensorrt import require_tensorrt

        require_tensorrt(what)  # raises the one-line error
    raise BackendUnavailableError(f"{what}: torch weights need torch with CUDA here (or device='cpu')")


def _config(config: BackendConfig, engine: str, device: str) -> BackendConfig:
    providers = config.providers
    if engine == "onnxruntime" and device.startswith("cuda") and not providers:
        providers = ort_cuda_providers()
        if not providers:
            raise BackendUnavailableError("device='cuda' was asked for ONNX Runtime, but this onnxruntime has no CUDA "
                                          "provider (pip install onnxruntime-gpu), or use backend='torch' / "
                                          "'tensorrt' with a bundle that has their files, or device='cpu'")
    return replace(config, engine=engine, device=device, providers=providers)
