"""Student training under ``torchrun``: 2 CPU processes on gloo (DistributedDataParallel).

The tiny chip set of ``test_student_train.py`` is written as a folder-per-identity tree and its alignment cache
is pre-seeded (identity chip matrices: frame == chip), so no face detector runs; rank 0 builds the teacher
descriptor cache while rank 1 waits at the barrier.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("onnx")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from test_student_train import _variants  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory, astronaut_bgr, camera_bgr):
    """``(data_root, cache_dir)``: 3 identities x 3 chips (the ``tiny`` set of test_student_train) on disk, with
    an alignment cache whose chip matrices are the identity."""
    from sdk._registry import build_stage
    from sdk.align import DLIB_150
    from sdk.bundle import load_bundle
    from trainer.data.faces import AlignedSet, cache_key
    from trainer.student_train import select_samples

    root = tmp_path_factory.mktemp("ddp")
    data, cache = root / "data", root / "cache"
    faces = {"astronaut": astronaut_bgr[20:250, 120:350], "camera": camera_bgr[40:300, 150:410],
             "astronaut_flip": astronaut_bgr[20:250, 120:350][:, ::-1]}
    for name, img in faces.items():
        chip = cv2.resize(np.ascontiguousarray(img), (150, 150), interpolation=cv2.INTER_AREA)
        (data / name).mkdir(parents=True)
        for k, v in enumerate(_variants(chip, 3)):
            cv2.imwrite(str(data / name / f"{k}.png"), v)
    paths = [str(s.path) for s in select_samples(data, 10)]
    n = len(paths)
    assert n == 9
    embedder = build_stage(load_bundle(None).stages["embed"])
    geometry = getattr(embedder, "geometry_id", embedder.model_id)
    eye = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
    cache.mkdir()
    AlignedSet(paths, np.zeros(n, np.int8), np.tile(DLIB_150, (n, 1, 1)).astype(np.float32),
               np.tile(np.array([0, 0, 150, 150], np.float32), (n, 1)), eye, eye.copy()
               ).save(cache / f"aligned-{cache_key(paths, geometry)}.npz")
    return data, cache


def test_torchrun_two_gloo_processes(tiny_tree, tmp_path):
    from trainer.models.dlib_resnet import DlibResNet
    from trainer.student_train import build_models, load_checkpoint, state_sha1, StudentConfig

    data, cache = tiny_tree
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "trainer.student_train",
           "--data", str(data), "--cache", str(cache), "--templates", "", "--out", str(out),
           "--epochs", "2", "--p-identities", "2", "--k-images", "2", "--steps-per-epoch", "4",
           "--mask-prob", "1.0", "--threads", "1", "--workers", "0", "--ckpt-every", "1",
           "--val-fraction", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"torchrun failed ({time.perf_counter() - t0:.0f} s):\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"

    for f in ("steps.csv", "loss.png", "student.safetensors", "ckpt/last.safetensors", "ckpt/last.json",
              "ckpt/epoch1.safetensors", "ckpt/epoch2.safetensors", "summary.json", "config.json"):
        assert (out / f).is_file(), f
    assert list(cache.glob("teacher-*.npy")), "rank 0 did not write the teacher cache"

    # 4 PK batches per epoch split over 2 ranks: 2 optimiser steps per epoch, one CSV row each (rank 0 only)
    rows = list(csv.DictReader((out / "steps.csv").open()))
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
    cfg = StudentConfig(**{k: v for k, v in meta["config"].items() if k in StudentConfig.__dataclass_fields__})
    _, student, loss_mod, _, _ = build_models(cfg, 3)
    load_checkpoint(out / "ckpt/last.safetensors", student, loss_mod)
    assert state_sha1(student) + ":" + state_sha1(loss_mod) == h0
    # and training moved them away from the dlib initialisation
    assert state_sha1(DlibResNet.from_dat()) != state_sha1(student)
