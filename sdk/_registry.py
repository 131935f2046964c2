"""Registry of stage implementations: ``(stage, kind) -> StageKind``; :func:`build_stage` makes the stage object.

A bundle manifest names a ``kind`` per stage. The built-in kinds are declared beside their code (``KINDS`` in
``sdk/detect.py``, ``detect_onnx.py``, ``segment.py``, ``complete.py``, ``embed.py``, ``embed_onnx.py``,
``embed_arcface.py``); other packages add theirs
with :func:`register`. The Recognizer never names a kind.

:func:`build_stage` also settles the stage's :class:`~sdk.preprocess.Preprocess` record: the manifest's
``"preprocess"`` object when it has one (format version 2), else the kind's known convention derived from the
old ``config.crop`` / ``config.input`` values (version 1). A record that contradicts those old values is an
error, not a guess.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdk.errors import BundleError
from sdk.stages import PROTOCOLS, Stage, StageKind

if TYPE_CHECKING:
    from sdk.bundle import StageSpec

_KINDS: dict[tuple[str, str], StageKind] = {}
_BUILTIN_LOADED = False
#: manifest config keys that describe the input convention; read here, never passed to a stage's config
LEGACY_KEYS = ("crop", "input")


def register(kind: StageKind) -> StageKind:
    """Make ``kind`` buildable (replaces an earlier registration of the same stage and kind)."""
    if kind.stage not in PROTOCOLS:
        raise ValueError(f"unknown stage {kind.stage!r}; stages are {list(PROTOCOLS)}")
    _KINDS[(kind.stage, kind.kind)] = kind
    return kind


def _builtin() -> None:
    """Collect the built-in kinds (imported on first use: importing sdk stays cheap)."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    from sdk import complete, detect, detect_onnx, embed, embed_arcface, embed_onnx, segment

    for module in (detect, detect_onnx, segment, complete, embed, embed_onnx, embed_arcface):
        for k in module.KINDS:
            _KINDS.setdefault((k.stage, k.kind), k)  # an explicit register() of the same kind wins
    _BUILTIN_LOADED = True


def kinds(stage: str) -> list[str]:
    """Registered kinds for ``stage``."""
    _builtin()
    return sorted(k for s, k in _KINDS if s == stage)


def lookup(stage: str, kind: str) -> StageKind:
    """The registration of ``kind`` for ``stage``; :class:`BundleError` naming the known kinds otherwise."""
    _builtin()
    found = _KINDS.get((stage, kind))
    if found is None:
        raise BundleError(f"stage {stage!r}: unknown kind {kind!r}; this SDK knows {kinds(stage)}")
    return found


def build_stage(spec: "StageSpec", options: dict[str, Any] | None = None) -> Stage:
    """Instantiate the stage described by ``spec``; ``options`` override ``spec.config`` values.

    Returns:
        An object satisfying the stage's protocol (:data:`sdk.stages.PROTOCOLS`).

    Raises:
        BundleError: unknown kind, bad config values, a preprocess record that contradicts the config.
        ModelFileError: a model file is missing, unloadable, or not what the record says (names the file).
    """
    info = lookup(spec.name, spec.kind)
    where = f"stage {spec.name!r} ({spec.kind})"
    values = {**spec.config, **(options or {})}
    derived = info.legacy_preprocess(values)
    pre = spec.preprocess
    if pre is None:
        pre = derived
    else:
        stated = {k: values[k] for k in LEGACY_KEYS if k in values}
        if "input" in stated and derived != pre:
            raise BundleError(f"{where}: config input {stated['input']!r} means {derived.to_dict()}, but the "
                              f"manifest's preprocess record says {pre.to_dict()}")
        if "crop" in stated and stated["crop"] != pre.crop:
            raise BundleError(f"{where}: config crop {stated['crop']!r} differs from the preprocess record's "
                              f"crop {pre.crop!r}")
    for k in LEGACY_KEYS:
        values.pop(k, None)
    stage = info.build(spec, pre, values)
    protocol = PROTOCOLS[spec.name]
    if not isinstance(stage, protocol):
        raise BundleError(f"{where}: the registered builder made a {type(stage).__name__}, which does not "
                          f"satisfy the {protocol.__name__} protocol")
    return stage
