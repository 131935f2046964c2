"""The detector benchmark script runs end to end (one round, one call: a smoke run, no timing asserted) and writes
its JSON with every frame case, the MTCNN ratio and what each detector found."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("bench_detector", None)
    import bench_detector

    return bench_detector


def test_small_photo_case_is_the_tight_masked_astronaut(bench):
    img = bench.tight_masked_photo()
    assert img.shape == (160, 160, 3) and img.dtype.name == "uint8"


def test_bench_detector_smoke(bench, tmp_path):
    pytest.importorskip("dlib")
    out = tmp_path / "det.json"
    assert bench.main(["--model", "default", "--compare", "ltdet-v3", "--rounds", "1", "--calls", "1",
                       "--pyramids", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert set(rep["cases"]) == {"640x480_1face", "640x480_4faces", "1280x720_4faces", "160x160_tight_masked"}
    for case in rep["cases"].values():
        assert set(case) == {"ltdet", "ltdet[ltdet-v3]", "mtcnn", "dlib_hog"}
        assert case["mtcnn"]["speedup_vs_mtcnn"] == 1.0
        assert all(v["ms_median"] > 0 for v in case.values())
    tight = rep["cases"]["160x160_tight_masked"]
    assert tight["ltdet"]["faces_found"] == 1 and tight["ltdet[ltdet-v3]"]["faces_found"] == 0  # the pad pass finds her
    assert rep["cases"]["640x480_4faces"]["ltdet"]["faces_found"] >= 3
