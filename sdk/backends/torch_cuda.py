"""The torch backend: a family's graph rebuilt from a bundle's torch weights, run by PyTorch (CUDA, or the CPU).

The weights file (``<family>.safetensors``, written by ``python -m export torch``) holds the graph's tensors and its
network config (:mod:`sdk.nets.graphs`: safetensors + JSON, no pickle); the graph is the one the ONNX export traced,
so it takes the same named numpy inputs and gives the same outputs as the ``.onnx`` on ONNX Runtime.

On CUDA:

* **fp16** (``precision="fp16"``, the default on CUDA): weights and activations in half precision; uint8 inputs are
  converted on the device, float inputs are cast after the upload; outputs come back as float32 numpy.
* **batched**: one forward pass per call, whatever the batch (the stage bounds it by its ``batch_size``).
* **CUDA graphs** (``cuda_graphs=True``): each batch size is padded up to a bucket (1, 2, 4 ... 64) whose captured
  graph is replayed, removing the per-kernel launch overhead that dominates small faces at small batches; a capture
  that fails turns them off for that model (logged) and the call runs eagerly.
* the inpainter's contextual attention runs on the fused CUDA kernel (:func:`sdk._cuda_ops.use_cuda_kernel`) when
  the C++ core was built with CUDA; without it, in fp16, the attention layer computes in float32 (its softmax
  and patch norms need the range).

``import sdk.backends.torch_cuda`` does not import torch (opening a model does): the CPU / ONNX Runtime path never
needs it. Thread safety: eager runs may come from several threads; CUDA-graph replays are serialised by a lock.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdk.backends.base import BackendConfig, TensorInfo
from sdk.errors import BackendUnavailableError, ModelFileError

log = logging.getLogger(__name__)

__all__ = ["TorchBackend", "require_torch", "BUCKETS"]

#: batch sizes CUDA graphs are captured for (a call is padded up to the next one; larger calls run eagerly)
BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def require_torch(what: str = "model") -> Any:
    """``import torch`` or :class:`BackendUnavailableError` in one line (what is missing, how to run without it)."""
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(f"{what}: the torch backend needs PyTorch, which is not installed here ({exc}); "
                                      "pip install torch (the CUDA build on a GPU machine), or run the same bundle "
                                      "on ONNX Runtime: backend='ort'") from None
    return torch


def _resolve_device(torch: Any, device: str, what: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"{what}: device={device!r} was asked for the torch backend, but torch {torch.__version__} sees no CUDA "
            f"device (CUDA build: {torch.version.cuda}); use device='cpu', or ONNX Runtime: backend='ort'")
    return device


class TorchBackend:
    """A family graph on torch (see the module docstring and :class:`sdk.backends.base.Backend`).

    Attributes:
        graph: the ``nn.Module`` (on :attr:`torch_device`, float16 or float32).
        path: the weights file; meta: its metadata (``graph``, ``net`` config).
        half: whether it runs in float16; kernel_layers: attention layers routed through the CUDA kernel.
    """

    engine = "torch"

    def __init__(self, graph: Any, meta: dict, path: Path, device: str = "cpu", half: bool = False,
                 cuda_graphs: bool = False):
        import torch

        self._torch = torch
        self.path, self.meta = Path(path), meta
        self.torch_device = torch.device(device)
        self.half = bool(half)
        self.dtype = torch.float16 if self.half else torch.float32
        ins, outs = graph.io()
        self.inputs = tuple(TensorInfo(t.name, t.dtype, tuple(t.shape)) for t in ins)
        self.outputs = tuple(TensorInfo(t.name, t.dtype, tuple(t.shape)) for t in outs)
        self.graph = graph.to(self.torch_device, dtype=self.dtype).eval()
        self.kernel_layers = 0
        for m in self.graph.modules():  # eager torch: F.fold (same numbers as the ONNX-friendly padded sums, faster)
            if type(m).__name__ == "ContextualAttention" and hasattr(m, "export_friendly"):
                m.export_friendly = False
        if meta.get("graph") == "inpainter" and self.torch_device.type == "cuda":
            from sdk import _cuda_ops

            if _cuda_ops.available():
                self.kernel_layers = _cuda_ops.use_cuda_kernel(self.graph)
            elif self.half:
                _attention_in_float32(self.graph)
        self.providers = (f"torch-{self.torch_device}" + ("-fp16" if self.half else ""),)
        self._graphs = _CudaGraphs(self) if cuda_graphs and self.torch_device.type == "cuda" else None

    @classmethod
    def open(cls, model: str | Path | bytes, config: BackendConfig = BackendConfig(engine="torch"),
             name: str | Path | None = None, what: str = "model") -> "TorchBackend":
        """Load a torch weight file on ``config.device`` (``auto``: CUDA when torch sees one) at
        ``config.precision`` (``auto``: fp16 on CUDA, fp32 on the CPU).

        Raises:
            BackendUnavailableError: no torch, CUDA asked for but not visible, fp16 asked for on the CPU.
            ModelFileError: the weight file is missing or not a LookThrough torch graph (names the file).
        """
        torch = require_torch(what)
        if isinstance(model, bytes):
            raise ModelFileError(name or "<in-memory model>", f"{what}: the torch backend loads a .safetensors weight "
                                                              "file, not serialized ONNX bytes")
        device = _resolve_device(torch, config.device, what)
        cuda = device.startswith("cuda")
        half = config.precision == "fp16" or (config.precision == "auto" and cuda)
        if half and not cuda:
            raise BackendUnavailableError(f"{what}: precision='fp16' runs on CUDA only; use precision='fp32' (or "
                                          "'auto') on the CPU")
        from sdk.nets.graphs import load_graph

        graph, meta = load_graph(model)
        backend = cls(graph, meta, Path(model), device, half, config.cuda_graphs)
        log.debug("%s: torch %s on %s (%s)", what, torch.__version__, device, "fp16" if half else "fp32")
        return backend

    @property
    def device(self) -> str:
        return self.torch_device.type

    @property
    def id_suffix(self) -> str:
        return f":torch-{self.device}" + ("-fp16" if self.half else "")

    def _upload(self, a: np.ndarray) -> Any:
        t = self._torch.from_numpy(a).to(self.torch_device)
        return t.to(self.dtype) if t.is_floating_point() else t

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        xs = []
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ValueError(f"{self.path.name}: missing input {spec.name!r} (inputs: "
                                 f"{[i.name for i in self.inputs]})")
            a = np.ascontiguousarray(feeds[spec.name])
            if a.dtype != np.dtype(spec.dtype) or not spec.matches(spec.dtype, a.shape):
                raise ValueError(f"{self.path.name}: input {spec} got {a.dtype} {a.shape}")
            xs.append(a)
        if len({len(a) for a in xs}) != 1:
            raise ValueError(f"{self.path.name}: inputs of different batch sizes {[a.shape for a in xs]}")
        return xs

    def forward(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The graph on host arrays (checked), outputs as float32 / declared-dtype host arrays, in graph order."""
        torch = self._torch
        with torch.inference_mode():
            if self._graphs is not None:
                outs = self._graphs.run(xs)
                if outs is not None:
                    return outs
            out = self.graph(*(self._upload(a) for a in xs))
            out = out if isinstance(out, (tuple, list)) else (out,)
            return [o.to(torch.float32).cpu().numpy() for o in out]

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        names = [o.name for o in self.outputs]
        want = names if output_names is None else list(output_names)
        unknown = [n for n in want if n not in names]
        if unknown:
            raise ValueError(f"{self.path.name}: no outputs {unknown}; outputs: {names}")
        by_name = dict(zip(names, self.forward(self._check_feeds(feeds))))
        return [by_name[n] for n in want]

    def __repr__(self) -> str:
        return (f"TorchBackend({self.path.name}, {self.meta.get('graph')}, device={self.torch_device}, "
                f"{'fp16' if self.half else 'fp32'}, cuda_graphs={self._graphs is not None})")


def _attention_in_float32(model: Any) -> int:
    """Make every contextual attention layer compute in float32 inside a float16 model (hooks cast in and out)."""
    import torch

    def pre(module, args):
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def post(module, args, out):
        return out.half() if isinstance(out, torch.Tensor) else out

    n = 0
    for m in model.modules():
        if type(m).__name__ == "ContextualAttention":
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
            n += 1
    return n


class _CudaGraphs:
    """Captured CUDA graphs of a :class:`TorchBackend`, one per batch bucket (:data:`BUCKETS`)."""

    def __init__(self, backend: TorchBackend):
        self.b = backend
        self.cache: dict[int, tuple[list, Any, list]] = {}
        self.lock = threading.Lock()
        self.enabled = True

    def _capture(self, bucket: int, xs: Sequence[np.ndarray]) -> tuple[list, Any, list]:
        torch = self.b._torch
        static = [torch.zeros((bucket, *a.shape[1:]), device=self.b.torch_device,
                              dtype=self.b.dtype if a.dtype.kind == "f" else torch.from_numpy(a[:0]).dtype)
                  for a in xs]
        side = torch.cuda.Stream(self.b.torch_device)
        side.wait_stream(torch.cuda.current_stream(self.b.torch_device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN algorithm choice and allocations happen outside the capture
                self.b.graph(*static)
        torch.cuda.current_stream(self.b.torch_device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.b.graph(*static)
        out = list(out) if isinstance(out, (tuple, list)) else [out]
        self.cache[bucket] = (static, graph, out)
        log.debug("captured a CUDA graph of %s for batch %d", self.b.path.name, bucket)
        return self.cache[bucket]

    def run(self, xs: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """Outputs of a replay, or ``None`` (the caller runs eagerly) for batches above the largest bucket or once a
        capture failed."""
        n = len(xs[0])
        bucket = next((b for b in BUCKETS if b >= n), None)
        if not self.enabled or bucket is None or n == 0:
            return None
        torch = self.b._torch
        with self.lock:
            try:
                static, graph, out = self.cache.get(bucket) or self._capture(bucket, xs)
            except Exception as exc:  # noqa: BLE001 - an op that cannot be captured: fall back to eager, once
                self.enabled = False
                log.warning("%s: CUDA graph capture failed (%s); running eagerly", self.b.path.name,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return None
            for s, a in zip(static, xs):
                s[:n].copy_(torch.from_numpy(a))
                if n < bucket:
                    s[n:].zero_()
            graph.replay()
            return [o[:n].to(torch.float32).cpu().numpy() for o in out]
