"""Per-class detection curves on a labelled split, shared by the metrics (recall and precision
against the threshold) and calibration (choosing thresholds): detections matched to boxes of
their class (IoU ≥ 0.5, greedy by score, each box once), best scores per image, and the Wilson
interval used for every recall the tool reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from defectdet.data.catalog import Catalog
from defectdet.engine.inference.run import Detections

CONFIDENCE = 0.95


def wilson(successes: int, n: int) -> tuple[float | None, float | None]:
    """95 % Wilson score interval of a proportion (None without trials)."""
    if n <= 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class ClassCurve:
    """One class's detections on a split, best first, with whether each matched a box of the
    class (IoU ≥ 0.5, greedy by score, each box once) and how many boxes the class has."""

    name: str
    scores: np.ndarray
    tp: np.ndarray
    n_gt: int

    def counts_at(self, threshold: float) -> tuple[int, int]:
        """(true positives, false positives) among detections with score ≥ ``threshold``."""
        keep = self.scores >= threshold
        tp = int(self.tp[keep].sum())
        return tp, int(keep.sum()) - tp


def class_curves(
    catalog: Catalog, detections: list[Detections], iou: float = 0.5
) -> list[ClassCurve]:
    """Per class: detection scores (descending) and their true-positive flags."""
    gts = catalog.boxes_by_image()
    per_class: list[tuple[list[float], list[bool]]] = [([], []) for _ in catalog.classes]
    for d in detections:
        gt = gts.get(int(d.image_id), np.zeros((0, 5)))
        for k in np.unique(d.labels):
            mine = np.flatnonzero(d.labels == k)
            mine = mine[np.argsort(-d.scores[mine], kind="stable")]
            truth = gt[gt[:, 4] == k, :4]
            hits = _greedy_match(d.boxes[mine], truth, iou)
            per_class[int(k)][0].extend(d.scores[mine].tolist())
            per_class[int(k)][1].extend(hits)
    n_gt = catalog.instance_counts()
    curves = []
    for k, name in enumerate(catalog.classes):
        scores, tp = np.asarray(per_class[k][0]), np.asarray(per_class[k][1], dtype=bool)
        order = np.argsort(-scores, kind="stable")
        curves.append(ClassCurve(name, scores[order], tp[order], int(n_gt[k])))
    return curves


def _greedy_match(boxes: np.ndarray, truth: np.ndarray, iou: float) -> list[bool]:
    """For boxes sorted best first: does each take a still-unmatched truth box at ≥ ``iou``?"""
    if not len(truth) or not len(boxes):
        return [False] * len(boxes)
    overlaps = box_iou(torch.as_tensor(boxes, dtype=torch.float64), torch.as_tensor(truth)).numpy()
    taken = np.zeros(len(truth), dtype=bool)
    hits = []
    for row in overlaps:
        row = np.where(taken, -1.0, row)
        j = int(row.argmax())
        hit = bool(row[j] >= iou)
        taken[j] |= hit
        hits.append(hit)
    return hits


def image_max_scores(catalog: Catalog, detections: list[Detections]) -> np.ndarray:
    """(N images, K) best score of each class in each image (0 without a detection)."""
    row = {int(i): r for r, i in enumerate(catalog.images["image_id"])}
    best = np.zeros((catalog.num_images, catalog.num_classes))
    for d in detections:
        r = row.get(int(d.image_id))
        if r is not None and len(d.scores):
            np.maximum.at(best[r], d.labels, d.scores)
    return best


def threshold_curves(curves: list[ClassCurve], steps: int = 101) -> dict:
    """Per class, recall and precision at thresholds ``0, 0.01, ..., 1`` (None where a class
    has no boxes / no detections at that threshold)."""
    grid = np.linspace(0.0, 1.0, steps)
    recall: dict[str, list[float | None]] = {}
    precision: dict[str, list[float | None]] = {}
    for c in curves:
        rec, prec = [], []
        for t in grid:
            tp, fp = c.counts_at(float(t))
            rec.append(round(tp / c.n_gt, 4) if c.n_gt else None)
            prec.append(round(tp / (tp + fp), 4) if tp + fp else None)
        recall[c.name], precision[c.name] = rec, prec
    return {"threshold": grid.round(2).tolist(), "recall": recall, "precision": precision}
