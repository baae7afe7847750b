"""Run a model over a catalogue and score it: used for validation during training and by
``defectdet evaluate``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from defectdet.config import AugmentConfig
from defectdet.data.augment import build_transforms
from defectdet.data.catalog import Catalog
from defectdet.data.dataset import DetectionDataset, make_loader
from defectdet.engine.metrics import Detections, evaluate_detections

Predictor = Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]
"""uint8 (B, 3, S, S) batch -> B dicts with ``boxes`` (N, 4) xyxy in model-input pixels,
``scores`` (N,), 0-based ``labels`` (N,): a model in eval mode (:func:`model_predictor`) or a
``predict`` backend (:mod:`defectdet.engine.backends`)."""


def model_predictor(
    model: nn.Module,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
) -> Predictor:
    """A detection model (already in eval mode) as a :data:`Predictor`; with ``amp``, autocast
    to ``dtype`` (default :func:`amp_dtype`)."""

    def run(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        batch = to_model_input(images, device, channels_last)
        with torch.autocast(device.type, dtype=dtype or amp_dtype(device), enabled=amp):
            return model(list(batch))

    return run


@torch.inference_mode()
def detect_catalog(
    predictor: Predictor,
    catalog: Catalog,
    image_size: int,
    batch_size: int = 8,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[Detections]:
    """Detections for every image of ``catalog``, boxes in original image pixels."""
    dataset = DetectionDataset(
        catalog,
        image_size,
        build_transforms(AugmentConfig("none"), image_size, train=False),
        uint8=True,
    )
    loader = make_loader(dataset, None, batch_size, workers, train=False)
    out: list[Detections] = []
    for images, targets in loader:
        out.extend(_to_detections(predictor(images), targets))
        if progress is not None:
            progress(len(targets))
    return out


def to_model_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, S, S) from the loader → float 0..1 on ``device`` (converted there: 4x less
    to move)."""
    batch = images.to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch.float().div_(255) if batch.dtype == torch.uint8 else batch


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _to_detections(preds: list[dict], targets: list[dict]) -> list[Detections]:
    """Model outputs (model-input pixels) → original pixels, clipped to the image."""
    dets = []
    for p, t in zip(preds, targets, strict=True):
        h, w = t["orig_size"]
        boxes = p["boxes"].float().cpu().numpy() / t["scale"]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        dets.append(
            Detections(
                int(t["image_id"]),
                boxes,
                p["scores"].float().cpu().numpy(),
                p["labels"].cpu().numpy().astype(np.int64),
            )
        )
    return dets


def evaluate_model(
    model: nn.Module,
    catalog: Catalog,
    image_size: int,
    device: torch.device,
    conf: float | dict[int, float] = 0.3,
    amp: bool = False,
    channels_last: bool = False,
    **kwargs,
) -> tuple[dict, list[Detections]]:
    """Metrics (see :func:`~defectdet.engine.metrics.evaluate_detections`) and detections of a
    model in training or eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        predictor = model_predictor(model, device, amp, channels_last)
        dets = detect_catalog(predictor, catalog, image_size, **kwargs)
    finally:
        model.train(was_training)
    return evaluate_detections(catalog, dets, conf), dets
