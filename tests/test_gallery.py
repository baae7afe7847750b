"""Galleries: the right false alarms, misses and wrong-class detections, worst first, drawn as
contact sheets with an index that says what every tile shows."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.data.catalog import Catalog
from defectdet.engine.gallery import (
    COLUMNS,
    TILE,
    PredictionGallery,
    evaluation_items,
    write_gallery,
)
from defectdet.engine.inference.run import Detections
from detector_helpers import write_images

CLASSES = ["scratch", "crack"]


def scene(tmp_path: Path) -> tuple[Catalog, list[Detections]]:
    """5 images of 96x72: 1-2 hold defects, 3-5 are good parts."""
    write_images(tmp_path, 5)
    images = pd.DataFrame(
        [(i, f"{i - 1:03d}.png", 96, 72, "") for i in range(1, 6)],
        columns=["image_id", "file_name", "width", "height", "split"],
    )
    boxes = pd.DataFrame(
        [
            (1, 0, 10.0, 10.0, 30.0, 30.0),  # scratch, found well
            (1, 1, 50.0, 20.0, 70.0, 40.0),  # crack, found below its threshold (0.2)
            (2, 1, 5.0, 40.0, 25.0, 60.0),  # crack, not found at all
            (2, 0, 60.0, 10.0, 80.0, 30.0),  # scratch, called crack (wrong class)
        ],
        columns=["image_id", "class_id", "x1", "y1", "x2", "y2"],
    )
    cat = Catalog(tmp_path, CLASSES, images, boxes)

    def d(i, rows):
        a = np.array(rows, dtype=float).reshape(-1, 6)
        return Detections(i, a[:, :4], a[:, 4], a[:, 5].astype(np.int64))

    dets = [
        d(1, [[10, 10, 30, 30, 0.9, 0], [50, 20, 70, 40, 0.2, 1]]),
        d(2, [[60, 10, 80, 30, 0.7, 1]]),
        d(3, [[5, 5, 20, 20, 0.8, 0], [40, 40, 50, 50, 0.3, 1]]),  # two false alarms
        d(4, [[5, 5, 20, 20, 0.1, 0]]),  # below threshold: not a false alarm
    ]
    return cat, dets


def test_evaluation_items_pick_the_right_boxes(tmp_path: Path) -> None:
    cat, dets = scene(tmp_path)
    items = evaluation_items(cat, dets, np.array([0.5, 0.25]))
    kinds = [(i.kind, i.class_name, i.name, i.score) for i in items]
    assert kinds[:3] == [
        ("false_alarm", "scratch", "002.png", 0.8),  # highest score first
        ("false_alarm", "crack", "002.png", 0.3),
        ("wrong_class", "crack", "001.png", 0.7),
    ]
    missed = [i for i in items if i.kind == "missed"]
    assert [(i.class_name, i.name, i.score) for i in missed] == [
        ("scratch", "001.png", None),  # the one called crack is a missed scratch too
        ("crack", "000.png", 0.2),  # nearest to being found first
        ("crack", "001.png", None),
    ]
    assert missed[1].truth == (50.0, 20.0, 70.0, 40.0) and missed[1].box is not None
    wrong = items[2]
    assert wrong.truth == (60.0, 10.0, 80.0, 30.0)  # the scratch it should have been


def test_sheets_and_index(tmp_path: Path) -> None:
    cat, dets = scene(tmp_path / "data")
    items = evaluation_items(cat, dets, np.array([0.5, 0.25]), k=1)  # one tile per sheet
    sheets = write_gallery(items, tmp_path / "g")
    assert sorted(p.name for p in sheets) == [
        "false_alarm.png",
        "missed_crack.png",
        "missed_scratch.png",
        "wrong_class.png",
    ]
    for sheet in sheets:
        image = cv2.imread(str(sheet))
        assert image.shape == (28 + TILE + 4, COLUMNS * (TILE + 4), 3)
        assert image[30 : 30 + TILE, :TILE].std() > 5  # a picture, not an empty tile
    with open(tmp_path / "g" / "gallery.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["sheet"], r["kind"], r["class"], r["score"]) for r in rows] == [
        ("false_alarm.png", "false_alarm", "scratch", "0.8"),
        ("missed_crack.png", "missed", "crack", "0.2"),
        ("missed_scratch.png", "missed", "scratch", ""),
        ("wrong_class.png", "wrong_class", "crack", "0.7"),
    ]
    assert [float(rows[0][k]) for k in ("x1", "y1", "x2", "y2")] == [5, 5, 20, 20]


def test_prediction_gallery_keeps_the_top_and_the_borderline(tmp_path: Path) -> None:
    gallery = PredictionGallery(CLASSES, k=2)
    thresholds = np.array([0.5, 0.4])
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 40)
    for i, s in enumerate(scores):
        det = Detections(i, np.array([[1.0, 1, 9, 9]]), np.array([s]), np.array([i % 2]))
        gallery.add(tmp_path / f"{i}.png", f"{i}.png", det, thresholds)
    top = {c: [it.score for it in gallery.top[c].items()] for c in CLASSES}
    for k, c in enumerate(CLASSES):
        mine = np.sort(scores[k::2][scores[k::2] >= thresholds[k]])[::-1]
        assert top[c] == mine[:2].tolist()
    ratio = np.where(np.arange(40) % 2 == 0, scores / 0.5, scores / 0.4)
    ok = ratio < 1
    expected = np.sort(ratio[ok])[::-1][:2]
    assert [it.priority for it in gallery.borderline.items()] == expected.tolist()


def test_cli_gallery_and_no_overwrite(tmp_path: Path) -> None:
    cat, _ = scene(tmp_path / "data")
    doc = cat.to_coco()
    import json

    (tmp_path / "data" / "gt.json").write_text(json.dumps(doc))
    from detector_helpers import make_checkpoint

    weights = make_checkpoint(tmp_path / "w.pt", classes=tuple(CLASSES))
    args = [
        "evaluate",
        str(tmp_path / "data" / "gt.json"),
        "-w",
        str(weights),
        "--workers",
        "0",
        "--gallery",
        str(tmp_path / "g"),
        "--conf",
        "0.3",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g" / "gallery.csv").is_file() and list((tmp_path / "g").glob("*.png"))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 4 and "already holds a gallery" in again.output
