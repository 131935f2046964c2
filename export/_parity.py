"""The one parity check of every export: a reference (the torch graph) against the exported artifact on the same inputs.

Every format's check runs through :func:`check`: it feeds both sides the same named inputs (what the SDK stage
hands its backend: uint8 crops / chips, or the inpainter's float image + mask), compares every output by its
maximum absolute difference (and, for embeddings, the maximum cosine distance between rows) and raises
:class:`ParityError` beyond the tolerance. The tolerances live here, in :data:`TOLERANCES`, one row per family and
weight precision; each bundle stage records the result (``"export": {"parity": ...}``).

Units: the segmenter's outputs are probabilities in [0, 1]; the embedder's are raw descriptors (dlib's are of
norm ~1.4); the inpainter's are images in [-1, 1] (1e-3 there is 0.13 grey levels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["Tolerance", "TOLERANCES", "ParityResult", "ParityError", "check", "tolerance_for", "cosine_distance"]

#: ``feeds -> outputs`` in output-name order (a torch graph, an ONNX Runtime session, a loaded backend ...)
Runner = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted difference: ``max_abs`` on every output; ``max_cos`` (row cosine distance) on the outputs
    compared by direction (embeddings), ``None`` when no output is."""

    max_abs: float
    max_cos: float | None = None


#: (family, weights) -> tolerance. fp16 weights keep ~3 significant digits per weight: ~1e-3 on raw descriptors,
#: ~1e-5 cosine distance, ~1e-3 on the inpainter's [-1, 1] pixels (limits leave an order of magnitude of margin).
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("segmenter", "float32"): Tolerance(1e-4),
    ("segmenter", "float16"): Tolerance(5e-3),
    ("embedder", "float32"): Tolerance(1e-3, 1e-4),
    ("embedder", "float16"): Tolerance(2e-2, 5e-3),
    ("inpainter", "float32"): Tolerance(1e-3),
    ("inpainter", "float16"): Tolerance(1e-2),
}


def tolerance_for(family: str, weights: str = "float32") -> Tolerance:
    """The :data:`TOLERANCES` row of ``family`` with ``weights`` (``"float32"`` | ``"float16"``).

    Raises:
        KeyError: naming the rows there are.
    """
    try:
        return TOLERANCES[(family, weights)]
    except KeyError:
        raise KeyError(f"no parity tolerance for {family!r} with {weights} weights; "
                       f"rows: {sorted(TOLERANCES)}") from None


class ParityError(RuntimeError):
    """The exported artifact disagrees with the reference beyond the tolerance (the message has the numbers)."""


@dataclass
class ParityResult:
    """What :func:`check` measured (written into the manifest as ``to_dict()``)."""

    reference: str
    candidate: str
    inputs: int
    max_abs_diff: dict[str, float]
    tolerance: Tolerance
    max_cos_dist: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        t = self.tolerance
        return (all(v <= t.max_abs for v in self.max_abs_diff.values())
                and (t.max_cos is None or all(v <= t.max_cos for v in self.max_cos_dist.values())))

    @property
    def worst_abs(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def worst_cos(self) -> float | None:
        return max(self.max_cos_dist.values()) if self.max_cos_dist else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tolerance"] = {k: v for k, v in asdict(self.tolerance).items() if v is not None}
        if not self.max_cos_dist:
            d.pop("max_cos_dist")
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        cos = f", max cosine distance {self.worst_cos:.3g}" if self.worst_cos is not None else ""
        return (f"{self.candidate} vs {self.reference} on {self.inputs} inputs: max |diff| {self.worst_abs:.3g}{cos} "
                f"({'within' if self.passed else 'beyond'} the tolerance)")


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise ``1 - cos(a_i, b_i)`` of two ``(N, D)`` arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - (a * b).sum(1)


def check(reference: Runner, candidate: Runner, feeds: Mapping[str, np.ndarray], outputs: Sequence[str],
          tolerance: Tolerance, *, names: tuple[str, str] = ("torch", "onnxruntime"),
          cosine_outputs: Sequence[str] = (), raise_on_failure: bool = True) -> ParityResult:
    """Run both sides on ``feeds`` and compare every output in ``outputs``.

    Args:
        reference, candidate: ``feeds -> outputs`` (in ``outputs`` order).
        names: what the two sides are, for the record and the error.
        cosine_outputs: outputs also compared by row cosine distance (``(N, D)`` embeddings).

    Raises:
        ParityError: beyond the tolerance (unless ``raise_on_failure`` is False); shape mismatches always.
    """
    ref = [np.asarray(r, np.float64) for r in reference(feeds)]
    got = [np.asarray(g, np.float64) for g in candidate(feeds)]
    n = len(next(iter(feeds.values()))) if feeds else 0
    res = ParityResult(names[0], names[1], int(n), {}, tolerance)
    for name, r, g in zip(outputs, ref, got):
        if r.shape != g.shape:
            raise ParityError(f"{names[1]} output {name!r} has shape {g.shape}, {names[0]} gives {r.shape}")
        res.max_abs_diff[name] = float(np.abs(r - g).max()) if r.size else 0.0
        if name in cosine_outputs:
            res.max_cos_dist[name] = float(cosine_distance(r.reshape(len(r), -1), g.reshape(len(g), -1)).max())
    if raise_on_failure and not res.passed:
        cos = "" if res.worst_cos is None else (f", max cosine distance {res.worst_cos:.3g} "
                                                f"(tolerance {tolerance.max_cos:g})")
        raise ParityError(f"{_title(names[1])} disagrees with {names[0]}: max |diff| {res.worst_abs:.3g} "
                          f"(tolerance {tolerance.max_abs:g}){cos}; per output {res.max_abs_diff}")
    return res


_TITLES = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}


def _title(name: str) -> str:
    return _TITLES.get(name, name)
