"""Dataclass configs as command lines: every field becomes a flag, ``--config`` reads a JSON/YAML file.

Precedence: dataclass defaults < ``--config`` file < explicit flags. Field help comes from the ``#:``
comment on the field's line in the dataclass source.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_help(cls: type) -> dict[str, str]:
    """The ``#:`` comments of ``cls``'s fields, by field name."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):.*#:\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def add_dataclass_args(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls`` (bools as ``--x/--no-x``), plus ``--config FILE``."""
    p.add_argument("--config", type=Path, default=None, help=f"JSON (or YAML) file of {cls.__name__} values")
    defaults, helps = cls(), field_help(cls)
    for f in fields(cls):
        d = getattr(defaults, f.name)
        h = (helps.get(f.name, "") + f" (default {d})").strip().replace("%", "%%")
        if isinstance(d, bool):
            p.add_argument(_flag(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=h)
        else:
            typ = {int: int, float: float}.get(type(d), str)
            p.add_argument(_flag(f.name), dest=f.name, type=typ, default=None, help=h)


def dataclass_from_args(args: argparse.Namespace, cls: Callable[..., T]) -> T:
    """Build ``cls`` from defaults < ``args.config`` file < explicit flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        text = Path(args.config).read_text()
        if str(args.config).endswith((".yaml", ".yml")):
            import yaml  # optional dependency

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise SystemExit(f"{args.config}: unknown keys {sorted(unknown)}")
    for f in fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return dataclasses.replace(cls(), **values)


def standalone_main(prog: str, doc: str | None, add_args: Callable[[argparse.ArgumentParser], None],
                    run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """``python -m <prog>``: parse with ``add_args``, set up logging, ``run``."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


def run_training(cfg: Any, train: Callable[[Any], dict]) -> int:
    """Common body of a trainer's ``run``: check ``cfg.data`` (or the face pack ``cfg.faces``), record ``cfg`` in ``<out>/train_config.json``,
    train, print the result as JSON."""
    faces = getattr(cfg, "faces", None)
    if faces:  # a face pack replaces the data folder (no detector, no images needed)
        if not Path(faces).is_file():
            raise SystemExit(f"face pack not found: {faces}")
    elif not Path(cfg.data).is_dir():
        raise SystemExit(f"data folder not found: {cfg.data}")
    from trainer.checkpoints import write_json

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.out) / "train_config.json", dataclasses.asdict(cfg))
    print(json.dumps(train(cfg), indent=1))
    return 0


def dataclass_command(name: str, help: str, cls: type, train: Callable[[Any], dict], doc: str | None, prog: str):
    """``(add_parser, run, main)`` of a trainer whose options are the fields of dataclass ``cls``: ``add_parser``
    registers sub-command ``name`` on ``trainer/main.py``, ``run`` trains from parsed args (defaults < ``--config``
    file < explicit flags), ``main`` is the ``python -m <prog>`` entry point."""

    def add_args(p: argparse.ArgumentParser) -> None:
        add_dataclass_args(p, cls)

    def run(args: argparse.Namespace) -> int:
        return run_training(dataclass_from_args(args, cls), train)

    def add_parser(subparsers) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_args(p)
        p.set_defaults(fn=run)
        return p

    def main(argv: list[str] | None = None) -> int:
        return standalone_main(prog, doc, add_args, run, argv)

    return add_parser, run, main
