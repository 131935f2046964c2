"""The TensorRT backend: a serialized engine (``.plan``) and its manifest (``.plan.json``, written by
``python -m export trt``), run through TensorRT's Python API.

The manifest (the *sidecar*) names the engine file (bytes, SHA-256), the bundle stage it was built from, the
stage's preprocess record, the inputs / outputs with the batch profile, and the plugin library the engine needs
(``liblookthrough_trt_plugin.so`` for the inpainter's fused contextual attention; path + SHA-256). Opening checks, in
this order, and refuses in one line: the sidecar exists, the engine file is the one it names, the plugin library
is there and is the one it names, then that ``tensorrt`` imports -- so on a machine without TensorRT the message
says exactly that and how to run the same bundle on ONNX Runtime or torch.

Device buffers come from torch (CUDA tensors) when torch with CUDA is present, else from cuda-python
(``cuda.bindings.runtime`` / ``cuda.cudart``); the engine runs on its own CUDA stream with TensorRT >= 8.5's named
tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). Calls larger than the profile's
maximum batch are split. Thread safety: one execution context per backend, calls are serialised by a lock.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdk.backends.base import BackendConfig, TensorInfo
from sdk.bundle import FileRef, read_sidecar, sidecar_path
from sdk.errors import BackendUnavailableError, ModelFileError

log = logging.getLogger(__name__)

__all__ = ["TensorRTUnavailableError", "require_tensorrt", "check_engine_files", "TensorRTBackend"]


class TensorRTUnavailableError(BackendUnavailableError):
    """TensorRT (the ``tensorrt`` Python package) cannot be imported here; the message is one line."""


def require_tensorrt(bundle_hint: str | Path | None = None, purpose: str = "run") -> Any:
    """``import tensorrt`` or :class:`TensorRTUnavailableError` with one line: what is missing and how to run the
    same bundle on ONNX Runtime or torch instead (``purpose``: ``"run"`` an engine or ``"build"`` one)."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a stub wheel failing on import
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        model = str(bundle_hint) if bundle_hint is not None else "<bundle>"
        where = ("build engines on a machine with TensorRT (JetPack, an NGC TensorRT container)" if purpose == "build"
                 else "run engines where TensorRT is installed (JetPack, an NGC TensorRT container, pip install "
                      "tensorrt)")
        raise TensorRTUnavailableError(
            f"TensorRT is not installed here (import tensorrt: {why}); {where}, or run the same bundle on ONNX Runtime: "
            f"sdk.Recognizer({model!r}) / python -m sdk identify --model {model} IMAGES, or on torch: "
            f"sdk.Recognizer({model!r}, config=RecognizerConfig(backend='torch'))") from None
    return trt


def _resolve(p: str, root: Path) -> Path:
    path = Path(p)
    return path if path.is_absolute() else root / path


def check_engine_files(plan: str | Path, sidecar: dict | None = None, verify_hash: bool = True) -> Path | None:
    """Check the engine and its plugin library against the sidecar; returns the plugin library's path (or None).

    Raises:
        ModelFileError: the engine is not the file the sidecar names (missing, size, SHA-256), or the plugin library
            it names is missing or replaced (one line, naming the file).
    """
    plan = Path(plan)
    sidecar = read_sidecar(plan) if sidecar is None else sidecar
    eng = sidecar.get("engine") or {}
    if eng.get("path") and Path(eng["path"]).name != plan.name:
        raise ModelFileError(plan, f"its manifest {sidecar_path(plan).name} describes engine {eng['path']!r}, not "
                                   "this file")
    FileRef("tensorrt engine", plan, eng.get("bytes"), eng.get("sha256")).check(verify_hash)
    plugin = sidecar.get("plugin_library")
    if not plugin:
        return None
    lib = _resolve(str(plugin["path"]), plan.parent)
    if not lib.is_file():
        raise ModelFileError(lib, f"not found: the TensorRT plugin library engine {plan.name} needs (build it with "
                                  "cmake --build BUILD --target lookthrough_trt_plugin, next to the engine or at the "
                                  "path its manifest names)")
    FileRef("tensorrt plugin", lib, None, plugin.get("sha256")).check(verify_hash)
    return lib


def _load_plugin(trt: Any, lib: Path) -> None:
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        registry.load_library(str(lib))
    else:  # TensorRT 8.x: loading the library registers its creators
        import ctypes

        ctypes.CDLL(str(lib))


class _Buffers:
    """Device memory and copies: torch CUDA tensors when available, else cuda-python's runtime API."""

    def __init__(self, what: str):
        self.torch = None
        try:
            import torch

            if torch.cuda.is_available():
                self.torch = torch
        except ImportError:
            pass
        self.rt = None
        if self.torch is None:
            try:
                from cuda.bindings import runtime as rt  # cuda-python >= 12.6
            except ImportError:
                try:
                    from cuda import cudart as rt  # older cuda-python
                except ImportError:
                    raise BackendUnavailableError(
                        f"{what}: TensorRT engines need device buffers from torch (with CUDA) or cuda-python "
                        "(pip install cuda-python); neither is usable here") from None
            self.rt = rt
        self.stream = self.torch.cuda.Stream() if self.torch is not None else self._check(self.rt.cudaStreamCreate())

    def _check(self, res: Any) -> Any:
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA runtime error {err}")
        return rest[0] if rest else None

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream) if self.torch is not None else int(self.stream)

    def upload(self, a: np.ndarray) -> tuple[int, Any]:
        if self.torch is not None:
            t = self.torch.from_numpy(np.ascontiguousarray(a)).to("cuda", non_blocking=False)
            return t.data_ptr(), t
        ptr = self._check(self.rt.cudaMalloc(a.nbytes))
        self._check(self.rt.cudaMemcpy(ptr, a.ctypes.data, a.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return int(ptr), ptr

    def empty(self, shape: tuple, dtype: np.dtype) -> tuple[int, Any]:
        if self.torch is not None:
            t = self.torch.empty(shape, dtype=getattr(self.torch, np.dtype(dtype).name), device="cuda")
            return t.data_ptr(), t
        ptr = self._check(self.rt.cudaMalloc(max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)))
        return int(ptr), ptr

    def download(self, handle: Any, shape: tuple, dtype: np.dtype) -> np.ndarray:
        self.synchronize()
        if self.torch is not None:
            return handle.cpu().numpy()
        out = np.empty(shape, dtype)
        self._check(self.rt.cudaMemcpy(out.ctypes.data, handle, out.nbytes,
                                       self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return out

    def synchronize(self) -> None:
        if self.torch is not None:
            self.stream.synchronize()
        else:
            self._check(self.rt.cudaStreamSynchronize(self.stream))

    def free(self, handle: Any) -> None:
        if self.torch is None:
            self.rt.cudaFree(handle)


class TensorRTBackend:
    """A TensorRT engine (see the module docstring and :class:`sdk.backends.base.Backend`)."""

    engine = "tensorrt"

    def __init__(self, trt: Any, plan: Path, sidecar: dict, what: str):
        self.path, self.sidecar = plan, sidecar
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise ModelFileError(plan, f"TensorRT {trt.__version__} cannot deserialize this engine (built by TensorRT "
                                       f"{sidecar.get('tensorrt_version')} on {sidecar.get('device')}: engines are "
                                       "tied to the TensorRT version and GPU they were built for; rebuild it here)")
        self._context = self._engine.create_execution_context()
        ins, outs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            shape = tuple("N" if int(d) < 0 else int(d) for d in self._engine.get_tensor_shape(name))
            info = TensorInfo(name, dtype, shape)
            (ins if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(info)
        self.inputs, self.outputs = tuple(ins), tuple(outs)
        self.max_batch = max((int((i.get("profile") or {}).get("max", [[0]])[0][0]) for i in sidecar.get("inputs", [])
                              if i.get("profile")), default=0) or None
        self.providers = (f"tensorrt-{trt.__version__}",)
        self.precision = (sidecar.get("builder") or {}).get("precision", "fp32")
        self._buffers = _Buffers(what)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, model: str | Path | bytes, config: BackendConfig = BackendConfig(engine="tensorrt"),
             name: str | Path | None = None, what: str = "model") -> "TensorRTBackend":
        """Open an engine: sidecar, engine file, plugin library, then ``tensorrt`` (see the module docstring).

        Raises:
            BundleError: no sidecar / not an engine manifest.
            ModelFileError: the engine or its plugin library is missing or replaced; TensorRT cannot load it.
            TensorRTUnavailableError: no ``tensorrt`` here (one line: how to run the bundle otherwise).
            BackendUnavailableError: no device buffers (neither torch with CUDA nor cuda-python).
        """
        if isinstance(model, bytes):
            raise ModelFileError(name or "<in-memory model>", "the TensorRT backend opens a .plan file")
        plan = Path(model)
        if not plan.is_file():
            raise ModelFileError(plan, "not found (TensorRT engine)")
        sidecar = read_sidecar(plan)
        lib = check_engine_files(plan, sidecar)
        trt = require_tensorrt(sidecar.get("bundle") or plan)
        if lib is not None:
            _load_plugin(trt, lib)
        return cls(trt, plan, sidecar, what)

    @property
    def device(self) -> str:
        return "cuda"

    @property
    def id_suffix(self) -> str:
        return f":trt-{self.precision}"

    def _run_once(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        b, ctx = self._buffers, self._context
        keep = []
        for spec in self.inputs:
            a = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
            ctx.set_input_shape(spec.name, tuple(a.shape))
            ptr, h = b.upload(a)
            keep.append(h)
            ctx.set_tensor_address(spec.name, ptr)
        outs = {}
        for spec in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
            ptr, h = b.empty(shape, np.dtype(spec.dtype))
            keep.append(h)
            outs[spec.name] = (h, shape)
            ctx.set_tensor_address(spec.name, ptr)
        if not ctx.execute_async_v3(b.stream_handle):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed")
        result = {n: b.download(h, shape, np.dtype(next(o.dtype for o in self.outputs if o.name == n)))
                  for n, (h, shape) in outs.items()}
        for h in keep:
            b.free(h)
        return result

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        names = [o.name for o in self.outputs]
        want = names if output_names is None else list(output_names)
        missing = [i.name for i in self.inputs if i.name not in feeds]
        if missing or any(n not in names for n in want):
            raise ValueError(f"{self.path.name}: inputs {[i.name for i in self.inputs]} (missing {missing}), "
                             f"outputs {names} (asked {want})")
        n = len(next(iter(feeds.values())))
        step = self.max_batch or max(n, 1)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in want}
        with self._lock:
            for s in range(0, max(n, 1), step):
                got = self._run_once({k: np.asarray(v)[s:s + step] for k, v in feeds.items()})
                for k in want:
                    parts[k].append(got[k])
        return [np.concatenate(parts[k]).astype(np.float32) if parts[k][0].dtype.kind == "f" else
                np.concatenate(parts[k]) for k in want]

    def __repr__(self) -> str:
        return f"TensorRTBackend({self.path.name}, {self.precision}, inputs={[str(i) for i in self.inputs]})"
