import json
import shutil

import numpy as np
import pytest

from sdk.bundle import BUILTIN_DIR, load_bundle
from sdk.errors import BundleError, ModelFileError


def copy_bundle(tmp_path, files_dir=True):
    """Copy the built-in manifest into tmp with the model files copied beside it (relative paths)."""
    base = load_bundle("baseline")
    raw = json.loads((BUILTIN_DIR / "baseline" / "manifest.json").read_text())
    dst = tmp_path / "bundle"
    dst.mkdir()
    for stage in ("detect", "embed"):
        for role, ref in base.stages[stage].files.items():
            shutil.copy(ref.path, dst / ref.path.name)
            raw["stages"][stage]["files"][role]["path"] = ref.path.name
    (dst / "manifest.json").write_text(json.dumps(raw))
    return dst, raw


def test_previous_default_keeps_the_segmenter_and_the_baseline_embedder():
    d, b = load_bundle("default-v1"), load_bundle("baseline")
    assert d.name == "default-v1" and d.stages["segment"].kind == "onnx_segmenter" and d.stages["complete"] is None
    assert d.mode == "occlusion-aware" and d.mask_aware is None
    assert d.stages["embed"] == b.stages["embed"] and d.threshold == b.threshold


def test_default_bundle_is_ltdet_v6_and_the_previous_defaults_stay_built_in():
    """Issue #14: the default is ltdet-v6 (LTDet + the retrained refiner with its mirrored pass, then maskaware-v3's
    segmenter, student and mask-aware matching, the chip fitted with weighted points) under its own name; the
    previous defaults stay built in: default-v4 (ltdet-v5's detector and ltdet-v2's refiner), default-v3 (ltdet-v3's
    detector) and default-v2 (issue #9.7: maskaware-v3 with MTCNN). All share the files of the built-in bundles (no
    second copy of the weights)."""
    d, v6, m, old = load_bundle(), load_bundle("ltdet-v6"), load_bundle("maskaware-v3"), load_bundle("default-v1")
    assert d.name == "default-v5" and d.mode == "occlusion-aware" and d.stages["complete"] is None
    assert d.stages["detect"].kind == "ltdet" and d.stages["detect"] == v6.stages["detect"]
    cfg = d.stages["detect"].config
    assert cfg["pad_below"] == cfg["upscale_below"] == 320 and cfg["refine_mirror"] is True
    # the same embedder, chip and calibration data as ltdet-v6 (it was exported on the default)
    assert d.stages["embed"] == v6.stages["embed"] and d.stages["embed"].config["chip_landmarks"] == "mtcnn5w"
    assert d.match["calibration"]["embedder"].endswith(":dlib150:mtcnn5w") and d.match == v6.match
    assert d.operating_points.far == 1e-3 and d.match["min_det_score"] == 0.75
    # default-v4: ltdet-v5's detector and ltdet-v2's refiner, otherwise the same files
    v5, d4 = load_bundle("ltdet-v5"), load_bundle("default-v4")
    assert d4.name == "default-v4" and d4.stages["detect"].files == v5.stages["detect"].files
    assert "refine_mirror" not in d4.stages["detect"].config
    assert d4.stages["embed"] == d.stages["embed"] and abs(d4.threshold - d.threshold) < 0.01
    v3, d3 = load_bundle("ltdet-v3"), load_bundle("default-v3")
    assert d3.name == "default-v3" and d3.stages["detect"] == v3.stages["detect"]
    assert d3.stages["embed"] == d.stages["embed"] and d3.match["calibration"]["embedder"].endswith(":mtcnn5w")
    prev = load_bundle("default-v2")
    assert prev.name == "default-v2" and prev.stages["detect"].kind == "mtcnn"
    for b in (d, d4, d3, prev):
        assert b.mask_aware == m.mask_aware and b.mask_aware is not None
        assert b.stages["embed"].files["model"].path == m.stages["embed"].files["model"].path
        assert b.stages["segment"].files["model"].path == old.stages["segment"].files["model"].path
    assert prev.threshold == m.threshold and prev.operating_points == m.operating_points


def test_ltdet_v6_detects_as_ltdet_v5_and_moves_only_the_points(astronaut_bgr):
    """ltdet-v6's graph is ltdet-v5's weights re-traced (cheaper decoding): the same boxes and scores on the
    astronaut, clean and masked; its refiner (retrained, mirrored pass) moves the points by a few pixels at most on
    the clean face."""
    import sdk
    from sdk.occluders import draw_surgical_mask

    r5, r6 = sdk.Recognizer("ltdet-v5"), sdk.Recognizer("ltdet-v6")
    a = r5.detect(astronaut_bgr)
    masked = draw_surgical_mask(astronaut_bgr, a[0].landmarks)[0]
    for img in (astronaut_bgr, masked):
        f5, f6 = r5.detect(img), r6.detect(img)
        assert len(f5) == len(f6) >= 1
        for x, y in zip(f5, f6):
            assert np.abs(x.box - y.box).max() < 1e-3 and abs(x.score - y.score) < 1e-5
    d = np.abs(r5.detect(astronaut_bgr)[0].landmarks - r6.detect(astronaut_bgr)[0].landmarks).max()
    assert 0.05 < d < 4.0


def test_default_v4_and_v3_galleries_open_with_the_default(tmp_path, astronaut_bgr):
    """default-v5 changed only the landmark refiner and default-v4 only the detector: the template model id is
    default-v3's, so galleries enrolled with default-v4 or default-v3 open with the default and find the person;
    default-v2's (other chips) is refused."""
    import sdk
    from sdk.errors import GalleryError

    for name in ("default-v4", "default-v3"):
        db = tmp_path / f"{name}.db"
        sdk.Recognizer(name, gallery=db).enroll("eileen", astronaut_bgr)
        [m] = sdk.Recognizer(gallery=db).identify(astronaut_bgr)
        assert m.identity == "eileen" and m.similarity > m.threshold
    with pytest.raises(GalleryError):
        sdk.Recognizer("default-v2", gallery=tmp_path / "default-v3.db")


def test_builtin_bundle_loads_in_baseline_mode():
    b = load_bundle("baseline")
    assert b.name == "baseline-dlib" and b.mode == "baseline"
    assert b.stages["segment"] is None and b.stages["complete"] is None
    assert all(ref.path.is_file() for ref in b.stages["embed"].files.values())
    assert 0 < b.threshold < 1


def test_truncated_file_is_named(tmp_path):
    dst, _ = copy_bundle(tmp_path)
    victim = dst / "rnet.onnx"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="rnet.onnx.*truncated"):
        load_bundle(dst)


def test_replaced_file_fails_hash(tmp_path):
    dst, _ = copy_bundle(tmp_path)
    victim = dst / "pnet.onnx"
    data = bytearray(victim.read_bytes())
    data[500] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="pnet.onnx.*SHA-256"):
        load_bundle(dst)


def test_missing_file_is_named(tmp_path):
    dst, _ = copy_bundle(tmp_path)
    (dst / "onet.onnx").unlink()
    with pytest.raises(ModelFileError, match="onet.onnx.*not found"):
        load_bundle(dst)


def test_foreign_file_without_hash_fails_at_load(tmp_path):
    """A JPEG where the dlib model should be: the loader names the file."""
    import cv2
    import numpy as np

    from sdk.recognizer import Recognizer

    dst, raw = copy_bundle(tmp_path)
    jpg = dst / "not_a_model.dat"
    cv2.imwrite(str(jpg.with_suffix(".jpg")), np.zeros((32, 32, 3), np.uint8))
    jpg.with_suffix(".jpg").rename(jpg)
    raw["stages"]["embed"]["files"]["model"] = {"path": jpg.name}
    (dst / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match="not_a_model.dat"):
        Recognizer(dst)


@pytest.mark.parametrize("mutate, words", [
    (lambda r: r.update(format="something-else"), "not a LookThrough bundle"),
    (lambda r: r.update(format_version=99), "format_version"),
    (lambda r: r["stages"].update(embed=None), "required"),
    (lambda r: r["stages"].update(teleport={"kind": "x"}), "unknown stages"),
    (lambda r: r["stages"]["detect"]["files"]["pnet"].pop("path"), "needs a \"path\""),
])
def test_malformed_manifests(tmp_path, mutate, words):
    dst, raw = copy_bundle(tmp_path)
    mutate(raw)
    (dst / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=words):
        load_bundle(dst)


def test_unknown_kind_and_non_json(tmp_path):
    from sdk.recognizer import Recognizer

    dst, raw = copy_bundle(tmp_path)
    raw["stages"]["embed"]["kind"] = "magic"
    (dst / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="unknown kind 'magic'"):
        Recognizer(dst)
    (dst / "manifest.json").write_bytes(b"\x89PNG\x00\x01")
    with pytest.raises(BundleError, match="not a JSON manifest"):
        load_bundle(dst)


def test_unknown_bundle_and_bare_engine(tmp_path):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nothing-here")
    with pytest.raises(BundleError, match="TensorRT engine"):
        load_bundle(tmp_path / "engine.plan")


def test_ltdet_fast_is_the_default_with_the_stride2_stem_detector(tmp_path, astronaut_bgr):
    """``ltdet-fast``: default-v4's refiner, segmenter, embedder, chip and detection settings (it was built on the
    default of its day), only the detector graph differs (ltdet-v5 with a stride-2 stem: smaller and faster); its own
    calibrated thresholds. Same template model id as the default, so a gallery enrolled with the default opens with
    it and finds the person."""
    import sdk

    d, f = load_bundle("default-v4"), load_bundle("ltdet-fast")
    assert f.name == "ltdet-fast" and f.stages["detect"].kind == "ltdet"
    assert f.stages["detect"].config == d.stages["detect"].config
    assert f.stages["detect"].files["refiner"] == d.stages["detect"].files["refiner"]
    assert f.stages["detect"].files["model"].sha256 != d.stages["detect"].files["model"].sha256
    assert f.stages["detect"].files["model"].bytes < d.stages["detect"].files["model"].bytes
    assert f.stages["embed"] == d.stages["embed"] and f.stages["segment"] == d.stages["segment"]
    assert f.mask_aware == d.mask_aware and "sdk/models/ltdet-fast" in f.match["calibration"]["command"]
    db = tmp_path / "g.db"
    sdk.Recognizer(gallery=db).enroll("eileen", astronaut_bgr)
    [m] = sdk.Recognizer("ltdet-fast", gallery=db).identify(astronaut_bgr)
    assert m.identity == "eileen" and m.similarity > m.threshold
