"""Model-file readers and graph builders of the SDK runtime (numpy / ONNX Runtime only, no torch).

This folder also holds the built-in bundles (``sdk/models/<name>/manifest.json``); modules here are code:
:mod:`sdk.models.dlib_dat` (reader of dlib's serialized DNN ``.dat`` files) and :mod:`sdk.models.dlib_onnx`
(dlib's face recognition ResNet as an ONNX graph, built from the ``.dat`` at load time).
"""
