"""Recognise faces of several frames in one batched Recognizer call, through a canvas of face regions.

``Recognizer.identify_faces(frame, faces)`` batches the faces of *one* frame (one segmenter call, one
embedder call, one gallery search). To batch across frames (several cameras sharing one Recognizer) without
reaching into the Recognizer's stages, :func:`identify_batch` cuts a square region around each face
(``(1 + 2 * margin)`` times the face's longer side, black outside its frame), packs the regions into one
canvas (shelf packing, integer offsets), calls ``identify_faces`` once on the canvas with the faces moved into
it, and moves the results back. Every stage reads only pixels near the face (the aligned crops span about
1.1 face sides from the face's centre at any rotation, dlib's landmark fit reads inside the box), so with the
default margin of 1.5 face sides the results are those of per-frame calls (``tests/test_stream_batch.py``
checks it), and the canvas is far smaller than the frames.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from sdk.types import Face, Match

__all__ = ["identify_batch", "pack_regions"]

#: longest canvas side; regions wider than this go through a call of their own (MAX_SIDE of sdk.frame is 8192)
MAX_CANVAS = 4096


def _region(face: Face, margin: float) -> tuple[int, int, int]:
    """Integer square ``(x0, y0, side)`` around the face's box centre, frame pixels."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    side = max(x2 - x1, y2 - y1, 1.0)
    r = (0.5 + margin) * side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0, y0 = int(np.floor(cx - r)), int(np.floor(cy - r))
    return x0, y0, int(np.ceil(2 * r)) + 1


def pack_regions(sizes: Sequence[int], max_width: int | None = None) -> tuple[list[tuple[int, int]], int, int]:
    """Shelf-pack squares of the given sides; returns (offsets (x, y) per square, canvas width, canvas height).

    Squares go tallest first, left to right in rows no wider than ``max_width`` (a square wider than that gets
    a row of its own). ``max_width`` defaults to :data:`MAX_CANVAS`.
    """
    max_width = MAX_CANVAS if max_width is None else max_width
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    offsets: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    x = y = row_h = width = 0
    for i in order:
        s = sizes[i]
        if x > 0 and x + s > max_width:
            y += row_h
            x = row_h = 0
        offsets[i] = (x, y)
        x += s
        row_h = max(row_h, s)
        width = max(width, x)
    return offsets, width, y + row_h


def _canvas_groups(sizes: list[int], keys: list[int]) -> list[list[int]]:
    """Split ``keys`` (with region sides ``sizes``) into groups whose packed canvas is at most MAX_CANVAS tall."""
    if not keys:
        return []
    _, _, h = pack_regions(sizes)
    if h <= MAX_CANVAS or len(keys) == 1:
        return [keys]
    mid = len(keys) // 2
    return _canvas_groups(sizes[:mid], keys[:mid]) + _canvas_groups(sizes[mid:], keys[mid:])


def _identify_on_canvas(recognizer, items, todo, regions, group: list[int], out: list[list]) -> None:
    """One ``identify_faces`` call for the faces ``todo[k]``, ``k`` in ``group``, pasted into one canvas."""
    offsets, cw, ch = pack_regions([regions[k][2] for k in group])
    canvas = np.zeros((max(ch, 12), max(cw, 12), 3), np.uint8)
    moved: list[Face] = []
    shifts: list[np.ndarray] = []
    for k, (ox, oy) in zip(group, offsets):
        i, j = todo[k]
        frame, face = items[i][0], items[i][1][j]
        x0, y0, s = regions[k]
        h, w = frame.shape[:2]
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
        if sx1 > sx0 and sy1 > sy0:
            canvas[oy + sy0 - y0:oy + sy1 - y0, ox + sx0 - x0:ox + sx1 - x0] = frame[sy0:sy1, sx0:sx1]
        d = np.array([ox - x0, oy - y0], np.float32)
        shifts.append(d)
        moved.append(Face(box=face.box + np.tile(d, 2), landmarks=face.landmarks + d, score=face.score))
    matches = recognizer.identify_faces(canvas, moved)
    for k, d, m in zip(group, shifts, matches):
        i, j = todo[k]
        out[i].append((j, dataclasses.replace(m, box=m.box - np.tile(d, 2), landmarks=m.landmarks - d)))


def identify_batch(recognizer, items: Sequence[tuple[np.ndarray, Sequence[Face]]],
                   margin: float = 1.5) -> list[list[Match]]:
    """``[recognizer.identify_faces(frame, faces) for frame, faces in items]`` in as few calls as possible.

    Args:
        recognizer: anything with ``identify_faces(frame, faces) -> list[Match]`` (:class:`sdk.Recognizer`).
        items: ``(frame, faces)`` pairs; frames are BGR uint8 ``(H, W, 3)``, faces in that frame's pixels.
        margin: context kept around each face, in face sides on every side of its box.

    Returns:
        One list of :class:`Match` per item, in the order of its faces; boxes and landmarks in that item's
        frame pixels.
    """
    out: list[list] = [[] for _ in items]
    todo = [(i, j) for i, (_, faces) in enumerate(items) for j in range(len(faces))]
    if not todo:
        return out
    if len({i for i, _ in todo}) == 1:  # one frame: no canvas needed
        i = todo[0][0]
        return [list(recognizer.identify_faces(f, list(faces))) if k == i else [] for k, (f, faces) in enumerate(items)]
    regions = [_region(items[i][1][j], margin) for i, j in todo]
    big = [k for k, r in enumerate(regions) if r[2] > MAX_CANVAS]
    for k in big:  # a huge face: its own call on its own frame
        i, j = todo[k]
        [m] = recognizer.identify_faces(items[i][0], [items[i][1][j]])
        out[i].append((j, m))
    small = [k for k in range(len(todo)) if k not in set(big)]
    for group in _canvas_groups([regions[k][2] for k in small], small):
        _identify_on_canvas(recognizer, items, todo, regions, group, out)
    return [[m for _, m in sorted(pairs, key=lambda p: p[0])] for pairs in out]
