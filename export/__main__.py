"""``python -m export <command>``: exporters that are not tied to one trainer stage.

* ``trt``      -- ONNX (a bundle stage or a file) -> TensorRT engine + manifest (:mod:`export.trt`)
* ``trt-onnx`` -- inpainter run folder -> ONNX with the attention as the TensorRT plugin node (:mod:`export.trt_onnx`)
* ``triton``   -- bundle -> Triton Inference Server model repository (:mod:`export.triton`)
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # pragma: no cover - run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMMANDS = {"trt": "export.trt", "trt-onnx": "export.trt_onnx", "triton": "export.triton"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
