"""``python trainer/main.py landmarks``: LTDet's landmark refiner -- MTCNN's O-Net fine-tuned on occluded faces.

LTDet's 1x1 landmark heads sit on stride-8/16 features and place the five points coarsely (NME ~0.12 even on
clean faces). The refiner is a second stage on each detected box: the box is squared and cut out as MTCNN's O-Net
sees it (:func:`sdk.detect.onet_crops`: 48x48, RGB ``(x - 127.5) / 128``, width-major ``(N, W, H, 3)``), and an
O-Net-shaped net returns the five points (:func:`sdk.detect.onet_points`). It starts from MTCNN's own O-Net
(weights read from the shipped ``sdk/models/mtcnn/onet.onnx``: on clean faces it *is* the teacher's landmark
stage) and is fine-tuned by distillation: the crop shows the face with a *training-family* occluder (scenes of
:mod:`trainer.detector.scenes`, as LTDet trains on), the target is MTCNN's landmarks on the *clean* photo, and
the box is the clean MTCNN box jittered like a detector's (centre +- ``jitter`` x size, scale x
``exp(N(0, jitter))``), so the net learns where the hidden nose and mouth are from the visible face.

Loss: mean Euclidean point error in units of the crop side (the NME numerator up to the crop / inter-ocular
ratio). Only the landmark output is trained; the box-regression and face-probability outputs are kept in the file
(the graph has O-Net's signature, so :func:`sdk.detect.load_mtcnn_session` validates it) but the SDK does not use them.

Validation (``val_nme`` in ``steps.csv`` at every checkpoint, and ``refiner.json``): faces of the held-out
identities (:func:`~trainer.detector.labels.is_eval_identity`) with *held-out* occluders on the evaluation
backgrounds, jittered boxes; NME = mean point error / inter-ocular distance of the clean labels, for the trained
net and, in the same run, for the untouched O-Net (``val_nme_onet``).

Outputs in ``--out``: ``ckpt/last.*`` (resumable), ``refiner.safetensors`` + ``refiner.json`` (weights-only, with
the validation), ``refiner.onnx`` (what ``python -m export.onnx_detector --refiner`` puts into a bundle),
``steps.csv``, ``nme.png``.

Example (~25 min on 2 cores)::

    python trainer/main.py landmarks --data ../shared/data --templates ../shared/data/mask_templates \
        --out out/landmarks/v1 --steps 1500
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainer.checkpoints import load_checkpoint, save_checkpoint
from trainer.detector._common import add_command, warmup_cosine
from trainer.loops import DistContext, LoopSettings, StepPlugin, run_loop

log = logging.getLogger(__name__)

__all__ = ["FINAL", "LandmarkConfig", "LandmarkSamples", "ONet", "export_refiner", "initial_net",
           "erase_lower_face", "load_refiner", "mirror_scene", "nme", "onet_from_onnx", "train"]

KIND = "landmark_refiner"
FINAL = "refiner"
CROP = 48


# ----------------------------------------------------------------------------------------------------- the net
class ONet(nn.Module):
    """MTCNN's O-Net in torch, laid out as the shipped ONNX file: input float32 ``(N, 48, 48, 3)`` width-major
    RGB ``(x - 127.5) / 128``; outputs ``(box regression (N, 4), landmarks (N, 10), face probability (N, 2))``;
    landmarks are x0..x4 then y0..y4 as fractions of the crop."""

    def __init__(self):
        super().__init__()
        self.c1, self.p1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.c2, self.p2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.c3, self.p3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.c4, self.p4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.fc, self.pf = nn.Linear(1152, 256), nn.PReLU(256)
        self.box, self.lmk, self.cls = nn.Linear(256, 4), nn.Linear(256, 10), nn.Linear(256, 2)

    def forward(self, x: torch.Tensor):
        x = x.permute(0, 3, 1, 2)  # (N, 3, W, H): the file's own transpose
        x = self.p1(self.c1(x))
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)  # 'SAME_UPPER' 46 -> 23
        x = F.max_pool2d(self.p2(self.c2(x)), 3, 2)  # 21 -> 10
        x = F.max_pool2d(self.p3(self.c3(x)), 2, 2)  # 8 -> 4
        x = self.p4(self.c4(x)).permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # (N, 3 * 3 * 128), channels last
        h = self.pf(self.fc(x))
        return self.box(h), self.lmk(h), torch.softmax(self.cls(h), dim=1)


#: ONNX initializer -> (module parameter, transpose?) of the shipped ``onet.onnx``
_ONNX_NAMES = {
    "conv2d_8/kernel:0": ("c1.weight", False), "conv2d_8/bias:0": ("c1.bias", False),
    "p_re_lu_7_initializer_22": ("p1.weight", False),
    "conv2d_9/kernel:0": ("c2.weight", False), "conv2d_9/bias:0": ("c2.bias", False),
    "p_re_lu_8_initializer_20": ("p2.weight", False),
    "conv2d_10/kernel:0": ("c3.weight", False), "conv2d_10/bias:0": ("c3.bias", False),
    "p_re_lu_9_initializer_18": ("p3.weight", False),
    "conv2d_11/kernel:0": ("c4.weight", False), "conv2d_11/bias:0": ("c4.bias", False),
    "p_re_lu_10_initializer_16": ("p4.weight", False),
    "dense_3/kernel:0": ("fc.weight", True), "dense_3/bias:0": ("fc.bias", False), "slope": ("pf.weight", False),
    "dense_5/kernel:0": ("box.weight", True), "dense_5/bias:0": ("box.bias", False),
    "dense_6/kernel:0": ("lmk.weight", True), "dense_6/bias:0": ("lmk.bias", False),
    "dense_4/kernel:0": ("cls.weight", True), "dense_4/bias:0": ("cls.bias", False),
}


def onet_from_onnx(path: str | Path | None = None) -> ONet:
    """An :class:`ONet` with the weights of an O-Net ONNX file (default: the SDK's ``models/mtcnn/onet.onnx``) or
    of a refiner written by :func:`export_refiner` (e.g. a bundle's ``refiner.onnx``: training continues from it).

    Raises:
        ValueError: the file lacks one of O-Net's initializers or a shape differs."""
    import onnx
    from onnx import numpy_helper

    from sdk.detect import WEIGHTS_DIR

    p = Path(path) if path else WEIGHTS_DIR / "onet.onnx"
    model = onnx.load(str(p))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    net = ONet()
    sd = net.state_dict()
    if "c1.weight" in inits:  # a refiner written by export_refiner: torch names, PReLU slopes in node order
        slopes = [n.input[1] for n in model.graph.node if n.op_type == "PRelu"]
        names = {k: k for k in sd if k in inits}
        names.update({name: f"{m}.weight" for name, m in zip(slopes, ("p1", "p2", "p3", "p4", "pf"))})
        if len(slopes) != 5 or len(names) != len(sd):
            raise ValueError(f"{p}: not MTCNN's O-Net file (nor a refiner exported from it)")
        for name, key in names.items():
            a = inits[name]
            if a.size != sd[key].numel():
                raise ValueError(f"{p}: {name} has {a.size} values, {key} needs {sd[key].numel()}")
            sd[key] = torch.from_numpy(np.array(a, np.float32)).reshape(sd[key].shape)
        net.load_state_dict(sd)
        return net.eval()
    for name, (key, transpose) in _ONNX_NAMES.items():
        if name not in inits:
            raise ValueError(f"{p}: no initializer {name!r}: not MTCNN's O-Net file")
        a = inits[name].T if transpose else inits[name]
        if a.size != sd[key].numel():
            raise ValueError(f"{p}: {name} has {a.size} values, {key} needs {sd[key].numel()}")
        sd[key] = torch.from_numpy(np.array(a, np.float32)).reshape(sd[key].shape)
    net.load_state_dict(sd)
    return net.eval()


# ------------------------------------------------------------------------------------------------------ the data
def _targets(sq: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Inverse of :func:`sdk.detect.onet_points`: frame-pixel points (N, 5, 2) -> O-Net's (N, 10) fractions."""
    bw = (sq[:, 2] - sq[:, 0] + 1)[:, None]
    bh = (sq[:, 3] - sq[:, 1] + 1)[:, None]
    return np.concatenate([(pts[:, :, 0] - sq[:, 0:1] + 1) / bw, (pts[:, :, 1] - sq[:, 1:2] + 1) / bh],
                          axis=1).astype(np.float32)


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Detector-like box errors: centre moved by ``N(0, amount)`` x size, size scaled by ``exp(N(0, amount))``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    c = (b[:, :2] + b[:, 2:]) / 2
    wh = b[:, 2:] - b[:, :2]
    size = np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 1, None))[:, None]
    c = c + rng.normal(0, amount, c.shape) * size
    wh = wh * np.exp(rng.normal(0, amount, (len(b), 1)))
    return np.concatenate([c - wh / 2, c + wh / 2], 1)


def mirror_scene(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray):
    """A scene mirrored left-right: ``(image (H, W, 3), boxes (N, 4), landmarks (N, 5, 2))`` -> the same with
    ``x -> W - x`` (box corners swapped) and the points re-ordered (:data:`sdk.detect.MIRROR`) so that point 0 is
    again the eye on the image's left. ``x -> W - x`` is MTCNN's own convention: on 40 LFW photos and their mirrors its
    points satisfy ``x + x' = W + 0.6 +- 1.0`` px."""
    from sdk.detect import MIRROR

    W = image.shape[1]
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)[:, MIRROR].copy()
    lm[:, :, 0] = W - lm[:, :, 0]
    return (np.ascontiguousarray(image[:, ::-1]), np.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1), lm)


def erase_lower_face(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint one random occluder over the nose and mouth of a face (in place; BGR ``(H, W, 3)`` uint8): a polygon
    from below the eyes (0.3-0.6 of the eye-to-mouth distance, a little higher mid-face) to past the chin, 0.8-1.4
    inter-ocular distances to each side with jittered vertices, in the face's own frame (it turns with the face),
    filled with a flat colour (any, or skin-like) plus noise, stripes, or a patch of the image from elsewhere; edges
    softened. No family of the evaluation is drawn: the point is that the refiner must place hidden points from the
    face around any cover, not from the look of the masks it trained on. ``landmarks``: (5, 2) px, MTCNN order.
    Returns ``image``."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    e, m = (lm[0] + lm[1]) / 2, (lm[3] + lm[4]) / 2
    u = lm[1] - lm[0]
    d = max(float(np.linalg.norm(u)), 2.0)
    u = u / d
    v = m - e
    if float(np.linalg.norm(v)) < 1.0:
        return image
    side = np.array([-u[1], u[0]])  # perpendicular to the eyes' line; oriented to point at the mouth
    if float(side @ v) < 0:
        side = -side
    down = float(np.linalg.norm(v))
    top, bottom = rng.uniform(0.3, 0.6) * down, rng.uniform(1.5, 2.2) * down
    wl, wr = rng.uniform(0.8, 1.4) * d, rng.uniform(0.8, 1.4) * d
    k = 12
    t = np.linspace(0, 1, k)
    # top edge left -> right (slight curve), then the lower outline right -> left (rounded, chin-like)
    top_edge = [(-wl + (wl + wr) * a, top + rng.normal(0, 0.04) * down - 0.1 * down * np.sin(np.pi * a)) for a in t]
    ang = np.linspace(0, np.pi, k)
    low = [(((wr + wl) / 2) * np.cos(a) + (wr - wl) / 2, top + (bottom - top) * np.sin(a) ** 0.7) for a in ang]
    pts = np.array(top_edge + low) + rng.normal(0, 0.04 * d, (2 * k, 2))
    xy = e[None] + pts[:, :1] * u[None] + pts[:, 1:] * side[None]
    H, W = image.shape[:2]
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.round(xy * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return image
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    kind = rng.integers(4)
    if kind == 0:  # any flat colour
        fill = np.full((h, w, 3), rng.integers(0, 256, 3), np.float32)
    elif kind == 1:  # skin-like (BGR), a hand or a bare arm
        base = np.array([rng.uniform(60, 200), rng.uniform(90, 210), rng.uniform(120, 240)])
        fill = np.full((h, w, 3), base, np.float32)
    elif kind == 2:  # stripes of two colours
        period = rng.uniform(3, max(4.0, d / 2))
        yy, xx = np.mgrid[0:h, 0:w]
        a = rng.uniform(0, np.pi)
        band = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0)[..., None]
        fill = np.where(band, rng.integers(0, 256, 3), rng.integers(0, 256, 3)).astype(np.float32)
    else:  # a patch of the same image from elsewhere (texture)
        sy, sx = int(rng.integers(0, max(1, H - h))), int(rng.integers(0, max(1, W - w)))
        fill = cv2.resize(image[sy:sy + max(h, 1), sx:sx + max(w, 1)], (w, h)).astype(np.float32)
    fill = fill + rng.normal(0, rng.uniform(0, 12), fill.shape)
    shade = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(0.85, 1.15), h)[:, None, None]  # light from above / below
    fill = np.clip(fill * shade, 0, 255)
    alpha = cv2.GaussianBlur(mask[y0:y1, x0:x1].astype(np.float32) / 255, (0, 0), max(0.6, d / 40))[..., None]
    roi = image[y0:y1, x0:x1].astype(np.float32)
    image[y0:y1, x0:x1] = np.clip(roi * (1 - alpha) + fill * alpha, 0, 255).astype(np.uint8)
    return image


class LandmarkSamples:
    """Map-style dataset: item ``i`` = up to ``per_scene`` faces of scene ``seed * 10_000_019 + i``:
    ``(crops float32 (K, 48, 48, 3), targets float32 (K, 10), clean-label inter-ocular / crop side (K,),
    valid bool (K,))``, padded to ``K = per_scene``. Faces under ``min_px`` are skipped; with probability
    ``flip_prob`` the scene is mirrored first (:func:`mirror_scene`); each kept face gets a random cover over nose
    and mouth (:func:`erase_lower_face`) with probability ``erase_prob``."""

    def __init__(self, renderer, length: int, seed: int, jitter: float, per_scene: int = 4, min_px: float = 14.0,
                 flip_prob: float = 0.0, erase_prob: float = 0.0):
        self.r, self.length, self.seed, self.jitter = renderer, int(length), int(seed), float(jitter)
        self.per_scene, self.min_px, self.flip_prob = int(per_scene), float(min_px), float(flip_prob)
        self.erase_prob = float(erase_prob)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        from sdk.detect import onet_crops

        seed = self.seed * 10_000_019 + int(i)
        sc = self.r.render(seed)
        K = self.per_scene
        crops = np.zeros((K, CROP, CROP, 3), np.float32)
        tg = np.zeros((K, 10), np.float32)
        iod = np.ones(K, np.float32)
        valid = np.zeros(K, bool)
        image = sc.image
        b = np.asarray(sc.boxes, np.float64).reshape(-1, 4)
        lm = np.asarray(sc.landmarks, np.float64).reshape(-1, 5, 2)
        if self.flip_prob > 0 and np.random.default_rng([seed, 12]).random() < self.flip_prob:
            image, b, lm = mirror_scene(image, b, lm)
        size = np.sqrt(np.clip((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 0, None))
        keep = np.flatnonzero(size >= self.min_px)[:K]
        if len(keep):
            if self.erase_prob > 0:
                er = np.random.default_rng([seed, 13])
                hit = [k for k in keep if er.random() < self.erase_prob]
                if hit:
                    image = image.copy()
                    for k in hit:
                        erase_lower_face(image, lm[k], er)
            rng = np.random.default_rng([seed, 11])
            sq, cr = onet_crops(image, jitter_boxes(b[keep], rng, self.jitter))
            n = len(keep)
            crops[:n], tg[:n], valid[:n] = cr, _targets(sq, lm[keep]), True
            iod[:n] = np.linalg.norm(lm[keep, 0] - lm[keep, 1], axis=1) / (sq[:, 2] - sq[:, 0] + 1)
        return crops, tg, iod, valid


def point_error(lmk: torch.Tensor, tg: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean error per face (units of the crop side) of O-Net landmark vectors ``(N, 10)``."""
    d = (lmk - tg).reshape(-1, 2, 5)
    return torch.sqrt((d ** 2).sum(1) + 1e-12).mean(1)


def nme(net: ONet, data: tuple[torch.Tensor, ...], batch: int = 256) -> float:
    """Mean NME (point error / clean inter-ocular distance) of ``net`` over ``(crops, targets, iod)``."""
    crops, tg, iod = data
    errs = []
    with torch.no_grad():
        for a in range(0, len(crops), batch):
            errs.append(point_error(net(crops[a:a + batch])[1], tg[a:a + batch]) / iod[a:a + batch])
    return float(torch.cat(errs).mean()) if errs else float("nan")


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class LandmarkConfig:
    """Options of ``trainer/main.py landmarks`` (every field is a flag)."""

    data: str = "../shared/data"  #: folder with lfw/ and celeba_subset/, or 'astronaut' (tests, smoke runs)
    templates: str = ""  #: MaskTheFace templates folder (anchors.cfg + PNGs); empty = procedural occluders only
    out: str = "out/landmarks/run"  #: output folder (checkpoints, CSV log, refiner.onnx); the run resumes from it
    cache: str = "out/detector/labels_lfw_celeba.npz"  #: MTCNN label file (shared with the detector; built once)
    per_identity: int = 2  #: images per identity to label (LFW + CelebA)
    steps: int = 1500  #: optimiser steps
    batch_size: int = 24  #: scenes per step (up to 4 faces each)
    scene: int = 256  #: training scene side (px)
    lr: float = 3e-4  #: peak AdamW learning rate (warm-up 50 steps, cosine to 5 %)
    weight_decay: float = 1e-4  #: AdamW weight decay
    jitter: float = 0.06  #: box jitter (centre shift / log-scale std, in face sizes)
    occlude_prob: float = 0.8  #: share of faces with a training-family occluder
    realistic_prob: float = 0.0  #: share of occluders from the realistic synthesizer (3-D warps, harvested masks)
    cutouts: str = ""  #: folder of harvested real masks (tools/harvest_occluders.py, harvest part) for the above
    flip_prob: float = 0.0  #: share of training scenes mirrored left-right (points re-ordered)
    erase_prob: float = 0.0  #: share of training faces given a random cover over nose and mouth (any colour/texture)
    init: str = ""  #: start from this refiner (run folder, checkpoint or refiner .onnx) instead of MTCNN's O-Net
    val_faces: int = 600  #: held-out validation faces (held-out identities, occluders and backgrounds)
    workers: int = 1  #: DataLoader worker processes rendering scenes
    threads: int = 2  #: torch intra-op threads
    save_every: int = 250  #: checkpoint (and validation) period, steps
    seed: int = 0  #: scene seeds
    resume: bool = True  #: continue from out/ckpt/last when it exists
    max_minutes: float = 0.0  #: stop (checkpoint, refiner.*) after this many minutes; 0 = no limit
    progress: bool = True  #: tqdm progress bars


def _lr_at(cfg: LandmarkConfig, step: int) -> float:
    return warmup_cosine(cfg.lr, step, cfg.steps, min(50, max(1, cfg.steps // 10)))


def _renderers(cfg: LandmarkConfig):
    """``(training renderer, validation renderer)``: training families / backgrounds / identities, and the
    held-out ones (every face occluded)."""
    from trainer.detector.data import load_eval_labels, load_train_labels
    from trainer.detector.occlusion import OccluderSampler
    from trainer.detector.scenes import SceneConfig, SceneRenderer

    labels, table = load_train_labels(cfg.data, cfg.cache, cfg.per_identity)
    loader = (lambda p: table[str(p)]) if table else None
    train_cfg = SceneConfig(height=cfg.scene, width=cfg.scene, faces=(2, 5), face_px=(16.0, 180.0),
                            occlude_prob=cfg.occlude_prob)
    sampler = OccluderSampler("train", cfg.templates or None, realistic_prob=cfg.realistic_prob,
                              cutouts_dir=cfg.cutouts or None)
    tr = SceneRenderer(labels, train_cfg, sampler, image_loader=loader)
    val_labels = load_eval_labels(cfg.data, cfg.cache, cfg.per_identity)  # astronaut: the one image again
    val_cfg = dataclasses.replace(train_cfg, occlude_prob=1.0, background_split="eval")
    va = SceneRenderer(val_labels, val_cfg, OccluderSampler("eval", cfg.templates or None), image_loader=loader)
    return tr, va


def validation_set(renderer, faces: int, jitter: float, seed: int = 987) -> tuple[torch.Tensor, ...]:
    """``(crops, targets, iod)`` tensors of ``faces`` faces rendered by ``renderer`` (fixed seeds)."""
    ds = LandmarkSamples(renderer, 10 ** 9, seed, jitter)
    C, T, I = [], [], []
    n, i = 0, 0
    while n < faces and i < 20 * faces:
        c, t, io, v = ds[i]
        i += 1
        C.append(c[v]), T.append(t[v]), I.append(io[v])
        n += int(v.sum())
    cat = [torch.from_numpy(np.concatenate(a)[:faces]) for a in (C, T, I)]
    return cat[0], cat[1], cat[2]


class LandmarkPlugin(StepPlugin):
    """The refiner on the loop skeleton: AdamW, warm-up + cosine, gradient norm clipped at 5; validation NME at
    every checkpoint."""

    kind = KIND
    csv_fields = ("step", "loss", "faces", "lr", "val_nme", "seconds")

    def __init__(self, cfg: LandmarkConfig, train_renderer, val: tuple[torch.Tensor, ...]):
        self.cfg, self.val = cfg, val
        self.out = Path(cfg.out)
        self.net = initial_net(cfg.init)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ds = LandmarkSamples(train_renderer, cfg.steps * cfg.batch_size, cfg.seed, cfg.jitter,
                                  flip_prob=cfg.flip_prob, erase_prob=cfg.erase_prob)
        self.steps, self.batch_size, self.workers, self.seed = cfg.steps, cfg.batch_size, cfg.workers, cfg.seed
        self.lr = _lr_at(cfg, 0)
        self.val_onet = nme(onet_from_onnx(), val)
        self.val_init = nme(self.net.eval(), val) if cfg.init else self.val_onet
        log.info("validation: %d held-out faces, untouched O-Net NME %.4f, start %.4f", len(val[0]), self.val_onet,
                 self.val_init)

    def modules(self) -> dict:
        return {"model": self.net}

    def optimizers(self) -> dict:
        return {"opt": self.opt}

    def meta(self) -> dict:
        return {"kind": KIND, "config": dataclasses.asdict(self.cfg)}

    def start_epoch(self, epoch: int, ctx: DistContext) -> None:
        self.net.train()

    def step(self, batch, epoch: int, step: int, ctx: DistContext) -> dict:
        crops, tg, _, valid = batch
        v = valid.reshape(-1)
        x, t = crops.reshape(-1, CROP, CROP, 3)[v], tg.reshape(-1, 10)[v]
        self.lr = _lr_at(self.cfg, step)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        loss = point_error(self.net(x)[1], t).mean() if len(x) else torch.zeros((), requires_grad=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.opt.step()
        return {"loss": float(loss.detach()), "faces": int(v.sum())}

    def postfix(self, parts: Mapping[str, Any]) -> dict[str, str]:
        return {"loss": f"{float(parts['loss']):.4f}"}

    def at_checkpoint(self, step: int) -> dict[str, Any]:
        self.net.eval()
        v = nme(self.net, self.val)
        self.net.train()
        return {"val_nme": f"{v:.5f}"}

    def log_row(self, step: int, epoch: int, batch: int, parts: Mapping[str, Any], extra: Mapping[str, Any],
                step_seconds: float, total_seconds: float) -> dict:
        return {"step": step, "loss": f"{float(parts['loss']):.5f}", "faces": int(parts["faces"]),
                "lr": f"{self.lr:.6g}", **extra, "seconds": round(step_seconds, 3)}

    def finish(self, step: int, start_step: int, stopped_early: bool, train_seconds: float,
               weights_sha1) -> tuple[dict, None]:
        net = self.net.eval()
        val = {"faces": len(self.val[0]), "nme": round(nme(net, self.val), 5), "nme_onet": round(self.val_onet, 5),
               **({"nme_init": round(self.val_init, 5)} if self.cfg.init else {}),
               "what": "held-out identities, held-out occluder families, evaluation backgrounds, jittered boxes; "
                       "NME = mean point error / clean inter-ocular distance vs MTCNN on the clean photo"}
        save_checkpoint(self.out / FINAL, {"model": net}, {**self.meta(), "step": step, "validation": val})
        export_refiner(net, self.out / f"{FINAL}.onnx")
        _plot(self.out / "steps.csv", self.out / "nme.png", self.val_onet)
        log.info("validation NME %.4f (untouched O-Net %.4f)", val["nme"], val["nme_onet"])
        return {"out": str(self.out), "steps": step, "validation": val, "stopped_early": stopped_early,
                "seconds": round(train_seconds, 1)}, None


def initial_net(init: str | Path = "") -> ONet:
    """The net training starts from: MTCNN's O-Net (``init`` empty), a refiner ``.onnx`` file
    (:func:`onet_from_onnx`), or a run folder / checkpoint (:func:`load_refiner`)."""
    if not init:
        return onet_from_onnx()
    p = Path(init)
    if not p.exists():
        raise FileNotFoundError(f"--init {p}: no such refiner file or run folder")
    return onet_from_onnx(p) if p.suffix == ".onnx" else load_refiner(p)


def load_refiner(path: str | Path) -> ONet:
    """The trained refiner of a run folder (``refiner.*`` or ``ckpt/last.*``) or checkpoint file (no pickle)."""
    p = Path(path)
    if p.is_dir():
        p = p / f"{FINAL}.json" if (p / f"{FINAL}.json").is_file() else p / "ckpt" / "last.json"
    ck = load_checkpoint(p)
    if ck.kind not in (None, KIND):
        raise ValueError(f"{p}: a {ck.kind!r} checkpoint, not a landmark refiner")
    net = ONet()
    ck.restore({"model": net})
    return net.eval()


def export_refiner(net: ONet, path: str | Path) -> Path:
    """``net`` -> ONNX with O-Net's signature (input ``"crops"`` ``(N, 48, 48, 3)``; outputs ``"box_reg"``,
    ``"landmarks"``, ``"face_prob"``), opset 17, checked against torch on ONNX Runtime (max |diff| < 1e-4)."""
    import io

    import onnxruntime as ort

    from trainer.checkpoints import atomic_write_bytes

    net = net.eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, CROP, CROP, 3)).astype(np.float32))
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, input_names=["crops"], output_names=["box_reg", "landmarks", "face_prob"],
                      dynamic_axes={"crops": {0: "N"}, "box_reg": {0: "N"}, "landmarks": {0: "N"},
                                    "face_prob": {0: "N"}}, opset_version=17, dynamo=False)
    data = buf.getvalue()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"crops": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in net(x)]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
    if diff > 1e-4:
        raise RuntimeError(f"refiner ONNX differs from torch by {diff:g}")
    return atomic_write_bytes(path, data)


def train(cfg: LandmarkConfig) -> dict:
    """Train (or resume) as configured; returns a summary dict (``steps``, ``validation``, ``seconds``)."""
    torch.set_num_threads(max(1, cfg.threads))
    tr, va = _renderers(cfg)
    val = validation_set(va, cfg.val_faces, cfg.jitter)

    def make(ctx: DistContext, ck) -> LandmarkPlugin:
        return LandmarkPlugin(cfg, tr, val)

    settings = LoopSettings(out=Path(cfg.out), ckpt_every=cfg.save_every, log_every=1, resume=cfg.resume,
                            progress=cfg.progress, max_minutes=cfg.max_minutes, csv_name="steps.csv")
    return run_loop(make, settings)


def _plot(csv_path: Path, png: Path, onet_nme: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_nme")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["step"]) for r in rows], [float(r["val_nme"]) for r in rows], "o-", label="refiner")
    ax.axhline(onet_nme, color="grey", ls="--", label="MTCNN O-Net (untouched)")
    ax.set_xlabel("step")
    ax.set_ylabel("NME, held-out occluded faces")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``landmarks`` on ``trainer/main.py``."""
    return add_command(subparsers, "landmarks", "train LTDet's landmark refiner (O-Net fine-tuned on occluded faces)",
                       __doc__, LandmarkConfig, train)
