"""The options of inference, shared by train-time validation, ``evaluate``, ``predict`` and
``calibrate`` with one default each: thresholds (:class:`InferConfig`), how it runs
(:class:`RuntimeConfig`), tiling (:class:`TileConfig`) and how an operating point is chosen
(:class:`CalibrateConfig`). Options that ``train`` has too (batch size, workers, device) are
defined once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from defectdet.config.checks import (
    check_class_conf,
    check_device,
    check_target_recall,
    check_tile,
)
from defectdet.config.schema import opt
from defectdet.errors import ConfigError

_R, _T, _C = "Run", "Thresholds", "Operating point (calibration)"
DEFAULT_CONF = 0.25
"""The score threshold of an uncalibrated model (no stored operating point, no --conf)."""


# Options that appear in more than one section are defined once here.
def batch_size_option(panel: str) -> Any:
    return opt(
        8, "Images per step (per process in DDP) and per inference batch.", low=1, panel=panel
    )


def workers_option(panel: str) -> Any:
    return opt(
        -1,
        "DataLoader worker processes (-1 = auto: none on a small CPU-only machine, where they "
        "would compete with the model for the cores).",
        low=-1,
        panel=panel,
    )


def device_option(panel: str) -> Any:
    return opt(
        "auto",
        "auto, cpu, cuda or cuda:N.",
        check=check_device,
        allowed="auto, cpu, cuda or cuda:N",
        panel=panel,
    )


@dataclass
class InferConfig:
    """Thresholds: the same options and defaults for train-time validation, evaluate, predict."""

    conf: float | None = opt(
        None,
        "Score threshold for every class (a box counts and an image is 'defect' at or above "
        f"it). Default: the checkpoint's calibrated thresholds, else {DEFAULT_CONF}.",
        low=0,
        high=1,
        panel=_T,
    )
    class_conf: str = opt(
        "",
        "Per-class thresholds overriding --conf, e.g. 'scratch=0.5,crack=0.15'.",
        check=check_class_conf,
        allowed="name=T,... with 0 ≤ T ≤ 1",
        panel=_T,
    )
    iou: float = opt(0.5, "IoU of class-wise NMS.", low=0, high=1, low_open=True, panel=_T)
    max_det: int = opt(100, "Boxes kept per image.", low=1, panel=_T)


@dataclass
class RuntimeConfig:
    """How ``evaluate`` and ``predict`` run (results do not depend on it, up to float order)."""

    batch_size: int = batch_size_option(_R)
    workers: int = workers_option(_R)
    device: str = device_option(_R)
    half: bool = opt(False, "fp16 inference (torch backend on CUDA only).", panel=_R)
    backend: str = opt(
        "torch",
        "torch (a .pt checkpoint) or onnxruntime (an exported .onnx file).",
        choices=("torch", "onnxruntime"),
        panel=_R,
    )


@dataclass
class TileConfig:
    tile: int | None = opt(
        None,
        "Tile large images: tiles of SIZE px of the original, each run at the model's resolution, "
        "their boxes merged into one per object (0 = off: the whole image is resized). Default: "
        "the tile size the model was trained on (train --train-tile), else off.",
        low=0,
        check=check_tile,
        allowed="0 (off) or at least 32",
        panel="Input",
    )
    tile_overlap: float = opt(
        0.2, "Overlap between tiles (fraction).", low=0, high=0.95, high_open=True, panel="Input"
    )


@dataclass
class CalibrateConfig:
    """How thresholds are chosen on a labelled split (``calibrate``, and the end of ``train``).
    With neither target: each class's threshold maximises its F1."""

    target_recall: str = opt(
        "",
        "Recall to reach: R for every class, or per class 'crack=0.99,scratch=0.9' (box recall "
        "at IoU 0.5; with --level image, the share of defective images caught).",
        check=check_target_recall,
        allowed="R or name=R,... with 0 < R ≤ 1",
        panel=_C,
    )
    max_false_alarms: float | None = opt(
        None,
        "At most this share of the defect-free images flagged (one threshold for all classes).",
        low=0,
        high=1,
        panel=_C,
    )
    level: str = opt(
        "box",
        "box (per-class box recall) or image (a defective part is caught when any box passes).",
        choices=("box", "image"),
        panel=_C,
    )

    def cross_check(self) -> None:
        if self.target_recall and self.max_false_alarms is not None:
            raise ConfigError("give --target-recall or --max-false-alarms, not both")
        if self.level == "image" and "=" in self.target_recall:
            raise ConfigError("--level image takes one --target-recall R (not per class)")
