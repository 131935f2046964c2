"""Check the PyTorch port of MediaPipe's BlazeFace (trainer/detector/tflite_port.py) against the TFLite interpreter.

Runs ``face_detection_<variant>.tflite`` with ``ai-edge-litert`` (not a project requirement: install it anywhere,
e.g. ``pip install --target /tmp/litert ai-edge-litert==2.3.0`` and pass ``--litert /tmp/litert``) and our port on
scikit-image's astronaut (and a noise image) at the model's input size, and prints the maximum absolute
differences of the raw outputs (``regressors`` (1, 896, 16) px, ``classificators`` (1, 896, 1) logits) as JSON.

    python tools/check_blazeface_port.py --litert /tmp/litert
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def port_outputs(bw, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw (regressors (1, A, 16), classificators (1, A, 1)) of the port, in the tflite's anchor order."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        feats = bw.backbone(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        reg, cls = [], []
        for f_i in range(len(feats)):
            for h in bw.heads:
                if h.feature != f_i:
                    continue
                y = F.conv2d(feats[f_i], torch.from_numpy(h.weight), torch.from_numpy(h.bias))
                y = y.permute(0, 2, 3, 1).reshape(1, -1, 16 if h.role == "reg" else 1)
                (reg if h.role == "reg" else cls).append(y.numpy())
    return np.concatenate(reg, 1), np.concatenate(cls, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--litert", default="", help="folder to add to sys.path for ai_edge_litert")
    p.add_argument("--variant", default="front", help="front | back")
    args = p.parse_args(argv)
    if args.litert:
        sys.path.append(args.litert)
    import cv2
    import skimage.data
    from ai_edge_litert.interpreter import Interpreter

    from trainer.detector.tflite_port import blazeface_path, read_blazeface

    path = blazeface_path(args.variant)
    bw = read_blazeface(path)
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    size = int(inp["shape"][1])
    outs = {d["name"]: d["index"] for d in it.get_output_details()}
    res = {"model": str(path.name), "input": size}
    imgs = {"astronaut": cv2.resize(skimage.data.astronaut(), (size, size)).astype(np.float32) / 127.5 - 1,
            "noise": np.random.default_rng(0).uniform(-1, 1, (size, size, 3)).astype(np.float32)}
    for name, img in imgs.items():
        x = img[None].astype(np.float32)
        it.set_tensor(inp["index"], x)
        it.invoke()
        reg_t = it.get_tensor(outs["regressors"])
        cls_t = it.get_tensor(outs["classificators"])
        reg_p, cls_p = port_outputs(bw, x)
        res[name] = {"regressors_max_abs_diff": float(np.abs(reg_t - reg_p).max()),
                     "regressors_max_abs": float(np.abs(reg_t).max()),
                     "classificators_max_abs_diff": float(np.abs(cls_t - cls_p).max()),
                     "best_anchor_tflite": int(cls_t[0, :, 0].argmax()), "best_anchor_port": int(cls_p[0, :, 0].argmax())}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
