"""Completion in training and evaluation: face packs, chip completion through the ArcFace crop, greyscale fills,
the student dataset on completed faces, `trainer.evaluate --complete`, the ablation rows, the inpainter's device
option.  Everything runs on images the tests render (scikit-image's astronaut / camera); no ../shared data."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from sdk.align import ARCFACE_112, DLIB_150, similarity_to_template, warp

#: MTCNN landmarks of the astronaut in skimage.data.astronaut() (the default detector's output).
ASTRO_LM = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)


def _chip_and_arc(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(150x150 dlib-style chip, frame->chip matrix, frame->arc matrix) of the astronaut's face."""
    chip_m = similarity_to_template(ASTRO_LM, DLIB_150)
    arc_m = similarity_to_template(ASTRO_LM, ARCFACE_112)
    return warp(img, chip_m, (150, 150)), chip_m, arc_m


def test_face_pack_roundtrip(tmp_path, astronaut_bgr):
    from trainer.data.pack import load_face_pack, save_face_pack
    from trainer.data.face_arrays import FaceArrays

    m = similarity_to_template(ASTRO_LM, ARCFACE_112)
    crop = warp(astronaut_bgr, m, (112, 112))
    faces = FaceArrays(np.stack([crop, crop[:, ::-1].copy(), crop // 2]),
                       np.stack([ARCFACE_112.astype(np.float32)] * 3), ["a", "a", "b"])
    path = save_face_pack(faces, tmp_path / "faces.npz", quality=95)
    got = load_face_pack(path)
    assert got.crops.shape == (3, 112, 112, 3) and got.crops.dtype == np.uint8
    assert got.identities == ["a", "a", "b"]
    np.testing.assert_array_equal(got.landmarks, faces.landmarks)
    err = np.abs(got.crops.astype(int) - faces.crops.astype(int)).mean()
    assert err < 2.0, f"JPEG q95 should be near-lossless, mean abs err {err}"
    # a truncated pack and a foreign npz are refused with a clear error
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="face pack"):
        load_face_pack(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a face pack"):
        load_face_pack(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        load_face_pack(tmp_path / "missing.npz")


def test_chip_to_arc_composes_the_two_warps(astronaut_bgr):
    from trainer.data.completion import chip_to_arc

    chip, chip_m, arc_m = _chip_and_arc(astronaut_bgr)
    a = chip_to_arc(chip_m, arc_m)
    pts = ASTRO_LM.astype(np.float64)
    in_chip = pts @ chip_m[:, :2].T + chip_m[:, 2]
    np.testing.assert_allclose(in_chip @ a[:, :2].T + a[:, 2], pts @ arc_m[:, :2].T + arc_m[:, 2], atol=1e-9)
    # the crop cut from the chip looks like the crop cut from the frame (inside the chip's field of view)
    direct = warp(astronaut_bgr, arc_m, (112, 112)).astype(int)
    via = warp(chip, a, (112, 112)).astype(int)
    assert np.abs(direct - via)[20:100, 20:100].mean() < 6


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["telea", "run"])
def test_chip_completer_fills_only_the_hole(spec, inpainter_run_dir, astronaut_bgr):
    from trainer.data.completion import ChipCompleter, chip_to_arc

    chip, chip_m, arc_m = _chip_and_arc(astronaut_bgr)
    hole = np.zeros((150, 150), np.uint8)
    hole[85:120, 45:105] = 1  # lower face, inside the ArcFace crop
    masked = chip.copy()
    masked[hole > 0] = 255
    comp = ChipCompleter("telea" if spec == "telea" else inpainter_run_dir)
    mats = chip_to_arc(chip_m, arc_m)[None]
    out = comp(np.stack([masked, chip]), np.stack([hole, np.zeros_like(hole)]), np.stack([mats[0], mats[0]]))
    assert out.shape == (2, 150, 150, 3) and out.dtype == np.uint8
    far = cv2.dilate(hole, np.ones((7, 7), np.uint8)) == 0
    np.testing.assert_array_equal(out[0][far], masked[far])  # known pixels untouched
    assert (out[0][hole > 0] != 255).any(axis=-1).mean() > 0.9  # the white occluder is gone
    np.testing.assert_array_equal(out[1], chip)  # no hole: unchanged
    if spec == "run":
        assert (inpainter_run_dir / "inpainter.onnx").is_file()  # exported once, cached beside the weights


@pytest.mark.slow
def test_greyscale_faces_get_greyscale_fills(inpainter_run_dir):
    from sdk.complete import OnnxInpainter, is_greyscale
    from trainer.data.completion import resolve_model

    inp = OnnxInpainter(resolve_model(inpainter_run_dir))
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (1, 112, 112, 1), dtype=np.uint8), 3, axis=3)
    colour = rng.integers(0, 256, (1, 112, 112, 3), dtype=np.uint8)
    holes = np.zeros((2, 112, 112), np.uint8)
    holes[:, 60:100, 20:90] = 1
    assert is_greyscale(np.concatenate([grey, colour]), holes).tolist() == [True, False]
    out = inp.complete(np.concatenate([grey, colour]), holes)
    g = out[0][holes[0] > 0].astype(int)
    assert (g[:, 0] == g[:, 1]).all() and (g[:, 1] == g[:, 2]).all()
    c = out[1][holes[1] > 0].astype(int)
    assert (c[:, 0] != c[:, 2]).any()  # colour faces keep the generator's colour


def test_student_dataset_completes_masked_chips(inpainter_run_dir, tmp_path, astronaut_bgr):
    from trainer.data.completion import ChipCompleter
    from trainer.data.synthesis import MaskSynthesizer, SynthesisConfig
    from trainer.student.data import MaskedChipDataset

    cv2.imwrite(str(tmp_path / "a.png"), astronaut_bgr)
    chip_m = similarity_to_template(ASTRO_LM, DLIB_150)
    args = ([str(tmp_path / "a.png")], chip_m[None], ASTRO_LM[None], [0], MaskSynthesizer(SynthesisConfig()), 1.0, 0)
    plain = MaskedChipDataset(*args)
    done = MaskedChipDataset(*args, completer=ChipCompleter(inpainter_run_dir))
    m0, c0, _, _ = plain[(0, 0)]
    m1, c1, _, _ = done[(0, 0)]
    np.testing.assert_array_equal(c0, c1)
    assert (m0 != c0).any() and (m1 != m0).any()  # an occluder was painted, and the completion changed it
    v0, _, _, _ = plain[(0, -1)]
    v1, _, _, _ = done[(0, -1)]
    assert (v1 != v0).any()  # validation chips are completed too


@pytest.mark.slow
def test_evaluate_complete_option(tmp_path, astronaut_bgr, camera_bgr):
    from _trainer_helpers import photo_variants as variants

    root = tmp_path / "lfw"
    for name, img in {"Eileen_Collins": astronaut_bgr, "Camera_Man": camera_bgr}.items():
        (root / name).mkdir(parents=True)
        for i, v in enumerate(variants(img, 4), start=1):
            cv2.imwrite(str(root / name / f"{name}_{i:04d}.jpg"), v)
    lines = ["2\t2"]
    for f in range(2):
        lines += [f"Eileen_Collins\t{1 + 2 * f}\t{2 + 2 * f}", f"Camera_Man\t{1 + 2 * f}\t{2 + 2 * f}",
                  f"Eileen_Collins\t{1 + f}\tCamera_Man\t{3 - f}", f"Eileen_Collins\t{3 + f}\tCamera_Man\t{1 + f}"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "rep"
    cmd = [sys.executable, "-m", "trainer.evaluate", "--data", str(root), "--conditions", "block", "--complete", "telea",
           "--workers", "1", "--out", str(out), "--cache", str(tmp_path / "cache")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["meta"]["complete"] == "telea" and "block" in rep["results"]
    caches = sorted(p.name for p in (tmp_path / "cache").glob("emb-*.npy"))
    assert any(n.startswith("emb-block-completed-") for n in caches), caches
    # without --complete the masked embeddings are a different cache entry (and different numbers)
    r = subprocess.run(cmd[:-8] + ["--workers", "1", "--out", str(tmp_path / "rep2"), "--cache", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "cache").glob("emb-block-*.npy"))
    assert len(names) == 2, names
    a, b = (np.load(tmp_path / "cache" / n) for n in names)
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-4


def test_ablation_rows_are_distinct_configs(tmp_path):
    from trainer.ablation import DEFAULT_ROWS, build_parser, row_for, student_config

    args = build_parser().parse_args(["--out", str(tmp_path), "--completion", "telea"])
    cfgs = {n: student_config(args, n) for n in DEFAULT_ROWS}
    keys = {n: (c.instance, c.lambda_i if c.instance != "none" else 0, c.lambda_p, c.lambda_t, c.ce_weight, c.pairwise)
            for n, c in cfgs.items()}
    assert len(set(keys.values())) == len(keys), keys  # every row trains something different
    assert keys["finetune_ce"] == ("none", 0, 0.0, 0.0, 1.0, "none")
    assert keys["ce_pt_soft"] == ("soft", 1.0, 1.0, 2.0, 1.0, "none")
    assert all(c.epochs == cfgs["finetune_ce"].epochs and c.seed == 0 for c in cfgs.values())
    assert student_config(args, "ce_pt_hard_completed").completion == "telea"
    assert student_config(args, "ce_pt_hard").completion is None
    with pytest.raises(SystemExit, match="unknown ablation row"):
        row_for("nope")
    no_comp = build_parser().parse_args(["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs --completion"):
        student_config(no_comp, "pt_hard_completed")


def test_inpainter_device_option(torch):
    from trainer.inpainter_train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.slow
def test_ablation_table_from_reports(tmp_path):
    """write_table reads the evaluation reports' structure (TAR entries are dicts) and writes md + json + png."""
    from trainer.ablation import write_table

    def res(acc: float, tar: float) -> dict:
        return {"verification": {"accuracy_mean": acc, "accuracy_std": 0.01},
                "tar_at_far": {"0.01": {"tar": tar + 0.1, "threshold": 0.9}, "0.001": {"tar": tar, "threshold": 0.95}}}

    teacher = {"template": res(0.92, 0.37), "unmasked": res(0.98, 0.90)}
    rows = [{"row": "finetune_ce", "label": "CE only", "train_seconds": 12.0,
             "lfw": {"template": res(0.94, 0.66), "unmasked": res(0.979, 0.89)}}]
    write_table(rows, teacher, ["template", "unmasked"], tmp_path, {"command": "cmd", "machine": "m", "seconds": 3.0})
    md = (tmp_path / "ablation.md").read_text()
    assert "| teacher (dlib, no training) | 92.00 ± 1.00 | 37.00 | 98.00 ± 1.00 | 90.00 | - |" in md
    assert "| CE only (`finetune_ce`) | 94.00 ± 1.00 | 66.00 | 97.90 ± 1.00 | 89.00 | 12 |" in md
    assert json.loads((tmp_path / "ablation.json").read_text())["rows"][0]["row"] == "finetune_ce"
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def test_chip_completer_predicted_masks(inpainter_run_dir, astronaut_bgr):
    """mask_source="predicted": the default bundle's segmenter decides what to fill (the SDK's behaviour)."""
    from sdk.occluders import draw_surgical_mask
    from trainer.data.completion import ChipCompleter, chip_to_arc

    masked_frame = draw_surgical_mask(astronaut_bgr, ASTRO_LM)[0]
    clean, chip_m, arc_m = _chip_and_arc(astronaut_bgr)
    masked = warp(masked_frame, chip_m, (150, 150))
    mats = np.stack([chip_to_arc(chip_m, arc_m)] * 2)
    no_holes = np.zeros((2, 150, 150), np.uint8)  # ignored with predicted masks
    comp = ChipCompleter(inpainter_run_dir, mask_source="predicted")
    out = comp(np.stack([masked, clean]), no_holes, mats)
    changed = (out[0] != masked).any(-1)
    assert changed.mean() > 0.05  # the segmenter found the mask and it was filled
    lower = changed[80:130, 40:110].mean()
    upper = changed[10:50, 40:110].mean()
    assert lower > 5 * max(upper, 1e-3), (lower, upper)  # filled where the mask is, not on the eyes
    np.testing.assert_array_equal(out[1], clean)  # an unmasked face is not occluded: untouched
    with pytest.raises(ValueError, match="mask_source"):
        ChipCompleter("telea", mask_source="both")


@pytest.mark.slow
def test_mobilefacenet_student_exports_to_a_working_bundle(torch, tmp_path, astronaut_bgr):
    """A from-scratch student (112x112 ArcFace crops) -> ONNX bundle -> Recognizer, end to end."""
    import sdk
    from export.exporter import ExportConfig, export
    from trainer.student.models import new_student, save_student

    net = new_student("mobilefacenet", 64).eval()
    ckpt = save_student(net, tmp_path / "student.safetensors")
    r = export(ExportConfig("onnx", "embedder", ckpt, tmp_path / "bundle", name="mfn-test"))
    assert r.parity[0].worst_abs < 1e-3
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    cfg = manifest["stages"]["embed"]["config"]
    assert cfg["dim"] == 64 and "crop" not in cfg  # the crop is the preprocess record's
    # the graph's input record: uint8 RGB NHWC ArcFace crops (the student's normalisation is inside the graph)
    assert manifest["stages"]["embed"]["preprocess"] == {"crop": "arcface112", "colour": "rgb", "dtype": "uint8",
                                                         "scale": 1.0, "offset": 0.0, "layout": "nhwc"}
    assert "shape_predictor" not in manifest["stages"]["embed"]["files"]
    rec = sdk.Recognizer(str(tmp_path / "bundle"))
    rec.enroll("astronaut", [astronaut_bgr])
    (m,) = rec.identify(astronaut_bgr)
    assert m.identity == "astronaut" and m.similarity > 0.99  # the same image: the same crop, the same embedding
