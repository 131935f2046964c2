"""Closed-form refit of LTDet's linear regression heads (landmarks, boxes) on frozen features.

The box and landmark heads are 1x1 convolutions, i.e. linear maps of the backbone's feature vector at each
anchor. After (or instead of more) gradient training, this renders ``--scenes`` training scenes, collects the
feature vector of every positive anchor (:func:`trainer.detector.targets.match`) with its targets, and solves a
ridge regression per stride and anchor slot, weighted like the training loss (residuals divided by the anchor
size) and pulled towards the current weights (``--ridge``). Forward passes only: minutes on a CPU.

    python -m trainer.detector.refit --checkpoint out/detector/v1 --data ../shared/data \
        --templates ../shared/data/mask_templates --scenes 400

Reads any detector checkpoint (:func:`trainer.detector.checkpoint.load_detector`: a run folder's ``detector.*``
or ``ckpt/last.*``, or an older run's ``model.safetensors`` + ``net_config.json``) and writes the refit net as
``<out>/detector.{safetensors,json}`` (weights only, :mod:`trainer.checkpoints` format; ``--out`` defaults to the
checkpoint's run folder) and ``<out>/refit.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger("trainer.detector.refit")


def collect(net, renderer, anchors, scenes: int, batch: int, seed: int):
    """Per (level, slot): lists of (features (n, C), anchor sizes (n,), box targets (n, 4), lmk targets (n, 10))."""
    from trainer.detector.data import to_input
    from trainer.detector.targets import match

    cfg = net.cfg
    out: dict[tuple[int, int], list] = {}
    with torch.no_grad():
        for b0 in tqdm(range(0, scenes, batch), desc="refit features", unit="batch"):
            scs = [renderer.render(seed * 7_000_003 + b0 + j) for j in range(min(batch, scenes - b0))]
            feats = net.backbone(to_input(np.stack([s.image for s in scs])))
            offs = 0
            for lvl, (f, a) in enumerate(zip(feats, cfg.anchors)):
                n, c, h, w = f.shape
                fl = f.permute(0, 2, 3, 1).reshape(n, h * w, c).numpy()
                for i, sc in enumerate(scs):
                    t = match(anchors, sc.boxes, sc.landmarks, sc.ignore)
                    lab = t["label"][offs:offs + h * w * a]
                    for slot in range(a):
                        idx = np.flatnonzero(lab[slot::a] == 1)
                        if not len(idx):
                            continue
                        g = offs + idx * a + slot
                        rec = out.setdefault((lvl, slot), [[], [], [], []])
                        rec[0].append(fl[i, idx])
                        rec[1].append(anchors.sizes[g])
                        rec[2].append(t["box"][g])
                        rec[3].append(t["lmk"][g].reshape(-1, 10))
                offs += h * w * a
    return {key: [np.concatenate(v) for v in rec] for key, rec in out.items()}


def ridge_refit(net, data: dict, ridge: float = 1.0, min_samples: int = 50) -> dict:
    """Refit ``net.lmk`` and the box-centre rows of ``net.box`` in place; returns per-slot sample counts and the
    mean normalised error before / after."""
    report = {}
    with torch.no_grad():
        for (lvl, slot), (X, s, bt, lt) in sorted(data.items()):
            n = len(X)
            if n < min_samples:
                report[f"{lvl}/{slot}"] = {"samples": n, "skipped": True}
                continue
            A = np.concatenate([X, np.ones((n, 1), np.float32)], 1) / s[:, None]
            r = {"samples": n}
            for name, head, rows, Y in (("lmk", net.lmk[lvl], slice(slot * 10, slot * 10 + 10), lt),
                                        ("box", net.box[lvl], slice(slot * 4, slot * 4 + 2), bt[:, :2])):
                W0 = np.concatenate([head.weight[rows, :, 0, 0].numpy(), head.bias[rows].numpy()[:, None]], 1).T
                Yn = Y / s[:, None]
                before = float(np.abs(A @ W0 - Yn).mean())
                lam = ridge * n / 1000.0
                W = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ Yn + lam * W0)
                after = float(np.abs(A @ W - Yn).mean())
                head.weight[rows, :, 0, 0] = torch.from_numpy(W[:-1].T.astype(np.float32))
                head.bias[rows] = torch.from_numpy(W[-1].astype(np.float32))
                r[name] = {"mae_before": round(before, 4), "mae_after": round(after, 4)}
            report[f"{lvl}/{slot}"] = r
    return report


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoints import write_json
    from trainer.detector.checkpoint import FINAL, load_detector, save_net
    from trainer.detector.data import load_train_labels, scene_renderer
    from trainer.detector.targets import make_anchors

    p = argparse.ArgumentParser(prog="python -m trainer.detector.refit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="detector run folder or checkpoint (older: .safetensors with net_config.json beside)")
    p.add_argument("--out", type=Path, default=None, help="run folder to write (default: the checkpoint's folder)")
    p.add_argument("--data", default="../shared/data", help="as for training ('astronaut' works too)")
    p.add_argument("--templates", default="", help="MaskTheFace templates folder")
    p.add_argument("--cache", default="out/detector/labels_lfw_celeba.npz")
    p.add_argument("--per-identity", type=int, default=2, help="images per identity (as for training)")
    p.add_argument("--scenes", type=int, default=400)
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ridge", type=float, default=1.0, help="pull towards the current weights")
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    net, meta = load_detector(args.checkpoint)
    labels, table = load_train_labels(args.data, args.cache, args.per_identity)
    rend = scene_renderer(labels, table, args.crop, args.templates)
    anchors = make_anchors(args.crop, args.crop, net.cfg.strides, net.cfg.anchors)
    rep = ridge_refit(net, collect(net, rend, anchors, args.scenes, args.batch, args.seed), args.ridge)
    ck = args.checkpoint
    out = Path(args.out or (ck if ck.is_dir() else ck.parent.parent if ck.parent.name == "ckpt" else ck.parent))
    keep = {k: meta[k] for k in ("config", "step") if k in meta}
    save_net(net, out / FINAL, {**keep, "refit": rep, "refit_of": str(ck)})
    write_json(out / "refit.json", rep)
    print(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
