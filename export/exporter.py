"""The one exporter: a trainer checkpoint -> a bundle (or a file), in any checkpoint format of the table.

    export(ExportConfig(format="torch", family="segmenter", checkpoint="out/segmenter/v1", out="bundles/seg"))

Steps, the same for every family (the family adapter, :mod:`export.families`, fills in what differs):

1. load the checkpoint through :mod:`trainer.checkpoints` and wrap the network into its stage graph
   (:mod:`sdk.nets.graphs`, the graph the SDK's torch backend runs too);
2. trace the graph to ONNX (opset 17, dynamic batch; ``onnx-fp16`` then stores the weights as float16);
3. parity (:mod:`export._parity`): torch vs ONNX Runtime on the family's inputs; for ``torch`` also the SDK's torch
   backend, rebuilt from the written ``.safetensors``, vs ONNX Runtime;
4. write the files and the manifest (:mod:`export._bundle`): the base bundle's stages with the family's stage
   replaced, its preprocess record, and the ``export`` record (source checkpoint SHA-256, exporter version, opset,
   parity results); the bundle is loaded back by the SDK before returning.

``trt-onnx`` (inpainter only) writes one ONNX file and its sidecar JSON instead of a bundle (:mod:`export._plugin_onnx`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export._formats import get_format
from export.families import StageOptions, family

log = logging.getLogger(__name__)

__all__ = ["ExportConfig", "ExportResult", "export", "CHECKPOINT_FORMATS"]

#: formats this module runs (the table's ``source == "checkpoint"`` rows)
CHECKPOINT_FORMATS = ("onnx", "onnx-fp16", "torch", "trt-onnx")


@dataclass
class ExportConfig:
    """One export.

    Attributes:
        format: a checkpoint format of the table (:data:`CHECKPOINT_FORMATS`).
        family: ``segmenter`` | ``embedder`` | ``inpainter``.
        checkpoint: run folder, checkpoint stem / file, student weights, dlib ``.dat`` (per family).
        out: bundle folder to write (``trt-onnx``: the ``.onnx`` file).
        name: bundle name (default: the folder name); description: bundle description (default: the family's).
        base: bundle whose other stages the new one keeps (default: the family's, ``baseline`` / ``default-v1``).
        segment_from: also copy this bundle's segment stage (embedder bundles).
        fp16_weights: store ONNX weights as float16 (what ``onnx-fp16`` means; allowed with ``torch`` too).
        options: the stage's config values (threads, thresholds ...).
        dynamic_batch: ``trt-onnx`` only: a dynamic batch axis (the ONNX bundles always have one).
    """

    format: str
    family: str
    checkpoint: Path
    out: Path
    name: str | None = None
    description: str | None = None
    base: str | None = None
    segment_from: str | None = None
    fp16_weights: bool = False
    options: StageOptions = field(default_factory=StageOptions)
    dynamic_batch: bool = True

    def __post_init__(self) -> None:
        self.checkpoint, self.out = Path(self.checkpoint), Path(self.out)
        fmt = get_format(self.format)
        if self.format not in CHECKPOINT_FORMATS:
            raise ValueError(f"format {self.format!r} reads a bundle, not a checkpoint: python -m export "
                             f"{self.format} --help")
        if self.family not in fmt.families:
            raise ValueError(f"format {self.format!r} exports {', '.join(fmt.families)}, not {self.family!r}")
        if self.segment_from is not None and self.family != "embedder":
            raise ValueError("--segment-from is an embedder option (the bundle keeps another bundle's segmenter)")
        if self.format == "onnx-fp16":
            self.fp16_weights = True
        elif self.format == "onnx" and self.fp16_weights:
            self.format = "onnx-fp16"  # --fp16-weights on onnx is the table's onnx-fp16 row

    @property
    def weights(self) -> str:
        return "float16" if self.fp16_weights else "float32"


@dataclass
class ExportResult:
    """What an export wrote and measured.

    Attributes:
        bundle: the bundle folder (``None`` for ``trt-onnx``).
        files: written files by role (``model``: ONNX, ``torch``: safetensors, ``sidecar`` ...).
        onnx_bytes: size of the written ONNX graph; fp32_onnx_bytes: before float16 weights (fp16 only).
        parity: the checks passed (:class:`export._parity.ParityResult`).
        record: the ``export`` record written into the manifest / sidecar.
        mode: the bundle's mode once loaded by the SDK.
    """

    format: str
    family: str
    bundle: Path | None
    files: dict[str, Path]
    onnx_bytes: int
    parity: list
    record: dict
    fp32_onnx_bytes: int | None = None
    mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"format": self.format, "family": self.family, "bundle": None if self.bundle is None else str(self.bundle),
               "files": {k: str(v) for k, v in self.files.items()}, "onnx_bytes": self.onnx_bytes,
               "parity": [p.to_dict() for p in self.parity], "mode": self.mode}
        if self.fp32_onnx_bytes is not None:
            out["fp32_onnx_bytes"] = self.fp32_onnx_bytes
        return out


def export(cfg: ExportConfig) -> ExportResult:
    """Run one export (see the module docstring).

    Raises:
        ValueError: options that do not fit the format / family / base bundle.
        FileNotFoundError, trainer.checkpoints.CheckpointError: the checkpoint cannot be read.
        export._parity.ParityError: an artifact disagrees with torch beyond the tolerance (no manifest is written).
    """
    from export._onnx import OPSET, ort_runner, to_fp16_weights
    from export._parity import check, tolerance_for

    fam = family(cfg.family)
    loaded = fam.load(cfg.checkpoint)
    graph = fam.graph(loaded.net)
    if cfg.format == "trt-onnx":
        from export._plugin_onnx import export_format

        files, parity, record = export_format(cfg, fam, loaded, graph)
        return ExportResult(cfg.format, fam.name, None, files, files["model"].stat().st_size, parity, record)

    blob32 = fam.onnx_bytes(loaded.net)
    blob = to_fp16_weights(blob32) if cfg.fp16_weights else blob32
    feeds = fam.parity_feeds(graph)
    tol = tolerance_for(fam.name, cfg.weights)
    ort_run = ort_runner(blob, fam.outputs)
    parity = [check(fam.torch_reference(graph), ort_run, feeds, fam.outputs, tol, names=("torch", "onnxruntime"),
                    cosine_outputs=fam.cosine_outputs)]

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    from export._bundle import (base_manifest, copy_stage, export_record, file_record, set_stage, write_manifest)
    from trainer.checkpoints import atomic_write_bytes

    onnx_path = atomic_write_bytes(out / f"{fam.stem}.onnx", blob)
    files = {"model": onnx_path}
    if cfg.format == "torch":
        files["torch"] = _write_torch(graph, out / f"{fam.stem}.safetensors")
        parity.append(_torch_backend_parity(files["torch"], ort_run, feeds, fam, tol))

    base = cfg.base or fam.base
    manifest, _ = base_manifest(base, out)
    fam.check_base(manifest, base)
    base_stage = (manifest.get("stages") or {}).get(fam.stage)
    record = export_record(cfg.format, fam.name, loaded.weights, cfg.checkpoint, parity=parity, opset=OPSET,
                           weights=cfg.weights)
    stage = {"kind": fam.kind,
             "files": {**{role: file_record(p, out) for role, p in files.items()}, **fam.stage_files(loaded, base_stage)},
             "config": fam.stage_config(loaded, graph, cfg.options), "export": record}
    set_stage(manifest, fam.stage, stage, fam.graph_preprocess(loaded))
    if cfg.segment_from is not None:
        from sdk.bundle import find_manifest

        manifest["stages"]["segment"] = copy_stage(find_manifest(cfg.segment_from), "segment", out)
    manifest["name"] = cfg.name or out.name
    manifest["description"] = cfg.description or fam.description(manifest["name"], str(base), cfg.options)
    meta = fam.training_meta(loaded, cfg.weights)
    if meta:
        manifest[fam.training_key] = meta
    if fam.stage == "embed":
        manifest["match"] = uncalibrated_match(manifest.get("match"), str(base), out)
    write_manifest(out, manifest)

    from sdk.bundle import load_bundle

    mode = load_bundle(out).mode  # the SDK reads it back: manifest, every file's bytes and SHA-256
    for p in parity:
        log.info("%s %s: %s", cfg.format, fam.name, p.summary())
    log.info("exported %s -> %s (%s, %.2f MB ONNX%s, mode %s)", cfg.checkpoint, out, cfg.format, len(blob) / 1e6,
             ", fp16 weights" if cfg.fp16_weights else "", mode)
    return ExportResult(cfg.format, fam.name, out, files, len(blob), parity, record,
                        fp32_onnx_bytes=len(blob32) if cfg.fp16_weights else None, mode=mode)


def uncalibrated_match(match: dict | None, base: str, out: Path) -> dict:
    """The ``match`` block of a bundle whose embedder was just replaced: the base's per-occlusion thresholds and
    calibration record describe *another* embedder's scores, so they are dropped (issue #9: no exported model inherits
    another model's thresholds); the single ``threshold`` stays as a starting point, marked ``uncalibrated`` with the
    command that calibrates it (the Recognizer warns until then). Other keys (``metric``, ``mask_aware``,
    ``min_det_score``) are kept."""
    m = dict(match or {"metric": "cosine"})
    dropped = [k for k in ("thresholds", "calibration") if m.pop(k, None) is not None]
    m["uncalibrated"] = (f"threshold {m.get('threshold', 0.5)} copied from {base}; set this bundle's own with: "
                         f"python -m trainer.calibrate --model {out} --lfw <lfw> --write")
    if dropped:
        log.warning("%s: dropped the base bundle's %s (they belong to its embedder); calibrate this bundle: "
                    "python -m trainer.calibrate --model %s --lfw <lfw> --write", out, " and ".join(dropped), out)
    return m


def _write_torch(graph: Any, path: Path) -> Path:
    """The graph's float32 state dict + its model config (safetensors metadata), atomically."""
    from safetensors.torch import save

    from sdk.nets.graphs import graph_metadata
    from trainer.checkpoints import atomic_write_bytes

    state = {k: v.detach().float().cpu().contiguous() for k, v in graph.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata=graph_metadata(graph)))


def _torch_backend_parity(path: Path, ort_run, feeds, fam, tol):
    """The SDK's torch backend on the CPU (the graph rebuilt from ``path``) vs ONNX Runtime."""
    from sdk.backends import BackendConfig, open_backend

    from export._parity import check

    backend = open_backend(path, BackendConfig(engine="torch", device="cpu"), what=f"the exported {fam.name}")
    return check(ort_run, lambda f: backend.run(list(fam.outputs), f), feeds, fam.outputs, tol,
                 names=("onnxruntime", "torch-backend"), cosine_outputs=fam.cosine_outputs)
