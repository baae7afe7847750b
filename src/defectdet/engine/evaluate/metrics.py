"""Detection and image-level metrics, always per class and balanced next to the plain figure.

- COCO mAP@[.5:.95] and mAP50 from pycocotools' COCOeval, plus per-class AP and AP50 read from
  its precision array; ``mean_class_ap50`` averages AP50 over classes that have ground truth, so
  the rare class counts as much as the common one.
- Per class at its threshold: precision and recall with boxes matched within the class (IoU
  0.5, greedy by score), the curves calibration chooses thresholds on, so the recall
  ``evaluate`` reports on the calibration split is the one calibration promised.
- A confusion matrix with a background row and column (IoU 0.5, at the score threshold, each
  defect matched to one box of any class): missed defects land in the background column, false
  alarms in the background row (the per-class "false alarms / image").
- Image-level "defect vs ok": recall, false-alarm rate, balanced accuracy, AUROC, next to plain
  accuracy and the accuracy of always answering "ok" (the accuracy paradox, made visible).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from defectdet.data.catalog import Catalog
from defectdet.engine.evaluate.curves import class_curves, threshold_curves, wilson
from defectdet.engine.inference.run import Detections

IMAGE_LEVEL_KEYS = (
    "defect_recall",
    "false_alarm_rate",
    "balanced_accuracy",
    "accuracy",
    "auroc",
)
"""Image-level figures kept per epoch in ``metrics.csv``."""


@dataclass
class ClassMetrics:
    name: str
    instances: int
    ap: float | None
    ap50: float | None
    precision: float | None  # at the class's threshold, IoU 0.5
    recall: float | None
    threshold: float
    recall_low: float | None = None  # 95 % Wilson interval of the recall
    recall_high: float | None = None
    false_alarms_per_image: float | None = None  # boxes of the class on no defect, per image
    found: int | None = None  # boxes of the class found at the threshold (the recall's count)


@dataclass
class MetricsResult:
    """Every figure of one evaluation: what ``evaluate`` prints and writes, what a row of
    ``metrics.csv`` holds (:meth:`flat`) and what ``compare`` tabulates.

    ``image_truth`` / ``image_score`` (per image: has a defect; its defect score, the best
    detection score or its mix with an image head's) are kept for operating-point questions such
    as :meth:`recall_at_false_alarm`.
    """

    map: float | None
    map50: float | None  # COCO's: a mean over classes, so equal to mean_class_ap50
    mean_class_ap50: float | None
    classes: list[ClassMetrics]
    confusion_matrix: list[list[int]]
    confusion_labels: list[str]
    image_level: dict[str, Any]
    pr_curves: dict[str, Any]
    threshold_curves: dict[str, Any] = field(default_factory=dict)
    threshold_source: str = ""  # calibrated / --conf / default (uncalibrated) ...
    image_truth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    image_score: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    pooled_ap50: float | None = None  # the plain view: every class's boxes in one ranking

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``evaluate --json``)."""
        out = {
            k: getattr(self, k)
            for k in (
                "map",
                "map50",
                "mean_class_ap50",
                "pooled_ap50",
                "confusion_matrix",
                "confusion_labels",
            )
        }
        out["classes"] = [asdict(c) for c in self.classes]
        out["image_level"] = dict(self.image_level)
        out["thresholds"] = {c.name: c.threshold for c in self.classes}
        out["threshold_curves"] = self.threshold_curves
        out["threshold_source"] = self.threshold_source
        out["image_roc"] = self.image_roc()
        out["pr_curves"] = self.pr_curves
        return out

    def image_roc(self) -> dict[str, list[float]] | None:
        """The image-level ROC of the best detection score (None without both kinds)."""
        truth = self.image_truth
        if not (truth.any() and (~truth).any()):
            return None
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(truth, self.image_score)
        return {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}

    def flat(self) -> dict[str, Any]:
        """One ``metrics.csv`` row's validation columns (per-class AP50 as ``ap50_<class>``)."""
        row: dict[str, Any] = {"map": self.map, "map50": self.map50}
        row |= {"mean_class_ap50": self.mean_class_ap50, "pooled_ap50": self.pooled_ap50}
        row |= {f"ap50_{c.name}": c.ap50 for c in self.classes}
        row |= {k: self.image_level.get(k) for k in IMAGE_LEVEL_KEYS}
        return row

    def false_alarm_at_recall(self, recall: float) -> float | None:
        """Image-level false-alarm rate at the strictest threshold reaching ``recall``."""
        truth = self.image_truth
        if not (truth.any() and (~truth).any()):
            return None
        return false_alarm_at_recall(truth, self.image_score, recall)

    def recall_at_false_alarm(self, far: float) -> float | None:
        """Image-level defect recall at the loosest threshold with false-alarm rate ≤ ``far``."""
        truth = self.image_truth
        if not (truth.any() and (~truth).any()):
            return None
        return recall_at_false_alarm(truth, self.image_score, far)


def evaluate_detections(
    catalog: Catalog,
    detections: list[Detections],
    thresholds: np.ndarray,
    iou: float = 0.5,
) -> MetricsResult:
    """All metrics for ``detections`` against ``catalog``'s boxes; ``thresholds`` (K,) decide
    which boxes count for the confusion matrix, precision/recall and image verdicts."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    coco = coco_metrics(catalog, detections)
    cm = confusion_matrix(catalog, detections, thresholds, iou)
    curves = class_curves(catalog, detections, iou)
    per_class = []
    n_images = max(catalog.num_images, 1)
    for k, curve in enumerate(curves):
        # Matched within the class, as AP and calibration match: a defect counts as found when
        # a box of its class covers it, whatever else overlaps it (the confusion matrix is the
        # cross-class view, one box per defect).
        tp, fp = curve.counts_at(float(thresholds[k]))
        gt = curve.n_gt
        low, high = wilson(tp, gt)
        per_class.append(
            ClassMetrics(
                curve.name,
                gt,
                coco["ap"][k],
                coco["ap50"][k],
                tp / (tp + fp) if tp + fp else None,
                tp / gt if gt else None,
                float(thresholds[k]),
                low,
                high,
                float(cm[-1, k] / n_images),
                tp,
            )
        )
    truth, score, verdict = image_scores(catalog, detections, thresholds)
    return MetricsResult(
        map=coco["map"],
        map50=coco["map50"],
        mean_class_ap50=_nanmean(coco["ap50"]),
        pooled_ap50=coco["pooled_ap50"],
        classes=per_class,
        confusion_matrix=cm.tolist(),
        confusion_labels=[*catalog.classes, "background"],
        image_level=image_level_metrics(truth, score, verdict),
        pr_curves=coco["pr_curves"],
        threshold_curves=threshold_curves(curves),
        image_truth=truth,
        image_score=score,
    )


def _nanmean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ---------------------------------------------------------------------------- COCO
def coco_metrics(catalog: Catalog, detections: list[Detections]) -> dict:
    """mAP, mAP50, per-class AP/AP50 (None where a class has no ground truth), the pooled AP50
    and per-class PR curves at IoU 0.5, from one COCOeval run.

    The curves are ``precision[0, :, k, 0, -1]`` of COCOeval at its 101 recall points (-1 where
    a recall level is never reached; None: no ground truth or no detections).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    k = catalog.num_classes
    recall = np.linspace(0.0, 1.0, 101).round(2).tolist()
    curves: dict[str, list[float] | None] = dict.fromkeys(catalog.classes)
    results = to_coco_results(detections)
    if not results or not len(catalog.boxes):
        return {
            "map": 0.0 if len(catalog.boxes) else None,
            "map50": 0.0 if len(catalog.boxes) else None,
            "pooled_ap50": 0.0 if len(catalog.boxes) else None,
            "ap": [_zero_or_none(catalog, c) for c in range(k)],
            "ap50": [_zero_or_none(catalog, c) for c in range(k)],
            "pr_curves": {"recall": recall, "precision": curves},
        }
    gt = COCO()
    gt.dataset = catalog.to_coco()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 10, max(100, _max_dets(detections))]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T iou thresholds, R recall points, K, A areas, M maxDets)
    ap, ap50 = [], []
    for c, name in enumerate(catalog.classes):
        p_all = precision[:, :, c, 0, -1]
        p50 = precision[0, :, c, 0, -1]
        ap.append(float(p_all[p_all > -1].mean()) if (p_all > -1).any() else None)
        ap50.append(float(p50[p50 > -1].mean()) if (p50 > -1).any() else None)
        curves[name] = p50.round(4).tolist() if (p50 > -1).any() else None
    return {
        "map": float(ev.stats[0]),
        "map50": float(ev.stats[1]),
        "pooled_ap50": pooled_ap50(ev),
        "ap": ap,
        "ap50": ap50,
        "pr_curves": {"recall": recall, "precision": curves},
    }


def pooled_ap50(ev) -> float | None:
    """AP at IoU 0.5 with every class's detections ranked together against all boxes, each
    matched within its class as COCOeval matched it: the plain view, where a class weighs by its
    box count (COCO's mAP50 averages over classes, the balanced view). Computed from the
    evaluated ``ev``'s per-image matches the way ``COCOeval.accumulate`` computes one class's AP
    (area "all", the largest detection cap, precision made monotone, 101 recall points)."""
    p = ev.params
    cap = p.maxDets[-1]
    found = [e for e in ev.evalImgs if e is not None and e["aRng"] == p.areaRng[0]]
    gt_ignore = np.concatenate([e["gtIgnore"] for e in found]) if found else np.zeros(0)
    n_gt = int(np.count_nonzero(gt_ignore == 0))
    if not n_gt:
        return None
    scores = np.concatenate([e["dtScores"][:cap] for e in found])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e["dtMatches"][0, :cap] for e in found])[order] > 0
    ignored = np.concatenate([e["dtIgnore"][0, :cap] for e in found])[order].astype(bool)
    tp = np.cumsum(matched & ~ignored, dtype=float)
    fp = np.cumsum(~matched & ~ignored, dtype=float)
    if not len(tp):
        return 0.0
    recall, precision = tp / n_gt, tp / np.maximum(tp + fp, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, p.recThrs, side="left")
    return float(np.where(at < len(precision), precision[np.minimum(at, len(tp) - 1)], 0).mean())


def _zero_or_none(catalog: Catalog, c: int) -> float | None:
    return 0.0 if (catalog.boxes["class_id"] == c).any() else None


def _max_dets(detections: list[Detections]) -> int:
    return max((len(d.scores) for d in detections), default=0)


def to_coco_results(detections: list[Detections]) -> list[dict]:
    """COCO results format (category ids 1..K, bbox xywh)."""
    out = []
    for d in detections:
        for (x1, y1, x2, y2), s, c in zip(
            d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True
        ):
            out.append(
                {
                    "image_id": int(d.image_id),
                    "category_id": int(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s),
                }
            )
    return out


# ---------------------------------------------------------------------------- confusion
def confusion_matrix(
    catalog: Catalog, detections: list[Detections], thresholds: np.ndarray, iou: float
) -> np.ndarray:
    """(K+1, K+1) counts: rows are truth, columns predictions; index K is background."""
    k = catalog.num_classes
    cm = np.zeros((k + 1, k + 1), dtype=np.int64)
    gts = catalog.boxes_by_image()
    by_image = {d.image_id: d for d in detections}
    for image_id in catalog.images["image_id"].tolist():
        gt = gts.get(int(image_id), np.zeros((0, 5)))
        d = by_image.get(int(image_id))
        keep = d.passed(thresholds) if d is not None else np.zeros(0, bool)
        pb = d.boxes[keep] if d is not None else np.zeros((0, 4))
        pl = d.labels[keep].astype(int) if d is not None else np.zeros(0, int)
        _accumulate(cm, gt, pb, pl, iou, k)
    return cm


def _accumulate(
    cm: np.ndarray, gt: np.ndarray, pb: np.ndarray, pl: np.ndarray, iou: float, k: int
) -> None:
    gl = gt[:, 4].astype(int)
    matched_gt, matched_pred = set(), set()
    if len(gt) and len(pb):
        ious = box_iou(torch.as_tensor(gt[:, :4]), torch.as_tensor(pb)).numpy()
        pairs = np.argwhere(ious >= iou)
        order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]])
        for gi, pi in pairs[order]:  # greedy by IoU, one-to-one
            if gi in matched_gt or pi in matched_pred:
                continue
            matched_gt.add(gi)
            matched_pred.add(pi)
            cm[gl[gi], pl[pi]] += 1
    for gi in set(range(len(gt))) - matched_gt:
        cm[gl[gi], k] += 1  # missed defect
    for pi in set(range(len(pb))) - matched_pred:
        cm[k, pl[pi]] += 1  # false alarm


# ---------------------------------------------------------------------------- image level
def image_scores(
    catalog: Catalog, detections: list[Detections], thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image (catalogue order): truth (has a defect), defect score (the best box score, or
    its mix with an image head's, :attr:`Detections.defect_score`), verdict (any box passes)."""
    by_image = {d.image_id: d for d in detections}
    ids = catalog.images["image_id"].to_numpy()
    truth = ~catalog.background_mask()
    score = np.zeros(len(ids))
    verdict = np.zeros(len(ids), dtype=bool)
    for i, image_id in enumerate(ids):
        d = by_image.get(int(image_id))
        if d is not None:
            score[i] = d.defect_score
            verdict[i] = bool(d.passed(thresholds).any())
    return truth, score, verdict


def image_level_metrics(truth: np.ndarray, score: np.ndarray, verdict: np.ndarray) -> dict:
    """Defect-vs-ok figures; plain accuracy next to balanced accuracy and the always-ok line."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pos, neg = truth.sum(), (~truth).sum()
    caught, flagged_ok = int((verdict & truth).sum()), int((verdict & ~truth).sum())
    recall = float(caught / pos) if pos else None
    false_alarm = float(flagged_ok / neg) if neg else None
    both = pos > 0 and neg > 0
    recall_ci, far_ci = wilson(caught, int(pos)), wilson(flagged_ok, int(neg))
    return {
        "images": len(truth),
        "defect_images": int(pos),
        "ok_images": int(neg),
        "defect_recall": recall,
        "defect_recall_low": recall_ci[0],
        "defect_recall_high": recall_ci[1],
        "false_alarm_rate": false_alarm,
        "false_alarm_rate_low": far_ci[0],
        "false_alarm_rate_high": far_ci[1],
        "accuracy": float((verdict == truth).mean()) if len(truth) else None,
        "balanced_accuracy": float(balanced_accuracy_score(truth, verdict)) if both else None,
        "always_ok_accuracy": float(neg / len(truth)) if len(truth) else None,
        "auroc": float(roc_auc_score(truth, score)) if both else None,
        "recall_at_far_5": recall_at_false_alarm(truth, score, 0.05) if both else None,
    }


def false_alarm_at_recall(truth: np.ndarray, score: np.ndarray, recall: float) -> float:
    """False-alarm rate on good parts at the strictest threshold catching ``recall`` of the
    defective images (1.0 when that recall needs flagging every image)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth, score)
    ok = tpr >= recall - 1e-12
    return float(fpr[ok].min()) if ok.any() else 1.0


def recall_at_false_alarm(truth: np.ndarray, score: np.ndarray, far: float) -> float:
    """Defect recall at the loosest threshold whose false-alarm rate stays ≤ ``far``."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth, score)
    ok = fpr <= far + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0
