"""Detection and image-level metrics on cases small enough to work out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defectdet.data.catalog import Catalog
from defectdet.engine.evaluate.metrics import (
    confusion_matrix,
    evaluate_detections,
    image_level_metrics,
    image_scores,
    recall_at_false_alarm,
)
from defectdet.engine.inference.run import Detections


def thr(*values: float) -> np.ndarray:
    """Per-class thresholds (scratch, crack); one value = both."""
    return np.array(values * 2 if len(values) == 1 else values, dtype=float)


def image_level(cat: Catalog, dets: list[Detections], thresholds: np.ndarray) -> dict:
    return image_level_metrics(*image_scores(cat, dets, thresholds))


def catalog() -> Catalog:
    """4 images: 1 has a class-0 box, 2 has a class-1 box, 3 and 4 are defect-free."""
    images = pd.DataFrame(
        {
            "image_id": [1, 2, 3, 4],
            "file_name": list("abcd"),
            "width": 100,
            "height": 100,
            "split": "",
        }
    )
    boxes = pd.DataFrame(
        [(1, 0, 10.0, 10.0, 30.0, 30.0), (2, 1, 50.0, 50.0, 70.0, 80.0)],
        columns=["image_id", "class_id", "x1", "y1", "x2", "y2"],
    )
    return Catalog(Path("."), ["scratch", "crack"], images, boxes)


def det(image_id, rows) -> Detections:
    arr = np.array(rows, dtype=float).reshape(-1, 6)
    return Detections(image_id, arr[:, :4], arr[:, 4], arr[:, 5].astype(int))


def test_perfect_detections_score_one_per_class():
    dets = [det(1, [[10, 10, 30, 30, 0.9, 0]]), det(2, [[50, 50, 70, 80, 0.8, 1]])]
    m = evaluate_detections(catalog(), dets, thr(0.5))
    assert m.map50 == pytest.approx(1.0) and m.map == pytest.approx(1.0)
    assert [c.ap50 for c in m.classes] == pytest.approx([1.0, 1.0])
    assert m.mean_class_ap50 == pytest.approx(1.0)
    il = m.image_level
    assert (il["defect_recall"], il["false_alarm_rate"], il["accuracy"]) == (1.0, 0.0, 1.0)
    assert il["always_ok_accuracy"] == 0.5


def test_missing_the_rare_class_shows_in_the_per_class_mean():
    dets = [det(1, [[10, 10, 30, 30, 0.9, 0]])]
    m = evaluate_detections(catalog(), dets, thr(0.5))
    assert [c.ap50 for c in m.classes] == pytest.approx([1.0, 0.0])
    assert m.mean_class_ap50 == pytest.approx(0.5)
    assert m.classes[1].recall == 0.0


def many_scratches_one_crack() -> Catalog:
    """10 images of 100 px: images 1-9 hold one scratch each, image 10 one crack."""
    images = pd.DataFrame(
        {"image_id": range(1, 11), "file_name": list("abcdefghij"), "width": 100, "height": 100}
    ).assign(split="")
    boxes = pd.DataFrame(
        [(i, 0 if i < 10 else 1, 10.0, 10.0, 40.0, 40.0) for i in range(1, 11)],
        columns=["image_id", "class_id", "x1", "y1", "x2", "y2"],
    )
    return Catalog(Path("."), ["scratch", "crack"], images, boxes)


def test_pooled_ap50_is_the_plain_view_beside_the_per_class_mean():
    """Every scratch found, the one crack missed. Pooled, 9 of 10 boxes are found at precision 1:
    precision 1 at the 91 recall points up to 0.9 and 0 at the 10 above, so 91/101. The mean
    over classes (COCO's mAP50 as well) weighs the missed crack as much as all scratches: 0.5."""
    dets = [det(i, [[10, 10, 40, 40, 0.9, 0]]) for i in range(1, 10)]
    m = evaluate_detections(many_scratches_one_crack(), dets, thr(0.5))
    assert m.pooled_ap50 == pytest.approx(91 / 101)
    assert m.mean_class_ap50 == pytest.approx(0.5) and m.map50 == pytest.approx(0.5)
    assert m.flat()["pooled_ap50"] == m.to_dict()["pooled_ap50"] == m.pooled_ap50


def test_pooled_ap50_of_one_class_is_that_class_ap50():
    """With one class there is nothing to pool: the pooled AP50 is COCOeval's own AP50 of it,
    here for scores that interleave true and false detections."""
    rng = np.random.default_rng(0)
    cat = many_scratches_one_crack()
    cat = Catalog(cat.root, cat.classes, cat.images, cat.boxes.assign(class_id=0))
    dets = []
    for i in range(1, 11):
        hit = [10, 10, 40, 40, rng.uniform(0.1, 1), 0] if i % 3 else [60, 60, 90, 90, 0.5, 0]
        dets.append(det(i, [hit, [50, 5, 95, 30, rng.uniform(0.1, 1), 0]]))
    m = evaluate_detections(cat, dets, thr(0.5))
    assert 0.2 < m.classes[0].ap50 < 0.9  # false detections outrank some true ones
    assert m.pooled_ap50 == pytest.approx(m.classes[0].ap50)


def test_confusion_matrix_background_row_and_column():
    dets = [
        det(1, [[11, 11, 30, 30, 0.9, 1]]),  # right place, wrong class
        det(2, [[0, 0, 5, 5, 0.9, 1]]),  # misses the crack, false alarm elsewhere
        det(3, [[40, 40, 60, 60, 0.2, 0]]),  # below threshold: ignored
    ]
    cm = confusion_matrix(catalog(), dets, thr(0.5), iou=0.5)
    expected = np.zeros((3, 3), int)
    expected[0, 1] = 1  # scratch predicted as crack
    expected[1, 2] = 1  # crack missed (background column)
    expected[2, 1] = 1  # false alarm (background row)
    np.testing.assert_array_equal(cm, expected)


def test_per_class_recall_matches_within_the_class_as_calibration_does():
    """A scratch covered by its own box (0.6) and by a better-placed crack box (0.9): found, for
    the scratch's recall, as AP and calibration count it; the crack box is not a crack (its
    precision) but sits on a defect (no false alarm); the confusion matrix pairs the scratch
    with the crack box, one box per defect."""
    dets = [det(1, [[10, 10, 30, 30, 0.9, 1], [12, 12, 32, 32, 0.6, 0]])]
    m = evaluate_detections(catalog(), dets, thr(0.5))
    scratch, crack = m.classes
    assert (scratch.recall, scratch.precision) == (1.0, 1.0)
    assert (crack.recall, crack.precision, crack.false_alarms_per_image) == (0.0, 0.0, 0.0)
    assert m.confusion_matrix[0][1] == 1  # the cross-class view
    assert m.threshold_curves["recall"]["scratch"][50] == scratch.recall  # thresholds.png agrees


def test_image_level_and_per_class_thresholds():
    dets = [
        det(1, [[10, 10, 30, 30, 0.4, 0]]),
        det(2, [[50, 50, 70, 80, 0.2, 1]]),
        det(3, [[1, 1, 9, 9, 0.35, 0]]),
    ]
    il = image_level(catalog(), dets, thr(0.3))
    # Verdicts: 1 defect (0.4), 2 ok (0.2), 3 defect (false alarm), 4 ok.
    assert il["defect_recall"] == 0.5 and il["false_alarm_rate"] == 0.5
    assert il["accuracy"] == 0.5 and il["balanced_accuracy"] == 0.5
    assert il["auroc"] == pytest.approx(0.75)  # scores: pos 0.4, 0.2; neg 0.35, 0
    per_class = image_level(catalog(), dets, thr(0.38, 0.1))
    assert per_class["defect_recall"] == 1.0 and per_class["false_alarm_rate"] == 0.0


def test_recall_at_false_alarm_rate():
    truth = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    score = np.array([0.9, 0.8, 0.1, 0.85, 0.2, 0.1, 0.05])
    assert recall_at_false_alarm(truth, score, 0.0) == pytest.approx(1 / 3)
    assert recall_at_false_alarm(truth, score, 0.25) == pytest.approx(2 / 3)
