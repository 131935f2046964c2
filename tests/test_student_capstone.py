"""Student trainer: the capstone variant (``--pairwise``: ArcFace + beta * masked/clean pairwise distillation) and an
ONNX embedder as the teacher (``--teacher-onnx``).

Fast (no ../shared data): the tiny rendered chip set of ``conftest.py`` (3 identities x 3 chips cut from
scikit-image's astronaut and camera, identity frame -> chip matrices) -- in memory (``tiny``) and as a folder tree
with a pre-seeded alignment cache (``tiny_tree``); the ONNX teacher is a tiny random
torch network exported on the fly ((N, 3, 112, 112) float RGB in [-1, 1] -> (N, 64)).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("onnx")

from _trainer_helpers import csv_rows, with_val  # noqa: E402
from trainer.student.build import build_models  # noqa: E402
from trainer.student.config import StudentConfig  # noqa: E402
from trainer.student.data import MaskedChipDataset, arc_matrices  # noqa: E402
from trainer.student.loop import capstone_terms, train  # noqa: E402
from trainer.student.models import student_arch, to_input  # noqa: E402
from trainer.student.prepare import prepare_data  # noqa: E402
from trainer.student.teacher import OnnxTeacher  # noqa: E402
from trainer.student.validate import Validator  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded machine, 2-thread parallel regions wait for the scheduler (conftest restores
    the thread count)."""
    torch.set_num_threads(1)


def _export_teacher(path, seed: int) -> torch.nn.Module:
    """A tiny random embedder written to ``path``: (N, 3, 112, 112) float32 RGB in [-1, 1] -> (N, 64)."""
    from torch import nn

    with torch.random.fork_rng():  # seeded, without touching the caller's RNG
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                            nn.Linear(32, 64)).eval()
    torch.onnx.export(net, (torch.zeros(2, 3, 112, 112),), str(path), opset_version=17, dynamo=False,
                      input_names=["data"], output_names=["emb"], dynamic_axes={"data": {0: "n"}, "emb": {0: "n"}})
    return net


@pytest.fixture(scope="module")
def stages():
    """(detector, embedder) of the baseline bundle (the alignment cache of ``tiny_tree`` hits: nothing runs)."""
    from sdk._registry import build_stage
    from sdk.bundle import load_bundle

    b = load_bundle(None)
    return build_stage(b.stages["detect"], {"max_side": None}), build_stage(b.stages["embed"])


# --------------------------------------------------------------------------------------------- capstone
def test_pairwise_flags_and_validation(parse_student_args):
    _parse = parse_student_args
    cfg = _parse(["--pairwise", "cosine", "--pairwise-beta", "0.5", "--pairwise-correct-only", "--ce-weight", "1",
                  "--pairwise-margin", "0.3", "--no-pairwise-clean-ce"])
    assert (cfg.pairwise, cfg.pairwise_beta, cfg.pairwise_correct_only, cfg.pairwise_margin, cfg.pairwise_clean_ce) \
        == ("cosine", 0.5, True, 0.3, False)
    d = _parse([])
    assert (d.pairwise, d.pairwise_beta, d.pairwise_correct_only, d.pairwise_clean_ce, d.teacher_onnx) == \
        ("none", 1.0, False, True, None)
    with pytest.raises(ValueError, match="ce_weight"):
        _parse(["--pairwise", "mse", "--pairwise-correct-only"])
    with pytest.raises(ValueError, match="ce_weight"):
        StudentConfig(pairwise="mse", pairwise_correct_only=True, ce_weight=0.0)
    with pytest.raises(ValueError, match="pairwise"):
        StudentConfig(pairwise="l1")
    StudentConfig(pairwise="mse", ce_weight=0.0)  # distillation without CE is allowed (no selection)
    with pytest.raises(SystemExit):
        _parse(["--teacher-input", "nope"])


def test_capstone_terms_select_correct_rows():
    """Kept rows = right on both images (margin-free logits); MSE summed over them / B; CE on the clean side."""
    from trainer.losses.margin import ArcFaceHead

    head = ArcFaceHead(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    labels = torch.tensor([0, 0, 1, 1])
    s = torch.tensor([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [1.0, 0.0]], requires_grad=True)      # row 3 wrong
    s_clean = torch.tensor([[0.9, 0.0], [0.1, 1.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)  # row 1 wrong
    cfg = StudentConfig(pairwise="mse", pairwise_correct_only=True, ce_weight=1.0)
    pw, kept, ce_clean = capstone_terms(cfg, s, s_clean, labels, head)
    want = (((s - s_clean) ** 2).sum(1) * torch.tensor([1.0, 0, 1, 0])).sum() / 4
    assert float(kept) == 0.5 and torch.allclose(pw, want) and float(ce_clean.detach()) > 0
    (pw + ce_clean).backward()
    assert s.grad[0].abs().sum() > 0 and s_clean.grad[2].abs().sum() > 0  # both branches are distilled
    assert float(s.grad[3].abs().sum()) == 0.0                             # an unselected row gets no gradient
    pw_all, kept_all, ce0 = capstone_terms(StudentConfig(pairwise="mse", pairwise_clean_ce=False), s, s_clean,
                                           labels, None)
    assert float(kept_all) == 1.0 and float(ce0) == 0.0
    assert torch.allclose(pw_all, ((s - s_clean) ** 2).sum(1).mean())


@pytest.mark.slow
def test_pure_capstone_run_logs_pairwise(tiny, tmp_path, parse_student_args, steps_rows):
    """ArcFace + beta * MSE (relational terms off), correctly classified samples only, on the dlib student."""
    prep, _ = tiny
    out = tmp_path / "run"
    cfg = parse_student_args([
        "--pairwise", "mse", "--pairwise-correct-only", "--pairwise-beta", "0.5", "--ce-weight", "1",
        "--instance", "none", "--lambda-p", "0", "--lambda-t", "0", "--out", str(out), "--templates", "",
        "--epochs", "1", "--p-identities", "2", "--k-images", "2", "--steps-per-epoch", "2",
        "--mask-prob", "1", "--threads", "1", "--workers", "0", "--val-fraction", "0", "--no-progress"])
    s = train(cfg, prepared=prep)
    assert s["steps"] == 2
    rows = steps_rows(out)
    assert {"pairwise", "pairwise_kept"} <= set(rows[0])
    for r in rows:
        vals = {k: float(r[k]) for k in ("total", "ce", "pairwise", "pairwise_kept", "instance", "pair", "triplet")}
        assert all(np.isfinite(v) for v in vals.values()), r
        assert 0.0 <= vals["pairwise_kept"] <= 1.0 and vals["pairwise"] >= 0 and vals["ce"] > 0
        assert vals["instance"] == vals["pair"] == vals["triplet"] == 0.0
        # total = w_ce * (CE(masked) + CE(clean)) + beta * pairwise: nothing else
        assert vals["total"] == pytest.approx(vals["ce"] + 0.5 * vals["pairwise"], rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------------------- ONNX teacher
def _seeded_cache(seeded, tmp_path):
    """A fresh cache folder holding the tiny set's alignment cache (so no detector runs in the test)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in seeded.glob("aligned-*.npz"):
        shutil.copy(f, cache)
    return cache


@pytest.mark.slow
def test_onnx_teacher_descriptors_are_cached_by_file(tiny_tree, stages, tmp_path, monkeypatch):
    from sdk.errors import ModelFileError

    data, seeded = tiny_tree
    cache = _seeded_cache(seeded, tmp_path)
    onnx_path = tmp_path / "teacher.onnx"
    net = _export_teacher(onnx_path, 0)

    calls = []
    real = OnnxTeacher.descriptors

    def counting(self, chips, check_dim=True):
        calls.append(len(chips))
        return real(self, chips, check_dim)

    monkeypatch.setattr(OnnxTeacher, "descriptors", counting)
    cfg = StudentConfig(data=str(data), cache=str(cache), out=str(tmp_path / "run"), templates=None, val_fraction=0.0,
                        teacher_onnx=str(onnx_path), teacher_crop="arcface112", teacher_input="float_nchw_rgb_pm1",
                        progress=False, threads=1)
    t = OnnxTeacher(onnx_path, "arcface112", "float_nchw_rgb_pm1", threads=1)
    assert t.dim == 64 and t.input_size == 112
    calls.clear()
    p1 = prepare_data(cfg, t, *stages)
    assert p1.teacher.shape == (9, 64) and np.isfinite(p1.teacher).all() and sum(calls) == 9
    files = sorted(cache.glob("teacher-onnx-*.npy"))
    assert len(files) == 1

    # the graph's convention: RGB, NCHW, (x / 255 - 0.5) / 0.5, on the teacher's 112x112 ArcFace crops
    ds = MaskedChipDataset(p1.paths, arc_matrices(p1.landmarks), p1.landmarks, p1.labels, None, 0.0, 0, chip_size=112)
    chips = np.stack([ds.clean_bgr(i)[:, :, ::-1] for i in range(3)])
    with torch.no_grad():
        ref = net(torch.from_numpy(chips.transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1.0).numpy()
    np.testing.assert_allclose(p1.teacher[:3], ref, rtol=1e-4, atol=1e-5)

    calls.clear()  # same file: the cache is read, ONNX Runtime does not run
    p2 = prepare_data(cfg, OnnxTeacher(onnx_path, "arcface112", "float_nchw_rgb_pm1", threads=1), *stages)
    assert calls == [] and np.array_equal(p1.teacher, p2.teacher)

    _export_teacher(onnx_path, 1)  # another network in the same file: another cache key
    calls.clear()
    p3 = prepare_data(cfg, OnnxTeacher(onnx_path, "arcface112", "float_nchw_rgb_pm1", threads=1), *stages)
    assert sum(calls) == 9 and len(list(cache.glob("teacher-onnx-*.npy"))) == 2
    assert not np.allclose(p3.teacher, p1.teacher)
    assert list(cache.glob("teacher-*.npy")) == list(cache.glob("teacher-onnx-*.npy"))  # no dlib teacher ran

    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(onnx_path.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="truncated.onnx"):
        OnnxTeacher(bad, "arcface112", "float_nchw_rgb_pm1")
    with pytest.raises(ModelFileError, match="truncated.onnx"):
        train(StudentConfig(**{**cfg.to_json(), "teacher_onnx": str(bad)}), *stages)
    with pytest.raises(ModelFileError, match="input"):  # a float graph is not a uint8 NHWC one
        OnnxTeacher(onnx_path, "arcface112", "uint8_nhwc_rgb")
    # a graph exported with static shapes (batch 1, 112x112): not a 150x150 teacher; batches of 1 are fed to it
    static = tmp_path / "static.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(static), opset_version=17, dynamo=False)
    with pytest.raises(ModelFileError, match="input"):
        OnnxTeacher(static, "dlib150", "float_nchw_rgb_pm1")
    st = OnnxTeacher(static, "arcface112", "float_nchw_rgb_pm1")
    assert (st.static_batch, st.dim) == (1, 64)
    np.testing.assert_allclose(st.descriptors(chips), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_teacher_trains_through_the_projection(tiny_tree, stages, tmp_path):
    data, seeded = tiny_tree
    cache = _seeded_cache(seeded, tmp_path)
    onnx_path = tmp_path / "teacher.onnx"
    _export_teacher(onnx_path, 0)
    kw = dict(data=str(data), cache=str(cache), out=str(tmp_path / "run"), templates=None, val_fraction=0.0,
              teacher_onnx=str(onnx_path), teacher_crop="arcface112", teacher_input="float_nchw_rgb_pm1",
              progress=False, threads=1, workers=0, arch="mobilefacenet", embedding_dim=32, lr=1e-3,
              instance="hard", epochs=1, p_identities=2, k_images=2, steps_per_epoch=3, mask_prob=1.0,
              ckpt_every=0, val_pairs=40)
    cfg = StudentConfig(**kw)
    teacher = OnnxTeacher(onnx_path, "arcface112", "float_nchw_rgb_pm1", threads=1)
    prep = prepare_data(cfg, teacher, *stages)

    # fixed batch: the loss falls, through a learned 32 -> 64 projection
    torch.manual_seed(0)
    t_, student, loss_mod, head, opt = build_models(cfg, 3, teacher=teacher)
    assert t_ is teacher and head is None and loss_mod.projection.weight.shape == (64, 32)
    ds = MaskedChipDataset(prep.paths, arc_matrices(prep.landmarks), prep.landmarks, prep.labels, None, 0.0, 0,
                           chip_size=112)
    idx = [0, 1, 3, 4, 6, 7]
    x = to_input(torch.from_numpy(np.stack([ds[(i, 0)][0] for i in idx])))
    t = torch.from_numpy(prep.teacher[idx])
    losses = []
    for _ in range(5):
        total, _parts = loss_mod(student(x), t, labels=torch.from_numpy(prep.labels[idx]))
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # a dlib student taught by an ONNX teacher: dlib's weights, but a projection (another embedding space)
    _, dl, dl_loss, _, _ = build_models(StudentConfig(**{**kw, "arch": "dlib"}), 3, teacher=teacher)
    assert dl_loss.projection.weight.shape == (64, 128) and student_arch(dl) == "dlib"

    # an end-to-end run with validation: the teacher baseline is the ONNX teacher's (on its own crops)
    s = train(StudentConfig(**{**kw, "instance": "soft", "ce_weight": 1.0, "pairwise": "mse"}),
              prepared=with_val(prep))
    rows = csv_rows(tmp_path / "run" / "steps.csv")
    assert s["steps"] == 3 and all(np.isfinite(float(r[k])) for r in rows for k in ("total", "instance", "pairwise"))
    assert s["val"][0]["pairs"] == 36 and np.isfinite(s["val"][0]["teacher_clean_vs_clean"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "ckpt" / "last.safetensors"), framework="pt") as f:
        assert tuple(f.get_slice("loss.projection.weight").get_shape()) == (64, 32)
        assert tuple(f.get_slice("loss.teacher_centres").get_shape()) == (3, 64)


def test_onnx_teacher_baseline_on_its_own_crops(tiny_with_val, tmp_path):
    """A dlib-chip student, an ArcFace-crop ONNX teacher: the baseline embeds the teacher's 112x112 masked crops."""
    from trainer.data.synthesis import MaskSynthesizer

    prep = tiny_with_val
    onnx_path = tmp_path / "teacher.onnx"
    _export_teacher(onnx_path, 0)
    teacher = OnnxTeacher(onnx_path, "arcface112", "float_nchw_rgb_pm1", threads=1)
    args = (prep.paths, prep.chip_m, prep.landmarks, prep.labels, MaskSynthesizer(), 1.0, 0, MaskSynthesizer())
    dlib_ds = MaskedChipDataset(*args)
    arc_ds = MaskedChipDataset(prep.paths, arc_matrices(prep.landmarks), *args[2:], chip_size=112)
    clean = teacher.descriptors(np.stack([arc_ds.clean_bgr(i)[:, :, ::-1] for i in range(9)]))
    v = Validator(dlib_ds, prep.val_idx, clean, teacher, 40, 0, progress=False, teacher_ds=arc_ds)
    assert v.masked.shape == (9, 150, 150, 3) and v.teacher_masked.shape == (9, 112, 112, 3)
    assert v.baseline["pairs"] == 36 and np.isfinite(v.baseline["teacher_clean_vs_masked"])
