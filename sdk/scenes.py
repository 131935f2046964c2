"""Synthetic surveillance videos made from images that ship with scikit-image, with ground truth.

Used by the stream tests and ``benchmarks/bench_stream.py`` (nothing is downloaded). Two people:
``astronaut`` (``skimage.data.astronaut()``, colour) and ``cameraman`` (``skimage.data.camera()``, grey).
Each *actor* is a head-and-shoulders patch of one of them (elliptical, feathered edges), optionally wearing a
surgical mask drawn from the face's landmarks by :func:`sdk.occluders.draw_surgical_mask`, optionally
mirrored, scaled to a face size, moving on a slow ellipse inside its own cell of a grid over a static
background, visible from frame ``appear`` to frame ``leave`` (exclusive). Frames are BGR uint8; a little
sensor noise is added to every frame. Needs scikit-image (installed by ``make setup``).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from sdk.occluders import draw_surgical_mask

__all__ = ["Actor", "Scene", "make_scene", "render", "person_image", "PEOPLE"]

#: Face box (x1, y1, x2, y2) and 5 landmarks of each person in its 512x512 scikit-image picture, as this SDK's
#: MTCNN finds them (rounded to 0.1 px; ``tests/test_stream_scenes.py`` checks they still agree).
PEOPLE: dict[str, dict] = {
    "astronaut": {"box": (178.8, 59.1, 268.1, 173.9),
                  "landmarks": ((203.9, 101.3), (246.4, 103.2), (224.3, 128.9), (201.8, 139.8), (244.9, 142.0))},
    "cameraman": {"box": (197.3, 116.7, 253.5, 193.7),
                  "landmarks": ((233.4, 146.8), (250.8, 148.6), (250.1, 168.4), (230.9, 180.1), (243.2, 180.7))},
}


def person_image(person: str) -> np.ndarray:
    """The 512x512 BGR uint8 picture of ``person`` (``"astronaut"`` or ``"cameraman"``)."""
    from skimage import data

    if person == "astronaut":
        return np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    if person == "cameraman":
        return cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    raise ValueError(f"unknown person {person!r}; known: {sorted(PEOPLE)}")


@dataclass(frozen=True)
class Actor:
    """One face in a scene: who, face box side in pixels, masked or not, mirrored or not, the centre of its
    path (x, y), the path's radii (rx, ry) and period in frames, and the frames it is visible in."""

    person: str
    face_px: float
    masked: bool
    flip: bool
    centre: tuple[float, float]
    radius: tuple[float, float]
    period: float
    phase: float
    appear: int
    leave: int

    def face_box(self, frame: int) -> np.ndarray | None:
        """Ground-truth face box ``(x1, y1, x2, y2)`` in frame ``frame``, or ``None`` when not visible."""
        if not self.appear <= frame < self.leave:
            return None
        a = 2 * math.pi * frame / self.period + self.phase
        cx = self.centre[0] + self.radius[0] * math.cos(a)
        cy = self.centre[1] + self.radius[1] * math.sin(a)
        h = self.face_px
        w = h * _aspect(self.person)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


def _aspect(person: str) -> float:
    x1, y1, x2, y2 = PEOPLE[person]["box"]
    return (x2 - x1) / (y2 - y1)


@dataclass(frozen=True)
class Scene:
    """A video to render: size (w, h), frame count, frame rate, the actors, and the seed of the noise."""

    size: tuple[int, int]
    frames: int
    fps: float
    actors: tuple[Actor, ...]
    seed: int = 0
    noise: float = 2.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def make_scene(size: tuple[int, int] = (640, 480), faces: int = 4, frames: int = 250, fps: float = 25.0,
               masked: float = 0.5, seed: int = 0, stagger: float = 0.3, leave_after: float | None = 0.8,
               face_px: float | None = None) -> Scene:
    """A grid scene: ``faces`` actors (astronaut / cameraman alternating), ``round(masked * faces)`` of them
    masked (half of each person's copies at 0.5), entering one after the other over
    the first ``stagger`` of the video; the odd-numbered ones leave at ``leave_after`` of it (None: nobody
    leaves). Faces fill ~45% of their cell's shorter side unless ``face_px`` is given."""
    if faces < 1:
        raise ValueError(f"faces must be >= 1, got {faces}")
    rng = np.random.default_rng(seed)
    W, H = size
    cols = math.ceil(math.sqrt(faces * W / H))
    rows = math.ceil(faces / cols)
    cw, ch = W / cols, H / rows
    px = face_px if face_px is not None else float(np.clip(0.45 * min(cw, ch), 40, 180))
    # masks go to a mix of both people: actors 1, 2, 5, 6, 9, ... first, then the others
    order = sorted(range(faces), key=lambda k: ((k // 2 + k) % 2 == 0, k))
    masked_set = set(order[:round(masked * faces)])
    actors = []
    for k in range(faces):
        r, c = divmod(k, cols)
        cx, cy = (c + 0.5) * cw, (r + 0.5) * ch - 0.1 * px
        appear = int(round(k * stagger * frames / max(faces, 1)))
        leave = int(round(leave_after * frames)) if (leave_after is not None and k % 2 == 1) else frames
        actors.append(Actor(person=("astronaut", "cameraman")[k % 2], face_px=px, masked=k in masked_set,
                            flip=bool((k // 2) % 2), centre=(cx, cy),
                            radius=(0.12 * cw, 0.06 * ch), period=float(rng.uniform(90, 150)),
                            phase=float(rng.uniform(0, 2 * math.pi)), appear=appear, leave=max(leave, appear + 1)))
    return Scene(size=(W, H), frames=frames, fps=fps, actors=tuple(actors), seed=seed)


def _background(size: tuple[int, int], seed: int) -> np.ndarray:
    """A static 'room': smooth colour gradient, low-frequency texture and a few darker furniture blocks."""
    W, H = size
    rng = np.random.default_rng(seed + 1)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    base = np.stack([90 + 40 * y / H, 100 + 30 * x / W, 110 + 20 * (1 - y / H)], axis=2)
    tex = cv2.resize(rng.normal(0, 12, (H // 32 + 1, W // 32 + 1, 3)).astype(np.float32), (W, H),
                     interpolation=cv2.INTER_CUBIC)
    img = np.clip(base + tex, 0, 255).astype(np.uint8)
    for _ in range(5):
        x1, y1 = int(rng.uniform(0, W * 0.8)), int(rng.uniform(H * 0.4, H * 0.9))
        cv2.rectangle(img, (x1, y1), (x1 + int(rng.uniform(40, W * 0.3)), H), tuple(int(v) for v in rng.uniform(30, 90, 3)), -1)
    return img


def _patch(actor: Actor) -> tuple[np.ndarray, np.ndarray, float, tuple[float, float]]:
    """(BGR patch, alpha in [0, 1], scale from the picture to the frame, face centre in the patch)."""
    info = PEOPLE[actor.person]
    img = person_image(actor.person)
    lm = np.array(info["landmarks"], np.float32)
    if actor.masked:
        img, _ = draw_surgical_mask(img, lm, seed=0)
    x1, y1, x2, y2 = info["box"]
    side = y2 - y1
    s = actor.face_px / side
    fcx, fcy = (x1 + x2) / 2, (y1 + y2) / 2
    # head-and-shoulders crop: 1.1 face sides to each side, 0.8 above, 1.4 below the face centre
    X1, X2 = int(max(0, fcx - 1.1 * side)), int(min(512, fcx + 1.1 * side))
    Y1, Y2 = int(max(0, fcy - 0.9 * side)), int(min(512, fcy + 1.4 * side))
    crop = img[Y1:Y2, X1:X2]
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
                      interpolation=cv2.INTER_AREA)
    h, w = crop.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2), (max(1, int(w * 0.47)), max(1, int(h * 0.47))), 0, 0, 360, 1.0, -1)
    k = max(3, int(0.08 * min(w, h)) | 1)
    alpha = cv2.GaussianBlur(alpha, (k, k), 0)
    centre = ((fcx - X1) * s, (fcy - Y1) * s)
    if actor.flip:
        crop, alpha = crop[:, ::-1].copy(), alpha[:, ::-1].copy()
        centre = (w - centre[0], centre[1])
    return crop, alpha, s, centre


def render(scene: Scene, path: str | Path | None = None, fourcc: str = "mp4v"):
    """Render ``scene``: write it to ``path`` (returns the path) or, without a path, return a generator of
    BGR frames. The face of actor ``a`` in frame ``i`` is at ``a.face_box(i)``."""
    bg = _background(scene.size, scene.seed)
    patches = [_patch(a) for a in scene.actors]
    rng = np.random.default_rng(scene.seed + 2)
    noise = None
    if scene.noise:  # 4 frames of Gaussian sensor noise, split into a positive and a negative uint8 part
        n = [np.round(rng.normal(0, scene.noise, bg.shape)).astype(np.int16) for _ in range(4)]
        noise = [(np.clip(x, 0, 255).astype(np.uint8), np.clip(-x, 0, 255).astype(np.uint8)) for x in n]

    def frames():
        for i in range(scene.frames):
            f = bg.copy()
            for a, (crop, alpha, _, (pcx, pcy)) in zip(scene.actors, patches):
                b = a.face_box(i)
                if b is None:
                    continue
                fx, fy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                ox, oy = int(round(fx - pcx)), int(round(fy - pcy))
                h, w = crop.shape[:2]
                X1, Y1 = max(ox, 0), max(oy, 0)
                X2, Y2 = min(ox + w, scene.size[0]), min(oy + h, scene.size[1])
                if X2 <= X1 or Y2 <= Y1:
                    continue
                al = alpha[Y1 - oy:Y2 - oy, X1 - ox:X2 - ox, None]
                mix = f[Y1:Y2, X1:X2] * (1 - al) + crop[Y1 - oy:Y2 - oy, X1 - ox:X2 - ox] * al
                f[Y1:Y2, X1:X2] = np.clip(mix + 0.5, 0, 255).astype(np.uint8)
            if noise is not None:
                f = cv2.add(f, noise[i % len(noise)][0], dtype=cv2.CV_8U)
                f = cv2.subtract(f, noise[i % len(noise)][1], dtype=cv2.CV_8U)
            yield f

    if path is None:
        return frames()
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(scene.fps), scene.size)
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path} with fourcc {fourcc!r}")
    try:
        for f in frames():
            writer.write(f)
    finally:
        writer.release()
    return path
