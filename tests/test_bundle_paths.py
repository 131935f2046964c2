"""Hostile manifests: files must stay inside the bundle (or the SDK's own models); `pkg:` only names allowed packages
and never imports anything; malformed fields are refused with a BundleError naming them."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from sdk.bundle import BUILTIN_DIR, builtin_bundles, load_bundle
from sdk.errors import BundleError


@pytest.fixture()
def bundle(tmp_path):
    """The baseline manifest with its detector files copied beside it (relative paths); embedder via pkg:."""
    raw = json.loads((BUILTIN_DIR / "baseline" / "manifest.json").read_text())
    base = load_bundle("baseline")
    dst = tmp_path / "bundle"
    dst.mkdir()
    for role, ref in base.stages["detect"].files.items():
        shutil.copy(ref.path, dst / ref.path.name)
        raw["stages"]["detect"]["files"][role]["path"] = ref.path.name
    return dst, raw


def write(dst, raw):
    (dst / "manifest.json").write_text(json.dumps(raw))
    return dst


def pnet(raw):
    return raw["stages"]["detect"]["files"]["pnet"]


def test_builtin_bundles_still_load():
    for name in builtin_bundles():  # deocclusion-preview and student-v1 reach ../default/segmenter.onnx
        load_bundle(name)


def test_absolute_path_outside_is_refused(bundle, tmp_path):
    dst, raw = bundle
    outside = tmp_path / "elsewhere" / "pnet.onnx"
    outside.parent.mkdir()
    shutil.copy(dst / "pnet.onnx", outside)
    pnet(raw)["path"] = str(outside)
    with pytest.raises(BundleError, match="pnet.onnx.*outside the bundle"):
        load_bundle(write(dst, raw))
    pnet(raw)["path"] = "/etc/passwd"
    with pytest.raises(BundleError, match="/etc/passwd.*outside"):
        load_bundle(write(dst, raw))
    pnet(raw)["path"] = str(dst / "pnet.onnx")  # absolute, but inside the bundle: fine
    load_bundle(write(dst, raw))
    pnet(raw)["path"] = str(BUILTIN_DIR / "default" / "segmenter.onnx")  # the SDK's own models: trusted
    with pytest.raises(Exception) as e:  # allowed location, so it fails on the size instead
        load_bundle(write(dst, raw))
    assert "outside" not in str(e.value) and "bytes" in str(e.value)


def test_dotdot_escape_is_refused_inside_is_fine(bundle, tmp_path):
    dst, raw = bundle
    shutil.copy(dst / "pnet.onnx", tmp_path / "pnet.onnx")
    pnet(raw)["path"] = "../pnet.onnx"
    with pytest.raises(BundleError, match=r"'\.\./pnet\.onnx'.*outside"):
        load_bundle(write(dst, raw))
    (dst / "sub").mkdir()
    pnet(raw)["path"] = "sub/../pnet.onnx"
    load_bundle(write(dst, raw))


def test_symlink_leaving_the_bundle_is_refused(bundle, tmp_path):
    dst, raw = bundle
    shutil.copy(dst / "pnet.onnx", tmp_path / "real_pnet.onnx")
    (dst / "link.onnx").symlink_to(tmp_path / "real_pnet.onnx")
    pnet(raw)["path"] = "link.onnx"
    with pytest.raises(BundleError, match="link.onnx.*real_pnet.onnx.*outside"):
        load_bundle(write(dst, raw))
    (dst / "inner.onnx").symlink_to(dst / "pnet.onnx")  # a link that stays inside is fine
    pnet(raw)["path"] = "inner.onnx"
    load_bundle(write(dst, raw))


def test_trusted_model_dirs_env(bundle, tmp_path, monkeypatch):
    dst, raw = bundle
    store = tmp_path / "model-store"
    store.mkdir()
    shutil.copy(dst / "pnet.onnx", store / "pnet.onnx")
    pnet(raw)["path"] = str(store / "pnet.onnx")
    with pytest.raises(BundleError, match="LOOKTHROUGH_TRUSTED_MODEL_DIRS"):
        load_bundle(write(dst, raw))
    monkeypatch.setenv("LOOKTHROUGH_TRUSTED_MODEL_DIRS", str(store))
    load_bundle(write(dst, raw))


def test_pkg_names_outside_the_allow_list_are_refused_without_importing(bundle, tmp_path, monkeypatch):
    dst, raw = bundle
    evil = tmp_path / "site" / "evilpkg"
    evil.mkdir(parents=True)
    marker = tmp_path / "imported.txt"
    (evil / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (evil / "sub").mkdir()
    (evil / "sub" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for p in ["pkg:evilpkg/pnet.onnx", "pkg:evilpkg.sub/pnet.onnx", "pkg:os/pnet.onnx", "pkg:sdk.models/x",
              "pkg:/etc/passwd", "pkg:"]:
        pnet(raw)["path"] = p
        with pytest.raises(BundleError, match="not an allowed model package"):
            load_bundle(write(dst, raw))
    assert not marker.exists() and "evilpkg" not in sys.modules
    pnet(raw)["path"] = "pkg:sdk/../../../../etc/passwd"
    with pytest.raises(BundleError, match="outside"):
        load_bundle(write(dst, raw))
    pnet(raw)["path"] = "pkg:sdk/models/default/segmenter.onnx"  # allowed package, file inside it
    with pytest.raises(Exception, match="bytes"):
        load_bundle(write(dst, raw))


@pytest.mark.parametrize("mutate, words", [
    (lambda r: pnet(r).update(path=123), '"path" must be a non-empty string'),
    (lambda r: pnet(r).update(path=""), '"path" must be a non-empty string'),
    (lambda r: pnet(r).update(bytes="lots"), '"bytes" must be a non-negative integer'),
    (lambda r: pnet(r).update(bytes=-5), '"bytes" must be a non-negative integer'),
    (lambda r: pnet(r).update(sha256="abc"), '"sha256" must be 64'),
    (lambda r: r["stages"]["detect"].update(files=["pnet.onnx"]), '"files" must be an object'),
    (lambda r: r["stages"]["detect"].update(config=[1, 2]), '"config" must be an object'),
    (lambda r: r["stages"].update(detect="mtcnn"), "must be an object or null"),
    (lambda r: r.update(match="cosine"), '"match" must be an object'),
    (lambda r: r["match"].update(threshold="high"), "threshold must be a number"),
    (lambda r: r["match"].update(threshold=7), "threshold must be a number"),
])
def test_malformed_fields_are_named(bundle, mutate, words):
    dst, raw = bundle
    mutate(raw)
    with pytest.raises(BundleError, match=words):
        load_bundle(write(dst, raw))


def test_json_bombs(bundle):
    dst, raw = bundle
    (dst / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="not a JSON manifest"):
        load_bundle(dst)
    (dst / "manifest.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(BundleError, match="too large"):
        load_bundle(dst)
    os.remove(dst / "manifest.json")
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(dst)
