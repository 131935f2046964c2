"""``python trainer/main.py ablation`` -- the student ablation of the relational-distillation paper, at our scale.

Every row trains one student (:mod:`trainer.student`, dlib-initialised, the same data, seed, epochs and
batches), exports it to an ONNX bundle (``python -m export onnx --family embedder``) and evaluates it on LFW's 6,000 pairs with
the same masked images as the teacher (:mod:`trainer.evaluate`: same seed, so the same occluders on the same
faces).  The teacher rows come from the same evaluation (embeddings cached).  Output: one folder per row
(``<out>/<row>/``: training logs, ``student.safetensors``, ``bundle/``, ``lfw/report.json``) and the table
``<report>/ablation.{json,md}`` + ``ablation.png``.

Rows (``--rows``, comma separated, default all that need no inpainter):

=================  =============================================================================================
``finetune_ce``    fine-tuned baseline, no distillation: ArcFace CE on masked faces only.  Our student *starts*
                   as the teacher, so this is also the paper's "CE only" row.
``ce_pair``        CE + lambda_p * pair-wise (Huber on mean-normalised distances)
``ce_pair_trip``   CE + pair + lambda_t * triplet-wise (Huber on angles)
``ce_pt_hard``     CE + pair + triplet + hard instance (L1 teacher vs student)
``ce_pt_soft``     CE + pair + triplet + soft instance (identity-centred, eq. 17-18)
``pt_hard``        pair + triplet + hard instance, no CE (the ``student-v1`` recipe)
``pt`` / ``hard``  pair + triplet only / hard instance only (no CE): which term carries ``pt_hard``
``pt100_hard``     ``pt_hard`` with lambda_p 100, lambda_t 200: the relational terms at the instance term's scale
``capstone_mse``   the capstone report's variant: ArcFace CE (masked and clean) + MSE between the student's masked
                   and clean embeddings, only on samples the head classifies correctly on both
``*_completed``    the same row trained on completed faces (``--completion``: an inpainter generator
                   safetensors; the student sees the inpainter's output where the occluder was)
=================  =============================================================================================

The CE term is ArcFace (s 64, m 0.5) over the training identities, weight ``--ce-weight`` (paper: 1); the head
starts at the teacher's identity centres.  Teacher and student are both 128-d, so the instance terms compare
raw descriptors (no projection).

Example (CPU, ~6 min a row on 2 cores + ~4 min of LFW evaluation)::

    python trainer/main.py ablation --data ../shared/data/celeba_subset --templates ../shared/data/mask_templates \
        --lfw ../shared/data/lfw --out out/ablation --report reports/ablation
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("trainer.ablation")


@dataclass(frozen=True)
class AblationRow:
    """One student configuration: ``overrides`` are :class:`trainer.student.config.StudentConfig` fields."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)


_CE = {"ce_weight": None}  # filled with --ce-weight
ROWS: tuple[AblationRow, ...] = (
    AblationRow("finetune_ce", "fine-tuned, CE only (no distillation)",
                {**_CE, "instance": "none", "lambda_p": 0.0, "lambda_t": 0.0}),
    AblationRow("ce_pair", "CE + pair", {**_CE, "instance": "none", "lambda_p": 1.0, "lambda_t": 0.0}),
    AblationRow("ce_pair_trip", "CE + pair + triplet", {**_CE, "instance": "none", "lambda_p": 1.0, "lambda_t": 2.0}),
    AblationRow("ce_pt_hard", "CE + pair + triplet + hard instance",
                {**_CE, "instance": "hard", "lambda_i": 1.0, "lambda_p": 1.0, "lambda_t": 2.0}),
    AblationRow("ce_pt_soft", "CE + pair + triplet + soft instance",
                {**_CE, "instance": "soft", "lambda_i": 1.0, "lambda_p": 1.0, "lambda_t": 2.0}),
    AblationRow("pt_hard", "pair + triplet + hard instance (no CE)",
                {"ce_weight": 0.0, "instance": "hard", "lambda_i": 1.0, "lambda_p": 1.0, "lambda_t": 2.0}),
    AblationRow("pt", "pair + triplet only (no CE, no instance)",
                {"ce_weight": 0.0, "instance": "none", "lambda_p": 1.0, "lambda_t": 2.0}),
    AblationRow("hard", "hard instance only (no CE, no relations)",
                {"ce_weight": 0.0, "instance": "hard", "lambda_i": 1.0, "lambda_p": 0.0, "lambda_t": 0.0}),
    AblationRow("pt100_hard", "pair x100 + triplet x100 + hard instance (no CE): relations at the instance's scale",
                {"ce_weight": 0.0, "instance": "hard", "lambda_i": 1.0, "lambda_p": 100.0, "lambda_t": 200.0}),
    AblationRow("capstone_mse", "capstone: ArcFace + MSE(masked, clean), correctly classified only",
                {**_CE, "instance": "none", "lambda_p": 0.0, "lambda_t": 0.0, "pairwise": "mse", "pairwise_beta": 1.0,
                 "pairwise_correct_only": True}),
)
ROW_BY_NAME = {r.name: r for r in ROWS}
DEFAULT_ROWS = [r.name for r in ROWS]


def row_for(name: str) -> tuple[AblationRow, bool]:
    """(row, completed?) for ``name`` or ``<name>_completed``."""
    completed = name.endswith("_completed")
    base = name[: -len("_completed")] if completed else name
    if base not in ROW_BY_NAME:
        raise SystemExit(f"unknown ablation row {name!r}; rows: {', '.join(DEFAULT_ROWS)} (each also as <row>_completed)")
    return ROW_BY_NAME[base], completed


def student_config(args: argparse.Namespace, name: str):
    """The :class:`StudentConfig` of row ``name``."""
    from trainer.student.config import StudentConfig

    row, completed = row_for(name)
    ov = dict(row.overrides)
    if "ce_weight" in ov and ov["ce_weight"] is None:
        ov["ce_weight"] = args.ce_weight
    if completed:
        if not args.completion:
            raise SystemExit(f"row {name} needs --completion <generator.safetensors>")
        ov["completion"] = str(args.completion)
    return dataclasses.replace(StudentConfig(), data=str(args.data), templates=str(args.templates) if args.templates else None,
                               out=str(args.out / name), cache=str(args.out / "cache"), epochs=args.epochs,
                               max_per_identity=args.max_per_identity, seed=args.seed, threads=args.threads,
                               progress=not args.no_progress, **ov)


def evaluate_bundle(args: argparse.Namespace, model: str, out: Path, completion: str | None = None) -> dict:
    """LFW pairs report (dict) of bundle ``model`` (cached in ``out/report.json``)."""
    from trainer import evaluate

    rep = out / "report.json"
    if not rep.is_file():
        argv = ["--data", str(args.lfw), "--model", model, "--conditions", args.conditions, "--out", str(out),
                "--cache", str(args.eval_cache), "--workers", str(args.workers), "--seed", "0"]
        if args.templates:
            argv += ["--templates", str(args.templates)]
        if completion:
            argv += ["--complete", completion]
        evaluate.main(argv)
    return json.loads(rep.read_text())


def run_row(args: argparse.Namespace, name: str) -> dict:
    """Train (skipped when finished before), export, evaluate one row."""
    from export.exporter import ExportConfig, export
    from trainer.student.loop import train

    cfg = student_config(args, name)
    out = Path(cfg.out)
    t0 = time.perf_counter()
    summary_path = out / "summary.json"
    if summary_path.is_file() and (out / "student.safetensors").is_file():
        log.info("%s: trained before (%s)", name, summary_path)
        summary = json.loads(summary_path.read_text())
    else:
        log.info("%s: training %s", name, json.dumps(row_for(name)[0].overrides))
        summary = train(cfg)
    train_s = time.perf_counter() - t0
    bundle = out / "bundle"
    if not (bundle / "manifest.json").is_file():
        export(ExportConfig("onnx", "embedder", out / "student.safetensors", bundle, name=f"ablation-{name}",
                            description=f"ablation row {name}: {row_for(name)[0].label}"))
    rep = evaluate_bundle(args, str(bundle), out / "lfw", completion=cfg.completion or None)
    return {"row": name, "label": row_for(name)[0].label + (" [completed inputs]" if cfg.completion else ""),
            "config": {k: getattr(cfg, k, None) for k in ("instance", "lambda_i", "lambda_p", "lambda_t", "ce_weight",
                                                           "pairwise", "pairwise_beta", "pairwise_correct_only",
                                                           "epochs", "lr", "completion")},
            "train_seconds": round(sum(summary.get("epoch_seconds") or []) or train_s, 1), "steps": summary.get("steps"),
            "val": (summary.get("val") or [{}])[-1], "lfw": rep["results"]}


def write_table(rows: list[dict], teacher: dict, conditions: list[str], report: Path, meta: dict) -> None:
    """ablation.json / ablation.md / ablation.png in ``report``."""
    report.mkdir(parents=True, exist_ok=True)
    (report / "ablation.json").write_text(json.dumps({"meta": meta, "teacher": teacher, "rows": rows}, indent=1,
                                                     default=float))

    def acc(res: dict, c: str) -> str:
        r = res.get(c)
        if not r:
            return "-"
        v = r["verification"]
        return f"{100 * v['accuracy_mean']:.2f} ± {100 * v['accuracy_std']:.2f}"

    def tar(res: dict, c: str) -> str:
        r = res.get(c)
        return f"{100 * r['tar_at_far']['0.001']['tar']:.2f}" if r and "0.001" in r.get("tar_at_far", {}) else "-"

    head = "| row | " + " | ".join(f"{c} acc % | {c} TAR@1e-3 %" for c in conditions) + " | train s |"
    lines = [f"# Student ablation on LFW 6,000 pairs (masks on both images)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; this invocation {meta['seconds']:.0f} s (rows trained before are read back; "
             "train s = each row's own training wall time, on a shared machine)", "",
             head, "|" + "---|" * (2 * len(conditions) + 2)]
    lines.append("| teacher (dlib, no training) | " + " | ".join(f"{acc(teacher, c)} | {tar(teacher, c)}"
                                                                for c in conditions) + " | - |")
    for r in rows:
        lines.append(f"| {r['label']} (`{r['row']}`) | " + " | ".join(f"{acc(r['lfw'], c)} | {tar(r['lfw'], c)}"
                                                                       for c in conditions)
                     + f" | {r['train_seconds']:.0f} |")
    (report / "ablation.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        names = ["teacher"] + [r["row"] for r in rows]
        res = [teacher] + [r["lfw"] for r in rows]
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(names), 4))
        w = 0.8 / max(1, len(conditions))
        for k, c in enumerate(conditions):
            ys = [100 * x[c]["verification"]["accuracy_mean"] if c in x else np.nan for x in res]
            es = [100 * x[c]["verification"]["accuracy_std"] if c in x else 0 for x in res]
            ax.bar(np.arange(len(names)) + k * w, ys, w, yerr=es, label=c, capsize=2)
        ax.set_xticks(np.arange(len(names)) + w * (len(conditions) - 1) / 2, names, rotation=30, ha="right")
        ax.set_ylabel("LFW 10-fold accuracy (%)")
        lo = min(100 * x[c]["verification"]["accuracy_mean"] for x in res for c in conditions if c in x)
        ax.set_ylim(max(50, lo - 3), 100)
        ax.legend()
        ax.set_title("student ablation (masks on both images)")
        fig.tight_layout()
        fig.savefig(report / "ablation.png", dpi=110)
        plt.close(fig)
    except Exception as e:  # a plot must never lose a finished table
        log.warning("ablation.png not written: %s", e)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m trainer.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/celeba_subset"), help="training identity tree")
    p.add_argument("--templates", type=Path, default=Path("../shared/data/mask_templates"), help="mask_templates folder")
    p.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"), help="LFW folder (with pairs.txt)")
    p.add_argument("--out", type=Path, default=Path("out/ablation"), help="run folders (one per row)")
    p.add_argument("--report", type=Path, default=Path("reports/ablation"), help="table folder")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated rows (see above)")
    p.add_argument("--conditions", default="template,unmasked", help="LFW conditions (trainer.evaluate)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per row (same for every row)")
    p.add_argument("--max-per-identity", type=int, default=10, help="training images per identity")
    p.add_argument("--ce-weight", type=float, default=1.0, help="weight of the ArcFace CE term in CE rows (paper: 1)")
    p.add_argument("--completion", default=None, help="inpainter generator.safetensors for *_completed rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--workers", type=int, default=2, help="evaluation processes")
    p.add_argument("--eval-cache", type=Path, default=Path("out/cache"), help="trainer.evaluate cache folder")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    import os
    import platform
    import sys

    t0 = time.perf_counter()
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    for n in names:
        row_for(n)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    teacher = evaluate_bundle(args, "baseline", args.out / "teacher_lfw")["results"]
    rows = []
    for n in names:
        rows.append(run_row(args, n))
        meta = {"command": "python trainer/main.py ablation " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["ablation"]
                                                                          else sys.argv[1:]),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores", "seconds": time.perf_counter() - t0,
                "lfw": str(args.lfw), "data": str(args.data), "conditions": conditions}
        write_table(rows, teacher, conditions, args.report, meta)  # after every row: a crash loses nothing
    print((args.report / "ablation.md").read_text())
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ablation", help="student ablation rows -> LFW table", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    build_parser(p)
    p.set_defaults(fn=run)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
