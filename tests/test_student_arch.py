"""Student architectures of the student trainer (``--arch resnet18|mobilefacenet``), the ``--preset``s, the lr step
schedule across ``--resume``, and weight files of every arch.

Fast (no ../shared data): the ``tiny`` rendered chip set of ``conftest.py`` (3 identities x 3 chips cut from
scikit-image's astronaut and camera, identity frame -> chip matrices, landmarks = the dlib chip template).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("onnx")

from _trainer_helpers import csv_rows  # noqa: E402
from trainer.checkpoints import load_checkpoint  # noqa: E402
from trainer.loops import state_sha1  # noqa: E402
from trainer.student.build import build_models  # noqa: E402
from trainer.student.cli import add_args  # noqa: E402
from trainer.student.config import PRESETS, StudentConfig  # noqa: E402
from trainer.student.data import MaskedChipDataset, arc_matrices  # noqa: E402
from trainer.student.loop import train  # noqa: E402
from trainer.student.models import load_student_weights, new_student, save_student, to_input  # noqa: E402
from trainer.student.validate import Validator, embed_chips  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded machine, 2-thread parallel regions wait for the scheduler (~30 ms per op).
    (conftest's autouse fixture restores the thread count.)"""
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ presets
def test_no_flags_is_the_dataclass_default(parse_student_args):
    _parse = parse_student_args
    assert _parse([]) == StudentConfig()
    assert _parse(["--templates", "", "--no-progress"]) == StudentConfig(templates=None, progress=False)
    assert _parse(["--no-keep-undetected"]).keep_undetected is False and _parse([]).keep_undetected is True


def test_preset_fills_only_the_fields_not_given(parse_student_args):
    _parse = parse_student_args
    cfg = _parse(["--preset", "paper"])
    paper = PRESETS["paper"]
    assert cfg.preset == "paper"
    for k, v in paper.items():
        assert getattr(cfg, k) == v, k
    assert (cfg.arch, cfg.embedding_dim, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.lr_step_epochs) == \
        ("resnet18", 512, 128, "sgd", 0.1, 24)
    assert (cfg.weight_decay, cfg.instance, cfg.lambda_p, cfg.lambda_t, cfg.ce_weight, cfg.epochs,
            cfg.max_per_identity) == (5e-4, "soft", 1.0, 2.0, 1.0, 60, 0)
    assert cfg.data == StudentConfig().data  # fields outside the preset keep the defaults

    # explicit flags win -- also when they equal the dataclass default (lr 1e-5, adam, epochs 2, dlib)
    cfg = _parse(["--preset", "paper", "--lr", "1e-5", "--epochs", "2", "--optimizer", "adam", "--arch", "dlib",
                  "--max-per-identity", "10", "--no-progress"])
    assert (cfg.lr, cfg.epochs, cfg.optimizer, cfg.arch, cfg.max_per_identity, cfg.progress) == \
        (1e-5, 2, "adam", "dlib", 10, False)
    assert (cfg.p_identities, cfg.lr_step_epochs, cfg.weight_decay, cfg.instance) == (32, 24, 5e-4, "soft")

    cfg = _parse(["--preset", "cpu", "--embedding-dim", "64", "--p-identities", "2"])
    assert (cfg.arch, cfg.embedding_dim, cfg.p_identities, cfg.k_images, cfg.epochs, cfg.steps_per_epoch,
            cfg.optimizer, cfg.lr) == ("mobilefacenet", 64, 2, 4, 1, 20, "adam", 1e-3)
    # the programmatic form behaves the same
    assert StudentConfig.from_preset("cpu", embedding_dim=64, p_identities=2) == cfg
    assert StudentConfig.from_preset(None, lr=0.5) == StudentConfig(lr=0.5)
    with pytest.raises(ValueError, match="preset"):
        StudentConfig.from_preset("nope")
    with pytest.raises(ValueError, match="arch"):
        StudentConfig(arch="vgg")


def test_help_documents_presets_and_archs(capsys):
    p = argparse.ArgumentParser()
    add_args(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "60 epochs (our choice: the paper does not give the number of epochs)" in text
    assert "mobilefacenet" in text and "--lr-step-epochs" in text and "(default: dlib)" in text


def test_lr_factor():
    cfg = StudentConfig(lr_step_epochs=24)
    assert [cfg.lr_factor(e) for e in (0, 23, 24, 47, 48)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert StudentConfig().lr_factor(100) == 1.0


# -------------------------------------------------------------------------------------------------- models
@pytest.mark.slow
@pytest.mark.parametrize("arch,dim", [("mobilefacenet", 128), ("resnet18", 64)])
def test_student_normalises_inside_and_round_trips(arch, dim, tmp_path):
    from trainer.models.student import build_student, preprocess

    torch.manual_seed(0)
    net = new_student(arch, dim).eval()
    assert (net.arch, net.embedding_dim, net.input_size) == (arch, dim, 112)
    ref = build_student(arch, embedding_dim=dim)
    ref.load_state_dict(net.net.state_dict())
    ref.eval()
    u8 = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        got = net(to_input(torch.from_numpy(u8)))
        want = ref(preprocess(u8))
    assert got.shape == (2, dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embed_chips(net, u8, batch=1), want.numpy(), rtol=1e-4, atol=1e-4)

    path = save_student(net, tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["arch"] == arch and f.metadata()["embedding_dim"] == str(dim)
        assert not any(k.startswith("net.") for k in f.keys())  # insightface / reference key names
    back = load_student_weights(path)
    assert back.arch == arch and back.embedding_dim == dim and not back.training
    for (k, a), b in zip(net.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="holds a"):
        load_student_weights(path, arch="dlib")


def test_dlib_weights_still_load(tmp_path):
    from trainer.models.dlib_resnet import DlibResNet, default_dat_path

    net = load_student_weights(default_dat_path())
    assert isinstance(net, DlibResNet)
    save_student(net, tmp_path / "d.safetensors")
    net.save_safetensors(tmp_path / "old.safetensors")  # an older file: no arch metadata
    for f in ("d.safetensors", "old.safetensors"):
        back = load_student_weights(tmp_path / f)
        assert isinstance(back, DlibResNet)
        for (k, a), b in zip(net.state_dict().items(), back.state_dict().values()):
            assert torch.equal(a, b), (f, k)


# ----------------------------------------------------------------------------------------------- data
@pytest.mark.slow
def test_arcface_crops_and_teacher_baseline(tiny, tiny_with_val):
    """Student chips are 112x112 ArcFace crops; the teacher's baseline is the one it gets on its own dlib chips."""
    from trainer.data.synthesis import MaskSynthesizer

    _, teacher = tiny
    prep = tiny_with_val
    arc = arc_matrices(prep.landmarks)
    assert arc.shape == (9, 2, 3)
    args = (prep.paths, prep.chip_m, prep.landmarks, prep.labels, MaskSynthesizer(), 1.0, 0, MaskSynthesizer())
    dlib_ds = MaskedChipDataset(*args)
    arc_ds = MaskedChipDataset(prep.paths, arc, *args[2:], chip_size=112)
    m, c, y, i = arc_ds[(4, 0)]
    assert m.shape == c.shape == (112, 112, 3) and m.dtype == np.uint8 and (y, i) == (prep.labels[4], 4)
    assert not np.array_equal(m, c)
    lm = arc_ds.chip_landmarks(4)
    from sdk.align import ARCFACE_112

    np.testing.assert_allclose(lm, ARCFACE_112, atol=2.0)  # least-squares fit onto the ArcFace template

    ref = Validator(dlib_ds, prep.val_idx, prep.teacher, teacher, 40, 0, progress=False)
    v = Validator(arc_ds, prep.val_idx, prep.teacher, teacher, 40, 0, progress=False, teacher_ds=dlib_ds)
    assert v.masked.shape == (9, 112, 112, 3) and v.teacher_masked.shape == (9, 150, 150, 3)
    np.testing.assert_array_equal(v.teacher_masked, ref.masked)  # same images, same seeds as the dlib run
    assert v.baseline == ref.baseline and v.baseline["pairs"] == 36
    student = new_student("mobilefacenet", 32)
    got = v(student)
    assert set(got) == {"student_clean_vs_masked", "student_clean_vs_clean", "student_masked_vs_masked"}
    assert all(np.isfinite(x) for x in got.values()) and student.training  # training flag restored


def test_completion_through_the_arcface_crop_is_identity(tiny):
    from sdk.align import ARCFACE_112, similarity_to_template
    from trainer.data.completion import ChipCompleter, chip_to_arc
    from trainer.data.synthesis import MaskSynthesizer

    prep, _ = tiny
    arc = arc_matrices(prep.landmarks)
    m = chip_to_arc(arc[0], similarity_to_template(prep.landmarks[0], ARCFACE_112))
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    args = (prep.paths, arc, prep.landmarks, prep.labels, MaskSynthesizer(), 1.0, 0)
    plain = MaskedChipDataset(*args, chip_size=112)
    done = MaskedChipDataset(*args, chip_size=112, completer=ChipCompleter("telea"))
    m0, c0, _, _ = plain[(2, 0)]
    m1, c1, _, _ = done[(2, 0)]
    np.testing.assert_array_equal(c0, c1)
    assert m1.shape == (112, 112, 3) and (m0 != c0).any() and (m1 != m0).any()


# --------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_mobilefacenet_trains_saves_and_validates(tiny_with_val, tmp_path, student_cfg, steps_rows):
    cfg = student_cfg(arch="mobilefacenet", embedding_dim=64, lr=1e-3, steps_per_epoch=3, instance="soft",
                      ce_weight=1.0, head_lr_mult=1.0, val_pairs=40)
    s = train(cfg, prepared=tiny_with_val)
    out = tmp_path / "run"
    assert s["steps"] == 3 and s["arch"] == "mobilefacenet" and s["embedding_dim"] == 64
    assert 0.5e6 < s["student_params"] < 1.2e6 and 0.2 < s["student_gflops"] < 0.6
    rows = steps_rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("total", "instance", "pair", "triplet", "ce"))
    assert float(rows[0]["ce"]) > 0 and float(rows[0]["instance"]) > 0
    for f in ("student.safetensors", "ckpt/last.safetensors", "ckpt/epoch1.safetensors", "val.csv", "loss.png"):
        assert (out / f).is_file(), f
    val = csv_rows(out / "val.csv")
    assert len(val) == 2 and all(np.isfinite(float(r["student_clean_vs_clean"])) for r in val)
    assert np.isfinite(float(val[0]["teacher_clean_vs_masked"]))

    # the saved student and the checkpoint's hold the same network
    a = load_student_weights(out / "student.safetensors")
    b = load_student_weights(out / "ckpt/last.safetensors")
    assert a.arch == b.arch == "mobilefacenet" and a.embedding_dim == 64
    chips = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(embed_chips(a, chips), embed_chips(b, chips))
    meta = json.loads((out / "ckpt/last.json").read_text())
    assert meta["config"]["arch"] == "mobilefacenet"
    # the teacher's baseline is the dlib one (the teacher never sees the student's crops)
    assert json.loads((out / "summary.json").read_text())["val"][0]["pairs"] == 36


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch_resnet18(tiny, student_cfg):
    from trainer.data.synthesis import MaskSynthesizer
    from trainer.losses.distill import identity_centres

    prep, _ = tiny
    cfg = student_cfg(arch="resnet18", embedding_dim=64, lr=1e-3, instance="soft", ce_weight=1.0, head_lr_mult=1.0)
    centres = identity_centres(torch.from_numpy(prep.teacher), torch.from_numpy(prep.labels), 3)
    _, student, loss_mod, head, opt = build_models(cfg, 3, centres)
    assert student.embedding_dim == 64 and head.weight.shape == (3, 64)
    assert loss_mod.projection.weight.shape == (128, 64)  # learned projection to the teacher's 128-d
    assert any(loss_mod.projection.weight is q for g in opt.param_groups for q in g["params"])
    ds = MaskedChipDataset(prep.paths, arc_matrices(prep.landmarks), prep.landmarks, prep.labels,
                           MaskSynthesizer(), 1.0, 0, chip_size=112)
    idx = [0, 1, 3, 4, 6, 7]
    x = to_input(torch.from_numpy(np.stack([ds[(i, 0)][0] for i in idx])))
    t = torch.from_numpy(prep.teacher[idx])
    y = torch.from_numpy(prep.labels[idx])
    losses = []
    for _ in range(4):
        s = student(x)
        total, _parts = loss_mod(s, t, logits=head(s, y), labels=y)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_lr_schedule_survives_resume(tiny, tmp_path, student_cfg, steps_rows):
    """lr x0.1 every epoch; a run stopped after epoch 1 and resumed logs the lr (and the losses) of the
    uninterrupted run, and ends with the same weights and SGD momentum."""
    prep, _ = tiny
    kw = dict(arch="mobilefacenet", embedding_dim=32, lr=1e-3, lr_step_epochs=1, optimizer="sgd", instance="hard",
              steps_per_epoch=2)
    train(student_cfg(out=str(tmp_path / "a"), epochs=3, **kw), prepared=prep)
    full = steps_rows(tmp_path / "a")
    assert [float(r["lr"]) for r in full] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])

    train(student_cfg(out=str(tmp_path / "b"), epochs=1, **kw), prepared=prep)
    torch.manual_seed(123)  # the resumed run must not depend on the fresh initialisation
    s = train(student_cfg(out=str(tmp_path / "b"), epochs=3, resume=True, **kw), prepared=prep)
    assert s["steps"] == 6
    resumed = steps_rows(tmp_path / "b")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in full]
    assert [r["total"] for r in resumed] == [r["total"] for r in full]
    meta = json.loads((tmp_path / "b" / "ckpt/last.json").read_text())
    assert meta["optimizers"]["opt"]["param_groups"][0]["lr"] == pytest.approx(1e-5)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert [k for k in a.optim if "momentum_buffer" in k] and a.optim.keys() == b.optim.keys()
    for part_a, part_b in ((a.weights, b.weights), (a.optim, b.optim)):
        for k in part_a:
            assert torch.equal(part_a[k], part_b[k]), k


# ------------------------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_torchrun_two_gloo_processes_resnet18(tmp_path, tiny_tree, torchrun, steps_rows):
    """DDP with a BatchNorm student (resnet18, 32-d; its frozen embedding-BN scale has no gradient): the ranks end
    with the same weights (rank 0's BN statistics), the ones rank 0 saved.  Runs the compatibility module name
    ``trainer.student_train``."""
    data, cache = tiny_tree
    out = tmp_path / "run"
    r = torchrun(["-m", "trainer.student_train", "--arch", "resnet18",
                  "--embedding-dim", "32", "--data", str(data), "--cache", str(cache), "--templates", "", "--out",
                  str(out), "--epochs", "2", "--p-identities", "2", "--k-images", "2", "--steps-per-epoch", "2",
                  "--lr", "1e-3", "--lr-step-epochs", "1", "--instance", "soft", "--ce-weight", "1", "--mask-prob",
                  "1.0", "--threads", "1", "--workers", "0", "--val-fraction", "0", "--no-progress"])
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert "student resnet18: 32-d embedding, 112x112 RGB input" in r.stderr
    rows = steps_rows(out)
    assert [int(x["step"]) for x in rows] == [1, 2] and [float(x["lr"]) for x in rows] == pytest.approx([1e-3, 1e-4])
    assert all(np.isfinite(float(x["total"])) for x in rows)
    summary = json.loads((out / "summary.json").read_text())
    h0, h1 = summary["weights_sha1"]
    assert h0 == h1 and summary["arch"] == "resnet18"
    meta = json.loads((out / "ckpt/last.json").read_text())
    cfg = StudentConfig.from_json(meta["config"])
    assert (cfg.arch, cfg.embedding_dim, meta["world_size"]) == ("resnet18", 32, 2)
    _, student, loss_mod, _, _ = build_models(cfg, 3, torch.zeros(3, 128))
    load_checkpoint(out).restore({"student": student, "loss": loss_mod})
    assert state_sha1(student) + ":" + state_sha1(loss_mod) == h0
    saved = load_student_weights(out / "student.safetensors")
    assert state_sha1(saved.net) == state_sha1(student.net)
