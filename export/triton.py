"""Bundle -> Triton Inference Server model repository, for deployments with many cameras.

One server batches the face crops of every camera together (dynamic batching) instead of each stream running its
own ONNX Runtime session. Layout written (``<p>`` = ``--prefix``, default the bundle's name)::

    <repo>/README.md                     the client flow (below) for this bundle
    <repo>/lookthrough_pipeline.json     models in pipeline order + their preprocess records and the glue
    <repo>/<p>_segment/config.pbtxt      occlusion segmenter   (+ 1/model.onnx)
    <repo>/<p>_complete/config.pbtxt     inpainter             (+ 1/model.onnx)
    <repo>/<p>_embed/config.pbtxt        embedder              (+ 1/model.onnx)

Each ``config.pbtxt``: ``platform: "onnxruntime_onnx"``, ``max_batch_size`` (0 when the graph's batch axis is
static), inputs / outputs with Triton dtypes and per-sample dims read from the ONNX graph (a per-sample scalar
output becomes ``dims: [1]`` reshaped to ``[]``), ``dynamic_batching`` (preferred sizes, queue delay),
``instance_group`` (count, GPU / CPU) and, with ``--tensorrt``, ONNX Runtime's TensorRT execution accelerator.

Why no ensemble: between the stages the SDK does work that is not a tensor op of a graph (detection and alignment
before, thresholding / dilating the segmenter's mask and compositing the completed crop into the frame between
segment and complete, the ArcFace -> dlib chip warp before embed). The client flow is therefore: detect + align on
the client (``sdk.Recognizer.detect``), send crops to ``<p>_segment``, the occluded ones to ``<p>_complete``, the
(completed) chips to ``<p>_embed``, match on the client against the gallery. ``lookthrough_pipeline.json`` holds
what a client needs for that (names, preprocess records, thresholds).

CLI::

    python -m export triton --bundle bundles/inpainter_v1 --out triton_repo --max-batch 32 --instances 2
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger(__name__)

#: numpy dtype name -> Triton data type
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "uint8": "TYPE_UINT8",
                 "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
MODEL_STAGES = ("segment", "complete", "embed")


def _tensor_block(t, batched: bool) -> str:
    from sdk.errors import BundleError

    dtype = TRITON_DTYPES.get(t.dtype)
    if dtype is None:
        raise BundleError(f"tensor {t.name}: dtype {t.dtype} has no Triton type")
    dims = t.shape[1:] if batched else t.shape
    if any(not isinstance(d, int) for d in dims):
        raise BundleError(f"tensor {t.name}: only the batch axis may be dynamic, got {t.shape}")
    lines = [f'    name: "{t.name}"', f"    data_type: {dtype}"]
    if batched and not dims:  # a per-sample scalar: Triton wants a non-empty shape
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(name: str, onnx_bytes: bytes, *, max_batch: int = 32, preferred: tuple[int, ...] = (8, 16, 32),
                 queue_delay_us: int = 2000, instances: int = 1, kind: str = "gpu", tensorrt: bool = False) -> str:
    """The ``config.pbtxt`` text of one ONNX model (see the module docstring)."""
    from export.trt import graph_io

    inputs, outputs = graph_io(onnx_bytes)
    batched = all(t.dynamic_batch for t in inputs + outputs)
    out = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch if batched else 0}"]
    out.append("input [\n" + ",\n".join(_tensor_block(t, batched) for t in inputs) + "\n]")
    out.append("output [\n" + ",\n".join(_tensor_block(t, batched) for t in outputs) + "\n]")
    if batched:
        pref = [p for p in preferred if p <= max_batch] or [max_batch]
        out.append("dynamic_batching {\n"
                   f"  preferred_batch_size: [ {', '.join(str(p) for p in pref)} ]\n"
                   f"  max_queue_delay_microseconds: {int(queue_delay_us)}\n}}")
    out.append(f"instance_group [\n  {{\n    count: {int(instances)}\n    kind: KIND_{kind.upper()}\n  }}\n]")
    if tensorrt:
        out.append('optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n'
                   '      name : "tensorrt"\n      parameters { key: "precision_mode" value: "FP16" }\n'
                   '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n    } ]\n  }\n}')
    return "\n".join(out) + "\n"


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def parse_pbtxt(text: str) -> dict:
    """A protobuf-text reader for the subset ``config_pbtxt`` writes (messages, lists, scalars). Repeated fields and
    ``[ ... ]`` lists become Python lists; quoted strings lose their quotes; numbers become int / float.

    Raises:
        ValueError: the text is not well formed.
    """
    tokens = [m.group(2) or m.group(3) or m.group(4) for m in _TOKEN.finditer(text) if not m.group(1)]
    tokens = [t for t in tokens if t is not None]
    pos = 0

    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return tok[1:-1]
        for conv in (int, float):
            try:
                return conv(tok)
            except ValueError:
                pass
        return tok

    def value() -> Any:
        nonlocal pos
        tok = tokens[pos]
        if tok == "{":
            pos += 1
            return message("}")
        if tok == "[":
            pos += 1
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        pos += 1
        return scalar(tok)

    def message(end: str | None) -> dict:
        nonlocal pos
        msg: dict = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            if key in msg:  # a repeated field
                msg[key] = (msg[key] if isinstance(msg[key], list) else [msg[key]]) + (v if isinstance(v, list)
                                                                                     else [v])
            else:
                msg[key] = v
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
        if end is not None:
            if pos >= len(tokens):
                raise ValueError("unterminated message")
            pos += 1
        return msg

    try:
        return message(None)
    except IndexError:
        raise ValueError("truncated protobuf text") from None


def write_repository(bundle: str | Path, out: str | Path, *, prefix: str | None = None, max_batch: int = 32,
                     preferred: tuple[int, ...] = (8, 16, 32), queue_delay_us: int = 2000, instances: int = 1,
                     kind: str = "gpu", tensorrt: bool = False) -> dict:
    """Write the model repository for every ONNX stage of ``bundle``; returns the pipeline description (also
    written as ``lookthrough_pipeline.json``).

    Raises:
        sdk.errors.BundleError: the bundle has no ONNX stage, or a graph cannot be described for Triton.
    """
    from export.trt import stage_from_bundle
    from sdk.bundle import find_manifest
    from sdk.errors import BundleError

    out = Path(out)
    manifest = json.loads(find_manifest(bundle).read_text())
    prefix = re.sub(r"[^A-Za-z0-9_]+", "_", prefix or manifest.get("name") or "lookthrough").strip("_")
    models = []
    for stage in MODEL_STAGES:
        if not (manifest.get("stages") or {}).get(stage):
            continue
        try:
            src = stage_from_bundle(bundle, stage)
        except BundleError as exc:
            log.info("skipping %s: %s", stage, exc)
            continue
        name = f"{prefix}_{stage}"
        blob = src.onnx.read_bytes()
        text = config_pbtxt(name, blob, max_batch=max_batch, preferred=preferred, queue_delay_us=queue_delay_us,
                            instances=instances, kind=kind, tensorrt=tensorrt)
        parse_pbtxt(text)  # what we write must read back
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        (out / name / "config.pbtxt").write_text(text)
        shutil.copyfile(src.onnx, out / name / "1" / "model.onnx")
        st = manifest["stages"][stage]
        models.append({"stage": stage, "model": name, "kind": src.kind, "preprocess": src.preprocess,
                       "config": st.get("config") or {}})
    if not models:
        raise BundleError(f"bundle {bundle!s} has no ONNX stage (segment / complete / embed) to serve")
    from export._bundle import export_record

    mpath = find_manifest(bundle)
    pipeline = {"format": "lookthrough.triton_pipeline", "format_version": 1, "bundle": manifest.get("name"),
                "client_side": ["detect (MTCNN) + align (sdk.Recognizer.detect)", "match against the gallery"],
                "models": models, "match": manifest.get("match"),
                "export": export_record("triton", "bundle", mpath, bundle, max_batch=int(max_batch),
                                        instances=int(instances), kind=kind, tensorrt=bool(tensorrt))}
    (out / "lookthrough_pipeline.json").write_text(json.dumps(pipeline, indent=2) + "\n")
    (out / "README.md").write_text(_readme(pipeline))
    return pipeline


def _readme(p: dict) -> str:
    rows = "\n".join(f"| {m['stage']} | `{m['model']}` | {m['kind']} |" for m in p["models"])
    return (f"# Triton model repository for bundle `{p['bundle']}`\n\n"
            "Start: `tritonserver --model-repository <this folder>` (the `README.md` and the pipeline JSON here are "
            "not models; Triton only loads the sub-folders).\n\n| stage | Triton model | kind |\n|---|---|---|\n"
            f"{rows}\n\nClient flow per frame: detect and align faces on the client (`sdk.Recognizer.detect`), "
            "send the 112x112 ArcFace crops to the segment model, complete the crops whose occlusion probability is "
            "at least the complete stage's `min_occlusion` (threshold the mask at 0.5, dilate, composite the completed "
            "pixels into the crop), embed, and match on the client. `lookthrough_pipeline.json` has every model's "
            "preprocess record and stage config. Requests from all cameras share the server's dynamic batcher.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export triton", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="default", help="bundle: built-in name, folder or manifest.json")
    p.add_argument("--out", type=Path, required=True, help="model repository folder to write")
    p.add_argument("--prefix", help="model name prefix (default: the bundle's name)")
    p.add_argument("--max-batch", type=int, default=32, help="max_batch_size (default 32)")
    p.add_argument("--preferred", default="8,16,32", help="preferred batch sizes (default 8,16,32)")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching queue delay (default 2000)")
    p.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="instance kind (default gpu)")
    p.add_argument("--tensorrt", action="store_true", help="ONNX Runtime's TensorRT accelerator (FP16) in Triton")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from sdk.errors import LookThroughError

    try:
        preferred = tuple(int(v) for v in args.preferred.split(","))
        pipe = write_repository(args.bundle, args.out, prefix=args.prefix, max_batch=args.max_batch,
                                preferred=preferred, queue_delay_us=args.queue_delay_us, instances=args.instances,
                                kind=args.kind, tensorrt=args.tensorrt)
    except (LookThroughError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %s: %s", args.out, ", ".join(m["model"] for m in pipe["models"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
