"""Exporters from trainer checkpoints to model bundles (ONNX for ONNX Runtime, TensorRT engines).

Not built yet: it lands with the first trained models. Bundle format: see ``sdk/bundle.py``.
"""
