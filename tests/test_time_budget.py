"""--time-budget: the step count is fitted to the measured speed so that the run, its last
validation and its calibration end on time, with the learning rate fully annealed."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectdet.config import load_yaml
from defectdet.engine.train import loop as train_module
from defectdet.engine.train.loop import train
from defectdet.engine.train.schedule import COSINE_FLOOR
from test_train import make_easy_dataset, tiny_config


class FakeClock:
    """Time that moves only when the model steps (``per_step`` seconds a step)."""

    def __init__(self, per_step: float) -> None:
        self.now, self.per_step = 0.0, per_step

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
@pytest.mark.parametrize("per_step", [1.0, 2.0])
def test_budget_fixes_the_steps_and_anneals(tmp_path: Path, monkeypatch, per_step: float):
    data = make_easy_dataset(tmp_path / "data", repeat=4)  # 32 images: 8 steps an epoch at 4
    clock = FakeClock(per_step)
    original = train_module.Trainer._step

    def step(self, images, targets):
        clock.now += clock.per_step
        return original(self, images, targets)

    monkeypatch.setattr(train_module.Trainer, "clock", staticmethod(clock))
    monkeypatch.setattr(train_module.Trainer, "_step", step)
    cfg = tiny_config(data, tmp_path, optim__epochs=1, optim__time_budget=1.0)  # 60 s
    cfg.optim.warmup_iters = 3
    run = train(cfg)
    schedule = load_yaml(run / "resolved.yaml")["schedule"]
    from defectdet.model import load_checkpoint

    state = load_checkpoint(run / "weights" / "last.pt")["state"]
    # 60 s minus a reserve for validations (none measured: 5 % each) at per_step s a step.
    assert state["global_step"] == schedule["total_steps"] == state["total_steps"]
    assert 0.7 * 60 / per_step <= schedule["total_steps"] <= 60 / per_step
    assert clock.now <= 60  # ended on time (validations cost nothing on this clock)
    assert schedule["epochs"] == -(-schedule["total_steps"] // 8) > 1  # more than --epochs 1
    lr = load_checkpoint(run / "weights" / "last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(cfg.optim.lr * COSINE_FLOOR, rel=0.05)  # annealed to the floor


@pytest.mark.slow
def test_slow_validations_are_thinned_to_fit_the_budget(tmp_path: Path, monkeypatch):
    """A validation costing 8 training steps would take half of a 60 s budget if it ran every
    epoch: the budget thins them to at most 15 % and still ends on time, annealed."""
    data = make_easy_dataset(tmp_path / "data", repeat=4)  # 8 steps an epoch at batch 4
    clock = FakeClock(1.0)
    step_original, validate_original = train_module.Trainer._step, train_module.Trainer.validate

    def step(self, images, targets):
        clock.now += clock.per_step
        return step_original(self, images, targets)

    def validate(self):
        clock.now += 8.0
        return validate_original(self)

    monkeypatch.setattr(train_module.Trainer, "clock", staticmethod(clock))
    monkeypatch.setattr(train_module.Trainer, "_step", step)
    monkeypatch.setattr(train_module.Trainer, "validate", validate)
    cfg = tiny_config(data, tmp_path, optim__epochs=1, optim__time_budget=1.0, optim__lr=0.01)
    cfg.optim.warmup_iters = 3
    run = train(cfg)
    schedule = load_yaml(run / "resolved.yaml")["schedule"]
    import pandas as pd

    validated = pd.read_csv(run / "metrics.csv")["map50"].notna().sum()
    assert schedule["eval_interval"] > 1  # thinned from --eval-interval 1
    assert validated <= 2  # one periodic at most (15 % of 60 s / 8 s), then the last
    assert clock.now <= 60  # ended on time, last validation included
    assert schedule["total_steps"] >= 30  # and the rest of the budget went to training


@pytest.mark.slow
def test_validation_cost_is_timed_on_a_sample_before_the_first_fit(tmp_path: Path, monkeypatch):
    """Validation costs 2 s an image on this clock: timed on 4 of the 8 validation images and
    scaled, the first fit already reserves the 16 s a validation takes, and the run ends on
    time with calibration reusing the last validation (no second pass)."""
    data = make_easy_dataset(tmp_path / "data", repeat=4)
    clock = FakeClock(1.0)
    step_original, score_original = train_module.Trainer._step, train_module.Trainer._score
    fit_original = train_module.Trainer._fit_budget
    reserved: list[float] = []

    def step(self, images, targets):
        clock.now += clock.per_step
        return step_original(self, images, targets)

    def score(self, catalog, keep_floor=None):
        clock.now += 2.0 * catalog.num_images
        return score_original(self, catalog, keep_floor)

    def fit(self, per_step):
        fit_original(self, per_step)
        reserved.append(self._val_seconds)

    monkeypatch.setattr(train_module.Trainer, "clock", staticmethod(clock))
    monkeypatch.setattr(train_module.Trainer, "_step", step)
    monkeypatch.setattr(train_module.Trainer, "_score", score)
    monkeypatch.setattr(train_module.Trainer, "_fit_budget", fit)
    monkeypatch.setattr(train_module.Trainer, "VAL_PROBE_IMAGES", 4)
    cfg = tiny_config(data, tmp_path, optim__epochs=1, optim__time_budget=1.0)
    run = train(cfg)
    assert reserved[0] == pytest.approx(16.0)
    assert clock.now <= 60  # the last validation included, and no calibration pass after it
    assert load_yaml(run / "resolved.yaml")["schedule"]["total_steps"] >= 20
