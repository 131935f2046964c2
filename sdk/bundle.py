"""Model bundles: a versioned JSON manifest plus the model files it names.

A bundle is a folder holding ``manifest.json``::

    {
      "format": "lookthrough.bundle", "format_version": 2, "name": "...", "description": "...",
      "stages": {
        "detect":   {"kind": "mtcnn", "files": {"pnet": FILE, ...}, "config": {...}, "preprocess": PRE},
        "segment":  null | {"kind": "onnx_segmenter", "files": ..., "config": ..., "preprocess": PRE},
        "complete": null | {"kind": "onnx_inpainter", "files": ..., "config": ..., "preprocess": PRE},
        "embed":    {"kind": "dlib_resnet_onnx" | ..., "files": {...}, "config": {...}, "preprocess": PRE}
      },
      "match": {"metric": "cosine", "threshold": 0.83}
    }

where ``FILE = {"path": P, "bytes": N, "sha256": H}``. ``P`` is relative to the manifest's folder, absolute,
or ``pkg:<package>/<path inside it>`` for weights shipped inside an installed Python package (resolved
without importing the package). ``bytes`` and ``sha256`` are checked on load: a truncated or replaced file
raises :class:`~sdk.errors.ModelFileError` naming it. ``detect`` and ``embed`` are required; a ``null``
stage is skipped (baseline mode has no ``segment`` / ``complete``). ``complete`` fills the holes the
``segment`` stage finds, so a bundle with ``complete`` must have ``segment`` (mode ``"deocclusion"``).

``PRE`` is a :class:`~sdk.preprocess.Preprocess` record (crop, colour order, dtype, scale/offset, layout): how
that stage's graph wants its input, written by the exporter from the record the trainer used. Format version 2
introduced it; a stage without one (every version-1 manifest) gets its kind's known convention, derived from
the old ``config.crop`` / ``config.input`` values (:func:`sdk._registry.build_stage`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess

log = logging.getLogger(__name__)

FORMAT = "lookthrough.bundle"
#: newest manifest version this SDK reads (1: no preprocess records; 2: a "preprocess" object per stage)
FORMAT_VERSION = 2
STAGES = ("detect", "segment", "complete", "embed")
REQUIRED_STAGES = ("detect", "embed")
#: Built-in bundles, by name: folders under ``sdk/models``.
BUILTIN_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_BUNDLE = "default"


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileRef:
    """A model file: where it is (resolved absolute path), and its expected size and SHA-256."""

    role: str
    path: Path
    bytes: int | None = None
    sha256: str | None = None

    def check(self, verify_hash: bool = True) -> None:
        """Raise :class:`ModelFileError` if the file is missing, of the wrong size or of the wrong hash."""
        if not self.path.is_file():
            raise ModelFileError(self.path, f"not found (bundle file {self.role!r})")
        size = self.path.stat().st_size
        if self.bytes is not None and size != self.bytes:
            what = "truncated" if size < self.bytes else "larger than expected"
            raise ModelFileError(self.path, f"is {size} bytes, the manifest says {self.bytes}: {what} or replaced")
        if verify_hash and self.sha256 is not None:
            digest = file_digest(self.path)
            if digest != self.sha256:
                raise ModelFileError(self.path, f"SHA-256 {digest[:12]}... does not match the manifest's {self.sha256[:12]}...: corrupt or replaced")


@dataclass(frozen=True)
class StageSpec:
    """One pipeline stage: its implementation ``kind``, its files (by role), its config values and its input
    record (``None`` when the manifest has none: the kind's convention applies)."""

    name: str
    kind: str
    files: dict[str, FileRef]
    config: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess | None = None


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated manifest."""

    name: str
    root: Path
    stages: dict[str, StageSpec | None]
    match: dict[str, Any]
    description: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def threshold(self) -> float:
        """Cosine-similarity threshold above which a match is accepted."""
        return float(self.match.get("threshold", 0.5))

    @property
    def mode(self) -> str:
        """``"deocclusion"`` with a completion stage, ``"occlusion-aware"`` with a segmenter only, else ``"baseline"``."""
        if self.stages.get("complete"):
            return "deocclusion"
        return "occlusion-aware" if self.stages.get("segment") else "baseline"

    def check_files(self, verify_hash: bool = True) -> None:
        """Check every file of every stage (see :meth:`FileRef.check`)."""
        for spec in self.stages.values():
            if spec is not None:
                for ref in spec.files.values():
                    ref.check(verify_hash)


def resolve_path(p: str, root: Path) -> Path:
    """Resolve a manifest path: ``pkg:<package>/<rel>``, absolute, or relative to ``root``."""
    if p.startswith("pkg:"):
        pkg, _, rel = p[4:].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ModelFileError(p, f"Python package {pkg!r} is not installed (run `make setup`)")
        places = [Path(d) / rel for d in spec.submodule_search_locations]  # editable installs have several
        return next((q for q in places if q.exists()), places[0])
    path = Path(p)
    return path if path.is_absolute() else root / path


def builtin_bundles() -> list[str]:
    """Names of the bundles shipped inside the SDK (folders of ``sdk/models`` with a manifest)."""
    return sorted(d.name for d in BUILTIN_DIR.iterdir() if (d / "manifest.json").is_file())


def find_manifest(model: str | Path | None) -> Path:
    """Manifest path for ``model``: a built-in bundle name, a bundle folder, or a ``manifest.json``."""
    if model is None:
        model = DEFAULT_BUNDLE
    if isinstance(model, str) and (BUILTIN_DIR / model / "manifest.json").is_file():
        return BUILTIN_DIR / model / "manifest.json"
    p = Path(model)
    if p.is_dir():
        p = p / "manifest.json"
    if p.suffix in (".plan", ".engine"):
        raise BundleError(
            f"{p}: a bare TensorRT engine has no manifest. Pass the bundle folder that holds it "
            "(export writes engines into a bundle with a manifest.json naming them)."
        )
    if not p.is_file():
        raise BundleError(f"no model bundle at {model!s}: expected a bundle folder, a manifest.json, or one of {builtin_bundles()}")
    return p


def load_bundle(model: str | Path | None = None, verify_hash: bool = True) -> Bundle:
    """Load and validate a bundle (see the module docstring for the format).

    Raises:
        BundleError: malformed manifest or unsupported version.
        ModelFileError: a named file is missing, truncated or replaced.
    """
    mpath = find_manifest(model)
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: not a JSON manifest ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not a LookThrough bundle manifest (\"format\" must be {FORMAT!r})")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {version!r} is not supported by this SDK (<= {FORMAT_VERSION})")
    root = mpath.parent
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict):
        raise BundleError(f"{mpath}: \"stages\" must be an object")
    unknown = set(stages_raw) - set(STAGES)
    if unknown:
        raise BundleError(f"{mpath}: unknown stages {sorted(unknown)}; known: {list(STAGES)}")
    stages: dict[str, StageSpec | None] = {}
    for name in STAGES:
        s = stages_raw.get(name)
        if s is None:
            if name in REQUIRED_STAGES:
                raise BundleError(f"{mpath}: stage {name!r} is required")
            stages[name] = None
            continue
        if not isinstance(s, dict) or not isinstance(s.get("kind"), str):
            raise BundleError(f"{mpath}: stage {name!r} needs a \"kind\" string")
        files = {}
        for role, f in (s.get("files") or {}).items():
            if isinstance(f, str):
                f = {"path": f}
            if not isinstance(f, dict) or "path" not in f:
                raise BundleError(f"{mpath}: stage {name!r} file {role!r} needs a \"path\"")
            files[role] = FileRef(role, resolve_path(f["path"], root), f.get("bytes"), f.get("sha256"))
        pre = s.get("preprocess")
        if pre is not None:
            pre = Preprocess.from_dict(pre, where=f"{mpath}: stage {name!r} preprocess")
        config = s.get("config") or {}
        if not isinstance(config, dict):
            raise BundleError(f"{mpath}: stage {name!r} \"config\" must be an object")
        stages[name] = StageSpec(name, s["kind"], files, dict(config), pre)
    if stages["complete"] is not None and stages["segment"] is None:
        raise BundleError(f"{mpath}: stage 'complete' needs a 'segment' stage (the inpainter fills the "
                          "segmenter's occlusion mask)")
    bundle = Bundle(
        name=str(raw.get("name", root.name)), root=root, stages=stages, match=dict(raw.get("match") or {}),
        description=str(raw.get("description", "")), format_version=version,
    )
    bundle.check_files(verify_hash)
    log.debug("loaded bundle %s from %s (mode %s)", bundle.name, mpath, bundle.mode)
    return bundle
