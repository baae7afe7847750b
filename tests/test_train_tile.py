"""--train-tile: training on native-resolution crops (defect-centred for half of them, boxes cut
by the edge kept when mostly inside), and inference that tiles as the model was trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.config import AugmentConfig, InferConfig, TileConfig, load_yaml
from defectdet.data.augment import DEFECT_TILES, TILE_MIN_VISIBILITY, build_transforms
from defectdet.engine.inference.detectors import TorchDetector
from defectdet.engine.inference.run import Inference
from defectdet.engine.train.loop import train
from test_train import make_easy_dataset, tiny_config

runner = CliRunner()
BOX = np.array([[200.0, 40.0, 216.0, 56.0]])  # one 16 px defect on a 256 x 128 image


def image_with_box() -> np.ndarray:
    image = np.full((128, 256, 3), 90, np.uint8)
    x1, y1, x2, y2 = BOX[0].astype(int)
    image[y1:y2, x1:x2] = 255
    return image


def test_tiles_are_native_crops_and_half_hold_a_defect() -> None:
    pipeline = build_transforms(AugmentConfig(augment="none"), 64, train=True, tile=64)
    image, held = image_with_box(), 0
    draws = 200
    for seed in range(draws):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, bboxes=BOX, labels=np.array([0]))
        assert out["image"].shape == (64, 64, 3)  # a 64 px crop, not the image shrunk
        for box in out["bboxes"]:
            x1, y1, x2, y2 = np.asarray(box).astype(int)
            # the box sits on the defect's pixels: native scale, no resize
            assert (x2 - x1) <= 16 and (y2 - y1) <= 16
            assert out["image"][y1:y2, x1:x2].mean() > 200
            assert (x2 - x1) * (y2 - y1) >= TILE_MIN_VISIBILITY * 256 - 1e-6
        held += len(out["bboxes"]) > 0
    # a uniform 64 px crop of 256 x 128 holds this box about 1/12 of the time
    assert held / draws >= DEFECT_TILES * 0.8


def test_a_box_cut_by_the_tile_edge_is_kept_only_when_mostly_inside() -> None:
    pipeline = build_transforms(AugmentConfig(augment="none"), 32, train=True, tile=32)
    image = np.full((32, 64, 3), 90, np.uint8)
    boxes = np.array([[24.0, 4.0, 40.0, 20.0]])  # straddles x = 32
    kept = set()
    for seed in range(60):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, bboxes=boxes, labels=np.array([0]))
        for box in out["bboxes"]:
            x1, _, x2, _ = np.asarray(box)
            kept.add(round(float(x2 - x1)))
            assert (x2 - x1) / 16 >= TILE_MIN_VISIBILITY - 1e-6
    assert kept and max(kept) == 16  # whole when the crop covers it, cut ones only if ≥ half


def test_smaller_images_are_padded_to_the_tile() -> None:
    pipeline = build_transforms(AugmentConfig(augment="none"), 64, train=True, tile=64)
    out = pipeline(image=np.zeros((40, 50, 3), np.uint8), bboxes=np.zeros((0, 4)), labels=[])
    assert out["image"].shape == (64, 64, 3)


def test_train_tile_below_32_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path), "--train-tile", "16"])
    assert result.exit_code == 2
    assert "--train-tile" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_tile_trained_model_is_validated_and_run_tiled(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data", repeat=2)
    cfg = tiny_config(data, tmp_path, optim__epochs=2, model__image_size=0)
    cfg.model.train_tile = 32
    run = train(cfg)
    spec = load_yaml(run / "resolved.yaml")["model_spec"]
    assert spec["train_tile"] == 32 and spec["image_size"] == 32  # native scale
    detector = TorchDetector.from_checkpoint(run / "weights" / "best.pt", torch.device("cpu"))
    assert detector.train_tile == 32
    assert Inference(detector, InferConfig()).tile == 32  # no --tile: as trained
    assert Inference(detector, InferConfig(), TileConfig(tile=0)).tile == 0  # --tile 0: off
    assert Inference(detector, InferConfig(), TileConfig(tile=48)).tile == 48
    # export carries it, so the onnxruntime backend tiles the same way
    pytest.importorskip("onnxruntime")
    from defectdet.engine.export import export
    from defectdet.engine.inference.detectors import OnnxDetector

    export(run / "weights" / "best.pt", "onnx", tmp_path / "m.onnx", check=False)
    assert OnnxDetector(tmp_path / "m.onnx", torch.device("cpu")).train_tile == 32
