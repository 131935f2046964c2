"""ONNX -> TensorRT engine (``python -m export trt``): ``engine.plan`` plus an ``engine.plan.json`` manifest.

Written against TensorRT's public Python API and run where TensorRT exists (Jetson JetPack, NGC TensorRT
containers). Without TensorRT the command fails with one line saying so and how to run the same bundle on ONNX
Runtime instead. What it does:

* parses the ONNX graph (a bundle stage's model, or ``--onnx``; for the inpainter with the fused CUDA attention use
  the ``trt-onnx`` format's graph (:mod:`export._plugin_onnx`) and ``--plugin liblookthrough_trt_plugin.so``, which is registered first);
* one optimisation profile for the batch axis (``--batch MIN,OPT,MAX``; other axes must be static);
* precision: ``--fp16``; ``--int8`` with entropy calibration over a folder of aligned face crops (``--calib``),
  either as explicit quantization (``--int8-mode qdq``, the default: Q/DQ nodes with entropy-calibrated scales
  written by ONNX Runtime's quantizer, the only INT8 route TensorRT >= 11 has, also valid on 8 / 10) or through
  an ``IInt8EntropyCalibrator2`` (``--int8-mode calibrator``, TensorRT <= 10);
* a timing cache file (``--timing-cache``, read if present and written back: rebuilds take seconds);
* ``--dla N`` builds for a Jetson DLA core (GPU fallback for unsupported layers; needs fp16 or int8).

``--bundle B`` without ``--stage`` builds every ONNX stage into ``--out`` as a bundle folder naming its engines
(``<stage>.plan`` + sidecars, ``manifest.json`` with each stage's ``tensorrt`` file): ``sdk.Recognizer(folder)`` runs
them where TensorRT and a GPU are, the ONNX graphs elsewhere. After a build the engine is checked against ONNX
Runtime on the source graph (``--no-parity`` skips it).

The manifest (``engine.plan.json``, what ``sdk.Recognizer("engine.plan")`` reads) records the bundle manifest it
belongs to (relative path), the stage, its ``preprocess`` record (``sdk/preprocess.py``, from the bundle; or the one this
tool assumed, marked so), input / output names, dtypes and shapes with the profile, the builder settings, the
TensorRT version, the device and the plugin library (path + sha256).

TensorRT >= 11 networks are always strongly typed: there ``--fp16`` converts the ONNX graph to float16 first
(``onnxconverter-common``, float32 inputs / outputs kept) instead of setting a builder flag.

CLI::

    python -m export trt --bundle bundles/inpainter_v1 --stage complete --fp16 --out engines/inpainter.plan
    python -m export trt --onnx inpainter_trt.onnx --plugin build/.../liblookthrough_trt_plugin.so --fp16 \\
        --batch 1,8,32 --timing-cache engines/timing.cache --out engines/inpainter.plan
    python -m export trt --bundle default --stage segment --int8 --calib faces/ --out engines/segmenter.plan
    python -m export trt --bundle bundles/inpainter_v1 --fp16 --out bundles/inpainter_v1_trt      (every stage)
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from sdk.backends.tensorrt import TensorRTUnavailableError, require_tensorrt as _require_tensorrt  # noqa: F401
from sdk.bundle import SIDECAR_FORMAT
from sdk.errors import LookThroughError

from export._bundle import write_sidecar  # noqa: E402
from export._calibration import (IMAGE_SUFFIXES, EngineBuildError, calibration_batches, load_faces,  # noqa: E402,F401
                                 make_entropy_calibrator, quantize_qdq, synthetic_holes)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = SIDECAR_FORMAT  # "lookthrough.trt_engine": the sidecar the SDK's TensorRT backend reads


def require_tensorrt(bundle_hint: str | None = None):
    """``import tensorrt`` or :class:`TensorRTUnavailableError` in one line (the SDK's check, for building)."""
    return _require_tensorrt(bundle_hint, purpose="build")


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- inputs of a stage
@dataclass
class StageSource:
    """Where the graph comes from: the ONNX file, the bundle stage and its preprocess record (or an assumed one)."""
    onnx: Path
    stage: str | None = None
    kind: str | None = None
    bundle: str | None = None
    preprocess: dict | None = None
    preprocess_source: str | None = None  # "bundle" | "assumed" | None


def stage_from_bundle(bundle: str | Path, stage: str) -> StageSource:
    """The ONNX model file and preprocess record of one stage of a bundle (built-in name, folder or manifest).

    Raises:
        sdk.errors.BundleError: the bundle has no such stage, or the stage has no ONNX model file.
    """
    from sdk.bundle import STAGES, find_manifest, resolve_path
    from sdk.errors import BundleError

    if stage not in STAGES:
        raise BundleError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    mpath = find_manifest(bundle)
    manifest = json.loads(mpath.read_text())
    st = (manifest.get("stages") or {}).get(stage)
    if not st:
        raise BundleError(f"{mpath}: bundle has no {stage!r} stage")
    model = (st.get("files") or {}).get("model")
    path = None if model is None else str(model.get("path", ""))
    if not path or not path.endswith(".onnx"):
        raise BundleError(f"{mpath}: the {stage!r} stage ({st.get('kind')}) has no ONNX model file to build from")
    onnx_path = resolve_path(path, mpath.parent)  # relative to the bundle, absolute, or pkg:<package>/<file>
    pre = st.get("preprocess")
    return StageSource(onnx=onnx_path, stage=stage, kind=st.get("kind"), bundle=str(bundle),
                       preprocess=pre, preprocess_source="bundle" if pre else None)


@dataclass
class TensorInfo:
    name: str
    dtype: str          # numpy dtype name
    shape: list         # ints, or a string for a symbolic axis

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and not isinstance(self.shape[0], int)


def graph_io(onnx_bytes: bytes) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs (initializers excluded) and outputs of an ONNX graph: names, numpy dtypes, shapes."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(onnx_bytes)
    inits = {i.name for i in model.graph.initializer}

    def info(v) -> TensorInfo:
        tt = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return TensorInfo(v.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name, shape)

    return ([info(v) for v in model.graph.input if v.name not in inits], [info(v) for v in model.graph.output])


def assumed_preprocess(inp: TensorInfo) -> dict:
    """The preprocess record for an image input when the bundle has none: uint8 graphs normalise inside
    (``raw_uint8``), float graphs take ``x / 127.5 - 1`` (the repository's convention); layout from the shape."""
    from sdk.preprocess import pm1, raw_uint8

    layout = "nhwc" if len(inp.shape) == 4 and inp.shape[-1] in (1, 3) else "nchw"
    side = inp.shape[2] if layout == "nhwc" else inp.shape[-1]
    crop = "dlib150" if side == 150 else "arcface112"
    p = raw_uint8(crop, "bgr", layout) if inp.dtype == "uint8" else pm1(crop, "bgr", layout)
    return p.to_dict()


# ---------------------------------------------------------------------------------------------- the build
@dataclass
class BuildConfig:
    """Everything ``build_engine`` needs (the CLI fills it from its arguments)."""
    source: StageSource
    out: Path
    fp16: bool = False
    int8: bool = False
    int8_mode: str = "qdq"                 # "qdq" | "calibrator"
    calib: Path | None = None
    calib_batch: int = 8
    calib_batches: int = 16
    calib_cache: Path | None = None
    batch: tuple[int, int, int] = (1, 8, 32)
    timing_cache: Path | None = None
    dla_core: int | None = None
    plugin_library: Path | None = None
    workspace_mb: int = 2048
    parity: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"--batch must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {self.batch}")
        if self.int8 and self.calib is None:
            raise ValueError("--int8 needs --calib FOLDER (aligned face crops for entropy calibration)")
        if self.int8_mode not in ("qdq", "calibrator"):
            raise ValueError(f"--int8-mode must be qdq or calibrator, got {self.int8_mode!r}")
        if self.dla_core is not None and not (self.fp16 or self.int8):
            raise ValueError("--dla needs --fp16 or --int8 (DLA has no float32)")
        if self.plugin_library is not None and not Path(self.plugin_library).is_file():
            raise FileNotFoundError(f"plugin library {self.plugin_library} does not exist")
        if not Path(self.source.onnx).is_file():
            raise FileNotFoundError(f"ONNX model {self.source.onnx} does not exist")


def _fp16_graph(onnx_path: Path, out: Path) -> Path:
    """float32 -> float16 graph (inputs / outputs stay float32) for strongly typed TensorRT (>= 11)."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise EngineBuildError("--fp16 on TensorRT >= 11 converts the graph to float16 with onnxconverter-common; "
                               f"install it (pip install onnxconverter-common): {exc}") from None
    model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


def build_engine(cfg: BuildConfig) -> dict:
    """Build ``cfg.out`` (serialized engine) and ``cfg.out + '.json'`` (manifest); returns the manifest.

    Raises:
        TensorRTUnavailableError: no TensorRT here (one line).
        EngineBuildError: parsing or building failed (TensorRT's messages included).
        ValueError / FileNotFoundError: inconsistent options, missing files.
    """
    cfg.validate()
    trt = require_tensorrt(cfg.source.bundle)
    major = trt_major(trt)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / (out.name + ".build")
    work.mkdir(exist_ok=True)
    src = Path(cfg.source.onnx)
    inputs, outputs = graph_io(src.read_bytes())
    preprocess, pre_src = cfg.source.preprocess, cfg.source.preprocess_source
    image_inputs = [i for i in inputs if "mask" not in i.name.lower()]
    if preprocess is None and image_inputs:
        preprocess, pre_src = assumed_preprocess(image_inputs[0]), "assumed"
        log.warning("no preprocess record for %s: assuming %s", src, preprocess)

    logger = trt.Logger(trt.Logger.WARNING)
    plugin_info = None
    if cfg.plugin_library is not None:
        registry = trt.get_plugin_registry()
        if hasattr(registry, "load_library"):
            registry.load_library(str(cfg.plugin_library))
        else:  # TensorRT 8.x: the library registers nothing by itself; load it for the parser's registry lookups
            import ctypes

            ctypes.CDLL(str(cfg.plugin_library))
        plugin_info = {"path": _relative_to(Path(cfg.plugin_library), out.parent),
                       "sha256": file_sha256(cfg.plugin_library)}

    calib_info = None
    batches: list = []
    if cfg.int8:
        shape_hw = _image_hw(image_inputs[0], preprocess) if image_inputs else (112, 112)
        faces = load_faces(cfg.calib, shape_hw)
        batches = list(calibration_batches(faces, inputs, preprocess, cfg.calib_batch, cfg.calib_batches))
        calib_info = {"folder": str(cfg.calib), "images": int(len(faces)), "batches": len(batches),
                      "batch": cfg.calib_batch, "method": "entropy", "mode": cfg.int8_mode}
        if cfg.int8_mode == "qdq":
            src = quantize_qdq(src, work / "model.qdq.onnx", batches)
    if cfg.fp16 and major >= 11:
        src = _fp16_graph(src, work / "model.fp16.onnx")

    builder = trt.Builder(logger)
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {src}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    profile_info = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(f"input {t.name} has dynamic non-batch axes {shape}; only the batch may vary")
        dims = [[b] + shape[1:] if shape[0] < 0 else shape for b in cfg.batch]
        profile.set_shape(t.name, *dims)
        profile_info[t.name] = dict(zip(("min", "opt", "max"), dims))
    config.add_optimization_profile(profile)
    if cfg.fp16 and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.int8:
        if major < 11 and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)
        if cfg.int8_mode == "calibrator":
            config.int8_calibrator = make_entropy_calibrator(trt, batches, cfg.calib_cache)
            if hasattr(config, "set_calibration_profile"):
                config.set_calibration_profile(profile)
    if cfg.dla_core is not None:
        if builder.num_DLA_cores <= cfg.dla_core:
            raise EngineBuildError(f"--dla {cfg.dla_core}: this device has {builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(cfg.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if cfg.timing_cache is not None:
        blob = Path(cfg.timing_cache).read_bytes() if Path(cfg.timing_cache).is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {src} (see its log above)")
    out.write_bytes(bytes(plan))
    if cfg.timing_cache is not None:
        Path(cfg.timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))

    precision = "int8" if cfg.int8 else ("fp16" if cfg.fp16 else "fp32")
    builder_info = {"precision": precision, "int8_calibration": calib_info, "dla_core": cfg.dla_core,
                    "gpu_fallback": cfg.dla_core is not None, "workspace_mb": cfg.workspace_mb,
                    "batch_profile": list(cfg.batch), "timing_cache": None if cfg.timing_cache is None
                    else str(cfg.timing_cache), "strongly_typed": major >= 11, **cfg.extra}
    manifest = write_engine_sidecar(out, cfg.source, inputs, outputs, profile_info, preprocess, pre_src, builder_info,
                                    str(trt.__version__), plugin_info)
    if cfg.parity:
        result = engine_parity(out, cfg.source, preprocess, precision)
        if result is not None:
            manifest["export"]["parity"] = [result.to_dict()]
            write_sidecar(out, manifest)
    return manifest


#: kind -> model family (for the parity tolerances and the export record)
KIND_FAMILY = {"onnx_segmenter": "segmenter", "onnx_embedder": "embedder", "dlib_resnet_onnx": "embedder",
               "onnx_inpainter": "inpainter"}


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (how the SDK resolves it from the engine's folder)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()


def write_engine_sidecar(out: Path, source: StageSource, inputs: list[TensorInfo], outputs: list[TensorInfo],
                         profile_info: dict, preprocess: dict | None, pre_src: str | None, builder_info: dict,
                         tensorrt_version: str, plugin_info: dict | None) -> dict:
    """Write ``<out>.json``, the engine's manifest (what the SDK's TensorRT backend and ``Recognizer("x.plan")``
    read: the engine file, the bundle manifest and stage it belongs to, its preprocess record, inputs / outputs with
    the profile, the builder settings, TensorRT version, device, plugin library, the export record); returns it."""
    from export._bundle import export_record

    out = Path(out)
    bundle_manifest = None
    if source.bundle is not None and source.stage is not None:
        from sdk.bundle import find_manifest

        bundle_manifest = _relative_to(find_manifest(source.bundle), out.parent)
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": 1,
        "engine": {"path": out.name, "bytes": out.stat().st_size, "sha256": file_sha256(out)},
        "stage": source.stage, "kind": source.kind, "family": KIND_FAMILY.get(source.kind or ""),
        "bundle": source.bundle, "bundle_manifest": bundle_manifest,
        "source_onnx": {"path": str(source.onnx), "sha256": file_sha256(source.onnx)},
        "preprocess": preprocess, "preprocess_source": pre_src,
        "inputs": [dict(asdict(i), profile=profile_info.get(i.name)) for i in inputs],
        "outputs": [asdict(o) for o in outputs],
        "builder": builder_info,
        "tensorrt_version": tensorrt_version,
        "plugin_library": plugin_info,
        "device": _device_name(),
        "export": export_record("trt", KIND_FAMILY.get(source.kind or "", "unknown"), None, None,
                                weights=builder_info.get("precision", "fp32")),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_sidecar(out, manifest)
    return manifest


def engine_parity(plan: Path, source: StageSource, preprocess: dict | None, precision: str):
    """The built engine (through the SDK's TensorRT backend) vs ONNX Runtime on the source graph, on calibration-style
    inputs (noise crops through the stage's record, synthetic holes); ``None`` when ONNX Runtime cannot run the
    source (the plugin graph). fp32 engines may use TF32 and fp16 engines half precision, so both are held to the
    family's float16 tolerance; INT8 engines are measured, not held (the record says so)."""
    from export._onnx import ort_runner
    from export._parity import check, tolerance_for
    from sdk.backends.tensorrt import TensorRTBackend
    from sdk.errors import ModelFileError

    blob = Path(source.onnx).read_bytes()
    inputs, outputs = graph_io(blob)
    try:
        ort_run = ort_runner(blob, [o.name for o in outputs])
    except ModelFileError:
        log.info("parity skipped: ONNX Runtime cannot run %s (a plugin graph)", source.onnx)
        return None
    image = [i for i in inputs if "mask" not in i.name.lower()]
    hw = _image_hw(image[0], preprocess) if image and preprocess else (112, 112)
    faces = np.random.default_rng(0).integers(0, 256, (4, *hw, 3), dtype=np.uint8)
    feeds = next(calibration_batches(faces, inputs, preprocess or {}, 4, 1))
    engine = TensorRTBackend.open(plan, what=f"engine {plan.name}")
    family = KIND_FAMILY.get(source.kind or "", "segmenter")
    names = [o.name for o in outputs]
    return check(ort_run, lambda f: engine.run(names, f), feeds, names, tolerance_for(family, "float16"),
                 names=("onnxruntime", f"tensorrt-{precision}"),
                 cosine_outputs=names if family == "embedder" else (), raise_on_failure=precision != "int8")


#: bundle stages with a model graph an engine can be built from
MODEL_STAGES = ("segment", "complete", "embed")


def build_bundle(bundle: str | Path, out_dir: str | Path, make_config, build=build_engine) -> Path:
    """Engines for every ONNX stage of ``bundle`` in ``out_dir`` (``<stage>.plan`` + ``.plan.json``) and
    ``out_dir/manifest.json``: the bundle's manifest (paths rewritten, files referenced) with each built stage's
    engine as its ``tensorrt`` file -- a bundle folder naming its engines. ``Recognizer(out_dir)`` runs the engines
    where TensorRT and a GPU are (``backend="auto"``) and the ONNX graphs elsewhere; each sidecar names this folder,
    so ``Recognizer(out_dir / "segment.plan")`` works too. Returns the manifest's path.

    Args:
        make_config: ``(StageSource, plan path) -> BuildConfig`` (the CLI's options for one engine).
        build: the engine builder (:func:`build_engine`).

    Raises:
        sdk.errors.BundleError: the bundle has no stage with an ONNX graph.
    """
    from export._bundle import base_manifest, file_record, write_manifest
    from sdk.errors import BundleError

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest, _ = base_manifest(bundle, out_dir)
    built = []
    for stage in MODEL_STAGES:
        st = (manifest.get("stages") or {}).get(stage)
        if not st:
            continue
        try:
            src = stage_from_bundle(bundle, stage)
        except BundleError as exc:
            log.info("no engine for %s: %s", stage, exc)
            continue
        plan = out_dir / f"{stage}.plan"
        build(make_config(src, plan))
        st["files"]["tensorrt"] = file_record(plan, out_dir)
        built.append(plan)
    if not built:
        raise BundleError(f"bundle {bundle!s} has no stage with an ONNX graph (segment / complete / embed) to build")
    manifest["name"] = f"{manifest.get('name', Path(str(bundle)).name)}-trt"
    manifest["description"] = (f"{manifest.get('description', '')} TensorRT engines: "
                               f"{', '.join(p.name for p in built)} (built from bundle {bundle!s}).").strip()
    path = write_manifest(out_dir, manifest)
    for plan in built:  # the engines belong to this bundle now
        side = json.loads(Path(str(plan) + ".json").read_text())
        side.update(bundle=str(out_dir), bundle_manifest="manifest.json")
        write_sidecar(plan, side)
    return path


def _image_hw(inp: TensorInfo, preprocess: dict) -> tuple[int, int]:
    s = inp.shape
    hw = (s[1], s[2]) if preprocess.get("layout") == "nhwc" else (s[2], s[3])
    if not all(isinstance(v, int) and v > 0 for v in hw):
        raise EngineBuildError(f"input {inp.name} has no static height / width: {s}")
    return int(hw[0]), int(hw[1])


def _device_name() -> str | None:
    try:
        from sdk import _native

        return str(_native.core.cuda_device_properties(0)["name"])
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- CLI
def _batch(text: str) -> tuple[int, int, int]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch wants MIN,OPT,MAX integers, got {text!r}") from None
    if len(vals) == 1:
        vals = (1, vals[0], vals[0])
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"--batch wants MIN,OPT,MAX, got {text!r}")
    return vals  # type: ignore[return-value]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export trt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to build")
    src.add_argument("--bundle", help="bundle (built-in name, folder or manifest.json) holding the stages' ONNX models")
    src.add_argument("--stage", choices=MODEL_STAGES, help="bundle stage to build (--out: the engine file); without "
                                                           "it every ONNX stage is built (--out: a bundle folder)")
    src.add_argument("--onnx", type=Path, help="ONNX file to build (overrides the bundle stage's model file; the "
                                               "bundle still gives the preprocess record)")
    p.add_argument("--out", type=Path, required=True, help="engine file to write (engine.plan; + engine.plan.json), or "
                                                           "with --bundle and no --stage the bundle folder to write")
    prec = p.add_argument_group("precision")
    prec.add_argument("--fp16", action="store_true", help="allow float16 kernels")
    prec.add_argument("--int8", action="store_true", help="INT8 with entropy calibration over --calib")
    prec.add_argument("--int8-mode", choices=("qdq", "calibrator"), default="qdq",
                      help="qdq: explicit Q/DQ from ONNX Runtime's entropy calibration (any TensorRT; default); "
                           "calibrator: IInt8EntropyCalibrator2 (TensorRT <= 10, graphs ORT cannot run)")
    prec.add_argument("--calib", type=Path, help="folder of aligned face crops (png/jpg) for INT8 calibration")
    prec.add_argument("--calib-batch", type=int, default=8, help="calibration batch size (default 8)")
    prec.add_argument("--calib-batches", type=int, default=16, help="calibration batches (default 16)")
    prec.add_argument("--calib-cache", type=Path, help="calibration cache file (calibrator mode; read and written)")
    p.add_argument("--batch", type=_batch, default=(1, 8, 32), help="batch profile MIN,OPT,MAX (default 1,8,32)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file, read when present and written back")
    p.add_argument("--dla", type=int, default=None, metavar="CORE", help="build for Jetson DLA core CORE "
                                                                        "(GPU fallback; needs --fp16 or --int8)")
    p.add_argument("--plugin", type=Path, help="TensorRT plugin library to register first "
                                              "(liblookthrough_trt_plugin.so for trt-onnx graphs)")
    p.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit in MB (default 2048)")
    p.add_argument("--no-parity", action="store_true", help="skip the engine vs ONNX Runtime check after the build")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def config(source: StageSource, out: Path) -> BuildConfig:
        cfg = BuildConfig(source=source, out=out, fp16=args.fp16, int8=args.int8, int8_mode=args.int8_mode,
                          calib=args.calib, calib_batch=args.calib_batch, calib_batches=args.calib_batches,
                          calib_cache=args.calib_cache, batch=args.batch, timing_cache=args.timing_cache,
                          dla_core=args.dla, plugin_library=args.plugin, workspace_mb=args.workspace_mb,
                          parity=not args.no_parity)
        cfg.validate()
        return cfg

    try:
        if args.bundle and not args.stage and not args.onnx:
            path = build_bundle(args.bundle, args.out, config)
            log.info("wrote %s: a bundle folder naming its TensorRT engines", path)
            return 0
        if args.bundle and args.stage:
            source = stage_from_bundle(args.bundle, args.stage)
            if args.onnx:
                source.onnx = args.onnx
        elif args.onnx:
            source = StageSource(onnx=args.onnx, bundle=args.bundle)
        else:
            raise ValueError("give --bundle (every stage, or one with --stage), or --onnx")
        manifest = build_engine(config(source, args.out))
    except (TensorRTUnavailableError, EngineBuildError, LookThroughError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %s (%.1f MB, %s, TensorRT %s) and its manifest", args.out, manifest["engine"]["bytes"] / 1e6,
             manifest["builder"]["precision"], manifest["tensorrt_version"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
