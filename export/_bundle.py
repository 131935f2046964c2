"""The one bundle / manifest writer of every export, and the metadata every artifact carries.

A bundle written by ``python -m export`` is the base bundle's manifest (``--base``; its files made reachable from
the new folder without leaving it: the SDK's own as ``pkg:sdk/models/...``, any other linked or copied in, see
:func:`_rewrite_paths`) with the family's stage replaced::

    "<stage>": {"kind": "...", "files": {"model": FILE, ["torch": FILE,] [...]}, "config": {...},
                "preprocess": PRE,
                "export": {"exporter": "lookthrough-export", "exporter_version": "2.0", "format": "torch",
                           "family": "segmenter", "opset": 17, "weights": "float32",
                           "source": {"checkpoint": "...", "weights": "...", "sha256": "..."},
                           "parity": [{"reference": "torch", "candidate": "onnxruntime", ...}, ...],
                           "torch": "2.13.0", "onnx": "1.x", "created": "2026-...Z"}}

with ``FILE = {"path", "bytes", "sha256"}`` and ``PRE`` the graph's :class:`sdk.preprocess.Preprocess` record; the
manifest says ``"format_version": 2``. Files that are not bundles carry the same record in a sidecar JSON beside them
(``<file>.json``: the TensorRT ONNX graph, engines). Everything is written atomically (temporary file + rename).
"""
from __future__ import annotations

import copy
import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["MANIFEST_VERSION", "file_record", "checkpoint_weights", "base_manifest", "copy_stage", "export_record",
           "write_manifest", "write_sidecar", "set_stage"]

#: the manifest version the exporters write (2: a "preprocess" record per stage)
MANIFEST_VERSION = 2


def _atomic_write(path: Path, text: str) -> Path:
    from trainer.checkpoints import atomic_write_text

    return atomic_write_text(path, text)


def file_record(path: str | Path, root: str | Path) -> dict:
    """``{"path": <relative to root when inside it>, "bytes", "sha256"}`` of a written file."""
    from sdk.bundle import file_digest

    path, root = Path(path), Path(root)
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = str(path.resolve())
    return {"path": rel, "bytes": path.stat().st_size, "sha256": file_digest(path)}


def checkpoint_weights(checkpoint: str | Path, module: str = "model") -> Path:
    """The weights file a checkpoint argument resolves to (its SHA-256 identifies the export's source): the
    ``<stem>.safetensors`` of a checkpoint (run folders: ``ckpt/last``), an older run folder's weights file, or the
    file itself (``student.safetensors``, a dlib ``.dat``)."""
    from trainer.checkpoints import checkpoint_files, find_checkpoint

    p = Path(checkpoint)
    stem = find_checkpoint(p)
    if stem is not None:
        return checkpoint_files(stem)[0]
    if p.is_dir():
        for name in (f"{module}.safetensors", "model.safetensors", "generator.safetensors", "student.safetensors"):
            if (p / name).is_file():
                return p / name
    return p


def _rewrite_paths(stage: dict, src_dir: Path, out: Path) -> dict:
    """``stage`` with its files made reachable from a bundle in ``out`` without leaving it (the SDK refuses bundle
    paths that resolve outside the bundle folder, see :func:`sdk.bundle.check_location`): files that ship in the
    SDK become ``pkg:sdk/models/...``, files already inside ``out`` become relative, and any other file is copied
    into ``out`` (a hard link when the filesystem allows), so that the bundle folder is self-contained."""
    import shutil

    from sdk.bundle import BUILTIN_DIR, file_digest

    stage = copy.deepcopy(stage)
    out_r, builtin = out.resolve(), BUILTIN_DIR.resolve()
    for role, f in (stage.get("files") or {}).items():
        f = {"path": f} if isinstance(f, str) else f
        p = str(f["path"])
        if not p.startswith("pkg:"):
            src = Path(os.path.realpath(Path(p) if Path(p).is_absolute() else src_dir / p))
            if src.is_relative_to(builtin):
                f["path"] = "pkg:sdk/models/" + src.relative_to(builtin).as_posix()
            elif src.is_relative_to(out_r):
                f["path"] = src.relative_to(out_r).as_posix()
            else:
                out.mkdir(parents=True, exist_ok=True)
                dst = out / src.name
                if dst.exists() and not (dst.stat().st_size == src.stat().st_size and file_digest(dst) == file_digest(src)):
                    dst = out / f"{role}_{src.name}"
                if not dst.exists():
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
                f["path"] = dst.name
        stage["files"][role] = f
    return stage


def copy_stage(src_manifest: str | Path, stage: str, out: str | Path) -> dict:
    """Stage ``stage`` of the manifest ``src_manifest``, its relative file paths rewritten relative to ``out``.

    Raises:
        ValueError: the manifest has no such stage.
    """
    src_manifest = Path(src_manifest)
    spec = json.loads(src_manifest.read_text()).get("stages", {}).get(stage)
    if spec is None:
        raise ValueError(f"{src_manifest}: no {stage!r} stage to copy")
    return _rewrite_paths(spec, src_manifest.parent, Path(out))


def base_manifest(base: str | Path, out: str | Path) -> tuple[dict, Path]:
    """``(manifest, its path)``: the bundle ``base`` (built-in name, folder or manifest) with every stage's relative
    file paths rewritten relative to ``out``."""
    from sdk.bundle import find_manifest

    path = find_manifest(base)
    manifest = json.loads(path.read_text())
    manifest["stages"] = {name: (_rewrite_paths(st, path.parent, Path(out)) if st else st)
                          for name, st in (manifest.get("stages") or {}).items()}
    return manifest, path


def export_record(fmt: str, family: str, source: Path | None, checkpoint: str | Path | None, *,
                  parity: list | None = None, opset: int | None = None, weights: str = "float32",
                  **extra: Any) -> dict:
    """The ``"export"`` record of an artifact: who wrote it from what, how, and the parity it passed."""
    import export as _pkg
    from sdk.bundle import file_digest

    rec: dict[str, Any] = {"exporter": _pkg.EXPORTER, "exporter_version": _pkg.EXPORTER_VERSION, "format": fmt,
                           "family": family}
    if opset is not None:
        rec["opset"] = int(opset)
    rec["weights"] = weights
    if source is not None:
        rec["source"] = {"checkpoint": str(checkpoint), "weights": str(source),
                         "sha256": file_digest(source) if Path(source).is_file() else None}
    rec["parity"] = [p.to_dict() if hasattr(p, "to_dict") else p for p in (parity or [])]
    rec.update(_versions())
    rec.update(extra)
    rec["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return rec


def _versions() -> dict:
    out = {}
    for mod in ("torch", "onnx", "onnxruntime"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def set_stage(manifest: dict, stage: str, spec: Mapping[str, Any], preprocess) -> dict:
    """``manifest["stages"][stage] = spec`` plus its ``preprocess`` record; raises the manifest to version 2."""
    manifest.setdefault("stages", {})[stage] = {**spec, "preprocess": preprocess.to_dict()}
    manifest["format_version"] = max(int(manifest.get("format_version", 1)), MANIFEST_VERSION)
    return manifest


def write_manifest(out: str | Path, manifest: dict) -> Path:
    """``<out>/manifest.json``, stages in pipeline order, written atomically; returns its path."""
    from sdk.bundle import STAGES

    out = Path(out)
    stages = manifest.get("stages") or {}
    manifest = {**manifest, "stages": {s: stages.get(s) for s in STAGES}}
    return _atomic_write(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def write_sidecar(path: str | Path, record: dict) -> Path:
    """``<path>.json``: the metadata of a file that is not a bundle (an ONNX graph for TensorRT, an engine)."""
    return _atomic_write(Path(str(path) + ".json"), json.dumps(record, indent=2) + "\n")
