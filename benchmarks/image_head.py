"""Which per-image defect score ranks defective images above good parts best: the highest box
score (what defectdet uses without an image head), the image head's probability, or a mix.

For each checkpoint: the validation split (and the ``--negatives`` folders, as ``evaluate``
takes them) through the one inference path, then image AUROC and the share of good parts
flagged at 90 % defect recall for every score rule of :data:`RULES` (rules needing the head are
skipped for models without one), and the mean per-class AP50 ``evaluate`` reports (from the
same pass: detections at or above the AP floor are exactly those evaluate keeps).

Run: .venv/bin/python benchmarks/image_head.py DATA WEIGHTS [WEIGHTS ...] [--negatives DIR]
[--json OUT]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from defectdet.config import DEFAULT_CONF, InferConfig
from defectdet.data.formats import load_dataset
from defectdet.engine.calibrate.operating_point import CALIBRATION_FLOOR
from defectdet.engine.evaluate.metrics import evaluate_detections, false_alarm_at_recall
from defectdet.engine.evaluate.run import choose_split
from defectdet.engine.evaluate.score import detect_catalog
from defectdet.engine.inference.detectors import load_detector
from defectdet.engine.inference.run import Inference
from defectdet.model import resolve_device
from defectdet.model.postprocess import AP_SCORE_FLOOR

RULES = {
    "box max": lambda box, img: box,
    "image head": lambda box, img: img,
    "max": np.maximum,
    "mean": lambda box, img: (box + img) / 2,
    "geometric mean": lambda box, img: np.sqrt(box * img),
}


def scores(weights: Path, catalog, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per image of ``catalog``: truth, box max score, image-head score (nan without a head);
    and the mean per-class AP50."""
    detector = load_detector(weights, "torch", resolve_device("cpu"), False)
    inference = Inference(detector, InferConfig(conf=CALIBRATION_FLOOR), floor=CALIBRATION_FLOOR)
    dets = detect_catalog(inference, catalog, batch, 0)
    by_id = {d.image_id: d for d in dets}
    ids = catalog.images["image_id"].astype(int).tolist()
    box = np.array([by_id[i].scores.max() if len(by_id[i].scores) else 0.0 for i in ids])
    img = np.array([np.nan if by_id[i].image_score is None else by_id[i].image_score for i in ids])
    floor = [replace(d, **_above(d, AP_SCORE_FLOOR)) for d in dets]
    thresholds = np.full(len(detector.class_names), DEFAULT_CONF)
    ap = evaluate_detections(catalog, floor, thresholds).mean_class_ap50
    return ~catalog.background_mask(), box, img, float(ap)


def _above(d, floor: float) -> dict:
    keep = d.scores >= floor
    return {"boxes": d.boxes[keep], "scores": d.scores[keep], "labels": d.labels[keep]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("weights", type=Path, nargs="+")
    ap.add_argument("--negatives", type=Path, action="append", default=[])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    catalog = load_dataset(args.data, negatives=args.negatives)
    part, _ = choose_split(catalog, None)
    part = catalog.subset([*part.images["image_id"], *catalog.negative_ids()])
    results = {}
    for w in args.weights:
        truth, box, img, ap = scores(w, part, args.batch)
        print(f"{w}  mean per-class AP50 {ap:.3f}")
        rows = {"mean_class_ap50": round(ap, 4)}
        for name, rule in RULES.items():
            if np.isnan(img).any() and name != "box max":
                continue
            s = rule(box, img)
            rows[name] = {
                "auroc": round(float(roc_auc_score(truth, s)), 4),
                "false_alarms_at_90_recall": round(false_alarm_at_recall(truth, s, 0.9), 4),
            }
            print(
                f"{w}  {name:15s}  AUROC {rows[name]['auroc']:.3f}  "
                f"good parts flagged at 90% recall {rows[name]['false_alarms_at_90_recall']:.3f}"
            )
        results[str(w)] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
