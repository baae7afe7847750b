"""defectdet evaluate: metrics against pycocotools run directly, hand-computed confusion matrix
and image-level figures, split and class handling, and the printed report."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.data.formats import load_dataset
from defectdet.engine.evaluate.metrics import evaluate_detections
from defectdet.engine.evaluate.run import choose_split, class_mapping
from defectdet.engine.inference.run import Detections
from defectdet.errors import ConfigError
from detector_helpers import make_checkpoint

CLASSES = ["scratch", "spot", "crack"]


def coco_file(path: Path, images: list[tuple], anns: list[tuple], classes=CLASSES) -> Path:
    """images: (id, w, h, split); anns: (image_id, class index, x1, y1, x2, y2)."""
    doc = {
        "images": [
            {
                "id": i,
                "file_name": f"{i}.png",
                "width": w,
                "height": h,
                **({"split": s} if s else {}),
            }
            for i, w, h, s in images
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            for k, (i, c, x1, y1, x2, y2) in enumerate(anns)
        ],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)],
    }
    path.write_text(json.dumps(doc))
    return path


def jitter(box: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    side = box[2:] - box[:2]
    return box + rng.uniform(-amount, amount, 4) * np.concatenate([side, side])


# ---------------------------------------------------------------------------- vs COCOeval
def test_map_matches_cocoeval_run_directly(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    images = [(i, 200, 160, "") for i in range(1, 13)]
    anns = []
    for i in range(1, 10):  # images 10-12 are defect-free
        for _ in range(rng.integers(1, 4)):
            x, y = rng.integers(0, 150), rng.integers(0, 110)
            w, h = rng.integers(8, 50, 2)
            c = int(rng.choice(3, p=[0.6, 0.3, 0.1]))
            anns.append((i, c, int(x), int(y), int(min(x + w, 200)), int(min(y + h, 160))))
    path = coco_file(tmp_path / "gt.json", images, anns)
    catalog = load_dataset(path, "coco", check_images=False)
    dets, results = [], []
    for i in range(1, 13):
        gt = [a for a in anns if a[0] == i]
        boxes = [jitter(np.array(a[2:], float), rng, rng.choice([0.02, 0.1, 0.3])) for a in gt]
        labels = [a[1] if rng.random() > 0.15 else (a[1] + 1) % 3 for a in gt]  # some confused
        for _ in range(rng.integers(0, 3)):  # false alarms
            x, y = rng.uniform(0, 150), rng.uniform(0, 110)
            boxes.append(np.array([x, y, x + rng.uniform(5, 40), y + rng.uniform(5, 40)]))
            labels.append(int(rng.integers(0, 3)))
        b = np.array(boxes).reshape(-1, 4)
        s = rng.uniform(0.05, 1.0, len(b)).round(3)
        lab = np.array(labels, dtype=np.int64)
        dets.append(Detections(i, b, s, lab))
        results += [
            {
                "image_id": i,
                "category_id": int(c) + 1,
                "score": float(sc),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            }
            for (x1, y1, x2, y2), sc, c in zip(b, s, lab, strict=True)
        ]
    ours = evaluate_detections(catalog, dets, np.full(3, 0.5))

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours.map == pytest.approx(ev.stats[0], abs=1e-9)
    assert ours.map50 == pytest.approx(ev.stats[1], abs=1e-9)
    assert 0.05 < ours.map < ours.map50 < 0.95  # a non-trivial case
    curves = ours.pr_curves
    for k, cls in enumerate(ours.classes):
        # Independently: COCOeval on this category alone, as its own summary reports it.
        with contextlib.redirect_stdout(io.StringIO()):
            alone = COCOeval(gt, gt.loadRes(results), "bbox")
            alone.params.catIds = [k + 1]
            alone.evaluate()
            alone.accumulate()
            alone.summarize()
        assert cls.ap50 == pytest.approx(alone.stats[1], abs=1e-9)
        assert cls.ap == pytest.approx(alone.stats[0], abs=1e-9)
        p = ev.eval["precision"][0, :, k, 0, -1]
        np.testing.assert_allclose(curves["precision"][cls.name], p, atol=1e-4)


# ---------------------------------------------------------------------------- by hand
def hand_case(tmp_path: Path):
    images = [(i, 100, 100, "") for i in range(1, 6)]
    anns = [(1, 0, 10, 10, 30, 30), (2, 1, 10, 10, 30, 30), (4, 0, 40, 40, 60, 60)]
    catalog = load_dataset(
        coco_file(tmp_path / "gt.json", images, anns, ["a", "b"]), "coco", check_images=False
    )

    def d(i, boxes, scores, labels):
        return Detections(
            i,
            np.array(boxes, float).reshape(-1, 4),
            np.array(scores, float),
            np.array(labels, np.int64),
        )

    dets = [
        d(1, [[10, 10, 30, 30]], [0.9], [0]),  # right class: a -> a
        d(2, [[11, 11, 31, 31]], [0.8], [0]),  # b called a
        d(3, [[5, 5, 20, 20]], [0.7], [1]),  # false alarm on a defect-free image
        d(4, [[40, 40, 60, 60]], [0.2], [0]),  # below 0.5: a missed
        d(5, [], [], []),
    ]
    return catalog, dets


def test_confusion_and_image_level_by_hand(tmp_path: Path) -> None:
    catalog, dets = hand_case(tmp_path)
    m = evaluate_detections(catalog, dets, np.array([0.5, 0.5]))
    # rows truth a, b, background; columns predicted a, b, background
    assert m.confusion_matrix == [[1, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert m.confusion_labels == ["a", "b", "background"]
    a, b = m.classes
    assert (a.precision, a.recall, b.precision, b.recall) == (0.5, 0.5, 0.0, 0.0)
    il = m.image_level
    # truth 1 1 0 1 0, verdict 1 1 1 0 0, max score .9 .8 .7 .2 0
    assert il["defect_recall"] == pytest.approx(2 / 3)
    assert il["false_alarm_rate"] == pytest.approx(1 / 2)
    assert il["accuracy"] == pytest.approx(3 / 5)
    assert il["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert il["always_ok_accuracy"] == pytest.approx(2 / 5)
    assert il["auroc"] == pytest.approx(5 / 6)
    # A lower threshold for class a alone recovers the missed defect of image 4.
    m2 = evaluate_detections(catalog, dets, np.array([0.1, 0.5]))
    assert m2.confusion_matrix == [[2, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert m2.image_level["defect_recall"] == 1.0


# ---------------------------------------------------------------------------- choices
def test_split_and_class_choices(tmp_path: Path) -> None:
    images = [(1, 64, 48, "train"), (2, 64, 48, "val"), (3, 64, 48, "val")]
    catalog = load_dataset(
        coco_file(tmp_path / "gt.json", images, [(1, 0, 1, 1, 9, 9)]), "coco", check_images=False
    )
    part, name = choose_split(catalog, None)
    assert name == "val" and part.num_images == 2
    assert choose_split(catalog, "all")[0].num_images == 3
    with pytest.raises(ConfigError, match="splits: train, val"):
        choose_split(catalog, "test")
    assert class_mapping(["crack", "scratch"], CLASSES).tolist() == [2, 0]
    with pytest.raises(ConfigError, match="dent missing from the data"):
        class_mapping(["scratch", "dent"], CLASSES)


# ---------------------------------------------------------------------------- CLI
def test_cli_evaluate_prints_tables_json_and_plots(coco_dataset: Path, tmp_path_factory) -> None:
    tmp_path = tmp_path_factory.mktemp("outputs")  # outside the dataset: no stray .json there
    weights = make_checkpoint(tmp_path / "best.pt", classes=("scratch", "crack"))
    runner = CliRunner()
    base = [
        "evaluate",
        str(coco_dataset),
        "-w",
        str(weights),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--conf",
        "0.4",
    ]
    result = runner.invoke(
        app,
        [
            *base,
            "--plots",
            str(tmp_path / "plots"),
            "--json",
            str(tmp_path / "r.json"),
            "--class-conf",
            "crack=0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for needle in (
        "per class",
        "scratch",
        "crack",
        "mAP@[.5:.95]",
        "mean per-class AP50",
        "AP50, boxes pooled",
        "defect recall",
        "false-alarm rate",
        "AUROC",
        "balanced accuracy",
        'always-"ok" accuracy',
        "confusion matrix",
        "background",
        "split all",
    ):
        assert needle in text, needle
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["thresholds"] == {"scratch": 0.4, "crack": 0.2}
    assert report["images"] == 4 and len(report["metrics"]["confusion_matrix"]) == 3
    assert set(report["pr_curves"]["precision"]) == {"scratch", "crack"}
    for name in ("pr_curves.png", "confusion_matrix.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = runner.invoke(app, [*base, "--json", "-"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["metrics"]["image_level"]["images"] == 4
    missing = runner.invoke(app, [*base, "--split", "val"])
    assert missing.exit_code == 2 and "--split 'val'" in missing.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A one-epoch CLI run on data with train and val splits (its folder holds data/ and r/)."""
    from conftest import TINY_MODEL_ARGS
    from test_train import make_easy_dataset

    tmp = tmp_path_factory.mktemp("trained")
    data = make_easy_dataset(tmp / "data")
    args = ["train", str(data), "--project", str(tmp), "--name", "r", "--epochs", "1"]
    res = CliRunner().invoke(app, [*args, "--batch-size", "4", *TINY_MODEL_ARGS])
    assert res.exit_code == 0, res.output
    return tmp


@pytest.mark.slow
def test_evaluate_and_calibrate_leave_out_the_training_images(trained_run, tmp_path) -> None:
    from defectdet.model import load_checkpoint

    data, weights = trained_run / "data", trained_run / "r" / "weights" / "best.pt"
    catalog = load_dataset(data)
    train, val = catalog.split_subset("train"), catalog.split_subset("val")
    assert set(load_checkpoint(weights)["trained_on"]) == set(train.image_keys())
    runner, common = CliRunner(), ["-w", str(weights), "--workers", "0"]

    res = runner.invoke(app, ["evaluate", str(data), "--split", "all", *common, "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == val.num_images
    total = train.num_images + val.num_images
    assert f"left out {train.num_images} of the {total} images" in res.stderr
    own = runner.invoke(app, ["evaluate", str(data), "--split", "train", *common, "--json", "-"])
    assert json.loads(own.stdout)["images"] == train.num_images  # asked for: kept
    assert "left out" not in own.stderr

    out = tmp_path / "c.pt"
    cal = ["calibrate", str(data), "--split", "all", *common, "--out", str(out), "--json"]
    res = runner.invoke(app, cal)
    assert res.exit_code == 0, res.output
    defective = int((~val.background_mask()).sum())
    assert json.loads(res.stdout)["image"]["examples"] == defective  # val's defective images
    assert load_checkpoint(out)["trained_on"] == load_checkpoint(weights)["trained_on"]

    only_train = runner.invoke(app, ["evaluate", str(data / "train.json"), *common])
    assert only_train.exit_code != 0 and "were used to train this model" in only_train.stderr
    assert "Traceback" not in only_train.output
