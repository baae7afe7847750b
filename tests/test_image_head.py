"""--image-head: an image-level defect/ok head beside the detector, trained on every image (good
parts included), its score carried through inference into each image's detections."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from defectdet.config import InferConfig, ModelConfig, TrainConfig, apply, validate
from defectdet.engine.export import export
from defectdet.engine.inference.detectors import OnnxDetector, TorchDetector
from defectdet.engine.inference.preprocess import ImageMeta
from defectdet.engine.inference.run import merge_tiles
from defectdet.engine.train.loop import train
from defectdet.errors import ConfigError
from defectdet.model import Criterion, ModelSpec, build_model, load_checkpoint, load_model
from detector_helpers import make_checkpoint, write_images
from test_model import batch, tiny
from test_train import make_easy_dataset, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_image_loss_is_binary_cross_entropy_on_has_a_defect() -> None:
    torch.manual_seed(0)
    weight = 2.5
    model = build_model(tiny(image_head=True), Criterion(image_weight=weight)).train()
    images, targets = batch()  # image 0 has a box, image 1 is a good part
    captured = {}
    head = model.head.image_head
    head.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "image"}
    logits = captured["logits"].detach()
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(losses["image"].detach(), weight * want)
    losses["image"].backward()
    # The term reaches the shared features: good parts now teach the backbone too.
    assert head.mlp[0].weight.grad.abs().sum() > 0
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_without_the_head_nothing_changes() -> None:
    model = build_model(tiny(), Criterion()).train()
    assert model.head.image_head is None
    assert set(model(*batch())) == {"classification", "bbox_regression"}
    model.eval()
    with torch.no_grad():
        assert all("image_score" not in d for d in model(batch()[0]))


@torch.no_grad()
def test_eval_gives_each_image_the_heads_probability() -> None:
    model = build_model(tiny(image_head=True)).eval()
    images, _ = batch()
    captured = {}
    model.head.image_head.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    out = model(images)
    probs = torch.sigmoid(captured["x"])
    assert [float(d["image_score"]) for d in out] == pytest.approx(probs.tolist())


def test_tiled_image_takes_its_most_defective_tile() -> None:
    meta = ImageMeta(3, "x.png", 64, 64, 1.0, np.zeros((2, 2), dtype=np.int64))
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
    preds = [empty | {"image_score": torch.tensor(0.2)}, empty | {"image_score": torch.tensor(0.7)}]
    assert merge_tiles(preds, meta, InferConfig()).image_score == pytest.approx(0.7)
    assert merge_tiles([empty, empty], meta, InferConfig()).image_score is None


def test_option_is_checked_and_reaches_the_spec() -> None:
    cfg = apply(TrainConfig(), {"image_head": 0.5})
    assert ModelSpec.from_config(cfg.model, ["a"], 64).image_head
    assert not ModelSpec.from_config(ModelConfig(), ["a"], 64).image_head
    with pytest.raises(ConfigError, match="image-head"):
        validate(apply(TrainConfig(), {"image_head": -1}))


@pytest.mark.slow
def test_training_logs_the_term_and_best_pt_keeps_the_head(tmp_path: Path) -> None:
    data = make_easy_dataset(tmp_path / "data", repeat=2)
    cfg = tiny_config(data, tmp_path, optim__epochs=2, model__image_head=1.0)
    run = train(cfg)
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["train_img"].notna().all() and (metrics["train_img"] > 0).all()
    ckpt = load_checkpoint(run / "weights" / "best.pt")
    assert any(k.startswith("head.image_head.") for k in ckpt["model"])
    model, spec = load_model(ckpt, torch.device("cpu"))
    assert spec.image_head and model.head.image_head is not None


def test_onnx_export_carries_the_image_score(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    weights = make_checkpoint(tmp_path / "best.pt", image_head=True)
    export(weights, "onnx", images=write_images(tmp_path / "img", 2)[0].parent)
    onnx = OnnxDetector(tmp_path / "best.onnx", torch.device("cpu"))
    torch_det = TorchDetector.from_checkpoint(weights, torch.device("cpu"))
    batch_u8 = (torch.rand(3, 3, 64, 64) * 255).to(torch.uint8)
    got = [float(d["image_score"]) for d in onnx(batch_u8)]
    want = [float(d["image_score"]) for d in torch_det(batch_u8)]
    assert got == pytest.approx(want, abs=1e-4)
    with pytest.raises(ConfigError, match="--format onnx"):
        export(weights, "torchscript")


def test_predict_writes_the_image_scores_and_evaluate_ranks_by_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from defectdet.cli import app

    weights = make_checkpoint(tmp_path / "best.pt", image_head=True)
    write_images(tmp_path / "img", 3)
    res = CliRunner().invoke(
        app, ["predict", str(tmp_path / "img"), "-w", str(weights), "--out", str(tmp_path / "p")]
    )
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "p" / "images.csv")
    assert rows["image_score"].between(0, 1).all()
    best_box = rows[[c for c in rows if c.startswith("max_score_")]].max(axis=1).fillna(0)
    np.testing.assert_allclose(
        rows["defect_score"], (best_box + rows["image_score"]) / 2, atol=2e-5
    )
    plain = make_checkpoint(tmp_path / "plain.pt")
    res = CliRunner().invoke(
        app, ["predict", str(tmp_path / "img"), "-w", str(plain), "--out", str(tmp_path / "q")]
    )
    assert "image_score" not in pd.read_csv(tmp_path / "q" / "images.csv")


def test_defect_score_mixes_the_head_with_the_best_box() -> None:
    from defectdet.engine.inference.run import Detections

    boxes, labels = np.zeros((2, 4)), np.zeros(2, np.int64)
    plain = Detections(1, boxes, np.array([0.3, 0.6]), labels)
    assert plain.defect_score == pytest.approx(0.6)
    assert replace(plain, image_score=0.2).defect_score == pytest.approx(0.4)
    empty = Detections(2, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), image_score=0.9)
    assert empty.defect_score == pytest.approx(0.45)
