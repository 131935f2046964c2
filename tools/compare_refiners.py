"""Landmark refiners side by side on the refiner's validation faces: NME per point, with and without the mirrored
second pass (``LTDetConfig.refine_mirror``), on occluded and clean faces -> JSON + PNG.

The faces are the ones ``trainer/main.py landmarks`` validates on (same seeds): held-out identities
(:func:`~trainer.detector.labels.is_eval_identity`) on the evaluation backgrounds, boxes jittered like a detector's
(``--jitter`` face sizes); *occluded* = every face with a **held-out** occluder family (respirators, hands, scarves,
printed masks), *clean* = the same renderer without occluders. Targets: MTCNN's five points on the clean photo. NME =
mean point error / the clean points' inter-ocular distance. MTCNN's own O-Net (``onet``) is always the first row.

Example (~2 min on 2 cores)::

    python tools/compare_refiners.py --refiner default out/landmarks/v2/refiner.onnx --data ../shared/data \\
        --templates ../shared/data/mask_templates --out reports/detector/landmarks
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("compare_refiners")

POINTS = ("left eye", "right eye", "nose", "left mouth", "right mouth")


def refiner_file(name: str) -> Path:
    """A refiner ``.onnx`` file, or the refiner of a bundle (built-in name or folder); ``onet`` = MTCNN's O-Net.

    Raises:
        SystemExit: the bundle has no refiner."""
    from sdk.detect import WEIGHTS_DIR

    if name == "onet":
        return WEIGHTS_DIR / "onet.onnx"
    if name.endswith(".onnx"):
        return Path(name)
    from sdk.bundle import load_bundle
    from sdk.stages import file_of

    path = file_of(load_bundle(name).stages["detect"], "refiner", required=False)
    if path is None:
        raise SystemExit(f"bundle {name!r} has no landmark refiner")
    return Path(path)


def point_errors(path: Path, crops: np.ndarray, targets: np.ndarray, iod: np.ndarray,
                 mirror: bool) -> np.ndarray:
    """Per-face, per-point error / inter-ocular distance ``(N, 5)`` of the refiner file ``path`` on O-Net crops
    ``(N, 48, 48, 3)`` with O-Net targets ``(N, 10)``; ``mirror``: average with the mirrored crops' points."""
    from sdk.detect import load_mtcnn_session, mirror_onet_points

    sess, name, outs = load_mtcnn_session(path, "onet", 1, ("CPUExecutionProvider",))
    lm = sess.run(outs, {name: crops})[1]
    if mirror:
        lm = (lm + mirror_onet_points(sess.run(outs, {name: np.ascontiguousarray(crops[:, ::-1])})[1])) / 2
    d = (lm - targets).reshape(-1, 2, 5)
    return np.sqrt((d ** 2).sum(1)) / iod[:, None]


def _eye_frame(lm: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``pts`` (F, K, 2) px in each face's eye frame: left eye at (0, 0), right eye at (1, 0) (similarity)."""
    e0 = lm[:, 0]
    u = lm[:, 1] - e0
    s = np.linalg.norm(u, axis=1)
    c, sn = u[:, 0] / s, u[:, 1] / s
    q = pts - e0[:, None]
    x = (q[..., 0] * c[:, None] + q[..., 1] * sn[:, None]) / s[:, None]
    y = (-q[..., 0] * sn[:, None] + q[..., 1] * c[:, None]) / s[:, None]
    return np.stack([x, y], -1)


def hidden_points_reference(train, test) -> dict | None:
    """How well can nose and mouth be placed *without seeing them*, from geometry alone? On MTCNN's clean labels
    (main faces): the eyes taken as exact, nose and mouth corners predicted by a linear model of the clean MTCNN box's
    corners in the eye frame, fit on the training identities' faces (``train``) and scored on the held-out
    identities' (``test``), in inter-ocular units. Not a bound (a model that reads the face around the cover can do
    better, one with detector boxes and predicted eyes does worse); it shows where the NME of covered faces sits
    when the covered points are inferred. None with fewer than 50 faces on either side."""
    def main_faces(ls):
        rows = ls.main[ls.main >= 0]
        return ls.landmarks[rows].astype(np.float64), ls.boxes[rows].astype(np.float64)

    (ltr, btr), (lte, bte) = main_faces(train), main_faces(test)
    if len(ltr) < 50 or len(lte) < 50:
        return None

    def xy(lm, b):
        corners = _eye_frame(lm, np.stack([b[:, :2], b[:, 2:]], 1)).reshape(len(lm), -1)
        return np.concatenate([corners, np.ones((len(lm), 1))], 1), _eye_frame(lm, lm)[:, 2:].reshape(len(lm), -1)

    X, Y = xy(ltr, btr)
    w, *_ = np.linalg.lstsq(X, Y, rcond=None)
    Xt, Yt = xy(lte, bte)
    err = np.linalg.norm((Xt @ w - Yt).reshape(-1, 3, 2), axis=2)
    mean_shape = np.linalg.norm(Yt.reshape(-1, 3, 2) - Y.reshape(-1, 3, 2).mean(0), axis=2)
    per = np.concatenate([np.zeros((len(err), 2)), err], 1)
    return {"what": "eyes exact; nose and mouth from the clean MTCNN box in the eye frame (linear, fit on training "
                    "identities), scored on held-out identities' clean labels",
            "faces": {"fit": int(len(ltr)), "scored": int(len(lte))}, **summary(per),
            "nose_mouth_from_eyes_only": {k: round(float(v), 4) for k, v in zip(POINTS[2:], mean_shape.mean(0))}}


def summary(err: np.ndarray) -> dict:
    return {"nme": round(float(err.mean()), 4), "median": round(float(np.median(err.mean(1))), 4),
            "per_point": {k: round(float(v), 4) for k, v in zip(POINTS, err.mean(0))}}


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["refiners"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, state in zip(axes, ("occluded", "clean")):
        w = 0.8 / (2 * len(rows))
        for i, r in enumerate(rows):
            for j, mode in enumerate(("single", "mirrored")):
                v = [r[state][mode]["per_point"][p] for p in POINTS]
                ax.bar(np.arange(5) + (2 * i + j) * w - 0.4 + w / 2, v, w, color=f"C{i}", alpha=0.6 if j else 1.0,
                       hatch="//" if j else None,
                       label=f"{r['name']}{' +mirror' if j else ''} ({r[state][mode]['nme']:.3f})")
        ax.set_xticks(range(5), POINTS)
        ax.set_title(f"{state} faces ({result['faces'][state]})")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("point error / inter-ocular distance")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refiner", nargs="+", required=True, metavar="FILE_OR_BUNDLE",
                   help="refiner .onnx files or bundles with a refiner (MTCNN's O-Net is always added as 'onet')")
    p.add_argument("--data", default="../shared/data", help="folder with lfw/ and celeba_subset/")
    p.add_argument("--templates", default="", help="MaskTheFace templates folder (the held-out N95 template)")
    p.add_argument("--cache", default="out/detector/labels_lfw_celeba.npz", help="MTCNN label file")
    p.add_argument("--faces", type=int, default=600, help="faces per state (default 600, as the training validates)")
    p.add_argument("--jitter", type=float, default=0.06, help="box jitter, face sizes (default 0.06, as training)")
    p.add_argument("--out", type=Path, required=True, help="folder for refiners.json and refiners.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from trainer.detector.landmarks import LandmarkConfig, _renderers, validation_set

    t0 = time.time()
    cfg = LandmarkConfig(data=args.data, templates=args.templates, cache=args.cache, val_faces=args.faces,
                         jitter=args.jitter)
    _, occluded = _renderers(cfg)
    clean = copy.copy(occluded)  # the same renderer without occluders
    clean.cfg = dataclasses.replace(occluded.cfg, occlude_prob=0.0)
    sets = {"occluded": validation_set(occluded, args.faces, args.jitter),
            "clean": validation_set(clean, args.faces, args.jitter)}
    sets = {k: tuple(t.numpy() for t in v) for k, v in sets.items()}
    names = ["onet"] + [r for r in args.refiner if r != "onet"]
    rows = []
    for name in names:
        path = refiner_file(name)
        row = {"name": name, "file": str(path)}
        for state, (crops, tg, iod) in sets.items():
            row[state] = {mode: summary(point_errors(path, crops, tg, iod, mode == "mirrored"))
                          for mode in ("single", "mirrored")}
        log.info("%-40s occluded %.4f (mirrored %.4f)  clean %.4f (mirrored %.4f)", name,
                 row["occluded"]["single"]["nme"], row["occluded"]["mirrored"]["nme"], row["clean"]["single"]["nme"],
                 row["clean"]["mirrored"]["nme"])
        rows.append(row)
    from trainer.detector.data import load_eval_labels, load_train_labels

    reference = hidden_points_reference(load_train_labels(args.data, args.cache, cfg.per_identity)[0],
                                        load_eval_labels(args.data, args.cache, cfg.per_identity))
    if reference:
        log.info("hidden points from exact eyes + clean box: NME %.4f (nose / mouth %s)", reference["nme"],
                 list(reference["per_point"].values())[2:])
    result = {"what": "landmark refiners on the refiner's validation faces (held-out identities, evaluation "
                      "backgrounds, jittered boxes); occluded = held-out occluder families; NME = mean point error / "
                      "clean inter-ocular distance vs MTCNN on the clean photo",
              "faces": {k: int(len(v[0])) for k, v in sets.items()}, "jitter": args.jitter, "refiners": rows,
              "hidden_points_reference": reference,
              "machine": platform.platform(), "seconds": round(time.time() - t0, 1),
              "command": "python tools/compare_refiners.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refiners.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "refiners.png")
    log.info("wrote %s", args.out / "refiners.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
