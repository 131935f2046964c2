"""Timing statistics of a stream in fixed memory: per-stage ring buffers of milliseconds.

Each stage keeps the last ``capacity`` samples in a preallocated float32 array (256 KiB per stage at the
default 65,536), so a stream that runs for days uses the same memory as one that runs for a minute; counts and
totals cover the whole run.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Ring", "StageStats"]


class Ring:
    """Last ``capacity`` float samples (float32), plus the count and sum of all samples ever added."""

    def __init__(self, capacity: int = 65536):
        self._buf = np.zeros(int(capacity), np.float32)
        self._n = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self._buf[self._n % len(self._buf)] = value
        self._n += 1
        self.total += float(value)

    @property
    def count(self) -> int:
        return self._n

    def values(self) -> np.ndarray:
        """The samples kept (oldest order not guaranteed), float32 copy."""
        return self._buf[:min(self._n, len(self._buf))].copy()

    def summary(self) -> dict[str, float]:
        """``{"n", "mean", "p50", "p95", "p99", "max"}`` over the kept samples (``n`` counts all samples)."""
        v = self.values()
        if not len(v):
            return {"n": 0}
        p50, p95, p99 = np.percentile(v, [50, 95, 99])
        return {"n": self._n, "mean": round(self.total / self._n, 3), "p50": round(float(p50), 3),
                "p95": round(float(p95), 3), "p99": round(float(p99), 3), "max": round(float(v.max()), 3)}


class StageStats:
    """Milliseconds per stage, per frame (every frame, 0 when a stage did not run on it) and per call."""

    def __init__(self, stages: tuple[str, ...], capacity: int = 65536):
        self.stages = stages
        self.capacity = capacity
        self.per_frame = {s: Ring(capacity) for s in stages}
        self.per_call: dict[str, Ring] = {}  # any name; created at its first call

    def frame(self, times_ms: dict[str, float]) -> None:
        """Record one frame: ``times_ms`` maps stages that ran on it to their milliseconds."""
        for s in self.stages:
            self.per_frame[s].add(times_ms.get(s, 0.0))

    def call(self, stage: str, ms: float) -> None:
        """Record one call of ``stage`` (a full detection, a batched recognition)."""
        if stage not in self.per_call:
            self.per_call[stage] = Ring(self.capacity)
        self.per_call[stage].add(ms)

    def summary(self) -> dict[str, dict]:
        return {"per_frame_ms": {s: r.summary() for s, r in self.per_frame.items()},
                "per_call_ms": {s: r.summary() for s, r in self.per_call.items() if r.count}}
