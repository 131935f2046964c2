"""Exporters from trainer checkpoints to model bundles (ONNX for ONNX Runtime; TensorRT engines later).

* :mod:`export.onnx_embedder` -- a student checkpoint (``trainer/student/``) -> ``student.onnx`` (uint8 NHWC
  RGB chips in, raw 128-d descriptor out, preprocessing inside the graph) -> a bundle folder whose embed stage is
  ``kind: "onnx_embedder"`` (read by :class:`sdk.embed_generic.OnnxEmbedder`).
  ``python -m export.onnx_embedder --checkpoint out/student/student.safetensors --out bundles/student_v1``.

Bundle format: see ``sdk/bundle.py``.
"""
