"""Scoring a detector on a catalogue: the detections of the one inference path
(:mod:`defectdet.engine.inference.run`), then every metric (:mod:`.metrics`). Used by
train-time validation, ``evaluate`` and ``compare``."""

from __future__ import annotations

import numpy as np

from defectdet.config import DEFAULT_CONF, InferConfig, TileConfig
from defectdet.console import warn
from defectdet.data.catalog import Catalog
from defectdet.engine.evaluate.metrics import MetricsResult, evaluate_detections
from defectdet.engine.inference.detectors import Detector
from defectdet.engine.inference.run import Detections, Inference
from defectdet.engine.inference.sources import SourceImage


def catalog_sources(catalog: Catalog) -> list[SourceImage]:
    """The catalogue's images as inference inputs (named by their ``file_name``)."""
    return [SourceImage(catalog.path_of(f), f) for f in catalog.images["file_name"].tolist()]


def detect_catalog(
    inference: Inference, catalog: Catalog, batch_size: int, workers: int
) -> list[Detections]:
    """Detections for every readable image of ``catalog`` (``image_id`` = the catalogue's ids);
    unreadable images are named in a warning and get no detections."""
    ids = catalog.images["image_id"].astype(int).tolist()
    out: list[Detections] = []
    for batch in inference.run(catalog_sources(catalog), batch_size, workers):
        for meta, det in batch:
            if det is None:
                warn(f"skipping unreadable image {meta.name}: {meta.error}")
                continue
            det.image_id = ids[meta.index]
            out.append(det)
    return out


def score_catalog(
    detector: Detector,
    catalog: Catalog,
    infer: InferConfig,
    batch_size: int,
    workers: int,
    tiles: TileConfig | None = None,
    label_map: np.ndarray | None = None,
    keep_floor: float | None = None,
) -> tuple[MetricsResult, list[Detections]]:
    """Metrics and detections of ``detector`` on ``catalog``.

    ``label_map`` (K_model,) maps the model's class indices to the catalogue's (when the data
    lists classes in another order or has more of them); data classes the model lacks are
    thresholded at ``--conf`` (or the default). ``keep_floor``: the detections returned go down
    to this score (train-time validation keeps them for calibration); the metrics still see
    exactly the detections of the usual floor (a lower floor only adds boxes below it: none of
    them can suppress a higher-scoring box in NMS or push it out of the top-k).
    """
    inference = Inference(detector, infer, tiles)
    usual = inference.floor
    if keep_floor is not None and keep_floor < usual:
        inference = Inference(detector, infer, tiles, floor=keep_floor)
    kept = detect_catalog(inference, catalog, batch_size, workers)
    thresholds = inference.thresholds
    if label_map is not None:
        for d in kept:
            d.labels = label_map[d.labels]
        thresholds = np.full(catalog.num_classes, float(infer.conf or DEFAULT_CONF))
        thresholds[label_map] = inference.thresholds
    dets = [d.above(usual) for d in kept] if inference.floor < usual else kept
    metrics = evaluate_detections(catalog, dets, thresholds)
    metrics.threshold_source = inference.threshold_source
    return metrics, kept
