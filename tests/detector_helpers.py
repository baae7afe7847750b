"""Tiny checkpoints and images for the predict / evaluate / export tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from defectdet.config import PredictConfig, TrainConfig, apply, to_dict, validate
from defectdet.engine.predict.run import PredictOutput, predict
from defectdet.model import ModelSpec, build_model, save_checkpoint

_OUTPUT = ("project", "name", "exist_ok", "save_images", "progress")


def make_checkpoint(
    path: Path,
    classes: tuple[str, ...] = ("a", "b"),
    image_size: int = 64,
    seed: int = 0,
    image_head: bool = False,
) -> Path:
    """A narrow, untrained RetinaNet whose last head layers are randomised, so that scores
    spread over 0..1 (an untrained model scores every anchor at the 0.01 prior)."""
    spec = ModelSpec(
        list(classes),
        image_size,
        fpn_channels=32,
        head_convs=1,
        min_level=3,
        max_level=5,
        image_head=image_head,
    )
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        model.head.classification_head.cls_logits.weight.normal_(0, 0.3)
        model.head.classification_head.cls_logits.bias.zero_()
        model.head.regression_head.bbox_reg.weight.normal_(0, 0.02)
    save_checkpoint(
        path,
        {
            "kind": "defectdet-checkpoint",
            "model": model.state_dict(),
            "config": to_dict(TrainConfig()),
            "model_spec": spec.to_dict(),
            "classes": list(classes),
            "epoch": 0,
            "metrics": {},
        },
    )
    return path


def write_images(
    folder: Path, n: int, width: int = 96, height: int = 72, seed: int = 0, ext: str = "png"
) -> list[Path]:
    """``n`` random textured images ``000.png``... (varied content: varied detections)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (5, 5), 0)
        path = folder / f"{i:03d}.{ext}"
        assert cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def predict_options(weights: Path, out: Path | None, **kw) -> dict:
    """``predict``'s arguments from flat keyword options (config options and output ones)."""
    output = PredictOutput(out, **{k: v for k, v in kw.items() if k in _OUTPUT})
    cfg = validate(apply(PredictConfig(), {k: v for k, v in kw.items() if k not in _OUTPUT}))
    return {"weights": weights, "cfg": cfg, "output": output}


def run_predict(source, options: dict, detector=None) -> dict:
    return predict(source, detector=detector, **options)
