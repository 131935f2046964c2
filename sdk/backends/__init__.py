"""Inference backends. ``ort`` (ONNX Runtime) is the only one so far; TensorRT lands with ``export/``."""
