"""One inference path: predict, evaluate and train-time validation see the same pixels and give
the same boxes and scores, and evaluate's mAP is pycocotools' on predict's own output."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectdet.cli import app
from defectdet.config import AugmentConfig, InferConfig
from defectdet.data.augment import build_transforms
from defectdet.data.formats import load_dataset
from defectdet.data.preprocess import letterbox
from defectdet.engine.evaluate.score import score_catalog
from defectdet.engine.inference.detectors import TorchDetector
from defectdet.engine.inference.run import Inference
from defectdet.engine.inference.sources import SourceImage
from defectdet.model import load_checkpoint, save_checkpoint
from detector_helpers import make_checkpoint, write_images

CLASSES = ("scratch", "crack")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path]:
    """A COCO dataset of 7 images of two sizes (both resized for the 64 px model) and a
    checkpoint whose random head fires on them; the ground truth is some of its own confident
    boxes, jittered, plus a box it misses, so that AP is neither 0 nor 1."""
    root = tmp_path_factory.mktemp("scene")
    paths = write_images(root / "images", 5, width=96, height=72)
    paths += write_images(root / "images" / "tall", 2, width=50, height=120, seed=3)
    weights = make_checkpoint(tmp_path_factory.mktemp("w") / "best.pt", classes=CLASSES)
    detector = TorchDetector.from_checkpoint(weights, torch.device("cpu"))
    inference = Inference(detector, InferConfig())
    sources = [SourceImage(p, p.relative_to(root).as_posix()) for p in paths]
    found = [det for batch in inference.run(sources, 8, 0) for _, det in batch]
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (src, det) in enumerate(zip(sources, found, strict=True), start=1):
        h, w = cv2.imread(str(src.path)).shape[:2]
        images.append({"id": i, "file_name": src.name, "width": w, "height": h})
        confident = np.flatnonzero(det.scores > 0.5)[:3]
        boxes = [(det.boxes[k] + rng.normal(0, 1.5, 4), int(det.labels[k])) for k in confident]
        boxes.append((np.array([2.0, 2.0, 14.0, 12.0]), int(rng.integers(0, 2))))  # missed
        for (x1, y1, x2, y2), label in boxes:
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root, weights


def test_predict_and_evaluate_give_the_same_detections(scene, tmp_path: Path) -> None:
    root, weights = scene
    common = ["-w", str(weights), "--workers", "0", "--device", "cpu", "--conf", "0.3"]
    res = CliRunner().invoke(
        app, ["predict", str(root / "images"), "--out", str(tmp_path), *common]
    )
    assert res.exit_code == 0, res.output
    predicted = json.loads((tmp_path / "predictions.json").read_text())
    catalog = load_dataset(root / "annotations.json")
    detector = TorchDetector.from_checkpoint(weights, torch.device("cpu"))
    _, dets = score_catalog(detector, catalog, InferConfig(conf=0.3), batch_size=8, workers=0)
    names = dict(zip(catalog.images["image_id"], catalog.images["file_name"], strict=True))
    by_name: dict[str, list] = {}
    for rec in predicted:
        by_name.setdefault("images/" + rec["file_name"], []).append(rec)
    assert sum(len(d.scores) for d in dets) == len(predicted) > 20
    for d in dets:
        recs = by_name.get(names[d.image_id], [])
        assert len(recs) == len(d.scores)
        np.testing.assert_array_equal([r["score"] for r in recs], d.scores.tolist())
        boxes = np.array([r["bbox"] for r in recs]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_allclose(boxes, d.boxes, rtol=0, atol=1e-4)
        np.testing.assert_array_equal([r["category_id"] - 1 for r in recs], d.labels)


def test_evaluate_map_is_pycocotools_on_predicts_own_boxes(scene, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root, weights = scene
    common = ["-w", str(weights), "--workers", "0", "--device", "cpu"]
    res = CliRunner().invoke(
        app, ["predict", str(root / "images"), "--out", str(tmp_path), *common]
    )
    assert res.exit_code == 0, res.output
    ev = CliRunner().invoke(
        app, ["evaluate", str(root / "annotations.json"), *common, "--json", "-"]
    )
    assert ev.exit_code == 0, ev.output
    report = json.loads(ev.stdout)["metrics"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations.json"))
        ids = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
        results = json.loads((tmp_path / "predictions.json").read_text())
        for r in results:
            r["image_id"] = ids["images/" + r["file_name"]]
        coco = COCOeval(gt, gt.loadRes(results), "bbox")
        coco.evaluate()
        coco.accumulate()
        coco.summarize()
    assert 0 < report["map50"] < 1
    assert report["map50"] == pytest.approx(coco.stats[1], abs=1e-9)
    assert report["map"] == pytest.approx(coco.stats[0], abs=1e-9)


@pytest.mark.parametrize(("h", "w"), [(72, 96), (120, 50), (40, 30)])
def test_training_resizes_as_inference_does(h: int, w: int) -> None:
    """The albumentations pipeline (train=False, and the resize step of train=True) gives the
    pixels of :func:`letterbox`, shrinking (INTER_AREA) and growing (linear) alike."""
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (3, 3), 0)
    pipeline = build_transforms(AugmentConfig(augment="none"), 64, train=False)
    ours = pipeline(image=image, bboxes=np.zeros((0, 4)), labels=np.zeros(0))["image"]
    expected = letterbox(image, 64)
    assert ours.shape == expected.shape == (64, 64, 3)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1  # rounding of the kernel
    resize = next(t for t in pipeline.transforms if isinstance(t, A.LongestMaxSize))
    assert resize.area_for_downscale == "image"


def test_keeping_low_scores_for_calibration_leaves_the_metrics_unchanged(
    scene, tmp_path: Path
) -> None:
    root, weights = scene
    catalog = load_dataset(root / "annotations.json")
    ckpt = load_checkpoint(weights)  # the scene's model, its scores shifted down to 0.01-0.2
    ckpt["model"]["head.classification_head.cls_logits.bias"] -= 3.0
    save_checkpoint(tmp_path / "low.pt", ckpt)
    detector = TorchDetector.from_checkpoint(tmp_path / "low.pt", torch.device("cpu"))
    infer = InferConfig(max_det=1000)
    plain, dets = score_catalog(detector, catalog, infer, batch_size=8, workers=0)
    low, kept = score_catalog(detector, catalog, infer, batch_size=8, workers=0, keep_floor=0.01)
    assert plain.to_dict() == low.to_dict()
    assert sum(len(d.scores) for d in kept) > sum(len(d.scores) for d in dets)
    assert min(float(d.scores.min()) for d in kept if len(d.scores)) < 0.05
    for a, b in zip(dets, kept, strict=True):
        above = b.above(0.05)
        np.testing.assert_array_equal(a.scores, above.scores)
        np.testing.assert_array_equal(a.boxes, above.boxes)
