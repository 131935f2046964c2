"""Annotated output images: boxes, landmarks and identities drawn on a copy of the frame (BGR)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from sdk.types import Match

KNOWN_BGR = (60, 200, 60)
UNKNOWN_BGR = (40, 40, 230)


def annotate(frame: np.ndarray, matches: Sequence[Match]) -> np.ndarray:
    """Copy of the BGR ``frame`` with each match's box, 5 landmarks and label (name + similarity)."""
    out = frame.copy()
    scale = max(out.shape[:2]) / 640.0
    thick = max(1, int(round(2 * scale)))
    for m in matches:
        colour = KNOWN_BGR if m.identity else UNKNOWN_BGR
        x1, y1, x2, y2 = (int(round(float(v))) for v in m.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        for x, y in m.landmarks:
            cv2.circle(out, (int(round(float(x))), int(round(float(y)))), thick + 1, (0, 220, 255), -1)
        sim = "" if np.isnan(m.similarity) else f" {m.similarity:.2f}"
        label = f"{m.identity or 'unknown'}{sim}"
        if m.occlusion is not None:
            label += f" occ {m.occlusion:.2f}"
        fs = 0.5 * scale
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, thick)
        ty = max(y1, th + base + 2)
        cv2.rectangle(out, (x1, ty - th - base - 2), (x1 + tw + 4, ty), colour, -1)
        cv2.putText(out, label, (x1 + 2, ty - base), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), thick, cv2.LINE_AA)
    return out
