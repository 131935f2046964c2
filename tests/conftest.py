"""Shared fixtures: real images that ship with scikit-image (BGR), one Recognizer per session, manifest copies.

Session fixtures are read-only by convention: a test that changes one (a stage's config, the gallery) puts it
back in a ``finally`` (or uses its own object).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# golden references live beside the kernels (kernels/<name>/reference.py)
sys.path.insert(0, str(ROOT / "kernels"))


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="session")
def camera_bgr() -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="session")
def coffee_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.coffee()[:, :, ::-1])


@pytest.fixture(scope="session")
def recognizer():
    """A Recognizer on the built-in bundle with the astronaut enrolled (in-memory gallery)."""
    from skimage import data

    from sdk.recognizer import Recognizer

    rec = Recognizer()
    rec.enroll("astronaut", np.ascontiguousarray(data.astronaut()[:, :, ::-1]))
    return rec


@pytest.fixture(scope="session")
def astronaut_face(recognizer, astronaut_bgr):
    """The detector's face (box, 5 landmarks) in the astronaut."""
    return recognizer.detect(astronaut_bgr)[0]


@pytest.fixture(scope="session")
def masked_astronaut_bgr(astronaut_bgr, astronaut_face) -> np.ndarray:
    """The astronaut wearing the surgical mask sdk.occluders draws from her landmarks (the demo's probe)."""
    from sdk.occluders import draw_surgical_mask

    return draw_surgical_mask(astronaut_bgr, astronaut_face.landmarks)[0]


@pytest.fixture
def manifest_copy(tmp_path):
    """``make(name) -> (folder, raw)``: a built-in bundle's manifest written into ``tmp_path`` with every relative
    path made absolute (the model files stay where they are); mutate ``raw`` and write it back to test."""
    from sdk.bundle import BUILTIN_DIR

    def make(name: str = "default") -> tuple[Path, dict]:
        src = BUILTIN_DIR / name
        raw = json.loads((src / "manifest.json").read_text())
        for spec in raw["stages"].values():
            for f in (spec or {}).get("files", {}).values():
                if not f["path"].startswith("pkg:") and not Path(f["path"]).is_absolute():
                    f["path"] = str((src / f["path"]).resolve())
        dst = tmp_path / f"{name}-copy"
        dst.mkdir()
        (dst / "manifest.json").write_text(json.dumps(raw, indent=1))
        return dst, raw

    return make


@pytest.fixture(scope="session")
def torch():
    """The torch module (skips when the training extras, torch + onnx, are not installed)."""
    t = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    return t


@pytest.fixture(scope="session")
def inpainter_run_dir(torch, tmp_path_factory):
    """A trainer run folder (generator.safetensors + config.json) of a width-4 inpainter with random weights."""
    from trainer.models.inpainter import Generator, InpainterConfig, save_checkpoint

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("inpainter_run")
    save_checkpoint(out, Generator(InpainterConfig(width=4, disc_width=4)).eval(), extra={"step": 0})
    return out
