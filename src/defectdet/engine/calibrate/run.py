"""``defectdet calibrate``: thresholds chosen on a labelled split, written into a new checkpoint
beside the weights (never over them); also the last step of ``train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from defectdet.config import CalibrateConfig, CalibrateRunConfig, InferConfig, TileConfig, validate
from defectdet.data.catalog import Catalog
from defectdet.engine.calibrate.operating_point import (
    CALIBRATION_FLOOR,
    OperatingPoint,
    choose_operating_point,
)
from defectdet.engine.evaluate.run import choose_split, class_mapping, leave_out_trained
from defectdet.engine.evaluate.score import detect_catalog
from defectdet.engine.inference.detectors import Detector
from defectdet.engine.inference.run import Inference
from defectdet.errors import ConfigError, OutputExistsError

#: What a calibrated checkpoint keeps of its source (not the optimiser state of a last.pt).
INFERENCE_KEYS = (
    "kind",
    "version",
    "model",
    "model_spec",
    "config",
    "classes",
    "epoch",
    "trained_on",
)


def calibrate_detector(
    detector: Detector,
    catalog: Catalog,
    cfg: CalibrateConfig,
    split: str,
    batch_size: int,
    workers: int,
    tiles: TileConfig | None = None,
) -> OperatingPoint:
    """The operating point of ``detector`` on ``catalog`` (whose classes are the model's)."""
    mapping = class_mapping(detector.class_names, catalog.classes)
    if not np.array_equal(mapping, np.arange(len(mapping))) or len(mapping) != catalog.num_classes:
        raise ConfigError(
            f"calibration needs the model's classes in the data, in the same order: model "
            f"{', '.join(detector.class_names)}, data {', '.join(catalog.classes)}"
        )
    floor = InferConfig(conf=CALIBRATION_FLOOR)
    inference = Inference(detector, floor, tiles, floor=CALIBRATION_FLOOR)
    dets = detect_catalog(inference, catalog, batch_size, workers)
    return choose_operating_point(catalog, dets, cfg, split)


def default_output(weights: Path) -> Path:
    """``best.pt`` -> ``best-calibrated.pt`` (``best-calibrated2.pt``... when taken)."""
    path, n = weights.parent / f"{weights.stem}-calibrated.pt", 1
    while path.exists():
        n += 1
        path = weights.parent / f"{weights.stem}-calibrated{n}.pt"
    return path


def calibrate_checkpoint(
    catalog: Catalog,
    weights: Path,
    cfg: CalibrateRunConfig,
    split: str | None = None,
    out: Path | None = None,
) -> tuple[OperatingPoint, Path]:
    """Calibrate ``weights`` on a split of ``catalog``; write a new checkpoint holding the
    operating point; return it and the path written."""
    from defectdet.engine.inference.detectors import TorchDetector
    from defectdet.model import load_checkpoint, resolve_device, save_checkpoint

    validate(cfg)
    if Path(weights).suffix.lower() == ".onnx":
        raise ConfigError("calibrate a .pt checkpoint, then export it (the thresholds go along)")
    out = Path(out) if out is not None else default_output(Path(weights))
    if out.exists():
        raise OutputExistsError(f"{out} exists; calibrate writes a new checkpoint: choose --out")
    part, split = choose_split(catalog, split)
    rt = cfg.runtime
    detector = TorchDetector.from_checkpoint(weights, resolve_device(rt.device))
    part = leave_out_trained(part, detector.trained_on, split)
    op = calibrate_detector(
        detector, part, cfg.calibrate, split, rt.batch_size, rt.workers, cfg.tiles
    )
    save_checkpoint(out, with_operating_point(load_checkpoint(weights), op))
    return op, out


def with_operating_point(ckpt: dict[str, Any], op: OperatingPoint) -> dict[str, Any]:
    """An inference checkpoint (``ckpt``'s weights and spec) holding ``op``."""
    return {k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt} | {"operating_point": op.to_dict()}
