"""Readers, identity splits and an end-to-end evaluation on a tiny LFW-style set the test renders."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from _trainer_helpers import photo_variants as variants  # (tests/ is on sys.path)
from trainer.data.readers import Split, identity_split, read_identity_tree, read_lfw_pairs


@pytest.fixture(scope="module")
def tiny_lfw(tmp_path_factory, astronaut_bgr, camera_bgr):
    root = tmp_path_factory.mktemp("tiny_lfw")
    people = {"Eileen_Collins": astronaut_bgr, "Camera_Man": camera_bgr[:, :, :]}
    for name, img in people.items():
        (root / name).mkdir()
        for i, v in enumerate(variants(img, 4), start=1):
            cv2.imwrite(str(root / name / f"{name}_{i:04d}.jpg"), v)
    lines = ["2\t2"]
    for f in range(2):  # per fold: 2 same, 2 different
        lines += [f"Eileen_Collins\t{1 + 2 * f}\t{2 + 2 * f}", f"Camera_Man\t{1 + 2 * f}\t{2 + 2 * f}"]
        lines += [f"Eileen_Collins\t{1 + f}\tCamera_Man\t{3 - f}", f"Eileen_Collins\t{3 + f}\tCamera_Man\t{1 + f}"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_read_pairs_and_tree(tiny_lfw):
    pairs = read_lfw_pairs(tiny_lfw / "pairs.txt")
    assert len(pairs) == 8 and [p.fold for p in pairs] == [0] * 4 + [1] * 4
    assert [p.same for p in pairs[:4]] == [True, True, False, False]
    assert pairs[2].a.name == "Eileen_Collins_0001.jpg" and pairs[2].b.name == "Camera_Man_0003.jpg"
    assert all(p.a.is_file() and p.b.is_file() for p in pairs)
    samples = read_identity_tree(tiny_lfw)
    assert len(samples) == 8 and {s.identity for s in samples} == {"Eileen_Collins", "Camera_Man"}


def test_malformed_pairs(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("1\t1\nA\t1\nB\t1\tC\t2\n")
    with pytest.raises(ValueError, match="pairs.txt:2"):
        read_lfw_pairs(bad)
    bad.write_text("1\t2\nA\t1\t2\nB\t1\tC\t2\n")
    with pytest.raises(ValueError, match="promises 4 pairs"):
        read_lfw_pairs(bad)
    with pytest.raises(FileNotFoundError):
        read_identity_tree(tmp_path / "none")


def test_identity_split_is_disjoint_and_reproducible(tmp_path):
    from trainer.data.readers import Sample

    samples = [Sample(tmp_path / f"{i}_{j}.jpg", f"id{i:03d}") for i in range(50) for j in range(3)]
    s = identity_split(samples, (0.8, 0.1, 0.1), seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 5, 5)
    assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
    assert identity_split(samples, (0.8, 0.1, 0.1), seed=3) == s != identity_split(samples, (0.8, 0.1, 0.1), seed=4)
    s.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == s
    assert len(s.of(samples, "test")) == 15


def test_evaluate_end_to_end(tiny_lfw, tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "trainer.evaluate", "--data", str(tiny_lfw), "--conditions", "unmasked,simple,block",
           "--workers", "1", "--out", str(out), "--cache", str(tmp_path / "cache")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["meta"]["alignment"]["images"] == 8 and rep["meta"]["alignment"]["detected"] == 8
    res = rep["results"]
    assert set(res) == {"unmasked", "simple", "block"}
    assert res["unmasked"]["verification"]["accuracy_mean"] == 1.0  # two very different people
    for cond in res.values():
        assert 0.0 <= cond["verification"]["accuracy_mean"] <= 1.0
    assert (out / "roc.png").stat().st_size > 1000 and (out / "examples.png").is_file()
    assert "unmasked" in (out / "report.md").read_text()
    # second run: embeddings come from the cache
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "from cache" in r2.stderr
    again = json.loads((out / "report.json").read_text())["results"]["simple"]
    assert again["verification"] == res["simple"]["verification"] and again["tar_at_far"] == res["simple"]["tar_at_far"]

    out2 = tmp_path / "rank1"
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--data", str(tiny_lfw), "--protocol", "rank1",
                        "--conditions", "unmasked,sunglasses", "--workers", "1", "--out", str(out2), "--cache",
                        str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rank = json.loads((out2 / "report.json").read_text())["results"]
    assert rank["unmasked"]["rank1"] == 1.0 and 0.0 <= rank["sunglasses"]["rank1"] <= 1.0


def test_split_command_writes_manifest(tiny_lfw, tmp_path):
    out = tmp_path / "split.json"
    r = subprocess.run([sys.executable, "trainer/main.py", "split", "--data", str(tiny_lfw), "--out", str(out),
                        "--fractions", "0.5", "0.0", "0.5", "--align", "--cache", str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(out.read_text())
    assert len(m["train"]) == 1 and len(m["test"]) == 1 and not set(m["train"]) & set(m["test"])
    assert m["images"] == {"train": 4, "val": 0, "test": 4}
    assert m["alignment"]["detected"] == 8
