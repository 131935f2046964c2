"""``python -m export.trt_onnx`` (the older name of ``python -m export trt-onnx --family inpainter``).

The graph code is :mod:`export._plugin_onnx` (re-exported here: ``export_trt_onnx``, ``attention_as_custom_op``,
``custom_nodes``, ``node_attributes`` ...); ``--generator RUN`` is accepted as before.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export._plugin_onnx import (DOMAIN, INPUTS, OP_TYPE, OUTPUT, PLUGIN_VERSION, SIZE,  # noqa: E402,F401
                                 attention_as_custom_op, custom_nodes, export_trt_onnx, export_trt_onnx_bytes,
                                 node_attributes)


def main(argv: list[str] | None = None) -> int:
    """= ``python -m export trt-onnx ARGS`` (the family is the inpainter, the only one with the plugin)."""
    from export.cli import main as cli

    return cli(["trt-onnx", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
