"""The trainer's one checkpoint format (``trainer/checkpoints.py``): round trips, atomic writes, torn saves, older
layouts, no pickle."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from trainer.checkpoints import (CheckpointError, atomic_write_text, checkpoint_files, find_checkpoint,  # noqa: E402
                                 load_checkpoint, save_checkpoint, save_tensors)


def _net_and_opts(seed: int):
    """A small net with a BatchNorm buffer, Adam on one part, SGD with momentum on the other, a few steps taken."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    adam = torch.optim.Adam(net[0].parameters(), lr=1e-2, betas=(0.5, 0.9))
    sgd = torch.optim.SGD(list(net[1].parameters()) + list(net[2].parameters()), lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = net(torch.randn(5, 4, generator=g)).pow(2).mean()
        adam.zero_grad()
        sgd.zero_grad()
        loss.backward()
        adam.step()
        sgd.step()
    return net, adam, sgd


def test_round_trip_restores_weights_optimisers_and_rng(tmp_path):
    net, adam, sgd = _net_and_opts(0)
    torch.manual_seed(5)
    stem = tmp_path / "ckpt" / "last"
    save_checkpoint(stem, {"net": net}, {"kind": "test", "step": 3, "config": {"lr": 1e-2}},
                    {"adam": adam, "sgd": sgd}, rng=True, weights_metadata={"arch": "toy"})
    expected_draw = torch.rand(3)
    w, j, o = checkpoint_files(stem)
    assert w.is_file() and j.is_file() and o.is_file()
    assert not list(stem.parent.glob("*.tmp"))  # no temporary files left behind
    for f in (w, o):  # safetensors: an 8-byte header length, then JSON -- never a pickle
        assert f.read_bytes()[8:9] == b"{"
    meta = json.loads(j.read_text())
    assert (meta["format"], meta["version"], meta["kind"], meta["step"]) == ("lookthrough.checkpoint", 2, "test", 3)
    assert meta["optimizers"]["adam"]["param_groups"][0]["betas"] == [0.5, 0.9]

    net2, adam2, sgd2 = _net_and_opts(1)  # other weights, other optimiser state
    torch.manual_seed(123)
    ck = load_checkpoint(tmp_path)  # a run folder resolves to ckpt/last
    ck.restore({"net": net2}, {"adam": adam2, "sgd": sgd2}, rng=True)
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where the save left it
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k
    for o1, o2 in ((adam, adam2), (sgd, sgd2)):
        s1, s2 = o1.state_dict(), o2.state_dict()
        assert s1["param_groups"] == s2["param_groups"]  # tuples (betas) come back as tuples
        assert s1["state"].keys() == s2["state"].keys() and s1["state"]
        for pid in s1["state"]:
            for name, v in s1["state"][pid].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][pid][name])), (pid, name)
    assert ck.state("net").keys() == net.state_dict().keys()


def test_weights_only_checkpoint_and_missing_parts(tmp_path):
    net, adam, _ = _net_and_opts(0)
    save_checkpoint(tmp_path / "w", {"net": net}, {"kind": "test"})
    assert not checkpoint_files(tmp_path / "w")[2].exists()
    ck = load_checkpoint(tmp_path / "w.safetensors")
    assert ck.optim == {} and ck.modules == ["net"]
    with pytest.raises(CheckpointError, match="no optimiser state 'adam'"):
        ck.restore({"net": net}, {"adam": adam})
    with pytest.raises(CheckpointError, match="no module 'other'"):
        ck.state("other")
    with pytest.raises(CheckpointError, match="does not fit"):
        ck.restore({"net": torch.nn.Linear(3, 3)})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match="may not contain"):
        save_checkpoint(tmp_path / "x", {"a.b": net})


def test_a_torn_save_is_detected(tmp_path):
    """Files of two different saves under one stem (a save interrupted between its renames) do not load."""
    net, adam, _ = _net_and_opts(0)
    save_checkpoint(tmp_path / "a", {"net": net}, {"step": 1}, {"adam": adam})
    save_checkpoint(tmp_path / "b", {"net": net}, {"step": 2}, {"adam": adam})
    checkpoint_files(tmp_path / "b")[0].replace(checkpoint_files(tmp_path / "a")[0])  # b's weights, a's JSON
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(tmp_path / "a")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    """A write that fails half way (here: the disk fills up at fsync) leaves the previous file and no temp file."""
    import os

    p = tmp_path / "x.json"
    atomic_write_text(p, "old")

    def disk_full(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(p, "new")
    with pytest.raises(OSError, match="No space"):
        save_tensors({"t": torch.zeros(2)}, p)
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["x.json"]


def test_older_layouts_still_load(tmp_path):
    """Version-1 run folders and files (what earlier trainers wrote) load through the same reader."""
    from safetensors.torch import save_file

    net, adam, _ = _net_and_opts(0)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    # segmenter v1: model.safetensors + config.json (+ optim.safetensors keyed "<pid>.<name>")
    seg = tmp_path / "seg"
    seg.mkdir()
    save_file(sd, str(seg / "model.safetensors"))
    (seg / "config.json").write_text(json.dumps({"model": {"width": 8}, "step": 7, "train": {"lr": 1}}))
    osd = adam.state_dict()["state"]
    save_file({f"{pid}.{k}": torch.as_tensor(v) for pid, st in osd.items() for k, v in st.items()},
              str(seg / "optim.safetensors"))
    ck = load_checkpoint(seg)
    assert (ck.legacy, ck.kind, ck.step, ck.meta["models"]["model"]) == ("segmenter-v1", "segmenter", 7, {"width": 8})
    net2, adam2, _ = _net_and_opts(1)
    ck.restore({"model": net2}, {"opt": adam2})
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert torch.equal(adam2.state_dict()["state"][0]["exp_avg"], osd[0]["exp_avg"])
    # inpainter v1: generator.safetensors + critics.safetensors ("global." / "local.") + config.json
    inp = tmp_path / "inp"
    inp.mkdir()
    save_file(sd, str(inp / "generator.safetensors"))
    save_file({f"global.{k}": v for k, v in sd.items()}, str(inp / "critics.safetensors"))
    (inp / "config.json").write_text(json.dumps({"model": {"width": 4}, "step": 2}))
    ck = load_checkpoint(inp)
    assert ck.legacy == "inpainter-v1" and set(ck.modules) == {"generator", "global"}
    assert ck.state("generator").keys() == sd.keys()
    # student v1: "student." / "loss." / "opt." keys + a JSON with the optimiser's groups and shapes
    t = {f"student.{k}": v for k, v in sd.items()}
    t.update({f"opt.{pid}.{k}": torch.as_tensor(v).reshape(-1) for pid, st in osd.items() for k, v in st.items()})
    save_file(t, str(tmp_path / "last.safetensors"), {"arch": "dlib"})
    shapes = {f"opt.{pid}.{k}": list(torch.as_tensor(v).shape) for pid, st in osd.items() for k, v in st.items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in adam.state_dict()["param_groups"]]
    (tmp_path / "last.json").write_text(json.dumps({"config": {"arch": "dlib"}, "epoch": 1, "batch": 0, "step": 4,
                                                    "optimizer": {"param_groups": groups, "shapes": shapes}}))
    ck = load_checkpoint(tmp_path / "last.safetensors")
    assert (ck.legacy, ck.step, ck.meta["arch"]) == ("student-v1", 4, "dlib")
    net3, adam3, _ = _net_and_opts(2)
    ck.restore({"student": net3}, {"opt": adam3})
    assert torch.equal(adam3.state_dict()["state"][0]["step"], torch.as_tensor(osd[0]["step"]))
    # a bare state dict: one module, named by the caller
    save_file(sd, str(tmp_path / "bare.safetensors"))
    ck = load_checkpoint(tmp_path / "bare.safetensors", module="student")
    assert ck.legacy == "weights" and ck.state("student").keys() == sd.keys()
    assert find_checkpoint(tmp_path / "bare.safetensors") is None  # not this format


def test_garbage_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)
