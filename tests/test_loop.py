"""The shared training loop: a run interrupted after a few steps (stopped by its step budget, or
killed mid-step after its last checkpoint) and resumed ends with the weights, optimiser state and
log of an uninterrupted run; a resume that could not continue the same run is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vqnet.training.loop import ResumeError, TrainingRun, load_checkpoint


class Tiny:
    """A tiny regression trainer that draws from every RNG a real one does: numpy for the data,
    the global torch generator for dropout and the initial weights."""

    def __init__(self, seed: int = 0, kill_at: int | None = None):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.rng = np.random.default_rng(seed)
        self.kill_at = kill_at

    def describe(self, row: dict[str, float]) -> str:
        return f"loss {row['loss']:.3f}"

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "np_rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["np_rng"]

    def step(self, step: int) -> dict[str, float]:
        if step == self.kill_at:
            raise KeyboardInterrupt  # the process dies here, after the checkpoint of the step before
        x = torch.from_numpy(self.rng.standard_normal((16, 4))).float()
        loss = (self.model(x).squeeze(1) - x.sum(1)).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}


CONFIG = {"lr": 1e-2, "seed": 0, "steps": 12}


def _train(out: Path, steps: int, resume: bool = False, kill_at: int | None = None, **config) -> Path:
    run = TrainingRun(out, CONFIG | {"steps": steps} | config, resume, may_change=["steps"], identity={"data": "a"})
    return run.run(Tiny(kill_at=kill_at), steps, ["loss"], checkpoint_minutes=0)


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as fh:
        return list(csv.DictReader(fh))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        _same(a[k], b[k])
        if isinstance(a[k], dict)
        else torch.equal(a[k], b[k])
        if torch.is_tensor(a[k])
        else a[k] == b[k]
        for k in a
    )


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_an_interrupted_and_resumed_run_ends_as_an_uninterrupted_one(tmp_path, how):
    straight = load_checkpoint(_train(tmp_path / "straight", 12))
    if how == "stopped":
        _train(tmp_path / "split", 5)
    else:
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "split", 12, kill_at=5)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 5
    resumed = load_checkpoint(_train(tmp_path / "split", 12, resume=True))
    assert resumed["step"] == straight["step"] == 12
    for part in ("model", "optimizer", "np_rng", "torch_rng"):
        assert _same({part: straight[part]}, {part: resumed[part]}), part
    assert _log(tmp_path / "split") == _log(tmp_path / "straight")  # each step once, the same losses
    assert [r["step"] for r in _log(tmp_path / "split")] == [str(i) for i in range(1, 13)]


def test_a_resume_that_could_not_continue_the_same_run_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ResumeError, match="no checkpoint"):
        _train(out, 3, resume=True)
    _train(out, 3)
    with pytest.raises(FileExistsError, match="--resume"):
        _train(out, 6)
    with pytest.raises(ResumeError, match="lr=0.01, now 0.1"):
        _train(out, 6, resume=True, lr=0.1)
    with pytest.raises(ResumeError, match="data differs"):
        TrainingRun(out, CONFIG | {"steps": 6}, resume=True, may_change=["steps"], identity={"data": "b"})
    assert load_checkpoint(_train(out, 6, resume=True))["step"] == 6  # steps may change
