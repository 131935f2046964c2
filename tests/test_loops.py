"""The training-loop skeleton (``trainer/loops``) with a tiny plugin: exact resume (N steps straight == N/2 + resume,
with random numbers drawn in every step), log trimming, epoch checkpoints, the time limit, DDP refusal."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from _trainer_helpers import csv_rows  # noqa: E402
from trainer.loops import DistContext, LoopSettings, Plugin, run_loop  # noqa: E402


class Toy(Plugin):
    """Regress a fixed random linear map; dropout in every step (the global RNG matters), Adam, epochs of 3
    batches; batch ``b`` of epoch ``e`` is a pure function of ``(e, b)``."""

    kind = "toy"
    csv_fields = ("step", "epoch", "batch", "loss", "seconds")

    def __init__(self, epochs: int = 2, batches: int = 3):
        self.epochs, self.n = epochs, batches
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.ended: list[int] = []

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"opt": self.opt}

    def meta(self):
        return {"config": {"epochs": self.epochs}}

    def num_epochs(self):
        return self.epochs

    def batches_per_epoch(self, epoch, world):
        return self.n

    def batches(self, epoch, first, ctx):
        for b in range(first, self.n):
            g = torch.Generator().manual_seed(1000 * epoch + b)
            x = torch.randn(8, 4, generator=g)
            yield x, x @ torch.ones(4, 2)

    def step(self, batch, epoch, step, ctx):
        x, y = batch
        loss = (self.net(x) - y).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def end_epoch(self, epoch, step):
        self.ended.append(epoch)


def _run(out, resume=False, ckpt_every=2, epochs=2, **kw):
    made = []

    def make(ctx: DistContext, ck):
        torch.manual_seed(0)  # the same initial weights every time
        made.append(Toy(epochs))
        return made[-1]

    result = run_loop(make, LoopSettings(out=out, ckpt_every=ckpt_every, resume=resume, progress=False, **kw))
    return result, made[-1]


def test_straight_equals_killed_and_resumed(tmp_path, kill_and_resume, same_checkpoints):
    _run(tmp_path / "straight", epoch_checkpoints=True)
    seen = {}

    def run(resume):
        if resume:  # what the killed run left behind
            meta = json.loads((tmp_path / "killed/ckpt/last.json").read_text())
            seen.update(progress=(meta["epoch"], meta["batch"], meta["step"]),
                        rows=[r["step"] for r in csv_rows(tmp_path / "killed/log.csv")])
        return _run(tmp_path / "killed", resume=resume, epoch_checkpoints=True)

    result, toy = kill_and_resume(Toy, 5, run)  # killed after 5 of 6 steps; the last checkpoint is step 4
    assert seen == {"progress": (1, 1, 4), "rows": ["1", "2", "3", "4", "5"]}
    assert result["steps"] == 6 and toy.ended == [1]  # only the epoch it finished
    ck = same_checkpoints(tmp_path / "straight", tmp_path / "killed")
    assert "rng.torch" in ck.optim and ck.meta["kind"] == "toy" and ck.meta["config"] == {"epochs": 2}
    a, b = csv_rows(tmp_path / "straight/log.csv"), csv_rows(tmp_path / "killed/log.csv")
    assert [r["step"] for r in b] == ["1", "2", "3", "4", "5", "6"]  # step 5 logged once, by the resumed run
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert (tmp_path / "killed/ckpt/epoch1.json").is_file() and (tmp_path / "killed/ckpt/epoch2.json").is_file()


@pytest.mark.slow
def test_without_the_rng_state_the_resume_would_differ(tmp_path, same_checkpoints, monkeypatch):
    """The exact-resume test above can fail: drop the RNG restore and the dropout masks differ after the resume."""
    from trainer import checkpoints

    _run(tmp_path / "straight")
    _run(tmp_path / "split", epochs=1)
    monkeypatch.setattr(checkpoints, "_restore_rng", lambda tensors: torch.manual_seed(99))
    _run(tmp_path / "split", epochs=2, resume=True)
    with pytest.raises(AssertionError):
        same_checkpoints(tmp_path / "straight", tmp_path / "split")


def test_longer_run_continues_and_finished_run_is_a_no_op(tmp_path):
    _run(tmp_path / "a", epochs=1)
    result, toy = _run(tmp_path / "a", epochs=1, resume=True)  # nothing left to train
    assert result["steps"] == 3 and toy.ended == []
    result, _ = _run(tmp_path / "a", epochs=2, resume=True)
    assert result["steps"] == 6
    assert [r["epoch"] for r in csv_rows(tmp_path / "a/log.csv")] == ["1"] * 3 + ["2"] * 3


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    result, _ = _run(tmp_path / "t", max_minutes=1e-9, ckpt_every=0)
    meta = json.loads((tmp_path / "t/ckpt/last.json").read_text())
    assert result["steps"] == 1 and (meta["epoch"], meta["batch"], meta["step"]) == (0, 1, 1)
    result, _ = _run(tmp_path / "t", resume=True, ckpt_every=0)
    assert result["steps"] == 6


def test_plugins_without_ddp_refuse_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(DistContext, "__enter__", lambda self: self)  # no process group in a unit test
    with pytest.raises(SystemExit, match="does not run under torchrun"):
        _run(tmp_path / "d")
