"""Student architectures of the student trainer (``--arch resnet18|mobilefacenet``), the ``--preset``s, the lr step
schedule across ``--resume``, and weight files of every arch.

Fast (no ../shared data): the tiny rendered chip set of ``test_student_train.py`` (3 identities x 3 chips cut from
scikit-image's astronaut and camera, identity frame -> chip matrices, landmarks = the dlib chip template).
"""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("onnx")

try:  # module fixture: the tiny set as a folder tree + alignment cache (that module skips without gloo)
    from test_student_ddp import tiny_tree  # noqa: E402,F401
except pytest.skip.Exception:
    tiny_tree = None
from test_student_train import _cfg, tiny  # noqa: E402,F401  (tiny: module fixture)
from trainer.student_train import (PRESETS, MaskedChipDataset, Prepared, StudentConfig, Validator,  # noqa: E402
                                   _add_args, arc_matrices, build_models, config_from_args, embed_chips,
                                   load_student_weights, new_student, save_student, to_input, train)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded machine, 2-thread parallel regions wait for the scheduler (~30 ms per op)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _acfg(tmp_path, **kw) -> StudentConfig:
    return _cfg(tmp_path, **{"threads": 1, **kw})


def _parse(argv: list[str]) -> StudentConfig:
    p = argparse.ArgumentParser()
    _add_args(p)
    return config_from_args(p.parse_args(argv))


def _with_val(prep: Prepared) -> Prepared:
    """The tiny set with every image also in validation (9 images: 18 genuine + 18 impostor pairs)."""
    return Prepared(prep.paths, prep.identities, prep.labels, prep.train_idx, np.arange(len(prep.paths)),
                    prep.chip_m, prep.landmarks, prep.teacher, prep.train_ids, prep.train_ids)


def _rows(out) -> list[dict]:
    return list(csv.DictReader((out / "steps.csv").open()))


# ------------------------------------------------------------------------------------------------ presets
def test_no_flags_is_the_dataclass_default():
    assert _parse([]) == StudentConfig()
    assert _parse(["--templates", "", "--no-progress"]) == StudentConfig(templates=None, progress=False)


def test_preset_fills_only_the_fields_not_given():
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
    _add_args(p)
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
def test_arcface_crops_and_teacher_baseline(tiny):
    """Student chips are 112x112 ArcFace crops; the teacher's baseline is the one it gets on its own dlib chips."""
    from trainer.data.synthesis import MaskSynthesizer

    prep, teacher = tiny
    prep = _with_val(prep)
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
def test_mobilefacenet_trains_saves_and_validates(tiny, tmp_path):
    prep, _ = tiny
    torch.manual_seed(0)
    cfg = _acfg(tmp_path, arch="mobilefacenet", embedding_dim=64, lr=1e-3, steps_per_epoch=3, instance="soft",
               ce_weight=1.0, head_lr_mult=1.0, val_pairs=40)
    s = train(cfg, prepared=_with_val(prep))
    out = tmp_path / "run"
    assert s["steps"] == 3 and s["arch"] == "mobilefacenet" and s["embedding_dim"] == 64
    assert 0.5e6 < s["student_params"] < 1.2e6 and 0.2 < s["student_gflops"] < 0.6
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("total", "instance", "pair", "triplet", "ce"))
    assert float(rows[0]["ce"]) > 0 and float(rows[0]["instance"]) > 0
    for f in ("student.safetensors", "ckpt/last.safetensors", "ckpt/epoch1.safetensors", "val.csv", "loss.png"):
        assert (out / f).is_file(), f
    val = list(csv.DictReader((out / "val.csv").open()))
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


def test_loss_falls_on_a_fixed_batch_resnet18(tiny, tmp_path):
    from trainer.data.synthesis import MaskSynthesizer
    from trainer.losses.distill import identity_centres

    prep, _ = tiny
    torch.manual_seed(0)
    cfg = _acfg(tmp_path, arch="resnet18", embedding_dim=64, lr=1e-3, instance="soft", ce_weight=1.0,
               head_lr_mult=1.0)
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


def test_lr_schedule_survives_resume(tiny, tmp_path):
    """lr x0.1 every epoch; a run stopped after epoch 1 and resumed logs the lr (and the losses) of the
    uninterrupted run."""
    prep, _ = tiny
    kw = dict(arch="mobilefacenet", embedding_dim=32, lr=1e-3, lr_step_epochs=1, optimizer="sgd", instance="hard",
              steps_per_epoch=2)
    torch.manual_seed(0)
    train(_acfg(tmp_path / "a", epochs=3, **kw), prepared=prep)
    full = _rows(tmp_path / "a" / "run")
    assert [float(r["lr"]) for r in full] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])

    torch.manual_seed(0)
    train(_acfg(tmp_path / "b", epochs=1, **kw), prepared=prep)
    torch.manual_seed(123)  # the resumed run must not depend on the fresh initialisation
    s = train(_acfg(tmp_path / "b", epochs=3, resume=True, **kw), prepared=prep)
    assert s["steps"] == 6
    resumed = _rows(tmp_path / "b" / "run")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    assert [float(r["lr"]) for r in resumed] == pytest.approx([float(r["lr"]) for r in full])
    assert [float(r["total"]) for r in resumed] == pytest.approx([float(r["total"]) for r in full], rel=1e-4)
    meta = json.loads((tmp_path / "b" / "run" / "ckpt/last.json").read_text())
    assert meta["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5)


# ------------------------------------------------------------------------------------------------ torchrun
@pytest.mark.skipif(tiny_tree is None, reason="torch.distributed with gloo is not available")
def test_torchrun_two_gloo_processes_resnet18(tmp_path, tiny_tree):
    """DDP with a BatchNorm student (resnet18, 32-d; its frozen embedding-BN scale has no gradient): the ranks end
    with the same weights (rank 0's BN statistics), the ones rank 0 saved."""
    import os
    import subprocess
    import sys

    from test_student_ddp import ROOT, _free_port
    from trainer.student_train import load_checkpoint, state_sha1

    data, cache = tiny_tree
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "trainer.student_train", "--arch", "resnet18",
           "--embedding-dim", "32", "--data", str(data), "--cache", str(cache), "--templates", "", "--out", str(out),
           "--epochs", "2", "--p-identities", "2", "--k-images", "2", "--steps-per-epoch", "2", "--lr", "1e-3",
           "--lr-step-epochs", "1", "--instance", "soft", "--ce-weight", "1", "--mask-prob", "1.0", "--threads", "1",
           "--workers", "0", "--val-fraction", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert "student resnet18: 32-d embedding, 112x112 RGB input" in r.stderr
    rows = _rows(out)
    assert [int(x["step"]) for x in rows] == [1, 2] and [float(x["lr"]) for x in rows] == pytest.approx([1e-3, 1e-4])
    assert all(np.isfinite(float(x["total"])) for x in rows)
    summary = json.loads((out / "summary.json").read_text())
    h0, h1 = summary["weights_sha1"]
    assert h0 == h1 and summary["arch"] == "resnet18"
    meta = json.loads((out / "ckpt/last.json").read_text())
    cfg = StudentConfig.from_json(meta["config"])
    assert (cfg.arch, cfg.embedding_dim, meta["world_size"]) == ("resnet18", 32, 2)
    _, student, loss_mod, _, _ = build_models(cfg, 3, torch.zeros(3, 128))
    load_checkpoint(out / "ckpt/last.safetensors", student, loss_mod)
    assert state_sha1(student) + ":" + state_sha1(loss_mod) == h0
    saved = load_student_weights(out / "student.safetensors")
    assert state_sha1(saved.net) == state_sha1(student.net)
