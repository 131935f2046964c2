"""Machinery shared by the detector family's trainers (``detector``, ``landmarks``, ``detector-stem``): the
``trainer/main.py`` sub-command (config dataclass <-> flags, input checks, ``train_config.json``, the JSON summary),
the learning-rate schedule, the plugin parts of a one-net / one-optimiser trainer, and the training-curve plot of a
run's ``steps.csv``."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer._config_cli import add_dataclass_args, dataclass_from_args
from trainer.checkpoints import write_json

__all__ = ["NetPluginMixin", "add_command", "plot_curves", "warmup_cosine"]


def warmup_cosine(peak: float, step: int, steps: int, warmup: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``peak``
    at ``steps``."""
    warmup = max(1, int(warmup))
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


class NetPluginMixin:
    """``modules`` / ``optimizers`` / ``meta`` of a loop plugin with one detector net (``self.net``), one optimiser
    (``self.opt``) and a config dataclass (``self.cfg``); the checkpoint JSON gets the net's description."""

    net: object
    opt: object
    cfg: object

    def modules(self) -> dict:
        return {"model": self.net}

    def optimizers(self) -> dict:
        return {"opt": self.opt}

    def meta(self) -> dict:
        from trainer.detector.checkpoint import net_meta

        return {**net_meta(self.net), "config": dataclasses.asdict(self.cfg)}


def add_command(subparsers, name: str, help: str, doc: str | None, config_cls: type,
                train: Callable[[object], dict], check: Callable[[object], None] | None = None
                ) -> argparse.ArgumentParser:
    """Register ``name``: every field of ``config_cls`` is a flag; running it checks ``data`` / ``templates``
    (and ``check(cfg)``), writes ``<out>/train_config.json``, trains and prints the summary as JSON."""

    def run(args: argparse.Namespace) -> int:
        cfg = dataclass_from_args(args, config_cls)
        if cfg.data != "astronaut" and not Path(cfg.data).is_dir():
            raise SystemExit(f"data folder not found: {cfg.data}")
        if getattr(cfg, "templates", "") and not Path(cfg.templates).is_dir():
            raise SystemExit(f"templates folder not found: {cfg.templates}")
        if check is not None:
            check(cfg)
        write_json(Path(cfg.out) / "train_config.json", dataclasses.asdict(cfg))
        print(json.dumps(train(cfg), indent=1))
        return 0

    p = subparsers.add_parser(name, help=help, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, config_cls)
    p.set_defaults(fn=run)
    return p


def plot_curves(csv_path: Path, png: Path, keys: Sequence[str], title: str,
                twin: tuple[str, str] | None = None) -> None:
    """Moving averages (~50 points) of the ``keys`` columns of ``csv_path`` on a log axis -> ``png``; ``twin``:
    ``(column, label)`` of a sparse column (e.g. a validation score) drawn on a second axis in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    s = np.array([float(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        v = np.array([float(r[k]) for r in rows])
        n = max(1, len(v) // 50)
        ax.plot(s[n - 1:], np.convolve(v, np.ones(n) / n, "valid"), label=k)
    if twin is not None:
        pts = [(float(r["step"]), float(r[twin[0]])) for r in rows if r.get(twin[0])]
        if pts:
            ax2 = ax.twinx()
            ax2.plot(*zip(*pts), "k.--", label=twin[1])
            ax2.set_ylabel(twin[1])
            ax2.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
