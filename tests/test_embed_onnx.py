"""dlib's ResNet rebuilt as an ONNX graph (sdk/models/dlib_onnx.py) and its embedder (sdk/embed_onnx.py).

No torch needed: the reference is dlib itself (``compute_face_descriptor``, ``num_jitters=0``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

frm = pytest.importorskip("face_recognition_models")
dlib = pytest.importorskip("dlib")

from sdk.bundle import FileRef, StageSpec  # noqa: E402
from sdk.embed import DlibResNetEmbedder, EmbedConfig  # noqa: E402
from sdk.embed_onnx import DlibOnnxEmbedder  # noqa: E402
from sdk.errors import BundleError, ModelFileError  # noqa: E402
from sdk.models.dlib_dat import read_dat  # noqa: E402
from sdk.models.dlib_onnx import build_dlib_onnx, dlib_net_to_onnx  # noqa: E402
from sdk.types import Face  # noqa: E402

# Observed on this project's CPU machine: max |onnx - dlib| = 2e-6 per component (components up to ~0.44),
# as for the PyTorch port; the bound below is the one that makes model ids interchangeable (DlibOnnxEmbedder).
MAX_ABS = 1e-4
# The same graph on other batch sizes / thread counts: only summation order may change.
SAME_ROWS = 1e-6


@pytest.fixture(scope="module")
def dat_path() -> Path:
    return Path(frm.face_recognition_model_location())


@pytest.fixture(scope="module")
def sp_path() -> Path:
    return Path(frm.pose_predictor_five_point_model_location())


@pytest.fixture(scope="module")
def onnx_emb(dat_path, sp_path) -> DlibOnnxEmbedder:
    return DlibOnnxEmbedder(dat_path, sp_path)


@pytest.fixture(scope="module")
def dlib_emb(dat_path, sp_path) -> DlibResNetEmbedder:
    return DlibResNetEmbedder(dat_path, sp_path)


@pytest.fixture(scope="module")
def faces_bgr(astronaut_bgr) -> tuple[np.ndarray, list[Face]]:
    """The astronaut (BGR) and her face, boxed by dlib's HOG detector (run on the RGB image)."""
    rgb = np.ascontiguousarray(astronaut_bgr[:, :, ::-1])
    rects = dlib.get_frontal_face_detector()(rgb, 1)
    assert len(rects) >= 1
    faces = [Face(np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), np.zeros((5, 2), np.float32), 1.0)
             for r in rects]
    return astronaut_bgr, faces


@pytest.fixture(scope="module")
def chips_and_ref(astronaut_bgr, dat_path, sp_path):
    """dlib's own chips of the astronaut, a mirrored and a noisy copy, uniform noise, black, as **BGR** (what SDK
    embedders read); dlib's descriptors of the same chips in RGB (what dlib reads)."""
    rgb = np.ascontiguousarray(astronaut_bgr[:, :, ::-1])  # dlib wants RGB
    sp = dlib.shape_predictor(str(sp_path))
    chips = [np.asarray(dlib.get_face_chip(rgb, sp(rgb, r), 150, 0.25))
             for r in dlib.get_frontal_face_detector()(rgb, 1)]
    rng = np.random.default_rng(0)
    face = chips[0]
    chips.append(np.ascontiguousarray(face[:, ::-1]))
    chips.append(np.clip(face + rng.normal(0, 12, face.shape), 0, 255).astype(np.uint8))
    chips.append(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    chips.append(np.zeros((150, 150, 3), np.uint8))
    rec = dlib.face_recognition_model_v1(str(dat_path))
    ref = np.array([np.array(rec.compute_face_descriptor(c, 0)) for c in chips])
    return [np.ascontiguousarray(c[:, :, ::-1]) for c in chips], ref


@pytest.mark.slow
def test_descriptors_match_dlib(onnx_emb, chips_and_ref):
    chips, ref = chips_and_ref
    raw = onnx_emb.descriptors(chips)
    assert raw.shape == (len(chips), 128) and raw.dtype == np.float32
    assert np.abs(raw - ref).max() <= MAX_ABS, f"max abs diff {np.abs(raw - ref).max():.3g}"
    emb = onnx_emb.embed_crops(chips)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(emb - ref_n).max() <= MAX_ABS


@pytest.mark.slow
def test_frame_pipeline_matches_dlib_embedder(onnx_emb, dlib_emb, faces_bgr):
    """Same chips out of a BGR frame (the same ChipGeometry), same unit-norm embeddings, same model_id."""
    frame, faces = faces_bgr
    a, b = onnx_emb.crops(frame, faces), dlib_emb.crops(frame, faces)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    e1, e2 = onnx_emb.embed(frame, faces), dlib_emb.embed(frame, faces)
    assert e1.shape == e2.shape == (len(faces), 128)
    assert np.abs(e1 - e2).max() <= MAX_ABS
    assert onnx_emb.model_id == dlib_emb.model_id
    assert onnx_emb.embed(frame, []).shape == (0, 128)


def test_model_id_follows_chip_geometry(dat_path, onnx_emb):
    cfg = EmbedConfig(chip_landmarks="mtcnn5")
    e = DlibOnnxEmbedder(dat_path, None, cfg)
    assert e.model_id == DlibResNetEmbedder(dat_path, None, cfg).model_id
    assert e.model_id != onnx_emb.model_id
    assert e.providers == ("CPUExecutionProvider",) and e.backend.device == "cpu" and e.backend.id_suffix == ""


@pytest.mark.slow
def test_batches_give_the_same_rows(dat_path, onnx_emb, chips_and_ref):
    chips = chips_and_ref[0]
    seven = [chips[i % len(chips)] for i in range(7)]
    together = onnx_emb.descriptors(seven)
    alone = np.concatenate([onnx_emb.descriptors([c]) for c in seven])
    assert np.abs(together - alone).max() <= SAME_ROWS
    small = DlibOnnxEmbedder(dat_path, None, EmbedConfig(chip_landmarks="mtcnn5", threads=1, batch_size=3))
    assert np.abs(small.descriptors(seven) - together).max() <= SAME_ROWS
    assert np.abs(onnx_emb.descriptors(np.stack(seven)) - together).max() == 0  # an (N,150,150,3) array works too


def test_build_is_deterministic_and_path_independent(dat_path, tmp_path):
    a = build_dlib_onnx(dat_path)
    copy = tmp_path / "renamed.dat"
    copy.write_bytes(dat_path.read_bytes())
    assert build_dlib_onnx(dat_path) == a == build_dlib_onnx(copy)


def test_graph_is_valid_onnx(dat_path):
    onnx = pytest.importorskip("onnx")  # trainer-only dependency; the SDK writes the protobuf itself
    data = build_dlib_onnx(dat_path)
    m = onnx.load_from_string(data)
    onnx.checker.check_model(m, full_check=True)
    assert m.SerializeToString() == data  # canonical protobuf: what onnx itself would write
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "chips" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 150, 150, 3]
    assert out.name == "descriptor" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 128]
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 29 and ops.count("Pad") == 5 and ops.count("Add") == 14


@pytest.mark.parametrize("cut", [3, 1000, 11_000_000, -5])
def test_truncated_dat_names_the_file(dat_path, tmp_path, cut):
    data = dat_path.read_bytes()
    p = tmp_path / f"cut_{cut}.dat"
    p.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match=p.name):
        build_dlib_onnx(p)
    with pytest.raises(ModelFileError, match=p.name):
        DlibOnnxEmbedder(p, None, EmbedConfig(chip_landmarks="mtcnn5"))


def test_foreign_files_name_the_file(tmp_path, sp_path, dat_path):
    png = tmp_path / "face.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    for p in (png, sp_path, Path(frm.cnn_face_detector_model_location()), tmp_path / "missing.dat"):
        with pytest.raises(ModelFileError, match=Path(p).name):
            build_dlib_onnx(p)
    net = read_dat(dat_path)  # a readable DNN, but not anet_type: one relu fewer
    broken = dataclasses.replace(net, layers=net.layers[:-3] + net.layers[-2:])
    with pytest.raises(ModelFileError, match="anet_type"):
        dlib_net_to_onnx(broken)


def test_bad_crops_raise_value_error(onnx_emb):
    ok = np.zeros((150, 150, 3), np.uint8)
    for bad in (np.zeros((112, 112, 3), np.uint8), np.zeros((150, 150, 3), np.float32),
                np.zeros((150, 150), np.uint8), np.zeros((150, 150, 4), np.uint8), "chip"):
        with pytest.raises(ValueError, match="chip 1"):
            onnx_emb.embed_crops([ok, bad])
    assert onnx_emb.embed_crops([]).shape == (0, 128)


def test_bad_arguments(dat_path):
    with pytest.raises(ValueError, match="jitters"):
        DlibOnnxEmbedder(dat_path, None, EmbedConfig(chip_landmarks="mtcnn5", jitters=1))
    with pytest.raises(ValueError, match="shape_predictor"):
        DlibOnnxEmbedder(dat_path, None)
    with pytest.raises(ValueError, match="chip_landmarks"):
        DlibOnnxEmbedder(dat_path, None, EmbedConfig(chip_landmarks="arcface"))


def test_registry_builds_the_onnx_embedder(dat_path, sp_path, onnx_emb):
    from sdk import _registry

    assert "dlib_resnet_onnx" in _registry.kinds("embed")
    files = {"model": FileRef("model", dat_path), "shape_predictor": FileRef("shape_predictor", sp_path)}
    spec = StageSpec("embed", "dlib_resnet_onnx", files, {"chip_landmarks": "dlib5", "threads": 1})
    e = _registry.build_stage(spec)
    assert isinstance(e, DlibOnnxEmbedder) and e.model_id == onnx_emb.model_id
    e.prepare()
    with pytest.raises(BundleError, match="jitters"):
        _registry.build_stage(dataclasses.replace(spec, config={"jitters": 2}))


def test_weighted_chip_fit_trusts_the_eyes_over_the_mouth():
    """``mtcnn5w`` (eyes 2, nose 1, mouth 0.5): on exact landmarks it is ``mtcnn5``'s chip; with the mouth corners
    moved (a smile, a guess under a mask) the eyes stay nearer their template places than with equal weights."""
    from sdk.align import DLIB_150
    from sdk.embed import ChipGeometry

    plain, weighted = ChipGeometry("dlib150", "mtcnn5"), ChipGeometry("dlib150", "mtcnn5w")
    assert weighted.geometry_id == "dlib150:mtcnn5w" != plain.geometry_id
    a = np.deg2rad(12)
    rot = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lm = DLIB_150.astype(np.float64) @ rot.T + [120.0, 80.0]
    face = Face(box=np.array([100, 60, 400, 400], np.float32), landmarks=lm.astype(np.float32), score=1.0)
    frame = np.zeros((500, 500, 3), np.uint8)
    [mp], [mw] = plain.transforms(frame, [face]), weighted.transforms(frame, [face])
    np.testing.assert_allclose(mw, mp, atol=1e-5)
    moved = lm.copy()
    moved[3:] += [[-9.0, 14.0], [9.0, 14.0]]  # mouth corners wider and lower
    face2 = dataclasses.replace(face, landmarks=moved.astype(np.float32))
    [mp], [mw] = plain.transforms(frame, [face2]), weighted.transforms(frame, [face2])

    def eye_error(m):
        return float(np.abs(lm[:2] @ m[:, :2].T + m[:, 2] - DLIB_150[:2]).max())

    assert eye_error(mw) < 0.75 * eye_error(mp)  # 2.03 vs 3.05 px
    with pytest.raises(ValueError, match="mtcnn5w"):
        EmbedConfig(chip_landmarks="mtcnn6")



def test_chip_placement_tool_fits_with_the_sdks_weights():
    """``tools/chip_placement.py`` measures the SDK's own weighted fit: its mtcnn5w row uses ChipGeometry's repeats,
    and the equal-weight row is the plain 5-point fit."""
    import sys

    from sdk.align import DLIB_150, similarity_to_template, weighted_similarity_to_template
    from sdk.embed import CHIP_POINT_REPEATS, ChipGeometry

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from chip_placement import WEIGHTINGS

    assert WEIGHTINGS["eyes 2, nose 1, mouth 0.5 (mtcnn5w)"] == CHIP_POINT_REPEATS["mtcnn5w"]
    rng = np.random.default_rng(0)
    lm = DLIB_150.astype(np.float64) * 1.3 + [40.0, 20.0] + rng.normal(0, 3, (5, 2))
    np.testing.assert_allclose(weighted_similarity_to_template(lm, DLIB_150, WEIGHTINGS["equal (mtcnn5)"]),
                               similarity_to_template(lm, DLIB_150), atol=1e-9)
    face = Face(box=np.array([0, 0, 300, 300], np.float32), landmarks=lm.astype(np.float32), score=1.0)
    [m] = ChipGeometry("dlib150", "mtcnn5w").transforms(np.zeros((300, 300, 3), np.uint8), [face])
    np.testing.assert_allclose(m, weighted_similarity_to_template(lm, DLIB_150, CHIP_POINT_REPEATS["mtcnn5w"]),
                               atol=1e-5)
