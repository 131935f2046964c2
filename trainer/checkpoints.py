"""The one checkpoint format of the trainer: weights + JSON config + optimiser state, written atomically, no pickle.

A checkpoint is three files sharing a stem (``<out>/ckpt/last`` in every training loop)::

    <stem>.safetensors        weights of every module, keys "<module>.<state-dict key>"
                              (metadata: format, version, save_id, modules, plus caller strings such as arch)
    <stem>.json               {"format": "lookthrough.checkpoint", "version": 2, "save_id": ...,
                               "kind": "segmenter" | "inpainter" | "student", "modules": [...],
                               "models": {module: model config}, "preprocess": {module: Preprocess.to_dict()},
                               "config": <training config>, "epoch": e, "batch": b, "step": s,
                               "optimizers": {name: {"param_groups": [...], "shapes": {...}, "scalars": {...}}},
                               "rng": ["torch", ...], ...caller extras (eval, params, identities)}
    <stem>.optim.safetensors  optimiser state tensors "<optimizer>.<param id>.<name>" and the RNG states
                              "rng.torch" / "rng.cuda.<i>" (absent for weights-only checkpoints)

Every file is written to a temporary name and renamed into place (``os.replace``: atomic on POSIX), the JSON
last; the three carry the same ``save_id``, so a save interrupted between two renames is detected on load
(:class:`CheckpointError`) instead of mixing two steps.  Loading uses ``safetensors`` and ``json`` only.

Older layouts still load (read-only adapters, ``Checkpoint.legacy`` says which): a segmenter run folder
(``model.safetensors`` + ``config.json`` [+ ``optim.safetensors``]), an inpainter run folder
(``generator.safetensors`` [+ ``critics.safetensors``] + ``config.json`` [+ ``optim_g`` / ``optim_d``]), a student
training checkpoint (``student.`` / ``loss.`` / ``head.`` / ``opt.`` keys + its JSON), a detector run folder
(``last.safetensors`` with ``model.`` / ``opt.`` keys and a ``step`` + ``net_config.json``) and a bare state dict
(``student.safetensors``, inpainter snapshots, ``DlibResNet.save_safetensors``).
"""
from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "checkpoint_files", "find_checkpoint", "save_tensors", "atomic_write_bytes", "atomic_write_text",
           "write_json"]

FORMAT = "lookthrough.checkpoint"
VERSION = 2
WEIGHTS_SUFFIX, JSON_SUFFIX, OPTIM_SUFFIX = ".safetensors", ".json", ".optim.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing files, a torn save, a module or optimiser that does not fit."""


# ------------------------------------------------------------------------------------------------ atomic I/O
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically (non-JSON values through ``str``)."""
    return atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def save_tensors(tensors: Mapping[str, "torch.Tensor"], path: str | Path,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """``tensors`` (detached, on the CPU, contiguous) as a safetensors file, atomically. Returns ``path``."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata=dict(metadata) if metadata else None)
    return atomic_write_bytes(path, data)


def checkpoint_files(stem: str | Path) -> tuple[Path, Path, Path]:
    """``(weights, json, optimiser)`` paths of the checkpoint ``stem`` (a path without suffix)."""
    stem = Path(stem)
    return (stem.with_name(stem.name + WEIGHTS_SUFFIX), stem.with_name(stem.name + JSON_SUFFIX),
            stem.with_name(stem.name + OPTIM_SUFFIX))


def _stem_of(path: Path) -> Path:
    name = path.name
    for suf in (OPTIM_SUFFIX, WEIGHTS_SUFFIX, JSON_SUFFIX):
        if name.endswith(suf):
            return path.with_name(name[: -len(suf)])
    return path


# ------------------------------------------------------------------------------------------------ optimisers
def _optimizer_tensors(name: str, opt) -> tuple[dict, dict]:
    """``(tensors, json)`` of an optimiser's state: tensors keyed ``<name>.<pid>.<key>`` (0-d stored as 1-d, shape
    in ``json["shapes"]``), non-tensor state values in ``json["scalars"]``, the param groups as they are."""
    import torch

    sd = opt.state_dict()
    tensors, shapes, scalars = {}, {}, {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            k = f"{name}.{pid}.{key}"
            if isinstance(v, torch.Tensor):
                shapes[k] = list(v.shape)
                tensors[k] = v.reshape(-1) if v.dim() == 0 else v
            else:
                scalars[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "shapes": shapes, "scalars": scalars}


def _load_optimizer(name: str, opt, tensors: Mapping[str, "torch.Tensor"], spec: Mapping[str, Any] | None) -> None:
    """Inverse of :func:`_optimizer_tensors` (``spec`` None: param groups of ``opt`` as they are)."""
    cur = opt.state_dict()
    shapes = (spec or {}).get("shapes", {})
    state: dict[int, dict[str, Any]] = {}
    prefix = name + "."
    for k, v in tensors.items():
        if not k.startswith(prefix):
            continue
        pid, key = k[len(prefix):].split(".", 1)
        state.setdefault(int(pid), {})[key] = v.reshape(shapes[k]) if k in shapes else v
    for k, v in ((spec or {}).get("scalars") or {}).items():
        if k.startswith(prefix):
            pid, key = k[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[key] = v
    groups = cur["param_groups"]
    if spec and spec.get("param_groups") is not None:
        saved = spec["param_groups"]
        if len(saved) != len(groups) or any(len(a["params"]) != len(b["params"]) for a, b in zip(saved, groups)):
            raise CheckpointError(f"optimiser {name!r}: the checkpoint's parameter groups "
                                  f"{[len(g['params']) for g in saved]} do not fit this model's "
                                  f"{[len(g['params']) for g in groups]}")
        groups = [{k: (tuple(v) if isinstance(g.get(k), tuple) and isinstance(v, list) else v) for k, v in s.items()}
                  for s, g in zip(saved, groups)]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _rng_tensors() -> tuple[dict, list[str]]:
    import torch

    tensors = {"rng.torch": torch.get_rng_state()}
    names = ["torch"]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
            names.append(f"cuda.{i}")
    return tensors, names


def _restore_rng(tensors: Mapping[str, "torch.Tensor"]) -> None:
    import torch

    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        for i, s in cuda[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(s.to(torch.uint8), i)


# ------------------------------------------------------------------------------------------------ save / load
def save_checkpoint(stem: str | Path, modules: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                    optimizers: Mapping[str, Any] | None = None, rng: bool = False,
                    weights_metadata: Mapping[str, str] | None = None) -> Path:
    """Write the checkpoint ``stem`` (see the module docstring); returns the weights file's path.

    Args:
        stem: path without suffix, e.g. ``out/ckpt/last``.
        modules: name -> ``nn.Module`` (DDP wrappers are unwrapped); names must not contain ``"."``.
        meta: JSON-able dict merged into ``<stem>.json`` (kind, models, preprocess, config, epoch / batch / step,
            extras). ``format``, ``version``, ``save_id``, ``modules``, ``optimizers`` and ``rng`` are set here.
        optimizers: name -> ``torch.optim.Optimizer``; their state goes to ``<stem>.optim.safetensors``.
        rng: also store the torch (and CUDA) RNG states, so a resumed run draws the same random numbers.
        weights_metadata: extra safetensors metadata strings (e.g. ``{"arch": "dlib"}``).
    """
    weights_path, json_path, optim_path = checkpoint_files(stem)
    save_id = secrets.token_hex(8)
    tensors = {}
    for name, mod in modules.items():
        if "." in name:
            raise ValueError(f"module names may not contain '.': {name!r}")
        mod = getattr(mod, "module", mod)
        tensors.update({f"{name}.{k}": v.detach().clone() for k, v in mod.state_dict().items()})
    js: dict[str, Any] = {"format": FORMAT, "version": VERSION, "save_id": save_id, **(meta or {}),
                          "modules": list(modules)}
    if optimizers or rng:
        ot: dict = {}
        js["optimizers"] = {}
        for name, opt in (optimizers or {}).items():
            t, spec = _optimizer_tensors(name, opt)
            ot.update(t)
            js["optimizers"][name] = spec
        if rng:
            t, names = _rng_tensors()
            ot.update(t)
            js["rng"] = names
        save_tensors(ot, optim_path, {"format": FORMAT, "version": str(VERSION), "save_id": save_id})
    else:
        optim_path.unlink(missing_ok=True)
    md = {"format": FORMAT, "version": str(VERSION), "save_id": save_id, "modules": ",".join(modules),
          **(weights_metadata or {})}
    save_tensors(tensors, weights_path, md)
    write_json(json_path, js)
    return weights_path


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` (the JSON), ``weights`` (``"<module>.<key>"`` -> tensor), ``optim`` (optimiser
    and RNG tensors, empty when none were saved), ``legacy`` (``None`` for this format, else which older layout)."""

    stem: Path
    meta: dict
    weights: dict
    optim: dict = field(default_factory=dict)
    legacy: str | None = None

    @property
    def kind(self) -> str | None:
        return self.meta.get("kind")

    @property
    def step(self) -> int:
        return int(self.meta.get("step") or 0)

    @property
    def modules(self) -> list[str]:
        return list(self.meta.get("modules") or sorted({k.split(".", 1)[0] for k in self.weights}))

    def has(self, module: str) -> bool:
        """Whether the checkpoint holds ``module`` (a module without tensors counts when the JSON lists it)."""
        return module in (self.meta.get("modules") or ()) or any(k.startswith(module + ".") for k in self.weights)

    def state(self, module: str) -> dict:
        """State dict of ``module`` (keys without the ``<module>.`` prefix); :class:`CheckpointError` if absent."""
        if not self.has(module):
            raise CheckpointError(f"{self.stem}: no module {module!r} in the checkpoint (it holds {self.modules})")
        p = module + "."
        return {k[len(p):]: v for k, v in self.weights.items() if k.startswith(p)}

    def restore(self, modules: Mapping[str, Any], optimizers: Mapping[str, Any] | None = None, rng: bool = False,
                strict: bool = True) -> None:
        """Load ``modules`` (name -> nn.Module, DDP unwrapped) and ``optimizers`` in place; ``rng``: also the torch
        RNG states when the checkpoint has them.  A module missing from the checkpoint is an error unless
        ``strict=False`` (then it keeps its weights)."""
        for name, mod in modules.items():
            if mod is None:
                continue
            if not self.has(name):
                if strict:
                    raise CheckpointError(f"{self.stem}: no module {name!r} in the checkpoint ({self.modules})")
                continue
            try:
                getattr(mod, "module", mod).load_state_dict(self.state(name), strict=True)
            except RuntimeError as e:
                raise CheckpointError(f"{self.stem}: module {name!r} does not fit: {e}") from None
        specs = self.meta.get("optimizers") or {}
        for name, opt in (optimizers or {}).items():
            if opt is None:
                continue
            if name not in specs and not any(k.startswith(name + ".") for k in self.optim):
                if strict:
                    raise CheckpointError(f"{self.stem}: no optimiser state {name!r} in the checkpoint")
                continue
            _load_optimizer(name, opt, self.optim, specs.get(name))
        if rng:
            _restore_rng(self.optim)


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint stem behind ``path``: a stem, one of its files, or a run folder (``<folder>/ckpt/last``);
    ``None`` when there is no checkpoint of this format there."""
    p = Path(path)
    if p.is_dir():
        p = p / "ckpt" / "last"
    stem = _stem_of(p)
    return stem if checkpoint_files(stem)[1].is_file() and _is_v2(checkpoint_files(stem)[1]) else None


def _is_v2(json_path: Path) -> bool:
    try:
        return json.loads(json_path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_checkpoint(path: str | Path, module: str = "model") -> Checkpoint:
    """Read the checkpoint behind ``path`` (a stem, one of its files, or a run folder; older layouts too).

    ``module``: the name given to a bare state dict (an older weights-only file), e.g. ``"student"``.

    Raises:
        FileNotFoundError: nothing that looks like a checkpoint at ``path``.
        CheckpointError: a torn save (files of two different saves) or a file that is not a checkpoint.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    stem = find_checkpoint(p)
    try:
        if stem is not None:
            w, j, o = checkpoint_files(stem)
            meta = json.loads(j.read_text())
            if not w.is_file():
                raise CheckpointError(f"{stem}: {j.name} has no weights file {w.name}")
            weights = load_file(str(w))
            optim = load_file(str(o)) if o.is_file() else {}
            ids = {meta.get("save_id"), _save_id(w)} | ({_save_id(o)} if o.is_file() and meta.get("optimizers") is not None
                                                         else set())
            if len(ids) != 1:
                raise CheckpointError(f"{stem}: the files come from different saves (an interrupted save?): "
                                      f"save ids {sorted(map(str, ids))}")
            return Checkpoint(stem, meta, weights, optim)
        if p.is_dir():
            return _legacy_folder(p)
        if p.suffix == JSON_SUFFIX and p.with_suffix(WEIGHTS_SUFFIX).is_file():
            p = p.with_suffix(WEIGHTS_SUFFIX)
        if p.is_file() and p.suffix == WEIGHTS_SUFFIX:
            return _legacy_file(p, module)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: not a readable checkpoint ({e})") from None
    raise FileNotFoundError(f"no checkpoint at {p}: expected <stem>.json + <stem>.safetensors, a run folder with "
                            "ckpt/last.json, or an older run folder / .safetensors file")


def _save_id(path: Path) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("save_id")


# ------------------------------------------------------------------------------------------------ older layouts
def _legacy_optim(path: Path, name: str) -> dict:
    """An older ``optim*.safetensors`` (keys ``<pid>.<key>``) as this format's ``<name>.<pid>.<key>``."""
    from safetensors.torch import load_file

    return {f"{name}.{k}": v for k, v in load_file(str(path)).items()} if path.is_file() else {}


def _legacy_folder(folder: Path) -> Checkpoint:
    from safetensors.torch import load_file

    cfg_path = folder / "config.json"
    if (folder / "model.safetensors").is_file() and cfg_path.is_file():  # segmenter, version 1
        cfg = json.loads(cfg_path.read_text())
        weights = {f"model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
        meta = {**cfg, "kind": "segmenter", "modules": ["model"], "models": {"model": cfg.get("model", {})},
                "config": cfg.get("train"), "optimizers": {"opt": None}}
        return Checkpoint(folder, meta, weights, _legacy_optim(folder / "optim.safetensors", "opt"), "segmenter-v1")
    if (folder / "generator.safetensors").is_file() and cfg_path.is_file():  # inpainter, version 1
        cfg = json.loads(cfg_path.read_text())
        weights = {f"generator.{k}": v for k, v in load_file(str(folder / "generator.safetensors")).items()}
        if (folder / "critics.safetensors").is_file():
            weights.update(load_file(str(folder / "critics.safetensors")))  # already "global." / "local."
        optim = {**_legacy_optim(folder / "optim_g.safetensors", "opt_g"),
                 **_legacy_optim(folder / "optim_d.safetensors", "opt_d")}
        meta = {**cfg, "kind": "inpainter", "modules": sorted({k.split(".", 1)[0] for k in weights}),
                "models": {"generator": cfg.get("model", {})}, "config": cfg.get("train"),
                "optimizers": {"opt_g": None, "opt_d": None}}
        return Checkpoint(folder, meta, weights, optim, "inpainter-v1")
    if (folder / "last.safetensors").is_file() and (folder / "net_config.json").is_file():  # detector, version 1
        from safetensors import safe_open

        t = load_file(str(folder / "last.safetensors"))
        with safe_open(str(folder / "last.safetensors"), framework="pt") as f:
            step = int((f.metadata() or {}).get("step") or 0)
        optim = {k: v for k, v in t.items() if k.startswith("opt.")}  # "opt.<pid>.<key>", 0-d stored as 1-d
        shapes = {k: [] for k in optim if k.endswith(".step")}
        meta = {"kind": "detector", "modules": ["model"], "step": step,
                "models": {"model": json.loads((folder / "net_config.json").read_text())},
                "optimizers": {"opt": {"param_groups": None, "shapes": shapes}}}
        return Checkpoint(folder, meta, {k: v for k, v in t.items() if k.startswith("model.")}, optim, "detector-v1")
    raise FileNotFoundError(f"no checkpoint in {folder}: no ckpt/last.json (this format), model.safetensors or "
                            "generator.safetensors + config.json (older segmenter / inpainter runs), "
                            "last.safetensors + net_config.json (older detector runs)")


def _legacy_file(path: Path, module: str) -> Checkpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        md = dict(f.metadata() or {})
    t = load_file(str(path))
    js_path = path.with_suffix(JSON_SUFFIX)
    js = json.loads(js_path.read_text()) if js_path.is_file() else {}
    if any(k.startswith("student.") for k in t):  # student training checkpoint, version 1
        weights = {k: v for k, v in t.items() if not k.startswith("opt.")}
        opt = js.get("optimizer") or {}
        optim = {"opt" + k[len("opt"):]: v for k, v in t.items() if k.startswith("opt.")}
        spec = {"param_groups": opt.get("param_groups"), "shapes": opt.get("shapes", {})} if opt else None
        meta = {k: v for k, v in js.items() if k != "optimizer"}
        meta.update(kind="student", modules=sorted({k.split(".", 1)[0] for k in weights}),
                    optimizers={"opt": spec} if spec else {}, arch=md.get("arch"), embedding_dim=md.get("embedding_dim"))
        return Checkpoint(path.with_suffix(""), meta, weights, optim, "student-v1")
    meta = {**md, **js, "modules": [module]}  # a bare state dict
    return Checkpoint(path.with_suffix(""), meta, {f"{module}.{k}": v for k, v in t.items()}, {}, "weights")
