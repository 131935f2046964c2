"""LookThrough trainer (PyTorch): occlusion segmenter, contextual-attention inpainter, distilled student.

Not built yet: the training code lands with the de-occlusion and distillation issues. The SDK runs in
baseline mode (pretrained detector + dlib ResNet) until bundles trained here exist.
"""
