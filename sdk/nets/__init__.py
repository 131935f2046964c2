"""The model families' torch networks, defined once for the trainer, the exporter and the SDK's torch backend.

* :mod:`sdk.nets.segmenter` -- :class:`OcclusionSegmenter` (tiny UNet, occlusion map M + probability);
* :mod:`sdk.nets.inpainter` -- :class:`Generator` (DeepFill v1-style, with :mod:`sdk.nets.contextual_attention`);
* :mod:`sdk.nets.students` -- ResNet-18 / MobileFaceNet students and :class:`ArcInput`;
* :mod:`sdk.nets.dlib_resnet` -- the PyTorch port of dlib's ResNet (built from the ``.dat``'s layer spec);
* :mod:`sdk.nets.graphs` -- each family's network wrapped into the graph a stage runs (named inputs / outputs, the
  input conversion inside), and the bundle's torch weight file (safetensors + a JSON model config, no pickle).

Why here and not in ``trainer/models``: the torch backend (:mod:`sdk.backends.torch_cuda`) rebuilds these
networks from bundle weights, and the runtime never imports the trainer (imports run kernels -> sdk -> trainer ->
export). ``trainer/models`` re-exports them and keeps what only training needs (critics, losses, checkpoints).

Importing this package does not import torch; its modules do, at module level, so the rest of ``sdk`` imports
them only inside functions (``tests/test_import_order.py`` checks both).
"""
from __future__ import annotations

__all__: list[str] = []
