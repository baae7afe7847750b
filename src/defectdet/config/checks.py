"""The checks behind the options' allowed values that a range or a list of choices cannot say
(``3-5`` levels, ``name=T,...`` maps, multiples of 32, rules between options). Each raises
``ValueError(reason)`` (``ConfigError`` for rules between options); :mod:`.schema` turns the
reason into a message naming the option."""

from __future__ import annotations

from typing import Any

from defectdet.config import values as v
from defectdet.errors import ConfigError

SELECT_METRICS = (
    "mean_class_ap50",
    "pooled_ap50",
    "map50",
    "map",
    "defect_recall",
    "balanced_accuracy",
    "auroc",
    "accuracy",
)
"""Validation metrics that can choose ``best.pt`` (higher is better); ``ap50_<class>`` too."""

SELECT_LAST = "last"
"""The ``--select-metric`` that ranks no metric: best.pt is the last validated epoch, the one the
learning-rate schedule ends on."""


def check_image_size(value: int) -> None:
    if value and (value < 32 or value % 32):
        low = max(32, value // 32 * 32)
        raise ValueError(f"must be 0 or a multiple of 32 (try {low} or {low + 32})")


def check_select_metric(value: str) -> None:
    if value == SELECT_LAST:
        return
    if value not in SELECT_METRICS and not (value.startswith("ap50_") and len(value) > 5):
        raise ValueError("not a validation metric")


def check_class_conf(value: str) -> None:
    v.parse_number_map(value, "--class-conf", 0.0, 1.0)


def check_target_recall(value: str) -> None:
    v.parse_targets(value)


def check_levels(value: str) -> None:
    v.parse_levels(value)


def check_class_weights(value: str) -> None:
    v.parse_class_weights(value)


def check_tile(value: int) -> None:
    if 0 < value < 32:
        raise ValueError("below 32 px")


def check_device(value: str) -> None:
    v.parse_device(value)


def check_patience(run: Any) -> None:
    """``--patience`` counts validations without gain in the select metric: ``last`` has none.
    ``run`` is the run options."""
    if run.patience and run.select_metric == SELECT_LAST:
        raise ConfigError(
            "--patience stops when --select-metric stops improving, and --select-metric last "
            "ranks no metric: name one to watch (e.g. --select-metric mean_class_ap50) or drop "
            "--patience"
        )


def check_coco(m: Any) -> None:
    """COCO weights exist for one architecture only, torchvision's retinanet_resnet50_fpn;
    ``m`` is the model options."""
    want = {"backbone": "resnet50", "head": "v1", "fpn_channels": 256, "head_convs": 4}
    wrong = [f"{k}={getattr(m, k)}" for k, w in want.items() if getattr(m, k) != w]
    if m.levels.replace(" ", "") != "3-7":
        wrong.append(f"levels={m.levels}")
    if wrong:
        raise ConfigError(
            "--weights coco loads torchvision's retinanet_resnet50_fpn, which needs backbone "
            "resnet50, head v1, fpn_channels 256, head_convs 4 and levels 3-7; this config has "
            f"{', '.join(wrong)}. Use --backbone-weights imagenet instead."
        )
