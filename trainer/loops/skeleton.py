"""The one training-loop skeleton: epochs of batches, CSV log + tqdm, checkpoints every k steps, exact resume, DDP.

A model plugs in with a :class:`Plugin` (its modules, optimisers, batches and one optimiser update); the
skeleton owns everything around it, the same way for the segmenter, the inpainter and the student:

* **progress** is ``(epoch, batch, step)``: ``batch`` counts this rank's batches of ``epoch`` done, ``step`` the
  optimiser updates of the whole run.  Step-based trainers are one epoch of ``steps`` batches.
* **checkpoints** (:mod:`trainer.checkpoints`, ``<out>/ckpt/last.*``) every ``ckpt_every`` steps, at every
  epoch end (``ckpt/epoch<N>.*`` too with ``epoch_checkpoints``), when ``max_minutes`` runs out, and once more
  after :meth:`Plugin.finish` with its extras (e.g. the final evaluation).  They hold every module, every
  optimiser and the torch RNG state, so ``resume=True`` continues exactly where the checkpoint was taken: the
  same batches (plugins make batch ``b`` of epoch ``e`` a pure function of ``(seed, e, b)``), the same random
  numbers, the same weights and optimiser state as a run that never stopped (``tests/test_loops.py``).
* **log**: ``<out>/<csv_name>`` gets a row every ``log_every`` steps (and at checkpoints and the last step); a
  resumed run first drops the rows logged after its checkpoint, so a crash never leaves duplicate steps.
  tqdm shows the plugin's :meth:`Plugin.postfix`.
* **DDP** (:class:`trainer.loops.ddp.DistContext`): under ``torchrun`` rank ``r`` trains on ``Plugin.batches``'s
  share ``r::world``; logged parts are averaged over ranks; only rank 0 logs, checkpoints and evaluates; the
  final weights of every rank are compared.  A plugin says whether it supports it (``supports_ddp``).
"""
from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from trainer.checkpoints import Checkpoint, atomic_write_text, find_checkpoint, load_checkpoint, save_checkpoint
from trainer.loops.ddp import DistContext

log = logging.getLogger(__name__)

__all__ = ["LoopSettings", "Plugin", "StepPlugin", "run_loop", "LAST"]

#: the rolling checkpoint of a run, relative to its output folder
LAST = Path("ckpt") / "last"


@dataclass
class LoopSettings:
    """What the skeleton needs to know about a run (each trainer fills it from its own config).

    Attributes:
        out: run folder (CSV log, ``ckpt/``).
        ckpt_every: optimiser steps between ``ckpt/last`` checkpoints (0: epoch ends and the end only).
        log_every: steps between CSV rows (checkpoint steps and the last step are always logged).
        resume: continue from ``<out>/ckpt/last`` when it exists (else start fresh).
        progress: tqdm bars (rank 0 only).
        max_minutes: stop cleanly (checkpoint, then :meth:`Plugin.finish`) after this many minutes; 0 = no limit.
        epoch_checkpoints: also keep ``ckpt/epoch<N>.*`` at every epoch end.
        csv_name: log file name in ``out``.
        device: device name for the DDP backend choice.
    """

    out: Path
    ckpt_every: int = 0
    log_every: int = 1
    resume: bool = False
    progress: bool = True
    max_minutes: float = 0.0
    epoch_checkpoints: bool = False
    csv_name: str = "log.csv"
    device: str = "cpu"


class Plugin:
    """One model's part of a training run.  Override what the model needs; the defaults do nothing.

    Attributes:
        kind: checkpoint kind and tqdm label (``"segmenter"``, ``"inpainter"``, ``"student"``).
        csv_fields: the CSV header.
        supports_ddp: whether the plugin runs under torchrun (else the skeleton refuses WORLD_SIZE > 1).
    """

    kind: str = "model"
    csv_fields: Sequence[str] = ("step", "epoch", "batch", "seconds")
    supports_ddp: bool = False

    # -- what is saved --------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, Any]:
        """name -> ``nn.Module`` of everything a checkpoint holds (trained or with buffers)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, Any]:
        """name -> optimiser."""
        raise NotImplementedError

    def meta(self) -> dict:
        """JSON extras of every checkpoint: ``models`` (model configs), ``preprocess``, ``config``, ..."""
        return {}

    def weights_metadata(self) -> dict[str, str]:
        """Extra safetensors metadata strings of the weights file."""
        return {}

    def agreement_modules(self) -> dict[str, Any]:
        """Modules whose final weights must agree across DDP ranks (default: all of :meth:`modules`)."""
        return self.modules()

    # -- the schedule -----------------------------------------------------------------------------------------------
    def num_epochs(self) -> int:
        return 1

    def resume_position(self, meta: Mapping[str, Any]) -> tuple[int, int]:
        """``(epoch, batch)`` to continue from, given a checkpoint's JSON (default: the ones it recorded).
        Step-based plugins (one epoch of ``steps`` batches) return ``(0, step)``, so a longer ``steps`` continues."""
        return int(meta.get("epoch", 0)), int(meta.get("batch", 0))

    def batches_per_epoch(self, epoch: int, world: int) -> int:
        """Batches of ``epoch`` that each rank trains on."""
        raise NotImplementedError

    def batches(self, epoch: int, first: int, ctx: DistContext) -> Iterable:
        """This rank's batches of ``epoch`` from its ``first`` (0-based) on."""
        raise NotImplementedError

    # -- hooks --------------------------------------------------------------------------------------------------------
    def begin(self, fresh: bool, ctx: DistContext) -> None:
        """Before the first step (``fresh``: not resumed, nothing trained yet)."""

    def start_epoch(self, epoch: int, ctx: DistContext) -> None:
        """Before the first batch of ``epoch`` (train mode, learning rate)."""

    def step(self, batch: Any, epoch: int, step: int, ctx: DistContext) -> Mapping[str, Any]:
        """One optimiser update on ``batch`` (``step``: updates done before it); returns the loss parts to log."""
        raise NotImplementedError

    def postfix(self, parts: Mapping[str, Any]) -> dict[str, str]:
        """tqdm postfix of a step's parts."""
        return {}

    def at_checkpoint(self, step: int) -> dict[str, Any]:
        """Extra CSV columns computed when a checkpoint is written (rank 0; e.g. a quick validation)."""
        return {}

    def log_row(self, step: int, epoch: int, batch: int, parts: Mapping[str, Any], extra: Mapping[str, Any],
                step_seconds: float, total_seconds: float) -> dict[str, Any]:
        """The CSV row of a step (keys outside :attr:`csv_fields` are dropped)."""
        return {"step": step, "epoch": epoch + 1, "batch": batch, **{k: f"{float(v):.6g}" for k, v in parts.items()},
                **extra, "seconds": f"{step_seconds:.3f}"}

    def after_step(self, step: int, final: bool) -> None:
        """After a step was logged and checkpointed (rank 0; grids, snapshots)."""

    def end_epoch(self, epoch: int, step: int) -> None:
        """After ``epoch``'s end-of-epoch checkpoint (rank 0; validation)."""

    def finish(self, step: int, start_step: int, stopped_early: bool, train_seconds: float,
               weights_sha1: list[str] | None) -> tuple[dict, dict | None]:
        """After training (rank 0): ``(result returned by run_loop, extras of a final checkpoint or None)``."""
        return {"steps": step}, None


class StepPlugin(Plugin):
    """A step-based trainer: one epoch of ``steps`` batches of ``batch_size`` drawn from the map-style dataset
    ``ds`` (sample ``i`` a pure function of ``(seed, i)``), so resuming at step ``s`` starts at sample
    ``s * batch_size`` and a longer ``steps`` continues a finished run.  Subclasses set ``ds``, ``steps``,
    ``batch_size``, ``workers`` and ``seed``."""

    ds: Any
    steps: int
    batch_size: int
    workers: int = 0
    seed: int = 0

    def batches_per_epoch(self, epoch: int, world: int) -> int:
        return self.steps

    def resume_position(self, meta: Mapping[str, Any]) -> tuple[int, int]:
        return 0, int(meta.get("step") or 0)

    def batches(self, epoch: int, first: int, ctx: DistContext) -> Iterable:
        import torch

        bs = self.batch_size
        # a private generator: creating the loader does not draw from the global RNG (exact resume)
        return torch.utils.data.DataLoader(self.ds, batch_size=bs, sampler=range(first * bs, self.steps * bs),
                                           num_workers=self.workers, prefetch_factor=4 if self.workers else None,
                                           generator=torch.Generator().manual_seed(self.seed))


def _trim_csv(path: Path, step: int) -> None:
    """Drop the rows of ``path`` logged after ``step`` (a run resumed from an older checkpoint)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    head, body = rows[0], rows[1:]
    k = head.index("step") if "step" in head else 0
    keep = [r for r in body if r and r[k].isdigit() and int(r[k]) <= step]
    if len(keep) != len(body):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(head)
        w.writerows(keep)
        atomic_write_text(path, buf.getvalue())
        log.info("%s: dropped %d row(s) logged after step %d", path, len(body) - len(keep), step)


class _CsvLog:
    """Append-only CSV (rank 0): a new file gets the plugin's header, an existing one keeps its own columns."""

    def __init__(self, path: Path, fields: Sequence[str], fresh: bool):
        new = fresh or not path.is_file() or path.stat().st_size == 0
        header = list(fields)
        if not new:
            with path.open(newline="") as f:
                header = next(csv.reader(f), None) or list(fields)
        self.f = path.open("w" if new else "a", newline="")
        self.w = csv.DictWriter(self.f, header, extrasaction="ignore")
        if new:
            self.w.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        self.w.writerow(row)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _checkpoint_to_resume(out: Path) -> Checkpoint | None:
    """The checkpoint ``--resume`` continues from: ``<out>/ckpt/last.*``, else an older run's (segmenter / inpainter
    run folder, student ``ckpt/last.safetensors``: weights, optimisers and progress, but no RNG state), else None."""
    stem = find_checkpoint(out / LAST)
    if stem is not None:
        return load_checkpoint(stem)
    for older in (out, out / "ckpt" / "last.safetensors"):
        if older.exists():
            try:
                ck = load_checkpoint(older)
            except FileNotFoundError:
                continue
            log.warning("resuming from an older checkpoint (%s, %s): no RNG state in it, so the continuation is not "
                        "bit-identical to an uninterrupted run", older, ck.legacy)
            return ck
    log.info("%s: nothing to resume, starting fresh", out)
    return None


def run_loop(make_plugin: Callable[[DistContext, Checkpoint | None], Plugin], settings: LoopSettings) -> dict:
    """Build the plugin (``make_plugin(ctx, checkpoint_to_resume_or_None)``), train it, return its result.

    The plugin builder sees the checkpoint first (a resumed student takes its saved config from it); the
    skeleton then restores modules, optimisers, RNG and progress from it."""
    from tqdm import tqdm

    out = Path(settings.out)
    with DistContext(settings.device) as ctx:
        if ctx.main:
            out.mkdir(parents=True, exist_ok=True)
        ck = _checkpoint_to_resume(out) if settings.resume else None
        plugin = make_plugin(ctx, ck)
        if ctx.ddp and not plugin.supports_ddp:
            raise SystemExit(f"the {plugin.kind} trainer does not run under torchrun (WORLD_SIZE={ctx.world})")
        start_epoch = start_batch = step = 0
        stem = ck.stem if ck is not None else None
        if ck is not None:
            ck.restore(plugin.modules(), plugin.optimizers(), rng=True, strict=ck.legacy is None)
            (start_epoch, start_batch), step = plugin.resume_position(ck.meta), ck.step
            saved_world = int(ck.meta.get("world_size", 1))
            if start_batch and saved_world != ctx.world:
                raise ValueError(f"{stem} was saved mid-epoch by {saved_world} process(es); resume it with as many "
                                 f"(got {ctx.world})")
            log.info("resumed from %s: epoch %d batch %d step %d", stem, start_epoch, start_batch, step)
        start_step = step
        csv_path = out / settings.csv_name
        logger = None
        if ctx.main:
            if ck is not None:
                _trim_csv(csv_path, step)
            logger = _CsvLog(csv_path, plugin.csv_fields, fresh=ck is None)

        def save(path: Path, epoch: int, batch: int, extra: Mapping[str, Any] | None = None) -> None:
            if not ctx.main:
                return
            meta = {"kind": plugin.kind, **plugin.meta(), "epoch": epoch, "batch": batch, "step": step,
                    **({"world_size": ctx.world} if ctx.ddp else {}), **(extra or {})}
            save_checkpoint(path, plugin.modules(), meta, plugin.optimizers(), rng=True,
                            weights_metadata=plugin.weights_metadata())

        plugin.begin(ck is None, ctx)
        t0 = time.perf_counter()
        stop = False
        pos = (start_epoch, start_batch)  # progress after the last finished step
        n_epochs = plugin.num_epochs()
        for epoch in range(start_epoch, n_epochs):
            n = plugin.batches_per_epoch(epoch, ctx.world)
            batch = start_batch if epoch == start_epoch else 0
            plugin.start_epoch(epoch, ctx)
            bar = tqdm(total=n, initial=batch, desc=f"{plugin.kind} {epoch + 1}/{n_epochs}" if n_epochs > 1
                       else plugin.kind, unit="step", disable=not (settings.progress and ctx.main))
            for batch_data in plugin.batches(epoch, batch, ctx):
                ts = time.perf_counter()
                parts = ctx.mean_parts(plugin.step(batch_data, epoch, step, ctx))
                step += 1
                batch += 1
                pos = (epoch, batch)
                last_batch = batch >= n
                stop = bool(settings.max_minutes) and time.perf_counter() - t0 > settings.max_minutes * 60
                final = stop or (last_batch and epoch == n_epochs - 1)
                at_ckpt = bool(settings.ckpt_every) and step % settings.ckpt_every == 0
                if ctx.main:
                    extra = plugin.at_checkpoint(step) if (at_ckpt or final) else {}
                    if (at_ckpt or stop) and not last_batch:
                        save(out / LAST, epoch, batch)
                    if settings.log_every <= 1 or step % settings.log_every == 0 or at_ckpt or final or extra:
                        logger.write(plugin.log_row(step, epoch, batch, parts, extra, time.perf_counter() - ts,
                                                    time.perf_counter() - t0))
                    bar.update(1)
                    bar.set_postfix(**plugin.postfix(parts))
                    plugin.after_step(step, final)
                if stop:
                    break
            bar.close()
            if batch >= n:  # the epoch is complete
                pos = (epoch + 1, 0)
                save(out / LAST, epoch + 1, 0)
                if settings.epoch_checkpoints:
                    save(out / "ckpt" / f"epoch{epoch + 1}", epoch + 1, 0)
                if ctx.main:
                    plugin.end_epoch(epoch, step)
            if stop:
                break
        stopped_early = stop and pos != (n_epochs, 0)
        train_seconds = time.perf_counter() - t0
        hashes = ctx.finalize(plugin.agreement_modules())
        if logger is not None:
            logger.close()
        if not ctx.main:
            ctx.barrier()  # wait for rank 0's outputs
            return {"steps": step, "rank": ctx.rank, "world_size": ctx.world, "weights_sha1": hashes}
        result, final_meta = plugin.finish(step, start_step, stopped_early, train_seconds, hashes)
        if final_meta is not None or step == start_step:
            save(out / LAST, pos[0], pos[1], final_meta)
        ctx.barrier()
        return result
