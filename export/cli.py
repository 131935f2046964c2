"""The command line of ``python -m export FORMAT ...``: every export, one command, one table of formats.

    python -m export formats                                       the table (format, writes, runs on, families, ...)
    python -m export FORMAT --help                                 one format's options
    python -m export onnx   --family segmenter --checkpoint out/segmenter/v1 --out bundles/segmenter_v1
    python -m export torch  --family inpainter --checkpoint out/inpainter/id --out bundles/inpainter_v1
    python -m export onnx-fp16 --family embedder --checkpoint out/student/student.safetensors --out bundles/student \\
                            --segment-from default
    python -m export trt-onnx --family inpainter --checkpoint out/inpainter/id --out engines/inpainter_trt.onnx
    python -m export trt    --bundle bundles/inpainter_v1 --fp16 --out engines/inpainter_v1      (needs TensorRT)
    python -m export triton --bundle bundles/inpainter_v1 --out triton_repo

Checkpoint formats (onnx, onnx-fp16, torch, trt-onnx) load a trainer checkpoint through its family adapter
(export/families/) and write a bundle (or, trt-onnx, a file + sidecar JSON) whose every artifact carries its
metadata: preprocess record, source checkpoint SHA-256, exporter version, opset, parity results. Bundle formats
(trt, triton) read a bundle. The older per-family commands still work: ``python -m export.onnx_segmenter``,
``export.onnx_embedder``, ``export.onnx_inpainter`` = ``python -m export onnx --family ...``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from export._formats import Format, format_table, get_format

log = logging.getLogger("export")


def _usage() -> str:
    return __doc__.strip() + "\n\n" + format_table() + "\n"


def checkpoint_parser(fmt: Format) -> argparse.ArgumentParser:
    """The options of a checkpoint format (``onnx``, ``onnx-fp16``, ``torch``, ``trt-onnx``)."""
    from export.families import family

    epilog = "\n".join(f"  --family {f}: --checkpoint = {family(f).checkpoint_help}; default base bundle: "
                       f"{family(f).base}" for f in fmt.families)
    p = argparse.ArgumentParser(prog=f"python -m export {fmt.name}", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=f"{fmt.name}: {fmt.summary}.\nwrites: {fmt.suffix}; runs on: "
                                            f"{'/'.join(fmt.devices)} ({fmt.engine}); parity: {fmt.parity}.",
                                epilog="families:\n" + epilog)
    single = fmt.families[0] if len(fmt.families) == 1 else None
    p.add_argument("--family", choices=fmt.families, default=single, required=single is None,
                   help="model family" + (f" (default {single})" if single else ""))
    p.add_argument("--checkpoint", "--generator", dest="checkpoint", type=Path, required=True,
                   help="the trainer's output for the family (see below); --generator is the older name")
    p.add_argument("--out", type=Path, required=True,
                   help="ONNX file to write (+ .json sidecar)" if fmt.name == "trt-onnx" else "bundle folder to write")
    if fmt.name == "trt-onnx":
        p.add_argument("--static-batch", action="store_true", help="fix the batch at 1 (default: dynamic)")
    else:
        p.add_argument("--name", default=None, help="bundle name (default: the --out folder name)")
        p.add_argument("--description", default=None, help="bundle description (default: the family's)")
        p.add_argument("--base", "--bundle-from", dest="base", default=None,
                       help="bundle whose other stages the new one keeps (built-in name or folder; SDK files are "
                            "referenced as pkg:sdk/models/..., others linked or copied in); default: the family's")
        p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads in the stage (default 1)")
        if fmt.name != "onnx-fp16":
            p.add_argument("--fp16-weights", action="store_true",
                           help="store conv/fc weights as float16 (+ Cast to float32): about half the ONNX file")
        if "embedder" in fmt.families:
            p.add_argument("--segment-from", default=None,
                           help="embedder: also copy this bundle's segment stage (e.g. default)")
        if "segmenter" in fmt.families:
            p.add_argument("--threshold", type=float, default=0.5,
                           help="segmenter: pixel / face occlusion threshold (default 0.5)")
        if "inpainter" in fmt.families:
            p.add_argument("--min-occlusion", type=float, default=0.5,
                           help="inpainter: complete faces at least this occluded (default 0.5)")
            p.add_argument("--dilate", type=int, default=1,
                           help="inpainter: grow the segmenter's mask by this many px (default 1)")
    return p


def run_checkpoint_format(fmt: Format, argv: list[str]) -> int:
    from export.exporter import ExportConfig, export
    from export.families import StageOptions

    args = checkpoint_parser(fmt).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opts = StageOptions(threads=getattr(args, "threads", 1), threshold=getattr(args, "threshold", 0.5),
                        min_occlusion=getattr(args, "min_occlusion", 0.5), dilate=getattr(args, "dilate", 1))
    try:
        cfg = ExportConfig(fmt.name, args.family, args.checkpoint, args.out, name=getattr(args, "name", None),
                           description=getattr(args, "description", None), base=getattr(args, "base", None),
                           segment_from=getattr(args, "segment_from", None),
                           fp16_weights=getattr(args, "fp16_weights", False), options=opts,
                           dynamic_batch=not getattr(args, "static_batch", False))
        result = export(cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # CheckpointError, ParityError, BundleError ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "formats":
        print(format_table(markdown="--markdown" in argv[1:]))
        return 0
    try:
        fmt = get_format(argv[0])
    except ValueError as exc:
        print(f"error: {exc}\n\n{format_table()}", file=sys.stderr)
        return 2
    if fmt.source == "bundle":
        return importlib.import_module(fmt.module).main(argv[1:])
    return run_checkpoint_format(fmt, argv[1:])

