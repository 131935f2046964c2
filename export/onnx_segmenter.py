"""``python -m export.onnx_segmenter ARGS`` (the older name) = ``python -m export onnx --family segmenter ARGS``.

The segmenter's export is :mod:`export.families.segmenter` through the one exporter (:mod:`export.exporter`); every flag
of this command is the same there (``--fp16-weights`` = the ``onnx-fp16`` format). Example::

    python -m export.onnx_segmenter --checkpoint out/segmenter/v1 --out bundles/segmenter_v1
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from export.cli import main as cli

    return cli(["onnx", "--family", "segmenter", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
