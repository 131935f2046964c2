"""LTDet's checkpoints: the trainer's one format (:mod:`trainer.checkpoints`) plus the older layout, read-only.

A detector run folder (``python trainer/main.py detector --out <run>``) holds

* ``ckpt/last.{safetensors,json,optim.safetensors}`` -- the training state (module ``model``, AdamW ``opt``, RNG,
  step), written by the loop skeleton; ``--resume`` continues from it;
* ``detector.{safetensors,json}`` -- the trained net (after ``--refit-scenes``' closed-form refit, when asked),
  weights only: what ``python -m export.onnx_detector`` and ``python -m trainer.detector.refit`` read.

Both JSONs say ``kind: "detector"``, ``models: {"model": NetConfig}`` and ``preprocess: {"model":
LTDET_PREPROCESS}``.  Older run folders (``out/detector/v1``, the shipped ``ltdet-v1`` model's run) hold
``model.safetensors`` (the trained net, bare state dict) + ``net_config.json`` and ``last.safetensors`` (``model.`` /
``opt.<i>.`` keys + ``step`` metadata); they still load here, for export and refit, and resume
(:func:`trainer.checkpoints.load_checkpoint` reads ``last.safetensors`` as the ``detector-v1`` layout).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from trainer.checkpoints import CheckpointError, Checkpoint, find_checkpoint, load_checkpoint, save_checkpoint
from trainer.detector.data import PREPROCESS
from trainer.detector.model import DetectorNet, NetConfig

__all__ = ["FINAL", "KIND", "bundle_ref", "load_net", "load_detector", "load_trained_net", "ltdet_spec", "net_meta",
           "save_net"]

KIND = "detector"
#: the trained net's checkpoint stem in a run folder
FINAL = "detector"
_OLD_CONFIG = "net_config.json"


def net_meta(net: DetectorNet) -> dict:
    """The checkpoint JSON's description of ``net``: kind, model config, input :class:`~sdk.preprocess.Preprocess`."""
    return {"kind": KIND, "models": {"model": net.cfg.to_json()}, "preprocess": {"model": PREPROCESS.to_dict()}}


def save_net(net: DetectorNet, stem: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """``net``'s weights-only checkpoint ``<stem>.safetensors`` + ``<stem>.json`` (atomic); ``extra``: JSON extras
    (``config``, ``step``, ``refit``). Returns the weights file."""
    return save_checkpoint(stem, {"model": net}, {**net_meta(net), **(extra or {})})


def _net_from(ck: Checkpoint) -> tuple[DetectorNet, dict]:
    if ck.kind not in (None, KIND):
        raise CheckpointError(f"{ck.stem}: a {ck.kind!r} checkpoint, not a detector")
    cfg = (ck.meta.get("models") or {}).get("model")
    if not cfg:
        raise CheckpointError(f"{ck.stem}: no detector model config (models.model) in the checkpoint")
    net = DetectorNet(NetConfig.from_json(cfg))
    ck.restore({"model": net})
    return net.eval(), ck.meta


def _legacy_net(weights: Path) -> tuple[DetectorNet, dict]:
    """An older file: ``model.safetensors`` (bare state dict) or ``last.safetensors`` (``model.`` keys) with
    ``net_config.json`` beside it."""
    from safetensors.torch import load_file

    cfg = json.loads((weights.parent / _OLD_CONFIG).read_text())
    net = DetectorNet(NetConfig.from_json(cfg))
    state = load_file(str(weights))
    state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} or state
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: does not fit the net of {_OLD_CONFIG}: {e}") from None
    return net.eval(), {"kind": KIND, "models": {"model": cfg}, "legacy": "detector-v1",
                        "preprocess": {"model": PREPROCESS.to_dict()}}


def load_detector(path: str | Path) -> tuple[DetectorNet, dict]:
    """``(net in eval mode, checkpoint JSON)`` behind ``path``, no pickle.

    ``path``: a run folder (its ``detector.*``, else ``ckpt/last.*`` of an unfinished run; older folders:
    ``model.safetensors``, else ``last.safetensors``, with ``net_config.json``), a checkpoint stem or one of its
    files, or an older ``.safetensors`` with ``net_config.json`` beside it.  A legacy checkpoint's JSON is
    synthesised (``"legacy": "detector-v1"``, the preprocess record it was trained with).

    Raises:
        FileNotFoundError: no detector checkpoint at ``path``.
        CheckpointError: a checkpoint of another model, a torn save, weights that do not fit.
    """
    p = Path(path)
    if p.is_dir():
        for stem in (p / FINAL, p / "ckpt" / "last"):
            if find_checkpoint(stem) is not None:
                return _net_from(load_checkpoint(stem))
        if (p / _OLD_CONFIG).is_file():
            for f in (p / "model.safetensors", p / "last.safetensors"):
                if f.is_file():
                    return _legacy_net(f)
        raise FileNotFoundError(f"{p}: no detector checkpoint ({FINAL}.json, ckpt/last.json, or an older "
                                f"model.safetensors / last.safetensors with {_OLD_CONFIG})")
    if find_checkpoint(p) is not None:
        return _net_from(load_checkpoint(p))
    if p.suffix == ".safetensors" and p.is_file() and (p.parent / _OLD_CONFIG).is_file():
        return _legacy_net(p)
    raise FileNotFoundError(f"{p}: not a detector checkpoint (expected a run folder, <stem>.json + "
                            f"<stem>.safetensors, or a .safetensors with {_OLD_CONFIG} beside it)")


def load_net(path: str | Path) -> DetectorNet:
    """The trained net behind ``path`` (see :func:`load_detector`), in eval mode."""
    return load_detector(path)[0]


def bundle_ref(path: str | Path) -> Path | str | None:
    """What :func:`sdk.bundle.load_bundle` should get for ``path``: the folder (it holds a ``manifest.json``), the
    built-in bundle name, or None when ``path`` names no bundle."""
    from sdk.bundle import BUILTIN_DIR

    p = Path(path)
    if (p / "manifest.json").is_file():
        return p
    if (BUILTIN_DIR / str(path) / "manifest.json").is_file():
        return str(path)
    return None


def ltdet_spec(path: str | Path):
    """The ``ltdet`` detect stage (:class:`sdk.bundle.StageSpec`) of the bundle ``path`` (folder or built-in name), None
    when ``path`` names no bundle.

    Raises:
        SystemExit: a bundle whose detect stage is not ``ltdet``."""
    from sdk.bundle import load_bundle

    ref = bundle_ref(path)
    if ref is None:
        return None
    spec = load_bundle(ref).stages.get("detect")
    if spec is None or spec.kind != "ltdet":
        raise SystemExit(f"{path}: the detect stage is {getattr(spec, 'kind', None)!r}, not ltdet")
    return spec


def load_trained_net(path: str | Path) -> DetectorNet:
    """The trained LTDet net from a bundle folder or built-in bundle name (its detect stage's ``model`` file, found
    by the SDK's bundle loader), an LTDet ``.onnx`` file (:func:`~trainer.detector.model.net_from_onnx`) or a
    detector run folder / checkpoint (:func:`load_net`).

    Raises:
        SystemExit: a bundle whose detect stage is not ``ltdet``."""
    from sdk.stages import file_of
    from trainer.detector.model import net_from_onnx

    p = Path(path)
    spec = ltdet_spec(path)
    if spec is not None:
        p = file_of(spec, "model")
    if p.suffix == ".onnx":
        return net_from_onnx(p)
    return load_net(p)
