"""Complete occluded embedder chips through the 112x112 ArcFace-crop inpainter (evaluation and student training).

The recognizer's chip (dlib: 150x150, padding 0.25) and the inpainter's crop (ArcFace 112x112) are two similarity
warps of the same frame.  A masked chip is completed by cutting the ArcFace crop *out of the chip*
(``chip -> crop = arc_m o chip_m^-1``), warping the chip's hole along, filling it with the inpainter, and pasting the
filled pixels back into the chip (:func:`sdk.complete.paste_back`).  Hole pixels outside the ArcFace crop (a mask's
lower edge under the chin) stay as they are: the inpainter never saw that region.

``kind``:

* an ``.onnx`` inpainter file or a bundle folder with a ``complete`` stage (ONNX Runtime, CPU), or a trainer run
  folder (its ``ckpt/last.*``, or ``generator.safetensors`` of older runs; exported to ONNX on first use, cached
  beside it as ``inpainter.onnx``);
* ``"telea"``: OpenCV's Telea inpainting on the same crop and hole (the classical reference).

All images BGR uint8.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

ARC_SIZE = 112
TELEA = "telea"


def chip_to_arc(chip_m: np.ndarray, arc_m: np.ndarray) -> np.ndarray:
    """(2, 3) chip-pixel -> ArcFace-crop-pixel matrix from the two frame -> crop matrices."""
    inv = cv2.invertAffineTransform(np.asarray(chip_m, np.float64).reshape(2, 3))
    a = np.asarray(arc_m, np.float64).reshape(2, 3)
    return np.concatenate([a[:, :2] @ inv[:, :2], (a[:, :2] @ inv[:, 2] + a[:, 2])[:, None]], axis=1)


def resolve_model(spec: str | Path) -> Path | str:
    """The ``.onnx`` file behind ``spec`` (see the module docstring), or ``"telea"``."""
    if str(spec) == TELEA:
        return TELEA
    p = Path(spec)
    if p.is_file():
        return p
    if (p / "manifest.json").is_file():
        stage = json.loads((p / "manifest.json").read_text()).get("stages", {}).get("complete")
        if not stage:
            raise ValueError(f"bundle {p} has no 'complete' stage")
        return (p / stage["files"]["model"]["path"]).resolve()
    from trainer.checkpoints import checkpoint_files, find_checkpoint

    stem = find_checkpoint(p)
    weights = checkpoint_files(stem)[0] if stem is not None else p / "generator.safetensors"  # (older run folders)
    if weights.is_file():
        onnx = p / "inpainter.onnx"
        if not onnx.is_file() or onnx.stat().st_mtime < weights.stat().st_mtime:
            from trainer.models.inpainter import export_onnx, load_checkpoint

            export_onnx(load_checkpoint(p)[0], onnx)
        return onnx
    raise FileNotFoundError(f"no inpainter at {p}: give an .onnx file, a bundle with a 'complete' stage, a trainer run "
                            f"folder (ckpt/last.*, or an older one with generator.safetensors), or 'telea'")


def model_fingerprint(spec: str | Path | None) -> str | None:
    """Short content hash of the inpainter behind ``spec`` (for cache keys); None for None."""
    if spec is None:
        return None
    m = resolve_model(spec)
    if m == TELEA:
        return TELEA
    return hashlib.sha1(Path(m).read_bytes()).hexdigest()[:16]


class ChipCompleter:
    """``completer(chips, holes, chip_to_arc_ms) -> completed chips``; the ONNX sessions open on first use (so
    instances can be sent to worker processes).

    ``mask_source="truth"`` fills the given holes (the synthesis mask: the ID-GAN protocol); ``"predicted"`` ignores
    them and fills what the bundle ``segmenter``'s segment stage predicts on the crop, only for crops whose occlusion
    probability reaches the stage threshold -- what the SDK does at run time.
    """

    def __init__(self, spec: str | Path, threads: int = 1, dilate: int = 1, mask_source: str = "truth",
                 segmenter: str = "default"):
        if mask_source not in ("truth", "predicted"):
            raise ValueError(f"mask_source must be truth | predicted, got {mask_source!r}")
        self.model = resolve_model(spec)
        self.threads, self.dilate = int(threads), int(dilate)
        self.mask_source, self.segmenter = mask_source, segmenter
        self._inp = None
        self._seg = None

    def _predicted_holes(self, crops: np.ndarray) -> np.ndarray:
        if self._seg is None:
            from sdk._registry import build_stage
            from sdk.bundle import load_bundle

            bundle = load_bundle(self.segmenter, verify_hash=False)
            if not bundle.stages.get("segment"):
                raise ValueError(f"bundle {self.segmenter!r} has no segment stage to predict masks with")
            self._seg = build_stage(bundle.stages["segment"])
        masks, prob = self._seg.segment(crops)
        holes = self._seg.binary_masks(masks).astype(bool)
        holes[~self._seg.is_occluded(prob)] = False
        return holes

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_inp"] = d["_seg"] = None
        return d

    def _fill(self, crops: np.ndarray, holes: np.ndarray) -> np.ndarray:
        if self.model == TELEA:
            return np.stack([cv2.inpaint(c, h.astype(np.uint8), 3, cv2.INPAINT_TELEA) for c, h in zip(crops, holes)])
        if self._inp is None:
            from sdk.complete import OnnxInpainter

            self._inp = OnnxInpainter(self.model, threads=self.threads)
        return self._inp.complete(crops, holes)

    def __call__(self, chips: np.ndarray, holes: np.ndarray, mats: np.ndarray) -> np.ndarray:
        """Complete ``chips`` (N, h, w, 3) uint8 BGR whose occluded pixels are ``holes`` (N, h, w) (1 = hole),
        through the ArcFace crops ``mats`` (N, 2, 3) chip -> crop.  Chips without a hole inside the crop come back
        unchanged (same array values)."""
        from sdk.align import warp
        from sdk.complete import dilate_holes, paste_back

        out = np.array(chips, copy=True)
        if not len(out):
            return out
        crops = np.stack([warp(np.ascontiguousarray(c), m, (ARC_SIZE, ARC_SIZE)) for c, m in zip(chips, mats)])
        if self.mask_source == "predicted":
            hs = self._predicted_holes(crops)
        else:
            hs = np.stack([warp(np.ascontiguousarray((h > 0).astype(np.uint8) * 255), m, (ARC_SIZE, ARC_SIZE)) >= 128
                           for h, m in zip(holes, mats)])
        hs = dilate_holes(hs, self.dilate) if self.dilate else hs
        todo = np.flatnonzero(hs.reshape(len(hs), -1).any(1))
        if len(todo):
            filled = self._fill(crops[todo], hs[todo])
            for k, i in enumerate(todo):
                paste_back(chips[i], filled[k], hs[i], mats[i], out=out[i])
        return out
