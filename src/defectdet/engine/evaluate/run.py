"""``defectdet evaluate``: score a checkpoint on a dataset split (rendered by :mod:`.render`).

The numbers come from :func:`~defectdet.engine.evaluate.score.score_catalog` (the same code that
validates during training, on the detections ``predict`` gives); this module picks the split
and lines up the model's classes with the data's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectdet.config import PredictConfig, validate
from defectdet.console import warn
from defectdet.data.catalog import Catalog
from defectdet.engine.calibrate.promise import check_promise
from defectdet.engine.evaluate.metrics import MetricsResult
from defectdet.engine.evaluate.score import score_catalog
from defectdet.engine.gallery import evaluation_items, write_gallery
from defectdet.errors import ConfigError, DataError

EVAL_SPLITS = ("val", "valid", "validation", "test")


def choose_split(catalog: Catalog, split: str | None) -> tuple[Catalog, str]:
    """The catalogue part to evaluate on, and its name."""
    present = catalog.splits()
    if split == "all" or (split is None and not set(EVAL_SPLITS) & set(present)):
        return catalog, "all"
    if split is None:
        split = next(s for s in EVAL_SPLITS if s in present)
    if split not in present:
        have = ", ".join(present) if present else "none (use --split all)"
        raise ConfigError(f"--split {split!r} is not in the data; splits: {have}")
    return catalog.split_subset(split), split


def class_mapping(model_classes: list[str], data_classes: list[str]) -> np.ndarray:
    """(K_model,) index of each model class in the data's class list.

    Raises:
        ConfigError: a model class the data does not have (another dataset?).
    """
    missing = [c for c in model_classes if c not in data_classes]
    if missing:
        raise ConfigError(
            f"the model's classes ({', '.join(model_classes)}) do not match the data's "
            f"({', '.join(data_classes)}): {', '.join(missing)} missing from the data"
        )
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        warn(f"the model was not trained on {', '.join(unknown)}: those classes score 0")
    return np.array([data_classes.index(c) for c in model_classes], dtype=np.int64)


def leave_out_trained(part: Catalog, trained_on: frozenset[str], split: str) -> Catalog:
    """``part`` without the images the model was trained on (``trained_on``: their resolved
    paths, from the checkpoint), said in one line; ``--split train`` keeps them on purpose.
    Scoring a model on what it learned from flatters it, most of all on the rare class."""
    if not trained_on or split == "train":
        return part
    keys = part.image_keys()
    keep = [i for i, k in zip(part.images["image_id"], keys, strict=True) if k not in trained_on]
    left = part.num_images - len(keep)
    if left == 0:
        return part
    if not keep:
        raise DataError(
            f"all {left} images of split {split} were used to train this model: score it on "
            "images it has not seen"
        )
    warn(
        f"left out {left} of the {part.num_images} images: the model was trained on them "
        f"(scores on them flatter it); scoring the other {len(keep)}"
    )
    return part.subset(keep)


@dataclass
class Scored:
    """A checkpoint scored on a catalogue part: what :func:`evaluate_checkpoint` reports from."""

    part: Catalog  # the split, good parts from --negatives included
    split: str
    detector: Any
    metrics: MetricsResult
    dets: list
    started: float  # perf_counter() before inference


def score_checkpoint(
    catalog: Catalog, weights: Path, cfg: PredictConfig, split: str | None = None
) -> Scored:
    """Run the checkpoint over the chosen split: the detections ``predict`` gives for the same
    images, and their :class:`~defectdet.engine.evaluate.metrics.MetricsResult`."""
    from defectdet.engine.inference.detectors import load_detector
    from defectdet.model import resolve_device

    validate(cfg)
    rt = cfg.runtime
    device = resolve_device(rt.device)
    part, split = choose_split(catalog, split)
    part = catalog.subset([*part.images["image_id"], *catalog.negative_ids()])  # good parts too
    detector = load_detector(weights, rt.backend, device, rt.half)
    part = leave_out_trained(part, detector.trained_on, split)
    mapping = class_mapping(detector.class_names, part.classes)
    t0 = time.perf_counter()
    metrics, dets = score_catalog(
        detector, part, cfg.infer, rt.batch_size, rt.workers, cfg.tiles, label_map=mapping
    )
    return Scored(part, split, detector, metrics, dets, t0)


def evaluate_checkpoint(
    catalog: Catalog,
    weights: Path,
    cfg: PredictConfig,
    split: str | None = None,
    data_name: str = "",
    gallery: Path | None = None,
    gallery_size: int = 24,
) -> dict:
    """Run the checkpoint over the chosen split (:func:`score_checkpoint`) and return the full
    report (JSON-ready)."""
    scored = score_checkpoint(catalog, weights, cfg, split)
    part, metrics, dets, rt = scored.part, scored.metrics, scored.dets, cfg.runtime
    thresholds = np.array([c.threshold for c in metrics.classes])
    sheets = []
    if gallery is not None:
        items = evaluation_items(part, dets, thresholds, gallery_size)
        sheets = [str(p) for p in write_gallery(items, gallery)]
    return {
        "weights": str(weights),
        "backend": rt.backend,
        "data": data_name,
        "split": scored.split,
        "images": part.num_images,
        "classes": part.classes,
        "thresholds": {c.name: c.threshold for c in metrics.classes},
        "threshold_source": metrics.threshold_source,
        "operating_point": scored.detector.operating_point,
        "nms_iou": cfg.infer.iou,
        "seconds": round(time.perf_counter() - scored.started, 2),
        "metrics": metrics.to_dict(),
        "pr_curves": metrics.pr_curves,
        "gallery": sheets,
        "negatives": negatives_report(part, dets, thresholds),
        "promise": promise_report(scored.detector.operating_point, metrics),
    }


def promise_report(op: dict | None, metrics: MetricsResult) -> list[dict]:
    """The calibrated rates against those measured here (:func:`check_promise`); empty when
    the thresholds are not the checkpoint's calibrated ones."""
    if not op or not metrics.threshold_source.startswith("calibrated"):
        return []
    return [c.to_dict() for c in check_promise(op, metrics.to_dict())]


def negatives_report(part: Catalog, dets: list, thresholds: np.ndarray) -> dict[str, dict]:
    """Per ``--negatives`` folder: its images and the share flagged (false-alarm rate)."""
    flagged = {d.image_id for d in dets if d.passed(thresholds).any()}
    out = {}
    for folder, ids in part.negatives.items():
        hits = sum(i in flagged for i in ids)
        out[folder] = {
            "images": len(ids),
            "flagged": hits,
            "false_alarm_rate": hits / len(ids) if ids else None,
        }
    return out
