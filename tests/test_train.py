"""The training loop end to end on tiny data: it learns, resumes exactly, refuses to diverge
silently, never overwrites a run, and runs under torchrun with two CPU processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_MODEL_ARGS
from defectdet.cli import app
from defectdet.config import TrainConfig, load_config, load_yaml
from defectdet.engine.train import loop as train_module
from defectdet.engine.train.loop import Interrupted, TrainingDiverged, train
from defectdet.model import load_checkpoint

pytestmark = pytest.mark.slow


def make_easy_dataset(root: Path, n: int = 8, repeat: int = 1, seed: int = 0) -> Path:
    """White squares (class 0) and black squares (class 1) on grey, 64 px; 2 background images.
    train.json holds each picture ``repeat`` times, val.json once, under other file names."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    docs = {"train": ([], []), "val": ([], [])}
    for i in range(n):
        img = np.full((64, 64, 3), 110, np.uint8)
        box = None
        if i < n - 2:
            x, y = (int(v) for v in rng.integers(4, 36, 2))
            s = int(rng.integers(14, 24))
            colour = (250,) * 3 if i % 2 == 0 else (10,) * 3
            cv2.rectangle(img, (x, y), (x + s - 1, y + s - 1), colour, -1)
            box = ([x, y, s, s], i % 2 + 1)
        for split, copies in (("train", repeat), ("val", 1)):
            images, anns = docs[split]
            for r in range(copies):
                name = f"images/{split}_{i}_{r}.png"
                cv2.imwrite(str(root / name), img)
                images.append({"id": len(images) + 1, "file_name": name, "width": 64, "height": 64})
                if box:
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": len(images),
                            "category_id": box[1],
                            "bbox": box[0],
                            "area": box[0][2] * box[0][3],
                            "iscrowd": 0,
                        }
                    )
    cats = [{"id": 1, "name": "white"}, {"id": 2, "name": "black"}]
    for split, (images, anns) in docs.items():
        doc = {"images": images, "annotations": anns, "categories": cats}
        (root / f"{split}.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> Path:
    return make_easy_dataset(tmp_path_factory.mktemp("easy"))


def tiny_config(data: Path, project: Path, **run) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.path = str(data)
    m = cfg.model
    m.image_size, m.fpn_channels, m.head_convs, m.levels = 64, 32, 1, "3-5"
    cfg.augment.augment = "none"
    cfg.optim.batch_size, cfg.optim.warmup_iters = 4, 5
    cfg.optim.lr, cfg.optim.optimizer = 0.001, "adamw"
    cfg.run.workers, cfg.run.project = 0, str(project)
    for k, v in run.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


def test_learns_to_high_ap50_and_writes_the_run_folder(tmp_path: Path):
    data = make_easy_dataset(tmp_path / "data", repeat=4)  # 32 train images: 4 steps an epoch
    cfg = tiny_config(data, tmp_path, optim__epochs=15, optim__batch_size=8, run__eval_interval=15)
    run = train(cfg)
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, 16))
    # One scheduler step per optimiser step: after epoch e (4e steps of 60), the rate is still
    # warming up (linear from 0.1% over 5 steps), then the cosine from 0.001 down to 1% of it.
    steps = [4 * epoch for epoch in range(1, 16)]
    factors = [
        0.001 + 0.999 * s / 5 if s < 5 else 0.01 + 0.99 * (1 + math.cos(math.pi * (s - 5) / 55)) / 2
        for s in steps
    ]
    assert metrics["lr"].tolist() == pytest.approx([0.001 * f for f in factors], rel=1e-4)
    assert metrics["train_loss"].iloc[-3:].mean() < 0.5 * metrics["train_loss"].iloc[:3].mean()
    final = metrics.iloc[-1]
    assert final["mean_class_ap50"] >= 0.8, final.to_dict()
    assert final["ap50_white"] >= 0.6 and final["ap50_black"] >= 0.6
    assert final["defect_recall"] == 1.0
    saved = load_config(run / "config.yaml")  # the user's options, loadable with --config
    assert saved.model.preset == "none"  # a config from the Python API is taken as it stands
    saved.model.preset = cfg.model.preset
    assert saved == cfg and saved.optim.epochs == 15
    resolved = load_yaml(run / "resolved.yaml")  # what the data decided, apart
    assert resolved["model_spec"]["class_names"] == ["white", "black"]
    assert resolved["model_spec"]["image_size"] == 64
    for name in ("weights/best.pt", "weights/last.pt", "training.png"):
        assert (run / name).stat().st_size > 0
    best = load_checkpoint(run / "weights" / "best.pt")
    assert best["classes"] == ["white", "black"] and "optimizer" not in best


def _stop_after(monkeypatch, steps: int) -> None:
    """Simulate Ctrl-C: request a stop once ``steps`` optimiser steps have run."""
    original = train_module.Trainer._step

    def step(self, images, targets):
        parts = original(self, images, targets)
        if self.state["global_step"] >= steps:
            self._stop_requested = True
        return parts

    monkeypatch.setattr(train_module.Trainer, "_step", step)


#: The resume runs: augmentation and a repeat-factor sampler whose threshold (0.9) is above
#: every class's image frequency (3 of 8 images), so images are repeated: r = sqrt(0.9 / 0.375)
#: = 1.55, rounded stochastically each epoch. Epochs then differ in length and order.
RESUME_OPTIONS = {
    "optim__epochs": 2,
    "augment__augment": "light",
    "sampler__sampler": "repeat-factor",
    "sampler__repeat_threshold": 0.9,
    "run__eval_interval": 2,
}


def sampled_epochs(data: Path, cfg: TrainConfig) -> list[np.ndarray]:
    """The rows each epoch of the run draws, computed apart from the trainer."""
    from defectdet.data.formats import load_dataset
    from defectdet.data.sampling import EpochSampler

    counts = load_dataset(data).split_subset("train").image_class_counts()
    sampler = EpochSampler(counts, cfg.sampler, cfg.run.seed)
    epochs = []
    for epoch in range(cfg.optim.epochs):
        sampler.set_epoch(epoch)
        epochs.append(sampler.epoch_rows.copy())
    return epochs


@pytest.fixture(scope="module")
def uninterrupted(easy_data: Path, tmp_path_factory) -> Path:
    return train(tiny_config(easy_data, tmp_path_factory.mktemp("full"), **RESUME_OPTIONS))


@pytest.mark.parametrize("stop", ["epoch-boundary", "mid-epoch", "before-last-step"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    easy_data: Path, uninterrupted: Path, tmp_path: Path, monkeypatch, stop: str
):
    cfg = tiny_config(easy_data, tmp_path / "b", **RESUME_OPTIONS)
    epochs = sampled_epochs(easy_data, cfg)
    steps = [math.ceil(len(rows) / cfg.optim.batch_size) for rows in epochs]
    assert all(len(rows) > len(set(rows.tolist())) for rows in epochs)  # images do repeat
    stop_at = {
        "epoch-boundary": steps[0],  # the last step of epoch 1
        "mid-epoch": steps[0] + 1,  # the first step of epoch 2 (of more than one)
        "before-last-step": sum(steps) - 1,
    }[stop]
    assert steps[1] > 1 and stop_at < sum(steps)
    with monkeypatch.context() as m:
        _stop_after(m, stop_at)
        with pytest.raises(Interrupted, match="--resume"):
            train(cfg)
    run_b = tmp_path / "b" / "exp"
    assert load_checkpoint(run_b / "weights" / "last.pt")["state"]["global_step"] == stop_at
    resumed = train(resume=run_b)
    a = load_checkpoint(uninterrupted / "weights" / "last.pt")
    b = load_checkpoint(resumed / "weights" / "last.pt")
    assert a["state"]["global_step"] == b["state"]["global_step"] == sum(steps)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    # The same history too: each epoch's mean losses over all its steps, lr, validation.
    history = pd.read_csv(resumed / "metrics.csv").drop(columns="seconds")
    assert list(history["epoch"]) == [1, 2] and history["train_loss"].notna().all()
    pd.testing.assert_frame_equal(
        history, pd.read_csv(uninterrupted / "metrics.csv").drop(columns="seconds")
    )


def test_nan_loss_stops_with_a_message_naming_the_step(
    easy_data: Path, tmp_path: Path, monkeypatch
):
    from defectdet.model.head import DefectRetinaNetHead

    def nan_loss(self, *args, **kwargs):
        return {
            "classification": torch.tensor(float("nan"), requires_grad=True),
            "bbox_regression": torch.tensor(0.0, requires_grad=True),
        }

    monkeypatch.setattr(DefectRetinaNetHead, "compute_loss", nan_loss)
    with pytest.raises(TrainingDiverged, match=r"nan at epoch 1, step 1.*--lr"):
        train(tiny_config(easy_data, tmp_path, optim__epochs=1))


def test_cli_train_never_overwrites_and_reports_bad_options(easy_data: Path, tmp_path: Path):
    runner = CliRunner()
    args = [
        "train",
        str(easy_data),
        "--project",
        str(tmp_path),
        "--name",
        "r",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        *TINY_MODEL_ARGS,
    ]
    for expected in ("r", "r2"):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert (tmp_path / expected / "weights" / "last.pt").is_file()
    bad = runner.invoke(app, [*args, "--gamma", "-1"])
    assert bad.exit_code == 2 and "--gamma" in bad.output and "≥ 0" in bad.output
    missing = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])
    assert missing.exit_code == 3 and "not found" in missing.output
    odd_size = runner.invoke(app, [*args, "--image-size", "70"])
    assert odd_size.exit_code == 2 and "multiple of 32" in odd_size.output


def run_torchrun_train(data: Path, project: Path, *options: str) -> None:
    """``defectdet train`` under torchrun with two CPU processes (one thread each), into
    ``project/ddp``; fails the test with the output's tail if it does not exit 0."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "defectdet",
        "train",
        str(data),
        "--project",
        str(project),
        "--name",
        "ddp",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        *options,
        *TINY_MODEL_ARGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_torchrun_two_cpu_processes(easy_data: Path, tmp_path: Path):
    run_torchrun_train(easy_data, tmp_path, "--epochs", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # only rank 0 writes
    ckpt = load_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")
    # 8 images, 2 ranks x batch 2 → 2 steps per epoch on each rank.
    assert ckpt["state"]["global_step"] == 4
    assert len(pd.read_csv(tmp_path / "ddp" / "metrics.csv")) == 2


def test_torchrun_with_a_time_budget_stops_every_rank_at_the_same_step(
    easy_data: Path, tmp_path: Path
):
    """Each rank has its own clock; rank 0's fit is the one all follow (else one rank stops
    while the other waits in an all-reduce for ever)."""
    run_torchrun_train(easy_data, tmp_path, "--time-budget", "0.3")
    ckpt = load_checkpoint(tmp_path / "ddp" / "weights" / "last.pt")
    assert ckpt["state"]["global_step"] == ckpt["state"]["total_steps"] > 0
