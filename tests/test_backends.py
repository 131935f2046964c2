"""sdk.backends: one interface for ONNX Runtime, torch and TensorRT; engine selection; ``Recognizer("engine.plan")``.

Here (CPU): the torch backend (graphs rebuilt from bundle weights) gives ONNX Runtime's outputs for every family, on
the stage objects and through the Recognizer; ``auto`` / forced engine selection on simulated machines; every
refusal of the TensorRT path (no sidecar, a sidecar naming a missing engine or plugin, no ``tensorrt``) in one
line. Tests marked ``gpu`` / ``tensorrt`` run the same checks on a CUDA device / with TensorRT, and skip elsewhere.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdk.backends import BackendConfig, ModelFiles, open_backend
from sdk.errors import BackendUnavailableError, BundleError, ModelFileError

FAMILIES = ("segmenter", "embedder", "inpainter")


@pytest.fixture(scope="module")
def torch_bundles(torch, segmenter_run_dir, student_weights, inpainter_run_dir, tmp_path_factory):
    """family -> a bundle folder exported in the ``torch`` format (ONNX + safetensors) from the tiny checkpoints."""
    from export.exporter import ExportConfig, export

    root = tmp_path_factory.mktemp("torch_bundles")
    ckpts = {"segmenter": segmenter_run_dir, "embedder": student_weights, "inpainter": inpainter_run_dir}
    return {f: export(ExportConfig("torch", f, ckpts[f], root / f)).bundle for f in FAMILIES}


def _stage_files(bundle: Path, family: str) -> ModelFiles:
    from export.families import family as adapter
    from sdk.bundle import load_bundle
    from sdk.stages import model_files

    return model_files(load_bundle(bundle).stages[adapter(family).stage])


def _feeds(family: str) -> dict[str, np.ndarray]:
    """5 seeded inputs of the family's graph (the tiny models all read 112x112 crops)."""
    from export.families.inpainter import graph_feeds, parity_inputs

    rng = np.random.default_rng(1)
    if family == "segmenter":
        return {"crops": rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)}
    if family == "embedder":
        return {"chips": rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)}
    return graph_feeds(*parity_inputs(n_random=3, seed=1))


# ---------------------------------------------------------------------------------------------- torch on the CPU
@pytest.mark.parametrize("family", FAMILIES)
def test_torch_backend_on_the_cpu_gives_onnx_runtime_outputs(family, torch_bundles):
    from export._parity import tolerance_for
    from export.families import family as adapter

    files = _stage_files(torch_bundles[family], family)
    assert files.engines == ("torch", "onnxruntime")
    tb = open_backend(files, BackendConfig(engine="torch", device="cpu"))
    ob = open_backend(files, BackendConfig(engine="onnxruntime"))
    assert (tb.engine, tb.device, tb.id_suffix) == ("torch", "cpu", ":torch-cpu")
    assert (ob.engine, ob.device, ob.id_suffix) == ("onnxruntime", "cpu", "")
    assert [(i.name, i.dtype) for i in tb.inputs] == [(i.name, i.dtype) for i in ob.inputs]
    assert [(o.name, o.dtype) for o in tb.outputs] == [(o.name, o.dtype) for o in ob.outputs]
    feeds = _feeds(family)
    outs = list(adapter(family).outputs)
    tol = tolerance_for(family).max_abs
    for a, b in zip(tb.run(outs, feeds), ob.run(outs, feeds)):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert float(np.abs(a - b).max()) <= tol
    # one output by name, in the order asked
    assert tb.run(outs[::-1], feeds)[0].shape == ob.run(outs[::-1], feeds)[0].shape


def test_torch_backend_refuses_bad_feeds_and_files(torch_bundles, tmp_path):
    files = _stage_files(torch_bundles["segmenter"], "segmenter")
    tb = open_backend(files.torch, BackendConfig(engine="torch", device="cpu"))
    with pytest.raises(ValueError, match="missing input 'crops'"):
        tb.run(None, {"x": np.zeros((1, 112, 112, 3), np.uint8)})
    with pytest.raises(ValueError, match="'crops' uint8"):
        tb.run(None, {"crops": np.zeros((1, 112, 112, 3), np.float32)})
    with pytest.raises(ValueError, match="no outputs"):
        tb.run(["logits"], {"crops": np.zeros((1, 112, 112, 3), np.uint8)})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(files.torch.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        open_backend(bad, BackendConfig(engine="torch", device="cpu"))
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(ModelFileError, match="not a LookThrough torch graph"):
        open_backend(foreign, BackendConfig(engine="torch", device="cpu"))
    with pytest.raises(BackendUnavailableError, match="fp16.*CUDA"):
        open_backend(files.torch, BackendConfig(engine="torch", device="cpu", precision="fp16"))


def test_recognizer_on_the_torch_backend_matches_onnx_runtime(torch_bundles, astronaut_bgr, tmp_path, monkeypatch):
    """One bundle with all three torch stages (segment + complete + embed); the masked astronaut is completed and
    embedded on torch (CPU) as on ONNX Runtime."""
    import sdk
    from sdk.bundle import TRUSTED_DIRS_ENV

    # the combined manifest points into the three exported folders: a shared model store, trusted explicitly
    monkeypatch.setenv(TRUSTED_DIRS_ENV, str(torch_bundles["inpainter"].parent.resolve()))
    from sdk.occluders import draw_surgical_mask

    manifest = json.loads((torch_bundles["inpainter"] / "manifest.json").read_text())
    seg = json.loads((torch_bundles["segmenter"] / "manifest.json").read_text())["stages"]["segment"]
    emb = json.loads((torch_bundles["embedder"] / "manifest.json").read_text())["stages"]["embed"]
    for name, st, src in (("segment", seg, "segmenter"), ("embed", emb, "embedder")):
        for f in st["files"].values():
            f["path"] = str((torch_bundles[src] / f["path"]).resolve()) if not f["path"].startswith("pkg:") else f["path"]
        manifest["stages"][name] = st
    for f in manifest["stages"]["complete"]["files"].values():
        f["path"] = str((torch_bundles["inpainter"] / f["path"]).resolve())
    for name in ("detect",):
        for f in manifest["stages"][name]["files"].values():
            assert f["path"].startswith("pkg:")
    manifest["stages"]["complete"]["config"]["min_occlusion"] = 0.0  # complete every face, all of it (random weights)
    manifest["stages"]["segment"]["config"]["threshold"] = 0.0
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "manifest.json").write_text(json.dumps(manifest))

    ort_rec = sdk.Recognizer(tmp_path / "all", config=sdk.RecognizerConfig(backend="ort", device="cpu"))
    torch_rec = sdk.Recognizer(tmp_path / "all", config=sdk.RecognizerConfig(backend="torch", device="cpu"))
    assert set(torch_rec.engines) == {"detect", "segment", "complete", "embed"}
    for s in ("segment", "complete", "embed"):
        assert torch_rec.engines[s].startswith("torch on cpu") and ort_rec.engines[s].startswith("onnxruntime on cpu")
    face = ort_rec.detect(astronaut_bgr)[0]
    masked, _ = draw_surgical_mask(astronaut_bgr, face.landmarks)
    t_ort, t_torch = {}, {}
    e_ort = ort_rec.embed_faces(masked, [face], timings=t_ort)
    e_torch = torch_rec.embed_faces(masked, [face], timings=t_torch)
    assert t_ort["complete"] > 0 and t_torch["complete"] > 0
    assert ort_rec.identify_faces(masked, [face])[0].completed and torch_rec.identify_faces(masked, [face])[0].completed
    assert float(np.abs(e_ort - e_torch).max()) < 1e-4
    assert torch_rec.embedder.model_id == ort_rec.embedder.model_id + ":torch-cpu"  # galleries are not mixed
    assert ort_rec.occlusion(masked, [face])[0] == pytest.approx(torch_rec.occlusion(masked, [face])[0], abs=1e-5)


def test_auto_on_the_cpu_is_onnx_runtime_and_a_forced_engine_needs_its_files(torch_bundles):
    import sdk

    rec = sdk.Recognizer(torch_bundles["segmenter"])  # backend auto, device auto: no GPU here
    assert rec.engines["segment"].startswith("onnxruntime on cpu")
    with pytest.raises(BundleError, match="no stage has a torch model file.*python -m export torch"):
        sdk.Recognizer("default", config=sdk.RecognizerConfig(backend="torch"))
    with pytest.raises(BundleError, match="unknown inference engine 'tflite'"):
        sdk.RecognizerConfig(backend="tflite")
    with pytest.raises(ValueError, match="device must be"):
        sdk.RecognizerConfig(device="gpu0")
    assert sdk.RecognizerConfig(backend="trt").backend == "tensorrt"  # aliases


def test_torch_backend_without_torch_says_how_to_run_without_it(monkeypatch):
    from sdk.backends.torch_cuda import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(BackendUnavailableError) as e:
        require_torch("the segmenter")
    msg = str(e.value)
    assert "\n" not in msg and "PyTorch" in msg and "backend='ort'" in msg


def test_importing_the_backends_imports_no_torch():
    code = ("import sys, sdk, sdk.backends, sdk.backends.select, sdk.backends.torch_cuda, sdk.backends.tensorrt, "
            "sdk.nets; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------------------------- selection
@pytest.fixture
def machine(monkeypatch):
    """``machine(cuda=, tensorrt=, torch_cuda=, ort_cuda=)``: what :mod:`sdk.backends.select` sees."""
    from sdk.backends import select

    def set_(cuda=False, tensorrt=False, torch_cuda=False, ort_cuda=False):
        monkeypatch.setattr(select, "cuda_visible", lambda probe_torch=False: cuda)
        monkeypatch.setattr(select, "_tensorrt_importable", lambda: tensorrt)
        monkeypatch.setattr(select, "_torch_cuda", lambda device: torch_cuda)
        monkeypatch.setattr(select, "ort_cuda_providers",
                            lambda: ("CUDAExecutionProvider", "CPUExecutionProvider") if ort_cuda else ())
    return set_


ALL = ModelFiles(onnx=Path("m.onnx"), torch=Path("m.safetensors"), tensorrt=Path("m.plan"))


@pytest.mark.parametrize("machine_kw, files, engine, device, providers", [
    ({}, ALL, "onnxruntime", "cpu", ()),                                                       # no GPU
    (dict(cuda=True, tensorrt=True, torch_cuda=True), ALL, "tensorrt", "cuda", ()),            # GPU + TensorRT
    (dict(cuda=True, torch_cuda=True), ALL, "torch", "cuda", ()),                              # GPU, no TensorRT
    (dict(cuda=True, tensorrt=True, torch_cuda=True), ModelFiles(onnx=Path("m.onnx"), torch=Path("m.safetensors")),
     "torch", "cuda", ()),                                                                      # no engine file
    (dict(cuda=True, ort_cuda=True), ModelFiles(onnx=Path("m.onnx")), "onnxruntime", "cuda",
     ("CUDAExecutionProvider", "CPUExecutionProvider")),                                        # ONNX only, ORT-GPU
    (dict(cuda=True), ModelFiles(onnx=Path("m.onnx")), "onnxruntime", "cpu", ()),             # ORT without CUDA
    ({}, ModelFiles(torch=Path("m.safetensors")), "torch", "cpu", ()),                        # torch only, CPU
])
def test_auto_picks_from_the_files_and_the_device(machine, machine_kw, files, engine, device, providers):
    from sdk.backends.select import choose

    machine(**machine_kw)
    c = choose(files, BackendConfig(engine="auto", device="auto"))
    assert (c.engine, c.config.device, c.config.providers) == (engine, device, providers)


def test_forced_engines_and_devices(machine):
    from sdk.backends.select import choose

    machine()
    assert choose(ALL, BackendConfig(engine="torch", device="auto")).config.device == "cpu"
    assert choose(ALL, BackendConfig(engine="tensorrt", device="auto")).config.device == "cuda"
    assert choose(ALL, BackendConfig(engine="ort", device="auto")).engine == "onnxruntime"
    with pytest.raises(BundleError, match="no torch model file.*python -m export torch"):
        choose(ModelFiles(onnx=Path("m.onnx")), BackendConfig(engine="torch"), what="stage 'segment'")
    with pytest.raises(BackendUnavailableError, match="CUDA only"):
        choose(ALL, BackendConfig(engine="tensorrt", device="cpu"))
    with pytest.raises(BackendUnavailableError, match="no CUDA provider"):
        choose(ALL, BackendConfig(engine="onnxruntime", device="cuda"))
    with pytest.raises(BackendUnavailableError, match="only a TensorRT engine"):
        choose(ModelFiles(tensorrt=Path("m.plan")), BackendConfig(engine="auto", device="cpu"))
    # explicit ONNX Runtime providers mean ONNX Runtime
    c = choose(ALL, BackendConfig(engine="auto", device="auto", providers=("CPUExecutionProvider",)))
    assert c.engine == "onnxruntime"


def test_model_files_from_one_path():
    assert ModelFiles.of("a.onnx").onnx == Path("a.onnx") and ModelFiles.of(b"xx").onnx == b"xx"
    assert ModelFiles.of("a.safetensors").engines == ("torch",)
    assert ModelFiles.of("a.plan").engines == ("tensorrt",) and ModelFiles.of("a.plan").label == Path("a.plan")


# ---------------------------------------------------------------------------------------------- TensorRT refusals
def _fake_engine_bundle(src: Path, out: Path, plugin: Path | None = None) -> Path:
    """``python -m export trt --bundle src --out out`` with the TensorRT build replaced by random bytes: the folder,
    manifest and sidecars are the real ones (export.trt.build_bundle / write_engine_sidecar)."""
    from export import trt as trt_export

    def fake_build(cfg):
        cfg.out.write_bytes(np.random.default_rng(0).bytes(4096))
        inputs, outputs = trt_export.graph_io(Path(cfg.source.onnx).read_bytes())
        plugin_info = None if plugin is None else {"path": trt_export._relative_to(plugin, cfg.out.parent),
                                                   "sha256": trt_export.file_sha256(plugin)}
        return trt_export.write_engine_sidecar(cfg.out, cfg.source, inputs, outputs, {}, cfg.source.preprocess,
                                               "bundle", {"precision": "fp16"}, "10.0.0", plugin_info)

    trt_export.build_bundle(src, out, lambda source, plan: trt_export.BuildConfig(source=source, out=plan),
                            build=fake_build)
    return out


@pytest.fixture
def engine_bundle(torch_bundles, tmp_path):
    return _fake_engine_bundle(torch_bundles["segmenter"], tmp_path / "seg_trt")


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def test_a_bundle_folder_naming_its_engines(engine_bundle):
    import sdk
    from sdk.bundle import load_bundle

    b = load_bundle(engine_bundle)  # bytes + SHA-256 of the engine too
    assert b.name.endswith("-trt") and b.stages["segment"].files["tensorrt"].path == engine_bundle / "segment.plan"
    assert set(b.stages["segment"].files) == {"model", "torch", "tensorrt"}
    side = json.loads((engine_bundle / "segment.plan.json").read_text())
    assert side["bundle_manifest"] == "manifest.json" and side["stage"] == "segment" and side["family"] == "segmenter"
    assert side["export"]["format"] == "trt" and side["preprocess"] == b.stages["segment"].preprocess.to_dict()
    rec = sdk.Recognizer(engine_bundle)  # no GPU here: auto runs the ONNX graph
    assert rec.engines["segment"].startswith("onnxruntime on cpu")


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_recognizer_on_an_engine_without_tensorrt_says_so_in_one_line(engine_bundle):
    import sdk
    from sdk.backends.tensorrt import TensorRTUnavailableError

    for model, cfg in ((engine_bundle / "segment.plan", sdk.RecognizerConfig()),
                       (engine_bundle, sdk.RecognizerConfig(backend="tensorrt"))):
        with pytest.raises(TensorRTUnavailableError) as e:
            sdk.Recognizer(model, config=cfg)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("TensorRT is not installed here (import tensorrt: No module")
        assert "ONNX Runtime" in msg and "backend='torch'" in msg and str(engine_bundle) in msg
        assert isinstance(e.value, sdk.BackendUnavailableError)


def test_an_engine_without_its_sidecar_is_refused(engine_bundle, tmp_path):
    import sdk

    lone = tmp_path / "lone.plan"
    shutil.copy(engine_bundle / "segment.plan", lone)
    with pytest.raises(BundleError) as e:
        sdk.Recognizer(lone)
    assert "\n" not in str(e.value) and "without its manifest lone.plan.json" in str(e.value)
    with pytest.raises(BundleError, match="no TensorRT engine at"):
        sdk.Recognizer(tmp_path / "missing.plan")


def test_a_sidecar_naming_a_missing_or_replaced_engine_is_refused(engine_bundle):
    import sdk

    plan = engine_bundle / "segment.plan"
    plan.write_bytes(plan.read_bytes()[:100])  # truncated
    with pytest.raises(ModelFileError) as e:
        sdk.Recognizer(plan)
    assert "\n" not in str(e.value) and "segment.plan" in str(e.value) and "truncated" in str(e.value)
    side = json.loads((engine_bundle / "segment.plan.json").read_text())
    side["engine"]["path"] = "other.plan"
    (engine_bundle / "segment.plan.json").write_text(json.dumps(side))
    from sdk.backends.tensorrt import check_engine_files

    with pytest.raises(ModelFileError, match="describes engine 'other.plan'"):
        check_engine_files(plan)


def test_a_sidecar_naming_a_missing_plugin_is_refused(torch_bundles, tmp_path):
    import sdk

    lib = tmp_path / "liblookthrough_trt_plugin.so"
    lib.write_bytes(b"\x7fELF not really")
    out = _fake_engine_bundle(torch_bundles["segmenter"], tmp_path / "b", plugin=lib)
    lib.unlink()
    with pytest.raises(ModelFileError) as e:
        sdk.Recognizer(out / "segment.plan")
    msg = str(e.value)
    assert "\n" not in msg and "liblookthrough_trt_plugin.so" in msg and "plugin library" in msg


def test_an_engine_of_a_bare_onnx_file_or_another_record_is_refused(engine_bundle):
    import sdk

    side_path = engine_bundle / "segment.plan.json"
    side = json.loads(side_path.read_text())
    side_path.write_text(json.dumps({**side, "preprocess": {**side["preprocess"], "colour": "rgb"}}))
    with pytest.raises(BundleError, match="preprocess record .* differs"):
        sdk.Recognizer(engine_bundle / "segment.plan")
    side_path.write_text(json.dumps({**side, "stage": None}))
    with pytest.raises(BundleError, match="bare ONNX file"):
        sdk.Recognizer(engine_bundle / "segment.plan")
    side_path.write_text(json.dumps({**side, "bundle_manifest": "../gone/manifest.json", "bundle": "/gone"}))
    with pytest.raises(BundleError, match="is not there"):
        sdk.Recognizer(engine_bundle / "segment.plan")


# ---------------------------------------------------------------------------------------------- on a GPU
def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision, graphs", [("fp32", False), ("fp16", False), ("fp16", True)])
def test_torch_backend_on_cuda_gives_onnx_runtime_outputs(family, precision, graphs, torch_bundles):
    _cuda_torch()
    from export._parity import tolerance_for
    from export.families import family as adapter

    files = _stage_files(torch_bundles[family], family)
    tb = open_backend(files, BackendConfig(engine="torch", device="cuda", precision=precision, cuda_graphs=graphs))
    ob = open_backend(files, BackendConfig(engine="onnxruntime"))
    assert tb.device == "cuda" and tb.half == (precision == "fp16")
    if family == "inpainter":
        from sdk import _cuda_ops

        assert tb.kernel_layers == (1 if _cuda_ops.available() else 0)
    outs = list(adapter(family).outputs)
    tol = tolerance_for(family, "float16").max_abs * (1 if precision == "fp32" else 5)
    feeds = _feeds(family)
    for n in (len(next(iter(feeds.values()))), 1, 3):  # buckets 8, 1, 4 with CUDA graphs
        sub = {k: v[:n] for k, v in feeds.items()}
        for a, b in zip(tb.run(outs, sub), ob.run(outs, sub)):
            assert a.shape == b.shape and float(np.abs(a - b).max()) <= tol, (family, precision, graphs, n)


@pytest.mark.gpu
def test_auto_picks_torch_on_cuda_for_a_bundle_with_torch_weights(torch_bundles):
    _cuda_torch()
    import sdk

    rec = sdk.Recognizer(torch_bundles["segmenter"])
    assert rec.engines["segment"].startswith("torch on cuda")
    assert rec.embedder.model_id  # the detector and embedder still load (ONNX Runtime)


# ---------------------------------------------------------------------------------------------- with TensorRT
@pytest.mark.tensorrt
def test_engines_built_here_run_in_the_recognizer(torch_bundles, tmp_path, astronaut_bgr):
    pytest.importorskip("tensorrt")
    _cuda_torch()
    import sdk
    from export import trt as trt_export

    out = tmp_path / "seg_trt"
    trt_export.build_bundle(torch_bundles["segmenter"], out, lambda source, plan: trt_export.BuildConfig(
        source=source, out=plan, batch=(1, 4, 8)))
    side = json.loads((out / "segment.plan.json").read_text())
    assert side["export"]["parity"][0]["passed"]
    by_plan = sdk.Recognizer(out / "segment.plan")
    assert by_plan.engines["segment"].startswith("tensorrt on cuda")
    ref = sdk.Recognizer(torch_bundles["segmenter"], config=sdk.RecognizerConfig(backend="ort", device="cpu"))
    face = ref.detect(astronaut_bgr)[0]
    assert by_plan.occlusion(astronaut_bgr, [face])[0] == pytest.approx(ref.occlusion(astronaut_bgr, [face])[0],
                                                                         abs=5e-3)
