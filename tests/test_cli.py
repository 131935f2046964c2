"""The command line, run as a user would (subprocess), on images the test writes itself."""
import json
import subprocess
import sys

import cv2
import pytest

from sdk.occluders import draw_surgical_mask


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sdk", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("demo", "enroll", "identify", "verify", "bench", "info"):
        assert cmd in r.stdout
    r = run("enroll", "--help")
    assert r.returncode == 0 and "--folder" in r.stdout and "--gallery" in r.stdout


@pytest.fixture(scope="module")
def people(tmp_path_factory, astronaut_bgr, camera_bgr):
    root = tmp_path_factory.mktemp("people")
    (root / "astronaut").mkdir()
    (root / "cameraman").mkdir()
    cv2.imwrite(str(root / "astronaut" / "a1.png"), astronaut_bgr)
    cv2.imwrite(str(root / "astronaut" / "a2.jpg"), cv2.resize(astronaut_bgr, None, fx=0.8, fy=0.8))
    cv2.imwrite(str(root / "astronaut" / "noface.png"), astronaut_bgr[400:, 400:])  # a corner: no face
    cv2.imwrite(str(root / "cameraman" / "c1.png"), camera_bgr)
    return root


@pytest.mark.slow
def test_enroll_folder_then_identify(tmp_path, people, astronaut_bgr):
    db = tmp_path / "g.db"
    r = run("enroll", "--gallery", str(db), "--folder", str(people))
    assert r.returncode == 0, r.stderr
    assert "enrolled 3 embeddings for 2 identities" in r.stdout and "1 images skipped" in r.stdout
    assert "enroll" in r.stderr  # the tqdm progress bar
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    from sdk.recognizer import Recognizer

    lm = Recognizer().detect(astronaut_bgr)[0].landmarks
    cv2.imwrite(str(probe_dir / "masked.png"), draw_surgical_mask(astronaut_bgr, lm)[0])
    out = tmp_path / "annotated"
    r = run("identify", "--gallery", str(db), str(probe_dir), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["identity"] == "astronaut"
    assert (out / "masked.png").is_file()
    r = run("identify", "--gallery", str(db), str(probe_dir))
    assert "astronaut" in r.stdout and "threshold" in r.stdout


@pytest.mark.slow
def test_enroll_strict_aborts_without_writing(tmp_path, people):
    db = tmp_path / "g.db"
    r = run("enroll", "--gallery", str(db), "--strict", "astronaut", str(people / "astronaut"))
    assert r.returncode != 0 and "gallery unchanged" in r.stderr + r.stdout
    r = run("info", "--gallery", str(db))
    assert json.loads(r.stdout)["gallery"]["embeddings"] == 0


def test_foreign_gallery_gives_clear_cli_error(tmp_path):
    from sdk.gallery import Gallery

    db = tmp_path / "other.db"
    Gallery(db, "some-other-model", 128).close()
    r = run("identify", "--gallery", str(db), str(tmp_path))
    assert r.returncode == 2 and "some-other-model" in r.stderr


def test_a_file_that_is_not_an_image_is_one_line_error(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    for cmd in (("identify", str(bad)), ("verify", str(bad), str(bad))):
        r = run(*cmd)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error:") and "notes.jpg" in r.stderr


@pytest.mark.slow
def test_verify_exit_codes(tmp_path, people):
    a = people / "astronaut"
    assert run("verify", str(a / "a1.png"), str(a / "a2.jpg")).returncode == 0
    assert run("verify", str(a / "a1.png"), str(people / "cameraman" / "c1.png")).returncode == 1


@pytest.mark.slow
def test_bench_writes_per_stage_json(tmp_path):
    out = tmp_path / "bench.json"
    r = run("bench", "--frames", "6", "--gallery-size", "500", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    for st in ("detect", "align", "embed", "match"):
        assert rep["stages"][st]["n"] == 6 and rep["stages"][st]["p95_ms"] >= rep["stages"][st]["p50_ms"] > 0
    assert rep["detector"] == "ltdet" and rep["baselines"]["detect_mtcnn"]["n"] > 0
    assert rep["gallery_rows"] == 500 and set(rep["ratios_baseline_over_ours_p50"]) == {
        "detect (MTCNN / ours)", "detect (dlib HOG / ours)", "align (cv2 / C++)", "match (numpy / C++)"}


@pytest.mark.slow
def test_demo_main_job(tmp_path):
    r = run("demo", "--out", str(tmp_path / "demo"), "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [x["identity"] for x in rows] == ["astronaut", "astronaut", None]
    assert all((tmp_path / "demo" / f"{x['probe']}.png").is_file() for x in rows)
