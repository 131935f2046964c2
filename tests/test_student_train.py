"""Student training loop, checkpoints / exact resume, unreadable images, ONNX export and the ``onnx_embedder`` bundle.

Fast (no ../shared data): the ``tiny`` set of ``conftest.py`` -- chips cut from scikit-image's astronaut and camera,
written to disk with identity chip matrices (frame == chip), so no detector runs.
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

from trainer.student.build import build_models  # noqa: E402
from trainer.student.data import MaskedChipDataset, pk_batches  # noqa: E402
from trainer.student.loop import train  # noqa: E402
from trainer.student.models import to_input  # noqa: E402


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


def test_upper_view_training_paints_the_lower_face_of_training_chips_only(tiny):
    """--upper-view-prob: a training chip (masked or clean) is shown as its upper-face view (sdk.views), the same
    way the SDK cuts it; validation chips (epoch < 0) never are; without the option nothing changes."""
    from sdk.views import MaskAwareConfig, upper_view
    from trainer.data.synthesis import MaskSynthesizer
    from trainer.student.config import StudentConfig

    prep, _ = tiny
    with pytest.raises(ValueError, match="upper_view_prob"):
        StudentConfig(upper_view_prob=1.5)
    with pytest.raises(ValueError, match="upper_cut"):
        StudentConfig(upper_view_prob=0.5, upper_cut=3.0)
    cfg = MaskAwareConfig(upper_cut=0.8, fill=128)
    args = (prep.paths, prep.chip_m, prep.landmarks, prep.labels, MaskSynthesizer(), 0.0, 3)
    plain = MaskedChipDataset(*args)
    up = MaskedChipDataset(*args, upper_view_prob=1.0, upper_view=cfg)
    m, c, _, _ = up[(4, 2)]
    want = upper_view(c[None], up.chip_landmarks(4)[None], cfg)[0]  # mask_prob 0: the clean chip's upper view
    assert np.array_equal(m, want) and not np.array_equal(m, c) and (m[-1] == 128).all()
    assert np.array_equal(plain[(4, 2)][0], c)
    assert np.array_equal(up[(4, -1)][0], plain[(4, -1)][0])  # validation: full view


def test_realistic_and_mixed_occluders_feed_the_dataset(tiny):
    """--occluders realistic / mixed: the 3-D-fitted training families paint the chips, deterministically per
    (seed, epoch, index); the mix draws from both sources; a held-out family is never drawn."""
    from trainer.data.occluders.registry import families
    from trainer.data.synthesis import MaskSynthesizer
    from trainer.student.config import StudentConfig
    from trainer.student.loop import MixedSynthesizer, training_synthesizer

    prep, _ = tiny
    with pytest.raises(ValueError, match="occluders must be one of"):
        StudentConfig(occluders="everything")
    templates = MaskSynthesizer()
    assert training_synthesizer(StudentConfig(templates=None), templates) is templates
    real = training_synthesizer(StudentConfig(templates=None, occluders="realistic"), templates)
    assert set(real.available()) <= set(families("train")) and "bandana" not in real.available()
    ds = MaskedChipDataset(prep.paths, prep.chip_m, prep.landmarks, prep.labels, real, 1.0, 3)
    m1, c1, _, _ = ds[(4, 2)]
    m2, _, _, _ = ds[(4, 2)]
    assert np.array_equal(m1, m2) and not np.array_equal(m1, c1) and m1.shape == (150, 150, 3)
    mixed = training_synthesizer(StudentConfig(templates=None, occluders="mixed"), templates)
    assert isinstance(mixed, MixedSynthesizer)
    cats = {mixed(c1[:, :, ::-1].copy(), ds.chip_landmarks(4), np.random.default_rng(k)).category for k in range(12)}
    assert cats & set(families("train")) and cats - set(families("train"))  # both sources were drawn


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(tiny, student_cfg):
    from trainer.data.synthesis import MaskSynthesizer

    prep, _ = tiny
    cfg = student_cfg()
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


@pytest.mark.slow
def test_train_writes_outputs_and_resumes_exactly(tiny, student_cfg, tmp_path, same_checkpoints, steps_rows):
    """Two epochs straight == one epoch + a resumed second epoch: same steps, losses, weights and optimiser state;
    and a run killed mid-epoch resumes from its last checkpoint to the same end."""
    prep, _ = tiny
    s1 = train(student_cfg(out=str(tmp_path / "straight"), epochs=2), prepared=prep)
    out = tmp_path / "straight"
    assert s1["steps"] == 4
    for f in ("steps.csv", "loss.png", "student.safetensors", "student.json", "ckpt/last.safetensors",
              "ckpt/last.json", "ckpt/last.optim.safetensors", "ckpt/epoch1.safetensors", "ckpt/epoch2.json",
              "summary.json", "config.json"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader((out / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(np.isfinite(float(r["total"])) for r in rows)
    meta = json.loads((out / "ckpt/last.json").read_text())
    assert (meta["epoch"], meta["batch"], meta["step"]) == (2, 0, 4) and meta["config"]["lr"] == 1e-5
    assert meta["format"] == "lookthrough.checkpoint" and meta["preprocess"]["student"]["colour"] == "rgb"

    # stopped after epoch 1, resumed for epoch 2
    train(student_cfg(out=str(tmp_path / "split"), epochs=1), prepared=prep)
    s2 = train(student_cfg(out=str(tmp_path / "split"), epochs=2, resume=True), prepared=prep)
    assert s2["steps"] == 4
    same_checkpoints(out, tmp_path / "split")
    assert [r["total"] for r in steps_rows(out)] == [r["total"] for r in steps_rows(tmp_path / "split")]


@pytest.mark.slow
def test_killed_mid_epoch_resumes_exactly(tiny, student_cfg, tmp_path, kill_and_resume, same_checkpoints,
                                        steps_rows):
    """A crash before step 4 of 4 (checkpoint every 2 steps): the resumed run redoes step 3 and ends exactly like a
    run that never stopped -- weights, optimiser state, and a log without duplicate steps."""
    from trainer.student.loop import StudentPlugin

    prep, _ = tiny
    kw = dict(steps_per_epoch=4, ckpt_every=2, instance="soft", ce_weight=1.0)
    train(student_cfg(out=str(tmp_path / "straight"), **kw), prepared=prep)
    seen = {}

    def run(resume):
        if resume:  # what the killed run left behind
            seen["step"] = json.loads((tmp_path / "killed/ckpt/last.json").read_text())["step"]
            seen["rows"] = [r["step"] for r in steps_rows(tmp_path / "killed")]
        return train(student_cfg(out=str(tmp_path / "killed"), resume=resume, **kw), prepared=prep)

    kill_and_resume(StudentPlugin, 3, run)
    assert seen == {"step": 2, "rows": ["1", "2", "3"]}
    same_checkpoints(tmp_path / "straight", tmp_path / "killed")
    assert [r["step"] for r in steps_rows(tmp_path / "killed")] == ["1", "2", "3", "4"]
    totals = [[r["total"] for r in steps_rows(tmp_path / run)] for run in ("straight", "killed")]
    assert totals[0] == totals[1]


def test_unreadable_image_is_an_error_not_a_black_chip(tiny, tmp_path):
    from trainer.data.face_arrays import UnreadableImageError

    prep, _ = tiny
    bad = tmp_path / "truncated.png"
    bad.write_bytes(open(prep.paths[0], "rb").read()[:100])
    ds = MaskedChipDataset([bad] + prep.paths[1:], prep.chip_m, prep.landmarks, prep.labels, None, 0.0, 0)
    with pytest.raises(UnreadableImageError, match="truncated.png"):
        ds.clean_bgr(0)
    assert ds.clean_bgr(1).shape == (150, 150, 3)


@pytest.mark.slow
def test_prepare_data_leaves_out_and_counts_unreadable_images(tiny_tree, tmp_path, student_cfg):
    """An image that cannot be read is left out of training and counted (summary ``data``), never a black chip;
    images without a detected face are kept at median landmarks unless ``keep_undetected=False``."""
    import shutil

    from sdk._registry import build_stage
    from sdk.align import DLIB_150
    from sdk.bundle import load_bundle
    from trainer.data.faces import FALLBACK, UNREADABLE, AlignedSet, cache_key
    from trainer.models.dlib_resnet import DlibResNet
    from trainer.student.prepare import prepare_data, select_samples

    data, cache = tiny_tree
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    paths = [str(s.path) for s in select_samples(mine, 10)]
    (mine / "camera" / "0.png").write_bytes(b"not a png")
    embedder = build_stage(load_bundle("baseline").stages["embed"])
    n = len(paths)
    eye = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
    status = np.zeros(n, np.int8)
    status[paths.index(str(mine / "camera" / "0.png"))] = UNREADABLE
    status[paths.index(str(mine / "astronaut" / "1.png"))] = FALLBACK
    geometry = getattr(embedder, "geometry_id", embedder.model_id)
    (tmp_path / "cache").mkdir()
    AlignedSet(paths, status, np.tile(DLIB_150, (n, 1, 1)).astype(np.float32),
               np.tile(np.array([0, 0, 150, 150], np.float32), (n, 1)), eye, eye.copy()
               ).save(tmp_path / "cache" / f"aligned-{cache_key(paths, geometry)}.npz")
    teacher = DlibResNet.from_dat().eval()
    det = build_stage(load_bundle("baseline").stages["detect"], {"max_side": None})
    prep = prepare_data(student_cfg(data=str(mine), cache=str(tmp_path / "cache")), teacher, det, embedder)
    assert len(prep.paths) == 8 and str(mine / "camera" / "0.png") not in prep.paths
    assert prep.counts == {"images": 9, "detected": 7, "fallback_no_face": 1, "unreadable": 1, "used": 8}
    assert prep.teacher.shape == (8, 128) and np.isfinite(prep.teacher).all()
    strict = prepare_data(student_cfg(data=str(mine), cache=str(tmp_path / "cache"), keep_undetected=False),
                          teacher, det, embedder)
    assert len(strict.paths) == 7 and strict.counts["used"] == 7


@pytest.mark.slow
def test_export_bundle_matches_the_baseline(tmp_path, astronaut_bgr):
    """The untrained student (= the dlib port) exported to a bundle embeds like the baseline recognizer."""
    from export.exporter import ExportConfig, export
    from sdk.bundle import load_bundle
    from sdk.embed_onnx import OnnxEmbedder
    from sdk.errors import ModelFileError
    from sdk.recognizer import Recognizer
    from trainer.models.dlib_resnet import default_dat_path

    r = export(ExportConfig("onnx", "embedder", default_dat_path(), tmp_path / "bundle"))
    pre = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["stages"]["embed"]["preprocess"]
    assert pre == {"crop": "dlib150", "colour": "rgb", "dtype": "uint8", "scale": 1.0, "offset": 0.0, "layout": "nhwc"}
    assert r.parity[0].worst_abs < 1e-4
    b = load_bundle(tmp_path / "bundle")
    emb = b.stages["embed"]
    assert emb.kind == "onnx_embedder" and emb.preprocess.crop == "dlib150" and emb.files["model"].path.name == "student.onnx"
    assert b.stages["detect"].files["pnet"].path == load_bundle("baseline").stages["detect"].files["pnet"].path
    rec = Recognizer(tmp_path / "bundle")
    got = rec.embed_largest(astronaut_bgr)
    ref = Recognizer("baseline").embed_largest(astronaut_bgr)
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


@pytest.mark.slow
def test_fp16_weights_export_stays_close_and_loads(tmp_path, astronaut_bgr):
    """--fp16-weights: half the file, same I/O, within 5e-3 cosine distance of the fp32 export, loads in the SDK."""
    import onnx
    from onnx import TensorProto

    from export.exporter import ExportConfig, export
    from export.families.embedder import FAMILY
    from sdk.bundle import load_bundle
    from sdk.recognizer import Recognizer
    from trainer.models.dlib_resnet import default_dat_path

    (INPUT_NAME,), (OUTPUT_NAME,) = FAMILY.inputs, FAMILY.outputs
    r = export(ExportConfig("onnx-fp16", "embedder", default_dat_path(), tmp_path / "b16", segment_from="default"))
    assert r.onnx_bytes < 0.55 * r.fp32_onnx_bytes
    assert r.parity[0].worst_cos < 5e-3 and r.parity[0].worst_abs < 2e-2
    path = tmp_path / "b16" / "student.onnx"
    m = onnx.load(str(path))
    big = [t for t in m.graph.initializer if len(t.dims) >= 2 and t.dims[0] >= 32]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)
    assert [i.name for i in m.graph.input] == [INPUT_NAME] and [o.name for o in m.graph.output] == [OUTPUT_NAME]

    b = load_bundle(tmp_path / "b16")
    assert b.stages["segment"].files["model"].path.resolve() == load_bundle("default").stages["segment"].files["model"].path.resolve()
    rec = Recognizer(tmp_path / "b16")
    got = rec.embed_largest(astronaut_bgr)
    ref = Recognizer("baseline").embed_largest(astronaut_bgr)  # dlib's fp32 weights
    assert got.shape == ref.shape == (128,) and 1.0 - float(got @ ref) < 5e-3


@pytest.mark.slow
def test_extra_unlabelled_faces_join_every_batch_and_exclusions_hold(tiny_tree, tmp_path, student_cfg):
    """Issue #9.3: face-list images of the chosen sources are appended unlabelled (label -1, training only, teacher
    descriptors computed), other sources and undetected entries are not; ``exclude`` removes listed images from
    training; every batch then carries ``extra_per_batch`` extra faces and the run trains."""
    from sdk._registry import build_stage
    from sdk.align import DLIB_150
    from sdk.bundle import load_bundle
    from trainer.data.facelist import DETECTED, FaceEntry, write_face_list
    from trainer.models.dlib_resnet import DlibResNet
    from trainer.student.loop import with_extra_faces
    from trainer.student.prepare import prepare_data, select_samples

    data, cache = tiny_tree
    paths = [str(s.path) for s in select_samples(data, 10)]
    lm = DLIB_150.astype(float).tolist()
    entries = [FaceEntry(p, "utkface", None, DETECTED, lm, [0, 0, 150, 150]) for p in paths[:3]]
    entries += [FaceEntry(paths[3], "lfw-nonpair", "lfw:x", DETECTED, lm, [0, 0, 150, 150]),
                FaceEntry(paths[4], "utkface", None, "no_face")]
    write_face_list(entries, tmp_path / "list")
    (tmp_path / "exclude.txt").write_text(f"# test matches\n{paths[1]}\n{paths[8]}\n")
    embedder = build_stage(load_bundle("baseline").stages["embed"])
    det = build_stage(load_bundle("baseline").stages["detect"], {"max_side": None})
    cfg = student_cfg(data=str(data), cache=str(tmp_path / "cache"), extra_faces=str(tmp_path / "list/faces.jsonl"),
                      extra_per_batch=2, exclude=str(tmp_path / "exclude.txt"))
    import shutil
    shutil.copytree(cache, tmp_path / "cache")
    prep = prepare_data(cfg, DlibResNet.from_dat().eval(), det, embedder)
    assert len(prep.paths) == 12
    assert sorted(prep.paths[9:]) == sorted(paths[:3])  # the three utkface entries, not lfw-nonpair / no_face
    assert (prep.labels[9:] == -1).all() and prep.teacher.shape == (12, 128) and np.isfinite(prep.teacher).all()
    extra_paths = [prep.paths[i] for i in prep.extra_idx]
    assert paths[1] not in extra_paths and len(extra_paths) == 2  # excluded
    # paths[1] is excluded as a labelled image and as an extra face; paths[8] as a labelled one: 3 rows
    assert prep.train_idx.tolist() == [0, 2, 3, 4, 5, 6, 7] and prep.counts["excluded"] == 3
    # extra faces are cut at their listed landmarks: the chip matrix maps the listed landmarks near the template's
    j = prep.paths.index(paths[0], 9)
    chip_lm = DLIB_150 @ prep.chip_m[j][:, :2].T + prep.chip_m[j][:, 2]
    assert np.abs(chip_lm - chip_lm.mean(0)).max() > 10 and not np.allclose(prep.chip_m[j], prep.chip_m[0])

    batches = with_extra_faces([[0, 1], [2, 3], [4, 5]], prep.extra_idx, 2, 0, 0)
    assert all(len(b) == 4 and set(b[2:]) <= set(prep.extra_idx.tolist()) for b in batches)
    assert batches == with_extra_faces([[0, 1], [2, 3], [4, 5]], prep.extra_idx, 2, 0, 0)  # deterministic

    summary = train(dataclasses_replace(cfg, out=str(tmp_path / "run"), steps_per_epoch=0), prepared=prep)
    # 7 labelled images // batch 4 = 1 PK batch; 2 extra faces / 2 per batch = 1: an epoch is 1 step
    assert summary["steps"] == 1 and summary["extra_images"] == 2
    more = train(dataclasses_replace(cfg, out=str(tmp_path / "run2"), steps_per_epoch=0, extra_per_batch=1),
                 prepared=prep)
    assert more["steps"] == 2  # 2 extra faces / 1 per batch: the epoch grows until each extra face was seen


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize("kw", [dict(instance="soft"), dict(ce_weight=1.0), dict(extra_per_batch=0)])
def test_extra_faces_refuse_label_terms(kw, student_cfg):
    with pytest.raises(ValueError, match="extra_faces|extra_per_batch"):
        student_cfg(extra_faces="faces.jsonl", **kw)
