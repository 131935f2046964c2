"""Record the SHA-256 of the ONNX graphs the exporters write for seeded models into ``tests/golden/export_onnx.json``.

Run once at commit bbfa1ff (the per-family exporters ``export/onnx_{segmenter,inpainter,embedder}.py`` and
``export/trt_onnx.py``, before issue #13's one exporter) with::

    .venv/bin/python tests/golden/make_export_golden.py

The models are the families' networks with every float tensor of their state dict drawn from a seeded normal
distribution (:func:`seeded_state`; BatchNorm variances positive), so the weights do not depend on the modules'
init code, plus the dlib ResNet port with the packaged ``.dat``'s weights. ``tests/test_export.py`` re-exports the same models through ``python -m export`` and compares bytes.
torch's ONNX exporter is part of the picture: the test skips when the installed torch is not the recorded one.

Do not regenerate it to make a test pass: it is the *before* picture. Graphs whose BatchNorm the exporter folds
round differently on another processor; ``graphs_recorded_elsewhere`` holds the digests of bbfa1ff's exporters re-run
(this script, run from a checkout of bbfa1ff) on an AMD EPYC, accepted as well.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "export_onnx.json"


def seeded_state(model, seed: int = 0):
    """``model`` with every floating tensor of its state dict replaced by seeded N(0, 0.05) values (BatchNorm
    running variances by ``0.5 + |N|``, so the folded graph stays finite); returns ``model`` in eval mode."""
    import torch

    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    new = {}
    for k in sorted(sd):
        t = sd[k]
        if not t.is_floating_point():
            new[k] = t
            continue
        v = rng.normal(0.0, 0.05, tuple(t.shape)).astype(np.float32)
        if k.endswith("running_var"):
            v = 0.5 + np.abs(v)
        new[k] = torch.from_numpy(v).to(t.dtype)
    model.load_state_dict(new, strict=True)
    return model.eval()


def golden_models() -> dict:
    """``name -> (family, model)``: the seeded networks the golden graphs are exported from."""
    from trainer.models.dlib_resnet import DlibResNet
    from trainer.models.inpainter import Generator, InpainterConfig
    from trainer.models.segmenter import OcclusionSegmenter, SegmenterConfig
    from trainer.student.models import new_student

    return {
        "segmenter_w8": ("segmenter", seeded_state(OcclusionSegmenter(SegmenterConfig(width=8)), 1)),
        "segmenter_w24": ("segmenter", seeded_state(OcclusionSegmenter(SegmenterConfig()), 2)),
        "inpainter_w4": ("inpainter", seeded_state(Generator(InpainterConfig(width=4)), 3)),
        "inpainter_w12": ("inpainter", seeded_state(Generator(InpainterConfig()), 4)),
        "mobilefacenet_128": ("embedder", seeded_state(new_student("mobilefacenet", 128), 5)),
        "dlib_packaged": ("embedder", DlibResNet.from_dat()),  # dlib's own weights (student-v1's architecture)
    }


def sha(blob: bytes) -> dict:
    return {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import torch

    from export import onnx_embedder, onnx_inpainter, onnx_segmenter, trt_onnx
    from trainer.student.graph import export_onnx_bytes as student_onnx

    out: dict = {"torch": torch.__version__, "commit": "bbfa1ff", "graphs": {}}
    for name, (family, model) in golden_models().items():
        if family == "segmenter":
            out["graphs"][f"onnx/{name}"] = sha(onnx_segmenter.export_onnx_bytes(model))
        elif family == "inpainter":
            blob = onnx_inpainter.export_onnx_bytes(model)
            out["graphs"][f"onnx/{name}"] = sha(blob)
            out["graphs"][f"onnx-fp16/{name}"] = sha(onnx_embedder.to_fp16_weights(blob))
            out["graphs"][f"trt-onnx/{name}"] = sha(trt_onnx.export_trt_onnx_bytes(model))
        else:
            blob = student_onnx(model)
            out["graphs"][f"onnx/{name}"] = sha(blob)
            out["graphs"][f"onnx-fp16/{name}"] = sha(onnx_embedder.to_fp16_weights(blob))
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
