"""Shared fixtures: real images that ship with scikit-image (BGR), one Recognizer per session, manifest copies,
the trainer's tiny rendered data sets; and one autouse fixture that seeds every test and restores global state.

Session fixtures are read-only by convention: a test that changes one (a stage's config, the gallery) puts it
back in a ``finally`` (or uses its own object).
"""
from __future__ import annotations

import json
import os
import random
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

try:  # the training extras; the runtime's tests run without them
    import torch as _torch
except ImportError:  # pragma: no cover - runtime-only installs
    _torch = None

ROOT = Path(__file__).resolve().parents[1]
# golden references live beside the kernels (kernels/<name>/reference.py)
sys.path.insert(0, str(ROOT / "kernels"))

from _trainer_helpers import ASTRO_LM, chip_variants, csv_rows, tiny_faces, with_val  # noqa: E402  (tests/ on sys.path)


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
    """A trainer run folder (``ckpt/last.*``, :mod:`trainer.checkpoints`) of a width-4 inpainter, random weights."""
    from trainer.checkpoints import save_checkpoint
    from trainer.models.inpainter import Generator, InpainterConfig

    out = tmp_path_factory.mktemp("inpainter_run")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        g = Generator(InpainterConfig(width=4, disc_width=4)).eval()
    save_checkpoint(out / "ckpt" / "last", {"generator": g},
                    {"kind": "inpainter", "models": {"generator": g.config.to_dict()}, "step": 0})
    return out


@pytest.fixture(scope="session")
def segmenter_run_dir(torch, tmp_path_factory):
    """A trainer run folder (``ckpt/last.*``) of a width-8 occlusion segmenter, random weights."""
    from trainer.checkpoints import save_checkpoint
    from trainer.models.segmenter import OcclusionSegmenter, SegmenterConfig

    out = tmp_path_factory.mktemp("segmenter_run")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = OcclusionSegmenter(SegmenterConfig(width=8)).eval()
    save_checkpoint(out / "ckpt" / "last", {"model": net},
                    {"kind": "segmenter", "models": {"model": net.config.to_dict()}, "step": 5})
    return out


@pytest.fixture(scope="session")
def student_weights(torch, tmp_path_factory):
    """A weights-only student file (``save_student``): an untrained 64-d MobileFaceNet on 112x112 ArcFace crops."""
    from trainer.student.models import new_student, save_student

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = new_student("mobilefacenet", 64).eval()
    return save_student(net, tmp_path_factory.mktemp("student") / "student.safetensors")


#: family -> the fixture holding its tiny checkpoint
FAMILY_CHECKPOINTS = {"segmenter": "segmenter_run_dir", "embedder": "student_weights", "inpainter": "inpainter_run_dir"}


@pytest.fixture
def family_checkpoint(request):
    """``family_checkpoint(name)`` -> the tiny checkpoint of that family (see :data:`FAMILY_CHECKPOINTS`)."""
    return lambda family: request.getfixturevalue(FAMILY_CHECKPOINTS[family])


# ------------------------------------------------------------------------------------------------ slow tests
#: Tests outside the trainer's files that take seconds each (subprocess CLIs, naive kernel references, evaluation
#: end to end), marked ``slow`` here so that ``pytest -m "not slow"`` is a quick loop over the whole suite while
#: ``make test`` still runs everything; their owners may move the mark onto the test (``@pytest.mark.slow``).
#: The trainer's own tests carry the decorator.  Entries are node ids without parameters.
SLOW_ELSEWHERE = frozenset({
    "tests/test_cli.py::test_bench_writes_per_stage_json", "tests/test_cli.py::test_enroll_folder_then_identify",
    "tests/test_cli.py::test_verify_exit_codes", "tests/test_cli.py::test_enroll_strict_aborts_without_writing",
    "tests/test_cli.py::test_demo_main_job", "tests/test_cli.py::test_foreign_gallery_gives_clear_cli_error",
    "tests/test_cli.py::test_help_lists_commands",
    "tests/test_readers_evaluate.py::test_evaluate_end_to_end",
    "tests/test_readers_evaluate.py::test_split_command_writes_manifest",
    "tests/test_kernels_contextual_attention.py::test_matches_naive_reference",
    "tests/test_kernels_contextual_attention.py::test_matches_vectorized_reference",
    "tests/test_kernels_contextual_attention.py::test_realistic_size",
    "tests/test_complete.py::test_export_summary_and_bundle",
    "tests/test_complete.py::test_recognizer_completes_occluded_faces",
    "tests/test_complete.py::test_complete_output_known_pixels_and_holes",
    "tests/test_recognizer.py::test_enroll_failing_half_way_loses_nothing", "tests/test_recognizer.py::test_verify",
    "tests/test_metrics.py::test_lfw_10fold_matches_brute_force",
    "tests/test_contextual_attention.py::test_onnx_opset17_export_runs_in_onnxruntime",
    "tests/test_contextual_attention.py::test_onnx_self_attention_single_input_graph",
    "tests/test_detect.py::test_max_side_close_to_full_resolution",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[", 1)[0] in SLOW_ELSEWHERE:
            item.add_marker(pytest.mark.slow)


# ------------------------------------------------------------------------------------------------ global state
@pytest.fixture(autouse=True)
def _seeded_and_restored(request):
    """Every test starts from its own fixed seeds (Python, NumPy and torch global RNGs, from its node id), and torch
    threads, default dtype, RNG states, cudnn flags, OpenCV threads, the working directory and the environment are
    put back afterwards -- whatever the test or the code under test changed."""
    import cv2

    seed = zlib.crc32(request.node.nodeid.encode())
    saved = {"cwd": os.getcwd(), "env": dict(os.environ), "random": random.getstate(),
             "numpy": np.random.get_state(), "cv2_threads": cv2.getNumThreads()}
    random.seed(seed)
    np.random.seed(seed)
    if _torch is not None:
        cudnn = _torch.backends.cudnn
        saved.update(threads=_torch.get_num_threads(), dtype=_torch.get_default_dtype(), rng=_torch.get_rng_state(),
                     cudnn=(cudnn.benchmark, cudnn.allow_tf32, _torch.backends.cuda.matmul.allow_tf32))
        _torch.manual_seed(seed)
    yield
    os.chdir(saved["cwd"])
    os.environ.clear()
    os.environ.update(saved["env"])
    random.setstate(saved["random"])
    np.random.set_state(saved["numpy"])
    cv2.setNumThreads(saved["cv2_threads"])
    if _torch is not None:
        _torch.set_num_threads(saved["threads"])
        _torch.set_default_dtype(saved["dtype"])
        _torch.set_rng_state(saved["rng"])
        cudnn = _torch.backends.cudnn
        cudnn.benchmark, cudnn.allow_tf32, _torch.backends.cuda.matmul.allow_tf32 = saved["cudnn"]


# ------------------------------------------------------------------------------------------------ trainer data
@pytest.fixture(scope="session")
def tiny(torch, tmp_path_factory, astronaut_bgr, camera_bgr):
    """``(Prepared, dlib teacher)`` of the student trainer over 3 identities x 3 chips written to disk with identity
    frame -> chip matrices (no detector runs); the teacher descriptors are computed with torch."""
    import cv2

    from sdk.align import DLIB_150
    from trainer.models.dlib_resnet import DlibResNet
    from trainer.student.data import MaskedChipDataset
    from trainer.student.models import to_input
    from trainer.student.prepare import Prepared

    root = tmp_path_factory.mktemp("chips")
    faces = tiny_faces(astronaut_bgr, camera_bgr)
    paths, labels = [], []
    for y, (name, img) in enumerate(faces.items()):
        chip = cv2.resize(np.ascontiguousarray(img), (150, 150), interpolation=cv2.INTER_AREA)
        for k, v in enumerate(chip_variants(chip, 3)):
            p = root / f"{name}_{k}.png"
            cv2.imwrite(str(p), v)
            paths.append(str(p))
            labels.append(y)
    n = len(paths)
    chip_m = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
    lms = np.tile(DLIB_150, (n, 1, 1)).astype(np.float32)
    teacher = DlibResNet.from_dat().eval()
    ds = MaskedChipDataset(paths, chip_m, lms, labels, None, 0.0, 0)
    with torch.no_grad():
        chips = np.stack([ds.clean_bgr(i)[:, :, ::-1] for i in range(n)])
        t = teacher(to_input(torch.from_numpy(np.ascontiguousarray(chips)))).numpy()
    prep = Prepared(paths, list(faces), np.array(labels), np.arange(n), np.zeros(0, np.int64), chip_m, lms, t,
                    list(faces), [])
    return prep, teacher


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory, astronaut_bgr, camera_bgr):
    """``(data_root, cache_dir)``: the ``tiny`` set as a folder-per-identity tree, with an alignment cache whose chip
    matrices are the identity (so the student trainer's data preparation runs without a detector)."""
    import cv2

    from sdk._registry import build_stage
    from sdk.align import DLIB_150
    from sdk.bundle import load_bundle
    from trainer.data.faces import AlignedSet, cache_key
    from trainer.student.prepare import select_samples

    root = tmp_path_factory.mktemp("tree")
    data, cache = root / "data", root / "cache"
    for name, img in tiny_faces(astronaut_bgr, camera_bgr).items():
        chip = cv2.resize(np.ascontiguousarray(img), (150, 150), interpolation=cv2.INTER_AREA)
        (data / name).mkdir(parents=True)
        for k, v in enumerate(chip_variants(chip, 3)):
            cv2.imwrite(str(data / name / f"{k}.png"), v)
    paths = [str(s.path) for s in select_samples(data, 10)]
    n = len(paths)
    assert n == 9
    embedder = build_stage(load_bundle(None).stages["embed"])
    geometry = getattr(embedder, "geometry_id", embedder.model_id)
    eye = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
    cache.mkdir()
    AlignedSet(paths, np.zeros(n, np.int8), np.tile(DLIB_150, (n, 1, 1)).astype(np.float32),
               np.tile(np.array([0, 0, 150, 150], np.float32), (n, 1)), eye, eye.copy()
               ).save(cache / f"aligned-{cache_key(paths, geometry)}.npz")
    return data, cache


@pytest.fixture
def student_cfg(tmp_path):
    """``student_cfg(**overrides)``: a :class:`StudentConfig` for the tiny set -- 1 epoch of 2 PK batches (2 x 2),
    lr 1e-5, every chip masked, no templates, no workers, a checkpoint every step, run folder ``tmp_path/run``."""
    from trainer.student.config import StudentConfig

    def make(**kw) -> StudentConfig:
        base = dict(out=str(tmp_path / "run"), templates=None, epochs=1, p_identities=2, k_images=2,
                    steps_per_epoch=2, lr=1e-5, mask_prob=1.0, threads=1, workers=0, ckpt_every=1, progress=False,
                    val_fraction=0.0)
        base.update(kw)
        return StudentConfig(**base)

    return make


@pytest.fixture(scope="session")
def tiny_with_val(tiny):
    """The ``tiny`` set with every image also in validation (9 images: 18 genuine + 18 impostor pairs)."""
    return with_val(tiny[0])


@pytest.fixture
def parse_student_args():
    """``parse(argv) -> StudentConfig`` through the student command line's parser (flags, presets)."""
    import argparse

    from trainer.student.cli import add_args, config_from_args

    def parse(argv: list[str]):
        p = argparse.ArgumentParser()
        add_args(p)
        return config_from_args(p.parse_args(argv))

    return parse


@pytest.fixture
def steps_rows():
    """``steps_rows(run_folder)``: the rows of a student run's ``steps.csv``."""
    return lambda out: csv_rows(Path(out) / "steps.csv")


@pytest.fixture
def torchrun():
    """``torchrun(args, timeout)``: ``python -m torch.distributed.run --nproc_per_node 2 <args>`` on 127.0.0.1 (a free
    port, one OpenMP thread per process, the repository importable) -> ``subprocess.CompletedProcess``; skips when
    torch.distributed has no gloo backend."""
    import socket
    import subprocess

    dist = pytest.importorskip("torch.distributed")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")

    def run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def astro_faces(astronaut_bgr):
    """8 jittered 112x112 ArcFace crops of the astronaut as 4 "identities" (``FaceArrays``, landmarks in crop
    pixels): the segmenter's and inpainter's training faces in tests."""
    from sdk.align import ARCFACE_112, align
    from trainer.data.face_arrays import FaceArrays

    rng = np.random.default_rng(0)
    crops, lms, ids = [], [], []
    for k in range(8):
        lm = ASTRO_LM + rng.normal(0, 2.0, ASTRO_LM.shape).astype(np.float32)
        crops.append(align(astronaut_bgr, lm))
        lms.append(ARCFACE_112 + rng.normal(0, 1.0, (5, 2)).astype(np.float32))
        ids.append(f"id{k // 2}")
    return FaceArrays(np.stack(crops), np.stack(lms).astype(np.float32), ids)


@pytest.fixture
def same_checkpoints(torch):
    """``check(a, b)``: the checkpoints of two run folders hold bit-identical weights and optimiser state (and the
    same step); returns the first one's :class:`trainer.checkpoints.Checkpoint`."""
    from trainer.checkpoints import load_checkpoint

    def check(a, b):
        ca, cb = load_checkpoint(a), load_checkpoint(b)
        assert ca.step == cb.step
        assert ca.weights.keys() == cb.weights.keys() and ca.optim.keys() == cb.optim.keys()
        assert any(k.endswith(("exp_avg", "momentum_buffer")) for k in ca.optim), "no optimiser state saved"
        for k in ca.weights:
            assert torch.equal(ca.weights[k], cb.weights[k]), k
        for k in ca.optim:
            assert torch.equal(ca.optim[k], cb.optim[k]), k
        return ca

    return check


@pytest.fixture
def kill_and_resume(monkeypatch):
    """``kill_and_resume(PluginClass, n, run)``: ``run(resume=False)`` is killed (``KeyboardInterrupt`` from the
    plugin's ``step``) when it asks for update ``n + 1``, then ``run(resume=True)`` continues it; returns the second
    run's result.  ``run`` trains into the same folder both times."""

    def go(cls, n: int, run):
        real = cls.step

        def step(self, batch, epoch, step, ctx):
            if step == n:
                raise KeyboardInterrupt(f"killed before step {n + 1}")
            return real(self, batch, epoch, step, ctx)

        monkeypatch.setattr(cls, "step", step)
        with pytest.raises(KeyboardInterrupt):
            run(resume=False)
        monkeypatch.setattr(cls, "step", real)
        return run(resume=True)

    return go
