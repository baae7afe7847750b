"""--ema: an exponential moving average of the weights, ramped up, validated and saved as
best.pt, resumed exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from defectdet.engine.train import loop as train_module
from defectdet.engine.train.loop import Interrupted, train
from defectdet.engine.train.schedule import build_ema
from defectdet.model import load_checkpoint
from test_train import make_easy_dataset, tiny_config


def test_ema_follows_the_ramped_formula() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = build_ema(model, decay=0.9, total_steps=50)  # tau = 5
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update_parameters(model)
        d = 0.9 * (1 - math.exp(-(step - 1) / 5))  # the first update copies (d = 0)
        expected = [
            e + (1 - d) * (p.detach() - e)
            for e, p in zip(expected, model.parameters(), strict=True)
        ]
    for got, want in zip(ema.module.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)
    assert build_ema(model, 0.0, 50) is None


@pytest.mark.slow
def test_best_pt_holds_the_average_and_resume_is_exact(tmp_path: Path, monkeypatch) -> None:
    data = make_easy_dataset(tmp_path / "data")

    def cfg(project):  # validated once, at the end: best.pt is the last epoch
        return tiny_config(data, project, optim__epochs=3, optim__ema=0.9, run__eval_interval=3)

    full = train(cfg(tmp_path / "a"))
    best, last = (load_checkpoint(full / "weights" / n) for n in ("best.pt", "last.pt"))
    key = "head.classification_head.cls_logits.weight"
    assert torch.equal(best["model"][key], last["ema"][f"module.{key}"])  # the average...
    assert not torch.equal(best["model"][key], last["model"][key])  # ...not the raw weights

    original = train_module.Trainer._step

    def step(self, images, targets):
        parts = original(self, images, targets)
        if self.state["global_step"] >= 3:
            self._stop_requested = True
        return parts

    with monkeypatch.context() as m:
        m.setattr(train_module.Trainer, "_step", step)
        with pytest.raises(Interrupted):
            train(cfg(tmp_path / "b"))
    resumed = train(resume=tmp_path / "b" / "exp")
    again = load_checkpoint(resumed / "weights" / "last.pt")
    for name, tensor in last["ema"].items():
        assert torch.equal(tensor, again["ema"][name]), name


@pytest.mark.slow
def test_ema_ramp_follows_the_steps_a_time_budget_fits(tmp_path: Path, monkeypatch) -> None:
    """The EMA is built before --time-budget has measured the speed (for a provisional million
    steps); the fit must carry the run's real length into its ramp, or the 'average' would stay
    at the current weights for the whole run."""
    from test_time_budget import FakeClock

    data = make_easy_dataset(tmp_path / "data", repeat=4)
    clock = FakeClock(1.0)
    original, seen = train_module.Trainer._step, {}

    def step(self, images, targets):
        clock.now += clock.per_step
        return original(self, images, targets)

    def finish(self):
        seen.update(tau=self.ema.ramp.tau, total=self.state["total_steps"])
        seen["decay"] = self.ema.ramp(self.state["total_steps"])

    monkeypatch.setattr(train_module.Trainer, "clock", staticmethod(clock))
    monkeypatch.setattr(train_module.Trainer, "_step", step)
    monkeypatch.setattr(train_module.Trainer, "_finish", finish)
    cfg = tiny_config(data, tmp_path, optim__epochs=1, optim__time_budget=1.0, optim__ema=0.9)
    train(cfg)
    assert 10 <= seen["total"] <= 60  # about a minute of 1-second steps
    assert seen["tau"] == pytest.approx(seen["total"] / 10)
    assert seen["decay"] == pytest.approx(0.9 * (1 - math.exp(-10)))  # fully ramped at the end
