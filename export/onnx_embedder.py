"""``python -m export.onnx_embedder ARGS`` (the older name) = ``python -m export onnx --family embedder ARGS``.

The embedder's export is :mod:`export.families.embedder` through the one exporter (:mod:`export.exporter`); every flag
of this command is the same there (``--fp16-weights`` = the ``onnx-fp16`` format). Example::

    python -m export.onnx_embedder --checkpoint out/student/student.safetensors --out bundles/student_v1
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from export.cli import main as cli

    return cli(["onnx", "--family", "embedder", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
