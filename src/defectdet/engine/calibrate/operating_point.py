"""Operating points: per-class score thresholds chosen on a labelled split for what the line
needs, each stored with its evidence (how many boxes or images it was chosen on, what it
achieved there, a 95 % Wilson interval for the recall) and a plain note where the evidence is
too thin to verify the target.

Objectives (:class:`~defectdet.config.CalibrateConfig`):

- default: per class, the threshold of maximum F1 (box level, IoU 0.5, same class);
- ``--target-recall R`` (or per class): per class, the highest threshold whose box recall
  reaches R;
- ``--level image --target-recall R``: one threshold for every class, the highest at which R of
  the defective images have a box passing it;
- ``--max-false-alarms F``: one threshold for every class, the lowest at which at most F of the
  defect-free images have a box passing it.

A threshold t keeps boxes with ``score >= t``. Detections come from the one inference path
with a low floor (:data:`CALIBRATION_FLOOR`), so thresholds below the usual AP floor are
reachable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from defectdet.config import DEFAULT_CONF, CalibrateConfig
from defectdet.config.values import parse_targets
from defectdet.data.catalog import Catalog
from defectdet.engine.evaluate.curves import (
    ClassCurve,
    class_curves,
    image_max_scores,
    wilson,
)
from defectdet.engine.inference.run import Detections

CALIBRATION_FLOOR = 0.01
"""Detections kept while calibrating: the lowest threshold calibration can choose."""


# ---------------------------------------------------------------------------- evidence
def needed_to_verify(target: float, limit: int = 10_000_000) -> int | None:
    """The fewest examples whose 95 % interval could confirm ``target``: the smallest n with
    Wilson's lower bound ≥ ``target`` when all n are found (None beyond ``limit``)."""
    if not 0 < target < 1:
        return None

    def enough(n: int) -> bool:
        return wilson(n, n)[0] >= target

    high = 1
    while not enough(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2  # not enough (or 0); the lower bound grows with n when all are found
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


@dataclass
class Evidence:
    """What one threshold achieved on the split it was chosen on."""

    name: str  # a class, or "image level"
    threshold: float
    examples: int  # boxes of the class (box level) or defective images (image level)
    found: int
    recall: float | None
    recall_low: float | None
    recall_high: float | None
    precision: float | None
    false_alarm_rate: float | None  # share of defect-free images flagged at the thresholds
    target: float | None = None
    note: str = ""
    good_images: int | None = None  # defect-free images the false-alarm rate was measured on


@dataclass
class OperatingPoint:
    """Thresholds with their evidence; stored in checkpoints as ``operating_point``."""

    objective: str
    split: str
    thresholds: dict[str, float]
    classes: list[Evidence]
    image: Evidence
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        return cls(
            objective=str(data["objective"]),
            split=str(data.get("split", "")),
            thresholds={str(k): float(v) for k, v in data["thresholds"].items()},
            classes=[Evidence(**c) for c in data.get("classes", [])],
            image=Evidence(**data["image"]),
            notes=[str(n) for n in data.get("notes", [])],
        )

    def summary(self) -> str:
        """One line: objective, split, thresholds."""
        thr = ", ".join(f"{k} {v:.3f}" for k, v in self.thresholds.items())
        return f"{self.objective} on {self.split}: {thr}"


# ---------------------------------------------------------------------------- choosing
def choose_operating_point(
    catalog: Catalog, detections: list[Detections], cfg: CalibrateConfig, split: str
) -> OperatingPoint:
    """Thresholds for ``cfg``'s objective on this split, with their evidence."""
    curves = class_curves(catalog, detections)
    best = image_max_scores(catalog, detections)
    defective = ~catalog.background_mask()
    targets = parse_targets(cfg.target_recall)
    notes: list[str] = []
    if cfg.max_false_alarms is not None:
        objective = f"at most {cfg.max_false_alarms:.1%} false alarms on defect-free images"
        t = _false_alarm_threshold(best[~defective].max(axis=1, initial=0), cfg.max_false_alarms)
        if t is None:
            notes.append(
                "no defect-free images in the split: a false-alarm rate cannot be measured; "
                f"kept the default threshold {DEFAULT_CONF}"
            )
            t = DEFAULT_CONF
        thresholds = np.full(catalog.num_classes, t)
    elif cfg.level == "image" and targets is not None:
        objective = f"image-level defect recall {float(targets):.1%}"
        t, note = _recall_threshold(np.sort(best[defective].max(axis=1, initial=0))[::-1], targets)
        notes += [f"image level: {note}"] if note else []
        thresholds = np.full(catalog.num_classes, t)
    elif targets is not None:
        objective = "box recall per class"
        thresholds, per_class_notes = _per_class_recall(curves, targets)
        notes += per_class_notes
    else:
        objective = "maximum F1 per class"
        thresholds, per_class_notes = _per_class_f1(curves)
        notes += per_class_notes
    flagged = (best >= thresholds[None, :]).any(axis=1)
    classes = [
        _class_evidence(c, float(t), flagged, defective, targets)
        for c, t in zip(curves, thresholds, strict=True)
    ]
    image_target = float(targets) if cfg.level == "image" and targets is not None else None
    lowest = float(thresholds.min()) if thresholds.size else DEFAULT_CONF  # flags an image
    image = _image_evidence(flagged, defective, lowest, image_target)
    notes += [e.note for e in [*classes, image] if e.note]
    return OperatingPoint(
        objective=objective,
        split=split,
        thresholds={c.name: float(t) for c, t in zip(curves, thresholds, strict=True)},
        classes=classes,
        image=image,
        notes=notes,
    )


def _recall_threshold(scores_desc: np.ndarray, target: float) -> tuple[float, str]:
    """The highest threshold at which ``target`` of the examples (their best scores, sorted
    descending; 0 = never detected) are found; the lowest one when unreachable."""
    n = len(scores_desc)
    if n == 0:
        return DEFAULT_CONF, f"no examples to reach {target:.1%} on: kept {DEFAULT_CONF}"
    need = max(1, math.ceil(target * n - 1e-9))
    if scores_desc[need - 1] <= 0:
        reachable = int((scores_desc > 0).sum())
        return CALIBRATION_FLOOR, (
            f"{target:.1%} recall is unreachable at any threshold (at most {reachable}/{n} "
            f"found); kept the lowest threshold {CALIBRATION_FLOOR}"
        )
    return float(scores_desc[need - 1]), ""


def _per_class_recall(
    curves: list[ClassCurve], targets: float | dict[str, float]
) -> tuple[np.ndarray, list[str]]:
    thresholds, notes = [], []
    for c in curves:
        target = targets.get(c.name) if isinstance(targets, dict) else targets
        if target is None:  # a class not named: its F1 optimum
            t, note = _f1_threshold(c)
        elif c.n_gt == 0:
            t, note = DEFAULT_CONF, f"no {c.name} boxes in the split: kept {DEFAULT_CONF}"
        else:
            found = np.sort(c.scores[c.tp])[::-1]  # each box's matched detection score
            found = np.concatenate([found, np.zeros(c.n_gt - len(found))])
            t, note = _recall_threshold(found, target)
            note = f"{c.name}: {note}" if note else ""
        thresholds.append(t)
        notes += [note] if note else []
    return np.asarray(thresholds, dtype=float), notes


def _f1_threshold(c: ClassCurve) -> tuple[float, str]:
    if c.n_gt == 0 or not c.tp.any():
        why = "no boxes in the split" if c.n_gt == 0 else "no box found at any threshold"
        return DEFAULT_CONF, f"{c.name}: {why}: kept {DEFAULT_CONF}"
    tp = np.cumsum(c.tp)
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / c.n_gt
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    # Equal scores share one threshold: only the last of a run of ties is a real cut.
    cut = np.r_[c.scores[1:] != c.scores[:-1], True]
    f1 = np.where(cut, f1, -1)
    return float(c.scores[int(f1.argmax())]), ""


def _per_class_f1(curves: list[ClassCurve]) -> tuple[np.ndarray, list[str]]:
    pairs = [_f1_threshold(c) for c in curves]
    return np.array([t for t, _ in pairs], dtype=float), [n for _, n in pairs if n]


def _false_alarm_threshold(good_scores: np.ndarray, rate: float) -> float | None:
    """The lowest threshold flagging at most ``rate`` of the defect-free images (their best
    scores); None without defect-free images."""
    n = len(good_scores)
    if n == 0:
        return None
    allowed = math.floor(rate * n + 1e-9)
    desc = np.sort(good_scores)[::-1]
    if allowed >= n:
        return CALIBRATION_FLOOR
    t = float(np.nextafter(desc[allowed], np.inf))  # just above the first one not allowed
    return max(t, CALIBRATION_FLOOR)


# ---------------------------------------------------------------------------- evidence
def _class_evidence(
    c: ClassCurve,
    t: float,
    flagged: np.ndarray,
    defective: np.ndarray,
    targets: float | dict[str, float] | None,
) -> Evidence:
    tp, fp = c.counts_at(t)
    low, high = wilson(tp, c.n_gt)
    target = targets.get(c.name) if isinstance(targets, dict) else targets
    good = ~defective
    ev = Evidence(
        name=c.name,
        threshold=float(t),
        examples=c.n_gt,
        found=tp,
        recall=tp / c.n_gt if c.n_gt else None,
        recall_low=low,
        recall_high=high,
        precision=tp / (tp + fp) if tp + fp else None,
        false_alarm_rate=float(flagged[good].mean()) if good.any() else None,
        target=target,
        good_images=int(good.sum()),
    )
    ev.note = _thin_evidence(ev, "boxes")
    return ev


def _image_evidence(
    flagged: np.ndarray, defective: np.ndarray, t: float, target: float | None
) -> Evidence:
    n, found = int(defective.sum()), int((flagged & defective).sum())
    low, high = wilson(found, n)
    good = ~defective
    caught = int(flagged.sum())
    ev = Evidence(
        name="image level",
        threshold=float(t),
        examples=n,
        found=found,
        recall=found / n if n else None,
        recall_low=low,
        recall_high=high,
        precision=found / caught if caught else None,
        false_alarm_rate=float(flagged[good].mean()) if good.any() else None,
        target=target,
        good_images=int(good.sum()),
    )
    ev.note = _thin_evidence(ev, "defective images")
    return ev


def _thin_evidence(ev: Evidence, unit: str) -> str:
    """A plain line when the split is too small to verify the target at all: even if every
    example were found, the 95 % interval's lower bound would stay below it."""
    if ev.target is None or not ev.examples:
        return ""
    best_case, _ = wilson(ev.examples, ev.examples)
    if best_case is None or best_case >= ev.target:
        return ""
    need = needed_to_verify(ev.target)
    more = f"; about {need} would be needed" if need else ""
    return (
        f"{ev.name}: a {ev.target:.1%} recall target cannot be verified with {ev.examples} "
        f"{unit} (achieved {ev.recall:.1%}, 95% interval {ev.recall_low:.1%}–"
        f"{ev.recall_high:.1%}){more}"
    )
