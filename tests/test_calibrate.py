"""Operating points: thresholds chosen for an objective on one split hold on another, each comes
with honest evidence, and the stored thresholds are what predict, evaluate, export and the ONNX
backend use by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_MODEL_ARGS
from defectdet.cli import app
from defectdet.config import CalibrateConfig
from defectdet.data.catalog import Catalog
from defectdet.data.formats import load_dataset
from defectdet.engine.calibrate.operating_point import (
    CALIBRATION_FLOOR,
    choose_operating_point,
    needed_to_verify,
    wilson,
)
from defectdet.engine.inference.run import Detections
from defectdet.model import load_checkpoint
from detector_helpers import make_checkpoint, write_images

CLASSES = ["scratch", "crack"]
runner = CliRunner()


def split(seed: int, n_images: int = 300, good_share: float = 0.5, miss: float = 0.03):
    """A labelled split and a detector's output on it, drawn from one fixed process: each
    box is found with a score ~ Beta(5, 2) (a share ``miss`` never), and every image gets
    false alarms with scores ~ Beta(1, 6)."""
    rng = np.random.default_rng(seed)
    images, boxes, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append((i, f"{i}.png", 200, 200, ""))
        b, s, lab = [], [], []
        if rng.random() > good_share:
            for _ in range(rng.integers(1, 3)):
                k = int(rng.random() < 0.3)
                x, y = rng.uniform(0, 150, 2)
                box = [x, y, x + 30, y + 30]
                boxes.append((i, k, *box))
                if rng.random() > miss:
                    b.append(box)
                    s.append(rng.beta(5, 2))
                    lab.append(k)
        for _ in range(rng.poisson(1.0)):
            x, y = rng.uniform(0, 150, 2)
            b.append([x, y, x + 20, y + 20])  # away from most boxes; may hit one by chance
            s.append(rng.beta(1, 6))
            lab.append(int(rng.integers(0, 2)))
        dets.append(
            Detections(i, np.array(b).reshape(-1, 4), np.array(s), np.array(lab, dtype=np.int64))
        )
    cat = Catalog(
        Path("."),
        CLASSES,
        pd.DataFrame(images, columns=["image_id", "file_name", "width", "height", "split"]),
        pd.DataFrame(boxes, columns=["image_id", "class_id", "x1", "y1", "x2", "y2"]),
    )
    return cat, dets


def box_recall(cat: Catalog, dets: list[Detections], k: int, t: float) -> tuple[int, int]:
    """Found and total boxes of class k at threshold t, matched independently (IoU ≥ 0.5)."""
    from torchvision.ops import box_iou

    gts = cat.boxes_by_image()
    found = total = 0
    for d in dets:
        gt = gts.get(d.image_id, np.zeros((0, 5)))
        gt = gt[gt[:, 4] == k, :4]
        total += len(gt)
        keep = (d.labels == k) & (d.scores >= t)
        if len(gt) and keep.any():
            iou = box_iou(torch.as_tensor(gt), torch.as_tensor(d.boxes[keep])).numpy()
            found += int((iou >= 0.5).any(axis=1).sum())
    return found, total


def test_target_recall_holds_on_an_unseen_split() -> None:
    a, dets_a = split(seed=1)
    b, dets_b = split(seed=2)
    op = choose_operating_point(a, dets_a, CalibrateConfig(target_recall="0.8"), "a")
    for k, ev in enumerate(op.classes):
        assert ev.recall >= 0.8 and ev.target == 0.8
        found, total = box_recall(b, dets_b, k, op.thresholds[ev.name])
        assert ev.recall_low <= found / total <= ev.recall_high, (ev, found, total)
        # The highest such threshold: a little higher misses the target on split a.
        assert box_recall(a, dets_a, k, ev.threshold + 1e-6)[0] / ev.examples < 0.8
    assert op.notes == []


def test_evaluate_reports_the_recall_calibration_promised() -> None:
    """On the split it was chosen on, evaluate's per-class recall and precision at the
    operating point are the evidence calibration stored, also where boxes of another class
    cover the same defects (as on DeepPCB, where one defect often gets two classes' boxes)."""
    from defectdet.engine.evaluate.metrics import evaluate_detections

    cat, dets = split(seed=3)
    rng = np.random.default_rng(3)
    for i, d in enumerate(dets):  # on most found defects, a better-placed second-class box
        found = d.scores > 0.3
        twins = d.boxes[found]
        own = d.boxes + rng.uniform(-2, 2, d.boxes.shape)
        dets[i] = Detections(
            d.image_id,
            np.concatenate([own, twins]),
            np.concatenate([d.scores, rng.uniform(0.2, 1.0, len(twins))]),
            np.concatenate([d.labels, 1 - d.labels[found]]),
        )
    for objective in (CalibrateConfig(), CalibrateConfig(target_recall="0.8")):
        op = choose_operating_point(cat, dets, objective, "val")
        m = evaluate_detections(cat, dets, np.array([op.thresholds[c] for c in CLASSES]))
        for ev, got in zip(op.classes, m.classes, strict=True):
            assert (got.recall, got.recall_low, got.recall_high) == pytest.approx(
                (ev.recall, ev.recall_low, ev.recall_high)
            )
            assert got.precision == pytest.approx(ev.precision)
        assert min(m.confusion_matrix[0][1], m.confusion_matrix[1][0]) >= 3  # twins compete


def shifted(dets: list[Detections], defects: float = 1.0, alarms: float = 1.0):
    """The same boxes with the found defects' scores times ``defects`` and the false alarms'
    (scores below 0.5, mostly) raised towards 1 by ``alarms``: a line whose look changed."""
    out = []
    for d in dets:
        low = d.scores < 0.5
        scores = np.where(low, 1 - (1 - d.scores) / alarms, d.scores * defects)
        out.append(Detections(d.image_id, d.boxes, scores, d.labels))
    return out


@pytest.mark.parametrize(
    ("defects", "alarms", "worse"),
    [
        (1.0, 1.0, set()),  # the same process: every rate holds
        (0.7, 1.0, {"scratch", "crack", "image level"}),  # defects score lower: recall drops
        (1.0, 1.6, {"good parts flagged"}),  # false alarms score higher: more good parts flagged
    ],
)
def test_promise_check_marks_the_rates_that_got_worse(defects, alarms, worse) -> None:
    from defectdet.engine.calibrate.promise import check_promise
    from defectdet.engine.evaluate.metrics import evaluate_detections

    cat_a, dets_a = split(seed=1)
    op = choose_operating_point(cat_a, dets_a, CalibrateConfig(target_recall="0.8"), "a")
    cat_b, dets_b = split(seed=2)
    thresholds = np.array([op.thresholds[c] for c in CLASSES])
    metrics = evaluate_detections(cat_b, shifted(dets_b, defects, alarms), thresholds)
    checks = check_promise(op.to_dict(), metrics.to_dict())
    assert [c.name for c in checks] == [*CLASSES, "image level", "good parts flagged"]
    assert {c.name for c in checks if c.worse} == worse
    for c in checks:
        assert c.worse == (c.p_value < 0.05 and (c.rate > c.promised) == c.lower_is_better)
    override = metrics.to_dict()
    override["classes"][1]["threshold"] = 0.99  # --class-conf crack=0.99
    assert [c.name for c in check_promise(op.to_dict(), override)] == ["scratch"]


def test_unreachable_target_keeps_the_lowest_threshold() -> None:
    cat, dets = split(seed=3, miss=0.2)
    op = choose_operating_point(cat, dets, CalibrateConfig(target_recall="crack=0.99"), "val")
    crack = next(e for e in op.classes if e.name == "crack")
    assert crack.threshold == CALIBRATION_FLOOR and crack.recall < 0.99
    assert any("crack" in n and "unreachable" in n for n in op.notes)
    scratch = next(e for e in op.classes if e.name == "scratch")
    assert scratch.target is None  # not named: its F1 optimum


def test_too_few_examples_to_verify_the_target() -> None:
    cat, dets = split(seed=4, n_images=24, miss=0.0)
    op = choose_operating_point(cat, dets, CalibrateConfig(target_recall="0.95"), "val")
    crack = next(e for e in op.classes if e.name == "crack")
    assert crack.recall >= 0.95 and crack.recall_low < 0.95  # met here, not verifiable
    (note,) = [n for n in op.notes if n.startswith("crack")]
    assert f"{crack.examples} boxes" in note and "cannot be verified" in note
    need = needed_to_verify(0.95)
    assert f"about {need}" in note and wilson(need, need)[0] >= 0.95 > wilson(need - 1, need - 1)[0]


def test_false_alarm_objective_is_the_lowest_threshold_that_keeps_the_rate() -> None:
    cat, dets = split(seed=5)
    op = choose_operating_point(cat, dets, CalibrateConfig(max_false_alarms=0.1), "val")
    (t,) = set(op.thresholds.values())
    good = set(cat.images["image_id"]) - set(cat.boxes["image_id"])
    best = {d.image_id: d.scores.max(initial=0) for d in dets}
    flagged = [best[i] >= t for i in good]
    assert np.mean(flagged) <= 0.1 and op.image.false_alarm_rate == pytest.approx(np.mean(flagged))
    lower = max(s for i in good if (s := best[i]) < t)  # the next threshold down flags more
    assert np.mean([best[i] >= lower for i in good]) > 0.1
    assert t > 0.25 and op.image.threshold == t  # the image line's threshold is the one used


def test_max_f1_matches_a_brute_force_search() -> None:
    cat, dets = split(seed=6)
    op = choose_operating_point(cat, dets, CalibrateConfig(), "val")
    for k, ev in enumerate(op.classes):
        scores = np.unique(np.concatenate([d.scores[d.labels == k] for d in dets]))

        def f1(t: float, k: int = k) -> float:
            found, total = box_recall(cat, dets, k, t)
            kept = sum(int(((d.labels == k) & (d.scores >= t)).sum()) for d in dets)
            return 2 * found / (total + kept)

        assert f1(ev.threshold) == pytest.approx(max(f1(t) for t in scores[::7]), abs=0.01)


def test_image_level_recall_and_no_good_parts() -> None:
    cat, dets = split(seed=7)
    cfg = CalibrateConfig(target_recall="0.9", level="image")
    op = choose_operating_point(cat, dets, cfg, "val")
    assert len(set(op.thresholds.values())) == 1 and op.image.recall >= 0.9
    assert op.image.target == 0.9
    only_defects, d2 = split(seed=8, good_share=0.0)
    op2 = choose_operating_point(only_defects, d2, CalibrateConfig(max_false_alarms=0.05), "val")
    assert any("no defect-free images" in n for n in op2.notes)  # not a silent threshold
    assert op2.image.false_alarm_rate is None


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, Path]:
    """7 images and a checkpoint whose random head fires on them; truth = some of its boxes."""
    from test_inference_path import scene

    return scene.__wrapped__(tmp_path_factory)


def test_calibrate_then_predict_evaluate_and_export_use_the_thresholds(
    labelled, tmp_path: Path
) -> None:
    root, weights = labelled
    data = str(root / "annotations.json")
    common = ["--workers", "0", "--device", "cpu"]
    res = runner.invoke(app, ["calibrate", data, "-w", str(weights), *common, "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    written = Path(info["checkpoint"])
    assert written == weights.with_name("best-calibrated.pt") and weights.is_file()
    again = runner.invoke(app, ["calibrate", data, "-w", str(weights), *common, "--json"])
    assert json.loads(again.stdout)["checkpoint"].endswith("best-calibrated2.pt")  # never over
    stored = load_checkpoint(written)["operating_point"]
    assert stored["thresholds"] == info["thresholds"] and stored["objective"].startswith("max")
    for ev in stored["classes"]:
        assert ev["examples"] >= 1 and ev["recall_low"] <= ev["recall"] <= ev["recall_high"]

    out = tmp_path / "p"
    res = runner.invoke(
        app, ["predict", str(root / "images"), "-w", str(written), "--out", str(out), *common]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold_source"] == "calibrated"
    assert summary["thresholds"] == pytest.approx(info["thresholds"])
    res = runner.invoke(
        app,
        [
            "predict",
            str(root / "images"),
            "-w",
            str(written),
            "--out",
            str(tmp_path / "q"),
            "--conf",
            "0.7",
            *common,
        ],
    )
    assert json.loads((tmp_path / "q" / "summary.json").read_text())["thresholds"] == {
        c: 0.7 for c in ("scratch", "crack")
    }

    ev = runner.invoke(app, ["evaluate", data, "-w", str(written), *common, "--json", "-"])
    report = json.loads(ev.stdout)
    assert report["threshold_source"] == "calibrated"
    assert report["thresholds"] == pytest.approx(info["thresholds"])
    assert report["operating_point"]["objective"] == info["objective"]
    # Scored on the split it was calibrated on: every rate is the one calibration stored.
    names = [c["name"] for c in report["promise"]]
    ok_images = report["metrics"]["image_level"]["ok_images"]
    assert names == [*info["thresholds"], "image level"] + ["good parts flagged"] * bool(ok_images)
    for c in report["promise"]:
        assert (c["count"], c["of"]) == (c["promised_count"], c["promised_of"]) and not c["worse"]
    shown = runner.invoke(app, ["evaluate", data, "-w", str(written), *common])
    assert "calibrated thresholds: split" in shown.stdout and "worse" not in shown.stdout
    fixed = runner.invoke(
        app, ["evaluate", data, "-w", str(written), "--conf", "0.7", *common, "--json", "-"]
    )
    assert json.loads(fixed.stdout)["promise"] == []  # not the calibrated thresholds

    onnx = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", "-w", str(written), "--out", str(onnx)]).exit_code == 0
    res = runner.invoke(
        app,
        [
            "predict",
            str(root / "images"),
            "-w",
            str(onnx),
            "--backend",
            "onnxruntime",
            "--out",
            str(tmp_path / "o"),
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    onnx_summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert onnx_summary["thresholds"] == pytest.approx(info["thresholds"])
    assert onnx_summary["defect_images"] == summary["defect_images"]


def test_uncalibrated_checkpoints_keep_the_default(labelled, tmp_path: Path) -> None:
    root, _ = labelled
    old = make_checkpoint(tmp_path / "old.pt", classes=("scratch", "crack"))  # no thresholds
    write_images(tmp_path / "in", 1)
    res = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "in"),
            "-w",
            str(old),
            "--out",
            str(tmp_path / "p"),
            "--workers",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["threshold_source"] == "default (uncalibrated)"
    assert set(summary["thresholds"].values()) == {0.25}
    ev = runner.invoke(
        app, ["evaluate", str(root / "annotations.json"), "-w", str(old), "--workers", "0"]
    )
    assert ev.exit_code == 0 and "uncalibrated" in ev.stdout


def test_calibrate_checks_its_options_before_reading(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["calibrate", str(tmp_path / "none"), "-w", "x.pt", "--target-recall", "1.5"]
    )
    assert res.exit_code == 2 and "--target-recall" in res.output
    both = runner.invoke(
        app,
        [
            "calibrate",
            str(tmp_path / "none"),
            "-w",
            "x.pt",
            "--target-recall",
            "0.9",
            "--max-false-alarms",
            "0.1",
        ],
    )
    assert both.exit_code == 2 and "not both" in both.output


@pytest.mark.slow
def test_train_stores_an_operating_point_in_best_pt(tmp_path: Path) -> None:
    from test_train import make_easy_dataset

    data = make_easy_dataset(tmp_path / "data")
    args = [
        "train",
        str(data),
        "--project",
        str(tmp_path),
        "--name",
        "r",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--target-recall",
        "0.5",
        *TINY_MODEL_ARGS,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    op = load_checkpoint(tmp_path / "r" / "weights" / "best.pt")["operating_point"]
    assert op["objective"] == "box recall per class" and set(op["thresholds"]) == {"white", "black"}
    resolved = (tmp_path / "r" / "resolved.yaml").read_text()
    assert "operating_point" in resolved and "operating point" in " ".join(res.output.split())


@pytest.mark.slow
@pytest.mark.parametrize("iou", [None, 0.6])
def test_train_calibrates_on_the_validation_that_made_best_pt(
    tmp_path: Path, monkeypatch, iou: float | None
) -> None:
    """No second pass over the validation split: the thresholds are those ``calibrate`` gives
    on best.pt. With another NMS IoU than calibration's own, calibration runs its own pass."""
    from defectdet.config import CalibrateRunConfig
    from defectdet.engine.calibrate import run as calibrate_run
    from defectdet.engine.calibrate.run import calibrate_checkpoint
    from defectdet.engine.train.loop import train
    from test_train import make_easy_dataset, tiny_config

    data = make_easy_dataset(tmp_path / "data")
    passes = []
    original = calibrate_run.calibrate_detector
    monkeypatch.setattr(
        calibrate_run, "calibrate_detector", lambda *a, **k: passes.append(1) or original(*a, **k)
    )
    cfg = tiny_config(data, tmp_path, optim__epochs=2)
    if iou is not None:
        cfg.infer.iou = iou
    run = train(cfg)
    assert len(passes) == (iou is not None)
    stored = load_checkpoint(run / "weights" / "best.pt")["operating_point"]["thresholds"]
    catalog = load_dataset(data)
    op, _ = calibrate_checkpoint(catalog, run / "weights" / "best.pt", CalibrateRunConfig())
    assert stored == pytest.approx(op.thresholds) and len(stored) == 2
