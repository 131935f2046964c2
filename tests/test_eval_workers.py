"""The evaluation's worker pool (:func:`trainer.eval.render.run_chunks`): results in task order from spawned
processes (a forked pool hung on thread-pool locks copied from the parent), each started by the initializer."""
from __future__ import annotations

import os

import numpy as np

_STATE: dict = {}


def _init(offset: int) -> None:
    _STATE["offset"] = offset
    _STATE["pid"] = os.getpid()


def _task(t: tuple) -> np.ndarray:
    return np.asarray(t[0], np.float64) + _STATE["offset"]


def test_run_chunks_spawns_workers_and_keeps_task_order():
    import onnxruntime  # noqa: F401 - the parent holds ONNX Runtime (and its thread pools), as the evaluations do

    from trainer.eval.render import run_chunks

    tasks = [([float(i), float(i) + 0.5],) for i in range(7)]
    want = [np.array(t[0]) + 10 for t in tasks]
    for workers in (1, 2):
        got = run_chunks(_task, tasks, _init, (10,), workers, "test")
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
