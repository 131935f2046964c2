"""Stage protocols, the kind registry, the backend seam and generic composition (sdk/stages.py, sdk/_registry.py,
sdk/backends/): what a new model family or a new inference engine has to provide, and that the Recognizer
needs nothing else."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sdk import _registry
from sdk.backends import Backend, BackendConfig, TensorInfo, engines, open_backend, register_engine
from sdk.backends import _ENGINES
from sdk.backends.ort import OrtBackend
from sdk.bundle import BUILTIN_DIR, load_bundle
from sdk.embed import ChipEmbedder, ChipGeometry, EmbedConfig
from sdk.errors import BundleError, ModelFileError
from sdk.preprocess import Preprocess, raw_uint8
from sdk.recognizer import Recognizer
from sdk.stages import (PROTOCOLS, Completer, Detector, Embedder, FaceBatch, RunConfig, Segmenter, StageKind,
                        config_from)


@pytest.fixture
def restore_registries():
    """Registering kinds or engines is global: put both tables back as they were."""
    _registry._builtin()
    kinds, engs = dict(_registry._KINDS), dict(_ENGINES)
    try:
        yield
    finally:
        _registry._KINDS.clear()
        _registry._KINDS.update(kinds)
        _ENGINES.clear()
        _ENGINES.update(engs)


def test_every_builtin_stage_satisfies_its_protocol(recognizer):
    rec = Recognizer("deocclusion-preview")
    assert list(rec.stages) == ["detect", "segment", "complete", "embed"]
    for name, proto in (("detect", Detector), ("segment", Segmenter), ("complete", Completer), ("embed", Embedder)):
        stage = rec.stages[name]
        assert isinstance(stage, proto), (name, type(stage).__name__)
        assert isinstance(stage.preprocess, Preprocess) and stage.kind == load_bundle("deocclusion-preview").stages[name].kind
        assert stage.prepare() is stage
    for name in ("segment", "complete", "embed"):  # ONNX stages run on the one backend seam
        assert isinstance(rec.stages[name].backend, Backend)
    assert set(PROTOCOLS) == {"detect", "segment", "complete", "embed"}
    assert sorted(recognizer.stages) == ["detect", "embed", "segment"]


def test_kinds_are_declared_beside_their_code():
    assert _registry.kinds("embed") == ["arcface_onnx", "dlib_resnet", "dlib_resnet_onnx", "onnx_embedder"]
    assert _registry.kinds("detect") == ["ltdet", "mtcnn", "scrfd"] and _registry.kinds("segment") == ["onnx_segmenter"]
    assert _registry.kinds("complete") == ["onnx_inpainter"]
    with pytest.raises(BundleError, match="unknown kind 'magic'.*onnx_embedder"):
        _registry.lookup("embed", "magic")


def test_config_from_names_unknown_keys_and_bad_values():
    assert config_from(RunConfig, {"threads": 2, "providers": ["CPUExecutionProvider"]}, "x").providers == (
        "CPUExecutionProvider",)
    with pytest.raises(BundleError, match=r"stage 'embed'.*unknown config keys \['treads'\].*threads"):
        config_from(EmbedConfig, {"treads": 2}, "stage 'embed'")
    with pytest.raises(BundleError, match="chip_landmarks"):
        config_from(EmbedConfig, {"chip_landmarks": "arcface"}, "stage 'embed'")
    with pytest.raises(BundleError, match="batch_size"):
        config_from(RunConfig, {"batch_size": 0}, "stage 'segment'")


# ---- backends -----------------------------------------------------------------------------------------
def test_ort_backend_is_the_backend():
    seg = BUILTIN_DIR / "default" / "segmenter.onnx"
    b = open_backend(seg, BackendConfig(threads=1), what="a segmenter")
    assert isinstance(b, OrtBackend) and isinstance(b, Backend) and "onnxruntime" in engines()
    assert b.inputs == (TensorInfo("crops", "uint8", ("n", 112, 112, 3)),)  # the exporter named the axis "n"
    assert {o.name for o in b.outputs} == {"mask_prob", "occluded_prob"}
    assert b.device == "cpu" and b.id_suffix == "" and b.providers == ("CPUExecutionProvider",)
    m, p = b.run(["mask_prob", "occluded_prob"], {"crops": np.zeros((2, 112, 112, 3), np.uint8)})
    assert m.shape == (2, 1, 112, 112) and p.shape == (2,)
    assert TensorInfo("x", "uint8", ("N", 112, 112, 3)).matches("uint8", (4, 112, 112, 3))
    assert not TensorInfo("x", "uint8", ("N", 112, 112, 3)).matches("uint8", ("N", 3, 112, 112))
    with pytest.raises(BundleError, match="no tensorrt model file.*python -m export trt"):
        open_backend(seg, BackendConfig(engine="tensorrt"))  # an ONNX file only: says how to build an engine
    with pytest.raises(ModelFileError, match="missing.onnx"):
        open_backend(seg.parent / "missing.onnx")


def test_a_new_engine_plugs_in_without_touching_the_stages(restore_registries, manifest_copy, astronaut_bgr):
    """An engine registered by name and chosen in a manifest's config runs that stage's graph."""
    calls: list[tuple[str, ...]] = []

    class Recording(OrtBackend):
        engine = "recording"

        def run(self, output_names, feeds):
            calls.append(tuple(feeds))
            return super().run(output_names, feeds)

    register_engine("recording", lambda model, cfg, name, what: Recording.open(model, cfg, name, what))
    folder, raw = manifest_copy("default")
    raw["stages"]["segment"]["config"]["engine"] = "recording"
    (folder / "manifest.json").write_text(json.dumps(raw))
    rec = Recognizer(folder)
    assert rec.segmenter.backend.engine == "recording"
    [m] = rec.identify(astronaut_bgr)
    assert calls == [("crops",)] and m.occlusion is not None


# ---- preprocess records in manifests ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default", "baseline", "student-v1", "deocclusion-preview"])
def test_builtin_records_are_the_version1_conventions(name):
    """Every built-in stage's record is what its kind derives from the version-1 config it replaced: the
    records describe the graphs as they were (no .onnx file changed)."""
    b = load_bundle(name)
    assert b.format_version == 2
    for stage, spec in b.stages.items():
        if spec is None:
            continue
        assert spec.preprocess is not None, stage
        old = {"segment": {"input": "uint8_nhwc_bgr", "crop": "arcface112"},
               "complete": {"input": "bgr", "crop": "arcface112"},
               "embed": {"input": "uint8_nhwc_rgb", "crop": "dlib150"} if spec.kind == "onnx_embedder" else {},
               "detect": {}}[stage]
        assert _registry.lookup(stage, spec.kind).legacy_preprocess(old) == spec.preprocess


@pytest.mark.slow
def test_version1_manifest_gives_the_same_stages(manifest_copy, masked_astronaut_bgr):
    """A version-1 manifest (no records, old config.input/crop) still loads, with the same records and outputs."""
    folder, raw = manifest_copy("deocclusion-preview")
    raw["format_version"] = 1
    legacy = {"segment": {"input": "uint8_nhwc_bgr", "crop": "arcface112"}, "complete": {"input": "bgr", "crop": "arcface112"}}
    for stage, spec in raw["stages"].items():
        spec.pop("preprocess")
        spec["config"].update(legacy.get(stage, {}))
    (folder / "manifest.json").write_text(json.dumps(raw))
    v1, v2 = Recognizer(folder), Recognizer("deocclusion-preview")
    assert v1.bundle.format_version == 1 and v1.bundle.stages["segment"].preprocess is None
    for name in v2.stages:
        assert v1.stages[name].preprocess == v2.stages[name].preprocess
    [a], [b] = v1.identify(masked_astronaut_bgr), v2.identify(masked_astronaut_bgr)
    assert a.completed and b.completed and a.occlusion == b.occlusion
    np.testing.assert_array_equal(v1.embed_largest(masked_astronaut_bgr), v2.embed_largest(masked_astronaut_bgr))


@pytest.mark.parametrize("stage, mutate, words", [
    ("segment", lambda s: s["config"].update(input="uint8_nhwc_rgb"), "config input 'uint8_nhwc_rgb' means"),
    ("segment", lambda s: s["config"].update(crop="dlib150"), "config crop 'dlib150' differs"),
    ("segment", lambda s: s["config"].update(treshold=0.4), r"unknown config keys \['treshold'\]"),
    ("segment", lambda s: s["preprocess"].update(colour="purple"), "stage 'segment' preprocess.*colour"),
    ("embed", lambda s: s["preprocess"].update(colour="bgr"), "dlib's network reads"),
    ("detect", lambda s: s["preprocess"].update(layout="nhwc"), "MTCNN networks read"),
    ("complete", lambda s: s["config"].update(input="rgb"), "only 'bgr'"),
])
def test_contradictions_are_refused_by_name(manifest_copy, stage, mutate, words):
    folder, raw = manifest_copy("deocclusion-preview")
    mutate(raw["stages"][stage])
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=words):
        Recognizer(folder)


def test_a_record_the_graph_does_not_read_names_the_file(manifest_copy):
    folder, raw = manifest_copy("default")
    raw["stages"]["segment"]["preprocess"] = Preprocess("arcface112", "bgr", "float32", 1 / 255, 0.0, "nchw").to_dict()
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match=r"segmenter.onnx.*float32.*\('N', 3, 112, 112\).*got inputs"):
        Recognizer(folder)


@pytest.mark.parametrize("version", [0, 3, True, "2"])
def test_manifest_versions(manifest_copy, version):
    folder, raw = manifest_copy("baseline")
    raw["format_version"] = version
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(folder)


# ---- generic composition ------------------------------------------------------------------------------------
class MeanColourEmbedder(ChipEmbedder):
    """A toy embed kind (mean colour of 4x4 cells of the ArcFace crop), defined outside the SDK."""

    kind = "test_mean_colour"

    def __init__(self, preprocess: Preprocess):
        super().__init__(ChipGeometry("arcface112"), preprocess, EmbedConfig(dim=4 * 4 * 3))
        self.model_id = "test_mean_colour:v1"

    def descriptors(self, crops: np.ndarray) -> np.ndarray:
        x = self.preprocess.apply(crops).astype(np.float32)
        n = len(x)
        return x.reshape(n, 4, 28, 4, 28, 3).mean(axis=(2, 4)).reshape(n, -1) - 127.5


def test_a_new_embed_kind_runs_in_the_recognizer_unchanged(restore_registries, manifest_copy, astronaut_bgr,
                                                          camera_bgr, masked_astronaut_bgr):
    _registry.register(StageKind("embed", "test_mean_colour", lambda spec, pre, values: MeanColourEmbedder(pre),
                                 lambda values: raw_uint8("arcface112", "rgb")))
    folder, raw = manifest_copy("default-v1")  # full-face matching: the gallery keeps the embedder's id and width
    raw["stages"]["embed"] = {"kind": "test_mean_colour", "files": {}, "config": {},
                              "preprocess": raw_uint8("arcface112", "rgb").to_dict()}
    (folder / "manifest.json").write_text(json.dumps(raw))
    with Recognizer(folder) as rec:
        assert rec.gallery.model_id == "test_mean_colour:v1" and rec.gallery.dim == 48
        rec.enroll("astronaut", astronaut_bgr)
        timings: dict[str, float] = {}
        [m] = rec.identify(astronaut_bgr, timings=timings)
        assert m.identity == "astronaut" and m.similarity == pytest.approx(1.0, abs=1e-5) and m.occlusion < 0.5
        assert set(timings) == {"detect", "segment", "align", "embed", "match"}
        assert rec.identify(camera_bgr)[0].similarity < m.similarity


def test_a_builder_that_breaks_the_protocol_is_refused(restore_registries, manifest_copy):
    _registry.register(StageKind("segment", "test_not_a_segmenter", lambda spec, pre, values: object(),
                                 lambda values: raw_uint8("arcface112")))
    folder, raw = manifest_copy("default")
    raw["stages"]["segment"]["kind"] = "test_not_a_segmenter"
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="does not satisfy the Segmenter protocol"):
        Recognizer(folder)


def test_complete_needs_a_segment_stage_on_its_crop(manifest_copy):
    folder, raw = manifest_copy("deocclusion-preview")
    raw["stages"]["segment"]["preprocess"]["crop"] = "dlib150"
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises((BundleError, ModelFileError), match="segment"):
        Recognizer(folder)


def test_face_batch_timings_are_per_call():
    b = FaceBatch(np.zeros((20, 20, 3), np.uint8), [])
    with b.timed("x"):
        pass
    assert b.timings is None and len(b.completed) == 0 and b.occlusion == []
    t: dict[str, float] = {}
    b = FaceBatch(np.zeros((20, 20, 3), np.uint8), [], t)
    with b.timed("x"):
        sum(range(1000))
    with b.timed("x"):
        sum(range(1000))
    assert set(t) == {"x"} and t["x"] > 0
