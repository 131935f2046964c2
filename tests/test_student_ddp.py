"""Student training under ``torchrun``: 2 CPU processes on gloo (DistributedDataParallel, :mod:`trainer.loops.ddp`).

The ``tiny_tree`` set of ``conftest.py`` (a folder-per-identity tree with a pre-seeded alignment cache: identity chip
matrices, so no face detector runs); rank 0 builds the teacher descriptor cache while rank 1 waits at the barrier.
Runs the trainer's own command line, ``trainer/main.py student``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("onnx")


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tiny_tree, tmp_path, torchrun, steps_rows):
    from trainer.checkpoints import load_checkpoint
    from trainer.loops import state_sha1
    from trainer.models.dlib_resnet import DlibResNet
    from trainer.student.build import build_models
    from trainer.student.config import StudentConfig

    data, cache = tiny_tree
    out = tmp_path / "run"
    r = torchrun(["trainer/main.py", "student", "--data", str(data), "--cache", str(cache), "--templates", "",
                  "--out", str(out), "--epochs", "2", "--p-identities", "2", "--k-images", "2", "--steps-per-epoch",
                  "4", "--mask-prob", "1.0", "--threads", "1", "--workers", "0", "--ckpt-every", "1",
                  "--val-fraction", "0", "--no-progress"], timeout=180)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"

    for f in ("steps.csv", "loss.png", "student.safetensors", "ckpt/last.safetensors", "ckpt/last.json",
              "ckpt/last.optim.safetensors", "ckpt/epoch1.safetensors", "ckpt/epoch2.safetensors", "summary.json",
              "config.json"):
        assert (out / f).is_file(), f
    assert list(cache.glob("teacher-*.npy")), "rank 0 did not write the teacher cache"

    # 4 PK batches per epoch split over 2 ranks: 2 optimiser steps per epoch, one CSV row each (rank 0 only)
    rows = steps_rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [r["epoch"] for r in rows] == ["1", "1", "2", "2"] and [r["batch"] for r in rows] == ["1", "2", "1", "2"]
    assert all(np.isfinite(float(r["total"])) and float(r["total"]) > 0 for r in rows)
    meta = json.loads((out / "ckpt/last.json").read_text())
    assert (meta["epoch"], meta["batch"], meta["step"], meta["world_size"]) == (2, 0, 4, 2)

    # both ranks ended with the same weights, and they are the ones rank 0 saved
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 2
    h0, h1 = summary["weights_sha1"]
    assert h0 == h1, summary["weights_sha1"]
    cfg = StudentConfig.from_json(meta["config"])
    _, student, loss_mod, _, _ = build_models(cfg, 3)
    load_checkpoint(out).restore({"student": student, "loss": loss_mod})
    assert state_sha1(student) + ":" + state_sha1(loss_mod) == h0
    # and training moved them away from the dlib initialisation
    assert state_sha1(DlibResNet.from_dat()) != state_sha1(student)
