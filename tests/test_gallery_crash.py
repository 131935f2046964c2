"""Crash safety: a forked writer enrolls and removes people in a loop and is killed with SIGKILL at random moments
(60 times). After every kill, reopening the gallery gives every committed identity, complete, and nothing of an
interrupted one; SQLite's integrity check passes and memory matches the file."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
import zlib

import numpy as np
import pytest

from sdk.gallery import Gallery
from sdk.gallery_admin import integrity_check

DIM = 32
KILLS = 60


def rows_of(name: str) -> np.ndarray:
    """The (K, DIM) unit rows enrolled under ``name`` (deterministic from the name; K = 1..4 is in the name)."""
    k = int(name.rsplit("k", 1)[1])
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.normal(size=(k, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def writer_loop(path: str, log_path: str, child: int) -> None:
    """Child process body: enroll / remove forever, logging 'B op name' before and 'D op name' after each write."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    g = Gallery(path, "crash-test", DIM, key=None)
    live = list(g.names)
    rng = random.Random(child)
    i = 0
    while True:
        if not live or rng.random() < 0.6:
            op, name = "add", f"c{child}_{i}_k{rng.randint(1, 4)}"
            i += 1
        else:
            op, name = "remove", live.pop(rng.randrange(len(live)))
        os.write(fd, f"B {op} {name}\n".encode())
        if op == "add":
            g.add(name, rows_of(name), [f"src{j}" for j in range(len(rows_of(name)))])
            live.append(name)
        else:
            g.remove(name)
        os.write(fd, f"D {op} {name}\n".encode())


def replay(log_path: str) -> tuple[set[str], tuple[str, str] | None]:
    """``(committed names, (op, name) of the write the kill interrupted, or None)`` from the log so far."""
    with open(log_path, "rb") as f:
        lines = f.read().decode().split("\n")
    committed: set[str] = set()
    pending = None
    for line in lines[:-1]:  # the last element is "" (or a line cut by the kill: a 'B' whose write never started)
        mark, op, name = line.split(" ")
        if mark == "B":
            pending = (op, name)
        else:
            (committed.add if op == "add" else committed.discard)(name)
            pending = None
    return committed, pending


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path):
    path, log_path = str(tmp_path / "g.db"), str(tmp_path / "ops.log")
    rng = random.Random(12345)
    interrupted = 0
    for kill in range(KILLS):
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            try:
                writer_loop(path, log_path, kill)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.02, 0.12))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        committed, pending = replay(log_path)
        interrupted += pending is not None
        doubt = {pending[1]} if pending else set()
        with Gallery(path, "crash-test", DIM, key=None) as g:
            names = set(g.names)
            # every committed identity is there; the only doubt is the write that was cut, all or nothing
            assert committed - doubt <= names, f"kill {kill}: lost {sorted(committed - names)}"
            assert names - committed <= doubt, f"kill {kill}: unexpected {sorted(names - committed)}"
            for name in names:  # complete: every row of it, exactly as written
                want = rows_of(name)
                got = g.matrix[[i for i, n in enumerate(g._snap.names[:len(g)]) if n == name]]
                assert got.shape == want.shape, f"kill {kill}: {name} has {len(got)} of {len(want)} rows"
                np.testing.assert_allclose(got, want, atol=1e-6)
            assert integrity_check(g) == []
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if pending is not None and (pending[1] in names) == (pending[0] == "add"):  # the cut write had committed
            with open(log_path, "a") as f:
                f.write(f"D {pending[0]} {pending[1]}\n")
    total_writes = sum(1 for line in open(log_path) if line.startswith("D "))
    assert total_writes > KILLS, "the writer hardly ran: the kills did not land during work"
    assert interrupted >= KILLS // 3, f"only {interrupted} kills landed inside a write"
