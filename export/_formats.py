"""The export formats, in one table: what each writes, where it runs, which families it takes, how it is checked.

``python -m export formats`` prints it; ``python -m export FORMAT --help`` shows one format's options. Checkpoint
formats (``source = "checkpoint"``) run through the one exporter (:mod:`export.exporter`) and a family adapter
(:mod:`export.families`); bundle formats read a bundle the checkpoint formats wrote (or a built-in one).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Format", "FORMATS", "get_format", "format_names", "format_table"]

ALL_FAMILIES = ("segmenter", "embedder", "inpainter")


@dataclass(frozen=True)
class Format:
    """One row of the table.

    Attributes:
        name: the CLI command (``python -m export NAME``).
        suffix: what it writes.
        devices: where the artifact runs (``cpu``, ``cuda``).
        families: model families it exports.
        source: ``"checkpoint"`` (a trainer run / checkpoint + ``--family``) or ``"bundle"`` (a bundle's graphs).
        engine: what runs the artifact (an SDK engine name, or the server).
        parity: the check every export of this format passes (tolerances: :data:`export._parity.TOLERANCES`).
        needs: Python packages the export needs beyond the runtime.
        module: the module implementing it (its ``main(argv)`` is the command).
        summary: one line for the table.
    """

    name: str
    suffix: str
    devices: tuple[str, ...]
    families: tuple[str, ...]
    source: str
    engine: str
    parity: str
    needs: tuple[str, ...]
    module: str
    summary: str


FORMATS: tuple[Format, ...] = (
    Format("onnx", ".onnx + manifest.json (bundle folder)", ("cpu", "cuda"), ALL_FAMILIES, "checkpoint",
           "onnxruntime", "torch vs ONNX Runtime (CPU) on seeded + real faces", ("torch", "onnx"),
           "export.exporter", "float32 ONNX graph, opset 17, dynamic batch: the default runtime"),
    Format("onnx-fp16", ".onnx + manifest.json (bundle folder)", ("cpu", "cuda"), ALL_FAMILIES, "checkpoint",
           "onnxruntime", "torch (fp32) vs ONNX Runtime, float16-weight tolerances", ("torch", "onnx"),
           "export.exporter", "conv / fc weights stored float16 (+ Cast), fp32 compute: about half the file"),
    Format("torch", ".safetensors + .onnx + manifest.json (bundle folder)", ("cpu", "cuda"), ALL_FAMILIES,
           "checkpoint", "torch", "torch vs ONNX Runtime, then the SDK's torch backend (graph rebuilt from the "
           ".safetensors) vs ONNX Runtime", ("torch", "onnx", "safetensors"), "export.exporter",
           "the onnx bundle plus the graph's weights + model config for the torch CUDA backend (fp16, CUDA graphs)"),
    Format("trt-onnx", ".onnx + .onnx.json (sidecar)", ("cuda",), ("inpainter",), "checkpoint", "tensorrt",
           "ONNX Runtime with the plugin node computed by the torch layer (onnxruntime-extensions) vs torch",
           ("torch", "onnx"), "export._plugin_onnx",
           "the inpainter with contextual attention as ONE lookthrough::ContextualAttention plugin node"),
    Format("trt", ".plan + .plan.json, or a bundle folder naming its engines", ("cuda",), ALL_FAMILIES, "bundle",
           "tensorrt", "engine vs ONNX Runtime on the stage's parity inputs (where TensorRT runs)", ("tensorrt",),
           "export.trt", "TensorRT engines of a bundle's ONNX stages: fp16 / INT8, batch profile, DLA"),
    Format("triton", "model repository (config.pbtxt + 1/model.onnx per stage)", ("cuda", "cpu"), ALL_FAMILIES,
           "bundle", "triton", "config.pbtxt parsed back; dims / dtypes read from the graphs", ("onnx",),
           "export.triton", "Triton Inference Server repository with dynamic batching, client flow README"),
)


def format_names() -> list[str]:
    return [f.name for f in FORMATS]


def get_format(name: str) -> Format:
    """The row of ``name``.

    Raises:
        ValueError: unknown format (naming the known ones).
    """
    for f in FORMATS:
        if f.name == name:
            return f
    raise ValueError(f"unknown format {name!r}; formats: {', '.join(format_names())} (python -m export formats)")


def format_table(markdown: bool = False) -> str:
    """The table as text (aligned columns) or markdown."""
    head = ("format", "writes", "runs on", "families", "from", "run by", "parity check")
    rows = [(f.name, f.suffix, "/".join(f.devices), ", ".join(f.families), f.source, f.engine, f.parity)
            for f in FORMATS]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(r)) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*r) for r in (head, *rows))
