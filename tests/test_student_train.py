"""Student training loop, checkpoints/resume, ONNX export and the ``onnx_embedder`` bundle kind.

Fast (no ../shared data): a tiny "dataset" of chips cut from scikit-image's astronaut and camera, written to
disk with identity chip matrices (frame == chip), so no detector runs.
"""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("onnx")

from sdk.align import DLIB_150  # noqa: E402
from trainer.student_train import (MaskedChipDataset, Prepared, StudentConfig, build_models,  # noqa: E402
                                   load_checkpoint, pk_batches, save_checkpoint, to_input, train)


def _variants(img: np.ndarray, n: int) -> list[np.ndarray]:
    out = []
    for k in range(n):
        m = cv2.getRotationMatrix2D((75, 75), -4 + 3 * k, 1.0 - 0.03 * k)
        v = cv2.warpAffine(img, m, (150, 150), borderMode=cv2.BORDER_REFLECT)
        out.append(cv2.convertScaleAbs(v, alpha=1.0 + 0.06 * (k - 1), beta=0))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, astronaut_bgr, camera_bgr):
    """(Prepared, teacher) over 3 identities x 3 chips; the teacher descriptors are computed with torch."""
    from trainer.models.dlib_resnet import DlibResNet

    root = tmp_path_factory.mktemp("chips")
    faces = {"astronaut": astronaut_bgr[20:250, 120:350], "camera": camera_bgr[40:300, 150:410],
             "astronaut_flip": astronaut_bgr[20:250, 120:350][:, ::-1]}
    paths, labels = [], []
    for y, (name, img) in enumerate(faces.items()):
        chip = cv2.resize(np.ascontiguousarray(img), (150, 150), interpolation=cv2.INTER_AREA)
        for k, v in enumerate(_variants(chip, 3)):
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


def _cfg(tmp_path, **kw) -> StudentConfig:
    base = dict(out=str(tmp_path / "run"), templates=None, epochs=1, p_identities=2, k_images=2, steps_per_epoch=2,
                lr=1e-5, mask_prob=1.0, threads=2, workers=0, ckpt_every=1, progress=False, val_fraction=0.0)
    base.update(kw)
    return StudentConfig(**base)


def test_pk_batches_are_identity_balanced_and_deterministic():
    labels = np.repeat(np.arange(5), [3, 4, 2, 5, 1])
    b = pk_batches(labels, 2, 3, 7, seed=1, epoch=0)
    assert len(b) == 7 and all(len(x) == 6 for x in b)
    for x in b:
        ys = labels[x]
        assert len(set(ys.tolist())) == 2 and all((ys == y).sum() == 3 for y in set(ys.tolist()))
    assert b == pk_batches(labels, 2, 3, 7, seed=1, epoch=0) != pk_batches(labels, 2, 3, 7, seed=1, epoch=1)


def test_dataset_masks_deterministically(tiny):
    from trainer.data.synthesis import MaskSynthesizer

    prep, _ = tiny
    ds = MaskedChipDataset(prep.paths, prep.chip_m, prep.landmarks, prep.labels, MaskSynthesizer(), 1.0, 3)
    m1, c1, y, i = ds[(4, 2)]
    m2, c2, _, _ = ds[(4, 2)]
    assert m1.shape == c1.shape == (150, 150, 3) and m1.dtype == np.uint8 and (y, i) == (prep.labels[4], 4)
    assert np.array_equal(m1, m2) and np.array_equal(c1, c2) and not np.array_equal(m1, c1)
    assert np.array_equal(c1, np.ascontiguousarray(cv2.imread(prep.paths[4])[:, :, ::-1]))  # RGB out
    ds.mask_prob = 0.0
    m0, c0, _, _ = ds[(4, 2)]
    assert np.array_equal(m0, c0)


def test_loss_falls_on_a_fixed_batch(tiny, tmp_path):
    from trainer.data.synthesis import MaskSynthesizer

    prep, _ = tiny
    torch.set_num_threads(2)
    cfg = _cfg(tmp_path)
    _, student, loss_mod, _, opt = build_models(cfg, 3)
    ds = MaskedChipDataset(prep.paths, prep.chip_m, prep.landmarks, prep.labels, MaskSynthesizer(), 1.0, 0)
    idx = [0, 1, 3, 4, 6, 7]
    x = to_input(torch.from_numpy(np.stack([ds[(i, 0)][0] for i in idx])))
    t = torch.from_numpy(prep.teacher[idx])
    y = torch.from_numpy(prep.labels[idx])
    losses = []
    for _ in range(5):
        total, _parts = loss_mod(student(x), t, labels=y)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert losses[-1] < losses[0], losses


def test_train_checkpoint_roundtrip_and_resume(tiny, tmp_path):
    prep, _ = tiny
    cfg = _cfg(tmp_path)
    s1 = train(cfg, prepared=prep)
    out = tmp_path / "run"
    assert s1["steps"] == 2
    for f in ("steps.csv", "loss.png", "student.safetensors", "ckpt/last.safetensors", "ckpt/last.json",
              "ckpt/epoch1.safetensors", "summary.json"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader((out / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and all(np.isfinite(float(r["total"])) for r in rows)
    meta = json.loads((out / "ckpt/last.json").read_text())
    assert (meta["epoch"], meta["batch"], meta["step"]) == (1, 0, 2) and meta["config"]["lr"] == 1e-5

    # round trip: weights and Adam state come back exactly
    _, st_a, loss_a, head_a, opt_a = build_models(cfg, 3)
    load_checkpoint(out / "ckpt/last.safetensors", st_a, loss_a, head_a, opt_a)
    save_checkpoint(tmp_path / "again.safetensors", st_a, loss_a, head_a, opt_a, {"epoch": 1})
    _, st_b, loss_b, head_b, opt_b = build_models(cfg, 3)
    load_checkpoint(tmp_path / "again.safetensors", st_b, loss_b, head_b, opt_b)
    for (k, a), b in zip(st_a.state_dict().items(), st_b.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for pid in sa:
        for name in sa[pid]:
            assert torch.equal(torch.as_tensor(sa[pid][name]), torch.as_tensor(sb[pid][name])), (pid, name)

    # resume for one more epoch: steps continue from 3
    s2 = train(_cfg(tmp_path, epochs=2, resume=True), prepared=prep)
    assert s2["steps"] == 4
    rows = list(csv.DictReader((out / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and [r["epoch"] for r in rows] == ["1", "1", "2", "2"]
    assert (out / "ckpt/epoch2.safetensors").is_file()


def test_export_bundle_matches_the_baseline(tmp_path, astronaut_bgr, recognizer):
    """The untrained student (= the dlib port) exported to a bundle embeds like the baseline recognizer."""
    from export.onnx_embedder import export
    from sdk.bundle import load_bundle
    from sdk.embed_onnx import OnnxEmbedder
    from sdk.errors import ModelFileError
    from sdk.recognizer import Recognizer
    from trainer.models.dlib_resnet import default_dat_path

    r = export(default_dat_path(), tmp_path / "bundle", verbose=False)
    assert r["max_abs_diff"] < 1e-4
    b = load_bundle(tmp_path / "bundle")
    emb = b.stages["embed"]
    assert emb.kind == "onnx_embedder" and emb.config["crop"] == "dlib150" and emb.files["model"].path.name == "student.onnx"
    assert b.stages["detect"].files["pnet"].path == load_bundle("baseline").stages["detect"].files["pnet"].path
    rec = Recognizer(tmp_path / "bundle")
    got = rec.embed_largest(astronaut_bgr)
    ref = recognizer.embed_largest(astronaut_bgr)
    assert got.shape == ref.shape == (128,)
    assert float(np.abs(got - ref).max()) < 1e-4
    assert rec.embedder.model_id.startswith("onnx:")

    onnx_path = tmp_path / "bundle" / "student.onnx"
    sp = b.stages["embed"].files["shape_predictor"].path
    e = OnnxEmbedder(onnx_path, sp)
    assert e.model_id.startswith("onnx:") and e.model_id.endswith(":dlib150:dlib5") and e.dim == 128
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(onnx_path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated.onnx"):
        OnnxEmbedder(bad, sp)
    with pytest.raises(ModelFileError, match="pnet.onnx"):  # a foreign graph: MTCNN's P-Net
        OnnxEmbedder(load_bundle("baseline").stages["detect"].files["pnet"].path, sp)
    with pytest.raises(ModelFileError, match="input"):  # right file, wrong crop geometry
        OnnxEmbedder(onnx_path, crop="arcface112")


def test_fp16_weights_export_stays_close_and_loads(tmp_path, astronaut_bgr, recognizer):
    """--fp16-weights: half the file, same I/O, within 5e-3 cosine distance of the fp32 export, loads in the SDK."""
    import onnx
    from onnx import TensorProto

    from export.onnx_embedder import INPUT_NAME, OUTPUT_NAME, export
    from sdk.bundle import load_bundle
    from sdk.recognizer import Recognizer
    from trainer.models.dlib_resnet import default_dat_path

    r = export(default_dat_path(), tmp_path / "b16", verbose=False, fp16_weights=True, segment_from="default")
    assert r["onnx_bytes"] < 0.55 * r["fp32_onnx_bytes"]
    assert r["max_cos_dist"] < 5e-3 and r["vs_fp32_onnx_max_cos_dist"] < 5e-3 and r["max_abs_diff"] < 2e-2
    path = tmp_path / "b16" / "student.onnx"
    m = onnx.load(str(path))
    big = [t for t in m.graph.initializer if len(t.dims) >= 2 and t.dims[0] >= 32]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)
    assert [i.name for i in m.graph.input] == [INPUT_NAME] and [o.name for o in m.graph.output] == [OUTPUT_NAME]

    b = load_bundle(tmp_path / "b16")
    assert b.stages["segment"].files["model"].path.resolve() == load_bundle("default").stages["segment"].files["model"].path.resolve()
    rec = Recognizer(tmp_path / "b16")
    got = rec.embed_largest(astronaut_bgr)
    ref = recognizer.embed_largest(astronaut_bgr)  # the baseline: dlib's fp32 weights
    assert got.shape == ref.shape == (128,) and 1.0 - float(got @ ref) < 5e-3
