"""The main job on the built-in models: enroll one person, then find her again (also behind a mask).

Uses only images that ship in scikit-image: ``astronaut()`` (Eileen Collins, public domain) is enrolled;
probes are a flipped + rescaled copy, a copy wearing a mask this project draws from her landmarks, and
``camera()`` (a different person) which must come back as unknown.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from sdk.draw import annotate
from sdk.occluders import draw_surgical_mask
from sdk.recognizer import Recognizer

log = logging.getLogger(__name__)


def demo_frames() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(enrollment frame, {probe name: frame}); all BGR uint8."""
    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - installed by `make setup`
        raise SystemExit("the demo needs scikit-image (pip install scikit-image)") from e
    astro = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    flipped = cv2.resize(astro[:, ::-1], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    camera = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    return astro, {"astronaut_flipped_rescaled": flipped, "camera_man": camera}


def tight_crop(frame: np.ndarray, box, ratio: float = 0.7, side: int = 160) -> np.ndarray:
    """A square ``ratio`` x the longer side of ``box`` (``x1, y1, x2, y2`` pixels) about its centre, cut from
    ``frame`` (BGR uint8) and resized to ``side`` px: with ratio < 1 the forehead and chin fall off the edge, the
    framing of many real masked-face photos (tests and the detector benchmark's small-photo case)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, ratio * max(x2 - x1, y2 - y1) / 2
    crop = frame[max(0, int(cy - half)):int(cy + half), max(0, int(cx - half)):int(cx + half)]
    how = cv2.INTER_AREA if crop.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(crop, (side, side), interpolation=how)


def run_demo(out_dir: Path, model: str | None = None) -> list[dict]:
    """Run the demo, write annotated PNGs into ``out_dir`` and return one result row per probe."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rec = Recognizer(model).prepare()
    enroll_frame, probes = demo_frames()
    rec.enroll("astronaut", enroll_frame)
    faces = rec.detect(enroll_frame)
    masked, _ = draw_surgical_mask(enroll_frame, faces[0].landmarks)
    probes = {"astronaut_masked": masked, **probes}
    rows = []
    for name, frame in probes.items():
        matches = rec.identify(frame)
        cv2.imwrite(str(out_dir / f"{name}.png"), annotate(frame, matches))
        best = matches[0] if matches else None
        rows.append({
            "probe": name, "faces": len(matches),
            "identity": best.identity if best else None,
            "similarity": None if best is None else round(float(best.similarity), 3),
            "occlusion": None if best is None else best.occlusion,
            "annotated": str(out_dir / f"{name}.png"),
        })
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    log.info("demo done in %.1f s", time.perf_counter() - t0)
    return rows
