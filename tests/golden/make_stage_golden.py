"""Record the reference outputs of every built-in bundle into ``tests/golden/stages.npz`` (run once, kept).

Run at commit f157c79 (before the stage/backend refactor of issue #13) with::

    .venv/bin/python tests/golden/make_stage_golden.py

It uses only the public Recognizer API (``detect``, ``embed_faces``, ``occlusion``, ``enroll``, ``identify``)
plus the segmenter's occlusion map and the inpainter's completed crop of the masked astronaut, so the file
pins what the refactored stages must still produce (``tests/test_stage_parity.py``).  Inputs are seeded:
the demo's probes (astronaut, flipped + rescaled, masked by ``sdk.occluders``), the camera man, and the
astronaut with seeded uniform noise.  Arrays are small (< 100 KB compressed).

Do not regenerate it to make a test pass: it is the *before* picture. The one intended change since
(``embed_faces``/``enroll`` now complete occluded faces, as ``identify`` always did) is handled in the test.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

BUNDLES = ("default", "baseline", "student-v1", "deocclusion-preview")
OUT = Path(__file__).resolve().parent / "stages.npz"


def golden_frames() -> dict[str, np.ndarray]:
    """The seeded input frames (BGR uint8), by name; ``masked`` needs the detector (added by the caller)."""
    from skimage import data

    astro = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    flipped = cv2.resize(astro[:, ::-1], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    camera = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    noise = np.random.default_rng(0).integers(-12, 13, astro.shape)
    noisy = np.clip(astro.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return {"astro": astro, "flipped": flipped, "camera": camera, "noisy": noisy}


def pool(x: np.ndarray, k: int = 4) -> np.ndarray:
    """(N, H, W) -> (N, H/k, W/k) mean pool (float32)."""
    n, h, w = x.shape
    return x.reshape(n, h // k, k, w // k, k).mean(axis=(2, 4)).astype(np.float32)


def main() -> int:
    from sdk.align import ARCFACE_CROP, similarity_to_template, warp
    from sdk.occluders import draw_surgical_mask
    from sdk.recognizer import Recognizer

    out: dict[str, np.ndarray] = {}
    frames = golden_frames()
    for bundle in BUNDLES:
        rec = Recognizer(bundle)
        if "masked" not in frames:
            face = rec.detect(frames["astro"])[0]
            frames["masked"] = draw_surgical_mask(frames["astro"], face.landmarks)[0]
        rec.enroll("astronaut", frames["astro"])
        for name, frame in frames.items():
            faces = rec.detect(frame)
            key = f"{bundle}/{name}"
            out[f"{key}/boxes"] = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
            out[f"{key}/landmarks"] = np.array([f.landmarks for f in faces], np.float32).reshape(-1, 5, 2)
            out[f"{key}/emb"] = rec.embed_faces(frame, faces)
            occ = rec.occlusion(frame, faces)
            out[f"{key}/occ"] = np.array([np.nan if o is None else o for o in occ], np.float64)
            ms = rec.identify(frame)
            out[f"{key}/sim"] = np.array([m.similarity for m in ms], np.float64)
            out[f"{key}/completed"] = np.array([m.completed for m in ms], bool)
            if rec.segmenter is not None and faces:
                mats = [similarity_to_template(f.landmarks, ARCFACE_CROP.template) for f in faces]
                crops = np.stack([warp(frame, m, ARCFACE_CROP.size) for m in mats])
                masks, probs = rec.segmenter.segment(crops)
                if bundle == "default":  # the same segmenter file serves the other bundles
                    out[f"{key}/mask_pool4"] = pool(masks)
                if rec.completer is not None and name == "masked":
                    holes = rec.segmenter.binary_masks(masks)
                    out[f"{key}/completed_crop"] = rec.completer.complete(crops, holes)
        rec.close()
    np.savez_compressed(OUT, **out)
    print(f"{OUT}: {OUT.stat().st_size / 1e3:.1f} kB, {len(out)} arrays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
