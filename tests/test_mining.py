"""Hard-negative mining: the sampler draws the defect-free images the model flags more often
(and still every image over time); training mines, logs the mined false-alarm rate, saves the
mining state, and resumes it exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from defectdet.config import SamplerConfig
from defectdet.data.sampling import EpochSampler
from defectdet.engine.train import loop as train_module
from defectdet.engine.train.loop import Interrupted, train
from defectdet.model import load_checkpoint
from test_train import make_easy_dataset, tiny_config


def counts(n_background: int = 40, n_defect: int = 10) -> np.ndarray:
    """(images, 1 class): ``n_defect`` images with one box, then defect-free ones."""
    c = np.zeros((n_defect + n_background, 1), dtype=np.int64)
    c[:n_defect] = 1
    return c


def test_mined_scores_shift_draws_toward_flagged_images() -> None:
    cfg = SamplerConfig(hard_negatives=True, hard_fraction=0.5)
    s = EpochSampler(counts(), cfg, seed=3, encode_copies=False)
    scores = np.full(50, np.nan)
    scores[10:50] = 0.0
    scores[10:14] = 0.9  # four defect-free images the model flags
    s.set_hardness(scores)
    draws, seen = np.zeros(50), set()
    for epoch in range(40):
        s.set_epoch(epoch)
        rows = s.epoch_rows
        np.add.at(draws, rows, 1)
        seen |= set(rows.tolist())
        assert len(rows) == 50  # the epoch keeps its size: half the background draws are hard
    hard, easy = draws[10:14].mean(), draws[14:50].mean()
    assert hard > 5 * easy  # drawn far more often...
    assert seen == set(range(50))  # ...and every image is still seen
    plain = EpochSampler(counts(), SamplerConfig(), seed=3, encode_copies=False)
    plain.set_hardness(scores)  # ignored without --hard-negatives
    plain.set_epoch(0)
    assert np.array_equal(np.sort(plain.epoch_rows), np.arange(50))


def test_mining_state_round_trips_exactly() -> None:
    cfg = SamplerConfig(hard_negatives=True, background_fraction=0.5)
    a = EpochSampler(counts(), cfg, seed=1)
    a.set_hardness(np.linspace(0, 1, 50))
    a.set_epoch(2)
    b = EpochSampler(counts(), cfg, seed=1)
    b.load_state_dict(a.state_dict())  # as after a resume
    assert list(b) == list(a)
    for sampler in (a, b):
        sampler.set_epoch(3)
    assert list(b) == list(a)


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    return make_easy_dataset(tmp_path_factory.mktemp("easy"), n=10, repeat=2)


def _cfg(data: Path, project: Path):
    cfg = tiny_config(data, project, optim__epochs=3)
    cfg.sampler.hard_negatives = True
    return cfg


@pytest.mark.slow
def test_training_mines_logs_and_resumes_exactly(easy: Path, tmp_path: Path, monkeypatch) -> None:
    full = train(_cfg(easy, tmp_path / "a"))
    metrics = pd.read_csv(full / "metrics.csv")
    mined = metrics["mined_false_alarm_rate"]
    assert mined.iloc[:2].between(0, 1).all() and pd.isna(mined.iloc[2])  # not after the last
    assert (metrics["mine_seconds"].iloc[:2] > 0).all()  # reported (its size: benchmarks only)
    state = load_checkpoint(full / "weights" / "last.pt")["sampler"]
    hardness = np.array(state["hardness"], dtype=float)
    background = np.isfinite(hardness)
    assert background.sum() == 4  # the 2 defect-free pictures, twice each in train.json

    original = train_module.Trainer._step

    def step(self, images, targets):
        parts = original(self, images, targets)
        if self.state["global_step"] >= 7:  # mid-epoch 2, after the first mining
            self._stop_requested = True
        return parts

    with monkeypatch.context() as m:
        m.setattr(train_module.Trainer, "_step", step)
        with pytest.raises(Interrupted):
            train(_cfg(easy, tmp_path / "b"))
    saved = load_checkpoint(tmp_path / "b" / "exp" / "weights" / "last.pt")["sampler"]
    assert saved["hardness"] is not None  # the mined scores are part of the resumable state
    resumed = train(resume=tmp_path / "b" / "exp")
    a = load_checkpoint(full / "weights" / "last.pt")
    b = load_checkpoint(resumed / "weights" / "last.pt")
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
