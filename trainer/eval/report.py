"""Evaluation report: ROC plot (PNG) and JSON + markdown results table.

``results`` layout accepted by :func:`write_report` (rates are fractions in [0, 1])::

    {
      "unmasked": {<metrics>},                                # a row
      "masked":    {"surgical": {<metrics>}, "n95": {<metrics>}},   # rows "masked / surgical", ...
      "completed": {"surgical": {<metrics>}, ...},
    }

A mapping is a *row* when any of its keys is a known metric name (below) or any of its values is
not a mapping; otherwise it is a group of rows (condition -> mask category), flattened as
``"condition / category"``. Known metric keys of a row and how they are shown:

==================  =============================================================  =================
key                 value                                                          column(s)
==================  =============================================================  =================
``verification``    :class:`~trainer.eval.metrics.VerificationResult` or a dict     ``Acc. (%)``
                    with ``accuracy_mean``/``accuracy_std`` (or ``mean``/``std``)  "99.38 ± 0.27"
``tar_at_far``      ``{far: OperatingPoint | (tar, thr, far) | tar}``               ``TAR@FAR=1e-2 (%)``
``rank1``           float                                                          ``Rank-1 (%)``
``rank_k``          ``{k: rate}`` (from ``rank1_identification(..., ks=...)``)      ``Rank-k (%)``
``auc``             float                                                          ``AUC``
``psnr``            float dB, or per-image array (mean shown)                      ``PSNR (dB)``
``ssim``            float, or per-image array (mean shown)                         ``SSIM``
==================  =============================================================  =================

Any other scalar key becomes its own column (``%.4g``); non-scalar unknown keys go to JSON only.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["plot_roc", "write_report", "flatten_rows", "markdown_table"]

KNOWN = ("verification", "tar_at_far", "rank1", "rank_k", "auc", "psnr", "ssim")
MISSING = "–"


# --------------------------------------------------------------------------------------------------
# ROC plot
# --------------------------------------------------------------------------------------------------
def plot_roc(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "ROC",
    far_min: float | None = None,
) -> Path:
    """Save ROC curves (TAR vs. FAR, log-scale FAR axis) as a PNG, using the Agg canvas.

    Args:
        curves: ``{name: (far, tar)}`` as returned by :func:`~trainer.eval.metrics.roc_curve`
            (fractions). Points with FAR = 0 cannot be drawn on a log axis and are dropped.
        path: output .png path (parent folders are created).
        title: figure title.
        far_min: left end of the FAR axis; default: the smallest positive FAR over all curves
            (at least 1e-6).

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = 1.0
    for name, (far, tar) in curves.items():
        far = np.asarray(far, dtype=np.float64)
        tar = np.asarray(tar, dtype=np.float64)
        keep = far > 0
        if keep.any():
            lo = min(lo, float(far[keep].min()))
        ax.plot(far[keep], tar[keep] * 100.0, label=str(name), linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlim(far_min if far_min is not None else max(lo, 1e-6), 1.0)
    ax.set_ylim(0.0, 100.5)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR, %)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------------------------------
# results -> rows
# --------------------------------------------------------------------------------------------------
def _is_row(d: Mapping) -> bool:
    return any(k in KNOWN for k in d) or any(not isinstance(v, Mapping) for v in d.values())


def flatten_rows(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``results`` -> ``[(row_label, metrics)]`` in insertion order (see module doc)."""
    rows: list[tuple[str, Mapping[str, Any]]] = []
    for name, val in results.items():
        if not isinstance(val, Mapping):
            raise TypeError(f"results[{name!r}] must be a mapping of metrics or of categories")
        if _is_row(val):
            rows.append((str(name), val))
        else:
            for cat, metrics in val.items():
                if not isinstance(metrics, Mapping):
                    raise TypeError(f"results[{name!r}][{cat!r}] must be a mapping of metrics")
                rows.append((f"{name} / {cat}", metrics))
    return rows


def _far_label(far: float) -> str:
    far = float(far)
    if far > 0:
        e = math.log10(far)
        if abs(e - round(e)) < 1e-9:
            return f"1e{int(round(e))}"
    return f"{far:g}"


def _tar_value(v: Any) -> float:
    if isinstance(v, Mapping):
        return float(v["tar"])
    if isinstance(v, (tuple, list, np.ndarray)) and np.ndim(v) == 1:
        return float(v[0])
    return float(v)


def _acc(v: Any) -> tuple[float, float | None]:
    if dataclasses.is_dataclass(v):
        return float(v.accuracy_mean), float(v.accuracy_std)
    if isinstance(v, Mapping):
        m = v.get("accuracy_mean", v.get("mean"))
        s = v.get("accuracy_std", v.get("std"))
        return float(m), (None if s is None else float(s))
    return float(v), None


def _mean(v: Any) -> float:
    return float(np.mean(np.asarray(v, dtype=np.float64)))


def _pct(x: float, nd: int = 2) -> str:
    return f"{100.0 * x:.{nd}f}"


def _columns(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, Any]]:
    """Ordered ``[(header, getter(metrics) -> str | None)]`` for the union of metrics in rows."""
    has = {k: any(k in m for _, m in rows) for k in KNOWN}
    fars = sorted({float(f) for _, m in rows for f in m.get("tar_at_far", {})}, reverse=True)
    ks = sorted({int(k) for _, m in rows for k in m.get("rank_k", {}) if int(k) != 1})
    extra: list[str] = []
    for _, m in rows:
        for k, v in m.items():
            if k not in KNOWN and k not in extra and isinstance(v, (int, float, str, np.number)):
                extra.append(k)

    cols: list[tuple[str, Any]] = []
    if has["verification"]:
        def acc(m):
            if "verification" not in m:
                return None
            mean, std = _acc(m["verification"])
            return _pct(mean) if std is None else f"{_pct(mean)} ± {_pct(std)}"
        cols.append(("Acc. (%)", acc))
    for far in fars:
        def tar(m, far=far):
            d = m.get("tar_at_far") or {}
            for k, v in d.items():
                if math.isclose(float(k), far, rel_tol=1e-9):
                    return _pct(_tar_value(v))
            return None
        cols.append((f"TAR@FAR={_far_label(far)} (%)", tar))
    if has["rank1"] or has["rank_k"]:
        def r1(m):
            if "rank1" in m:
                return _pct(float(m["rank1"]))
            rk = {int(k): v for k, v in (m.get("rank_k") or {}).items()}
            return _pct(float(rk[1])) if 1 in rk else None
        cols.append(("Rank-1 (%)", r1))
    for k in ks:
        def rk(m, k=k):
            d = {int(a): b for a, b in (m.get("rank_k") or {}).items()}
            return _pct(float(d[k])) if k in d else None
        cols.append((f"Rank-{k} (%)", rk))
    if has["auc"]:
        cols.append(("AUC", lambda m: f"{float(m['auc']):.4f}" if "auc" in m else None))
    if has["psnr"]:
        cols.append(("PSNR (dB)", lambda m: f"{_mean(m['psnr']):.2f}" if "psnr" in m else None))
    if has["ssim"]:
        cols.append(("SSIM", lambda m: f"{_mean(m['ssim']):.4f}" if "ssim" in m else None))
    for key in extra:
        def ex(m, key=key):
            v = m.get(key)
            if v is None:
                return None
            return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
        cols.append((key, ex))
    return cols


def markdown_table(results: Mapping[str, Any]) -> str:
    """The markdown table of :func:`write_report` (rows = conditions, columns = metrics)."""
    rows = flatten_rows(results)
    cols = _columns(rows)
    header = ["Condition"] + [h for h, _ in cols]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(cols)) + "|",
    ]
    for label, m in rows:
        cells = [label]
        for _, get in cols:
            v = get(m)
            cells.append(MISSING if v is None else v)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(x.to_dict() if hasattr(x, "to_dict") else dataclasses.asdict(x))
    if hasattr(x, "_asdict"):                                   # NamedTuple (OperatingPoint)
        return _jsonable(x._asdict())
    if isinstance(x, Mapping):
        return {_key(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else str(f)                 # "inf", "-inf", "nan"
    if isinstance(x, Path):
        return str(x)
    return x


def _key(k: Any) -> str:
    if isinstance(k, (float, np.floating)):
        return f"{float(k):g}"
    return str(k)


def write_report(
    results: Mapping[str, Any],
    json_path: str | Path,
    md_path: str | Path,
    title: str = "LookThrough evaluation",
    meta: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``results`` as JSON and as a markdown table.

    JSON: ``{"title", "meta", "results"}``; numpy values become Python numbers, dataclasses and
    NamedTuples become dicts, float keys become ``"%g"`` strings (``0.001`` -> ``"0.001"``) and
    non-finite floats become the strings ``"inf"``/``"-inf"``/``"nan"`` (strict JSON).

    Markdown: a ``# title`` heading, a bullet list of ``meta`` items, then one table row per
    condition (see the module doc), percentages with 2 decimals, e.g. ``99.38 ± 0.27`` for
    accuracy mean ± population std over the folds; ``–`` where a row lacks a metric.

    Returns:
        ``(json_path, md_path)``.
    """
    json_path, md_path = Path(json_path), Path(md_path)
    payload = {"title": title, "meta": _jsonable(dict(meta or {})), "results": _jsonable(results)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    parts = [f"# {title}", ""]
    if meta:
        parts += [f"- **{k}**: {v}" for k, v in meta.items()] + [""]
    parts.append(markdown_table(results))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(parts), encoding="utf-8")
    return json_path, md_path


def machine_line() -> str:
    """``"<arch>, <n> cores, load <1-min load average>"``: where and under what load a number was measured."""
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def write_json_run(report: Mapping[str, Any], out: Path, command: str, argv: Sequence[str] | None,
                   seconds: float) -> None:
    """Write ``report`` as JSON to ``out`` (folders made) with the run's record appended: ``seconds``,
    ``machine`` (:func:`machine_line`) and ``command`` (``command`` + ``argv``, default ``sys.argv[1:]``)."""
    import sys

    args = list(argv) if argv is not None else sys.argv[1:]
    full = {**report, "seconds": round(float(seconds), 1), "machine": machine_line(),
            "command": " ".join([command, *args])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(full), indent=2) + "\n")
