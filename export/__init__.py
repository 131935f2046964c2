"""Exporters: trainer checkpoints -> model bundles (ONNX, torch weights), TensorRT engines, Triton repositories.

Organised by format, from one table (:mod:`export._formats`; ``python -m export formats`` prints it):

* ``cli.py`` / ``__main__.py`` -- ``python -m export FORMAT ...``, the one command;
* ``exporter.py`` -- the one exporter of the checkpoint formats (``onnx``, ``onnx-fp16``, ``torch``, ``trt-onnx``);
* ``families/`` -- one small adapter per model family (segmenter, embedder, inpainter): how its checkpoint loads,
  which graph wraps it, its parity inputs, its bundle stage;
* ``_bundle.py`` (the one manifest / sidecar writer and the metadata every artifact carries), ``_parity.py`` (the
  one parity check and its tolerances), ``_onnx.py`` (tracing, float16 weights), ``_plugin_onnx.py`` (the
  inpainter graph with the TensorRT plugin node);
* ``trt.py`` (bundle -> TensorRT engines), ``triton.py`` (bundle -> Triton model repository);
* ``onnx_segmenter.py``, ``onnx_embedder.py``, ``onnx_inpainter.py``, ``trt_onnx.py`` -- the older command names,
  kept as aliases of ``python -m export onnx|trt-onnx --family ...``.

Bundle format: ``sdk/bundle.py``; the export record every stage carries: ``export/_bundle.py``.
"""
from __future__ import annotations

#: who wrote an artifact (the ``export`` record of every manifest stage / sidecar)
EXPORTER = "lookthrough-export"
#: 2: one exporter from one table, every artifact with its metadata (1: the per-family exporters)
EXPORTER_VERSION = "2.0"
