"""--multi-scale: each training batch at a side drawn from (1 ± F) × the input size, boxes
scaled alike; validation and inference at the input size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defectdet.engine.train import loop as train_module
from defectdet.engine.train.loop import train
from defectdet.engine.train.multiscale import draw_side, rescale_batch
from defectdet.model import build_model
from test_model import tiny
from test_train import make_easy_dataset, tiny_config


def test_sides_are_multiples_of_32_within_the_spread_and_reproducible() -> None:
    sides = [draw_side(320, 0.25, seed=0, step=s) for s in range(300)]
    assert set(sides) == {256, 288, 320, 352, 384}  # (1 ± 0.25) × 320 = 240..400
    assert sides == [draw_side(320, 0.25, seed=0, step=s) for s in range(300)]
    assert sides != [draw_side(320, 0.25, seed=1, step=s) for s in range(300)]
    assert {draw_side(64, 0.75, 0, s) for s in range(100)} == {32, 64, 96}


def test_rescaled_batch_keeps_boxes_on_their_pixels() -> None:
    batch = torch.zeros(1, 3, 64, 64)
    batch[0, :, 16:32, 8:40] = 1.0
    boxes = torch.tensor([[8.0, 16.0, 40.0, 32.0]])
    out, targets = rescale_batch(batch, [{"boxes": boxes, "labels": torch.tensor([0])}], 128)
    assert out.shape == (1, 3, 128, 128)
    torch.testing.assert_close(targets[0]["boxes"], boxes * 2)
    x1, y1, x2, y2 = targets[0]["boxes"][0].int().tolist()
    assert out[0, 0, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].min() > 0.99
    assert out[0, 0, : y1 - 2].max() < 0.01


def test_the_model_keeps_a_rescaled_training_batch_only_when_asked() -> None:
    model = build_model(tiny()).train()
    images = [torch.rand(3, 96, 96)]
    assert model.transform(images)[0].tensors.shape[-1] == 64  # resized to the input size
    model.transform.multi_scale = True
    assert model.transform(images)[0].tensors.shape[-1] == 96  # used as it comes
    assert model.transform.eval()(images)[0].tensors.shape[-1] == 64  # never at inference


@pytest.mark.slow
def test_training_batches_vary_in_size(tmp_path: Path, monkeypatch) -> None:
    data = make_easy_dataset(tmp_path / "data", repeat=2)
    seen: list[int] = []
    original = train_module.rescale_batch

    def spy(batch, targets, side):
        seen.append(side)
        return original(batch, targets, side)

    monkeypatch.setattr(train_module, "rescale_batch", spy)
    cfg = tiny_config(data, tmp_path, optim__epochs=2, augment__multi_scale=0.5)
    train(cfg)
    assert len(seen) == 8 and len(set(seen)) > 1  # 2 epochs of 4 steps, several sides
    assert all(32 <= s <= 96 and s % 32 == 0 for s in seen)
