"""Shared fixtures: real images that ship with scikit-image (BGR), and one Recognizer per session."""
from __future__ import annotations

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
