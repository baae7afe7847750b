"""Augmentation keeps boxes on their objects; copy-paste pastes real pixels with exact boxes."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest

from defectdet.config import AugmentConfig
from defectdet.data.augment import (
    CopyPaste,
    build_minority_transforms,
    build_transforms,
    find_rare_classes,
)
from defectdet.data.catalog import Catalog

SIZE = 64
# (x1, y1, x2, y2) of filled rectangles on a 96 x 64 image; the last one sits in a corner so
# translations often push it (partly) out.
OBJECTS = [(5, 5, 30, 25), (40, 30, 70, 60), (75, 8, 92, 40), (0, 50, 14, 64)]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    image = np.full((64, 96, 3), 60, dtype=np.uint8)
    masks = []
    for (x1, y1, x2, y2), colour in zip(OBJECTS, COLOURS, strict=True):
        image[y1:y2, x1:x2] = colour
        mask = np.zeros((64, 96), dtype=np.uint8)
        mask[y1:y2, x1:x2] = 1
        masks.append(mask)
    boxes = np.array(OBJECTS, dtype=np.float64)
    return image, boxes, np.arange(len(OBJECTS)), masks


def mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def affine_area_scale(applied: list) -> float:
    """Area factor of the Affine that ran (1 when none did)."""
    for name, params in applied:
        if name == "Affine":
            return abs(float(np.linalg.det(params["matrix"][:2, :2])))
    return 1.0


@pytest.mark.parametrize("preset", ["light", "medium", "heavy"])
def test_boxes_follow_objects(preset: str) -> None:
    image, boxes, labels, masks = scene()
    ref = build_transforms(AugmentConfig(augment="none"), SIZE, train=False)
    ref_out = ref(image=image, bboxes=boxes, labels=labels, masks=masks)
    ref_area = np.array([m.sum() for m in ref_out["masks"]], dtype=np.float64)

    base = build_transforms(AugmentConfig(augment=preset), SIZE, train=True)
    t = A.Compose(
        base.transforms, bbox_params=base.processors["bboxes"].params, save_applied_params=True
    )
    dropped = kept_partial = 0
    for seed in range(40):
        t.set_random_seed(seed)
        out = t(image=image, bboxes=boxes, labels=labels, masks=masks)
        assert out["image"].shape == (SIZE, SIZE, 3)
        visible = np.array([m.sum() for m in out["masks"]], dtype=np.float64)
        visibility = visible / (ref_area * affine_area_scale(out["applied_transforms"]))
        out_labels = [int(v) for v in out["labels"]]
        for box, label in zip(out["bboxes"], out_labels, strict=True):
            truth = mask_box(out["masks"][label])
            # a rotated object cut by the border has a tighter extent than its clipped box (the
            # cut-off corner cannot be known from a box): there the box need only contain it
            clipped = min(box[0], box[1]) < 0.5 or max(box[2], box[3]) > SIZE - 0.5
            if clipped:
                assert np.all(box[:2] <= truth[:2] + 1.5) and np.all(box[2:] >= truth[2:] - 1.5)
                np.testing.assert_allclose(box, truth, atol=4.0)
            else:
                np.testing.assert_allclose(box, truth, atol=2.0)
            assert visibility[label] > 0.1
            kept_partial += visibility[label] < 0.9
        for label in set(range(len(OBJECTS))) - set(out_labels):
            dropped += 1
            assert visibility[label] < 0.5, (seed, label, visibility[label])
        assert all(label in out_labels for label in np.flatnonzero(visibility > 0.9))
    if preset != "light":  # translation/scale really moved objects across the border
        assert dropped + kept_partial > 0


def test_eval_pipeline_resizes_and_pads_top_left() -> None:
    image, boxes, labels, _ = scene()
    t = build_transforms(AugmentConfig(augment="heavy"), SIZE, train=False)
    out = t(image=image, bboxes=boxes, labels=labels)
    scale = SIZE / 96
    np.testing.assert_allclose(out["bboxes"][:, [0, 2]], boxes[:, [0, 2]] * scale, atol=0.01)
    np.testing.assert_allclose(out["bboxes"][:, [1, 3]], boxes[:, [1, 3]] * 43 / 64, atol=0.01)
    assert out["image"].shape == (SIZE, SIZE, 3)
    assert out["image"][43:].max() == 0  # padding below the resized 64 x 43 image


def test_minority_pipeline_is_stronger() -> None:
    names = lambda c: {type(t).__name__ for t in c.transforms}  # noqa: E731
    light = names(build_transforms(AugmentConfig(augment="light"), SIZE, train=True))
    minority = names(build_minority_transforms(AugmentConfig(augment="light"), SIZE))
    assert "Affine" not in light and "Affine" in minority
    no_rot = build_transforms(AugmentConfig(augment="light", rotate90=False), SIZE, train=True)
    assert "RandomRotate90" not in names(no_rot)


def test_find_rare_classes() -> None:
    assert find_rare_classes([100, 30, 5, 0]) == [2]  # share < 1/8, and at least one box
    assert find_rare_classes([0, 0]) == []


class Recording:
    """A pipeline that records which image it got (each image's grey level is its id)."""

    def __init__(self, inner: A.Compose) -> None:
        self.inner, self.seen = inner, []

    def set_random_seed(self, seed: int) -> None:
        self.inner.set_random_seed(seed)

    def __call__(self, **data):
        self.seen.append(int(data["image"][0, 0, 0]) // 10)
        return self.inner(**data)


def minority_data(root: Path) -> Path:
    """train.json: images 1-10 hold a scratch, 11 a scratch and a crack, 12 a crack, 13-14
    nothing, so crack (2 of 13 boxes) is rare; val.json: one image. Image k is grey 10 k."""
    from conftest import coco_doc, write_image

    names = {k: f"images/{k}.png" for k in range(1, 16)}
    for k, name in names.items():
        write_image(root / name, 64, 64, value=10 * k)
    boxes = [(k, 1, (4, 4, 20, 20)) for k in range(1, 12)]
    boxes += [(k, 2, (30, 30, 12, 12)) for k in (11, 12)]
    docs = {
        "train": coco_doc([(k, names[k], 64, 64) for k in range(1, 15)], boxes),
        "val": coco_doc([(15, names[15], 64, 64)], [(15, 1, (4, 4, 20, 20))]),
    }
    for split, doc in docs.items():
        (root / f"{split}.json").write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize("augment_minority", [True, False])
def test_augment_minority_only_for_images_with_a_rare_class(
    augment_minority: bool, tmp_path: Path, monkeypatch
) -> None:
    """Training's loader (as the trainer builds it) sends exactly the images holding the rare
    class through the minority pipeline, and only with --augment-minority."""
    from defectdet.engine.train import loop
    from defectdet.engine.train.distributed import DistInfo
    from test_train import tiny_config

    pipelines = {}

    def recorder(kind: str):
        def build(*args, **kwargs):
            pipelines[kind] = Recording(build_transforms(AugmentConfig("none"), SIZE, False))
            return pipelines[kind]

        return build

    monkeypatch.setattr(loop, "build_transforms", recorder("common"))
    monkeypatch.setattr(loop, "build_minority_transforms", recorder("minority"))
    cfg = tiny_config(minority_data(tmp_path / "data"), tmp_path, augment__augment="light")
    cfg.augment.augment_minority = augment_minority
    trainer = loop.Trainer(cfg, DistInfo())
    for _ in trainer.loader:  # one epoch: every training image once
        pass
    minority = sorted(pipelines["minority"].seen) if augment_minority else []
    assert minority == ([11, 12] if augment_minority else [])
    assert sorted(pipelines["common"].seen) == [k for k in range(1, 15) if k not in minority]


# ---------------------------------------------------------------------------- copy-paste
def make_catalog(tmp_path: Path) -> Catalog:
    rng = np.random.default_rng(0)
    source = np.full((64, 96, 3), 90, dtype=np.uint8)
    source[20:40, 30:56] = rng.integers(0, 256, size=(20, 26, 3), dtype=np.uint8)  # rare defect
    source[5:15, 70:90] = 200  # a common defect
    target = np.full((64, 96, 3), 30, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "src.png"), cv2.cvtColor(source, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "dst.png"), cv2.cvtColor(target, cv2.COLOR_RGB2BGR))
    images = pd.DataFrame(
        {
            "image_id": [1, 2],
            "file_name": ["src.png", "dst.png"],
            "width": [96, 96],
            "height": [64, 64],
            "split": ["train", "train"],
        }
    )
    boxes = pd.DataFrame(
        {
            "image_id": [1, 1, 2],
            "class_id": [1, 0, 0],
            "x1": [30.0, 70.0, 4.0],
            "y1": [20.0, 5.0, 4.0],
            "x2": [56.0, 90.0, 20.0],
            "y2": [40.0, 15.0, 20.0],
        }
    )
    return Catalog(tmp_path, ["scratch", "crack"], images, boxes)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix
    return ix / area


def test_copy_paste_pastes_source_pixels(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path)
    source = cv2.cvtColor(cv2.imread(str(tmp_path / "src.png")), cv2.COLOR_BGR2RGB)
    target = cv2.cvtColor(cv2.imread(str(tmp_path / "dst.png")), cv2.COLOR_BGR2RGB)
    original = target.copy()
    boxes0, labels0 = np.array([[4.0, 4.0, 20.0, 20.0]]), np.array([0])
    pasted = 0
    for seed in range(10):
        cp = CopyPaste(catalog, rare_classes=[1], p=1.0, max_pastes=1)
        image, boxes, labels = cp(target, boxes0, labels0, np.random.default_rng(seed))
        np.testing.assert_array_equal(target, original)  # input untouched
        np.testing.assert_array_equal(boxes[:1], boxes0)
        assert list(labels) == [0] + [1] * (len(labels) - 1)
        for x1, y1, x2, y2 in boxes[1:].astype(int):
            pasted += 1
            assert (x2 - x1, y2 - y1) == (26, 20)  # exact size of the source box
            np.testing.assert_array_equal(image[y1:y2, x1:x2], source[20:40, 30:56])
            assert iou(boxes[0], boxes[-1]) < 0.1  # placed off the existing box
        again = cp(target, boxes0, labels0, np.random.default_rng(seed))
        np.testing.assert_array_equal(again[0], image)  # reproducible from the generator
    assert pasted >= 8


def test_copy_paste_several_crops_do_not_overlap(tmp_path: Path) -> None:
    cp = CopyPaste(make_catalog(tmp_path), rare_classes=[1], p=1.0, max_pastes=3)
    target = np.zeros((64, 96, 3), dtype=np.uint8)
    counts = []
    for seed in range(10):
        _, boxes, labels = cp(target, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(seed))
        counts.append(len(boxes))
        assert set(labels.tolist()) <= {1}
        for i in range(len(boxes)):
            for j in range(i):
                assert iou(boxes[i], boxes[j]) < 0.1
    assert max(counts) >= 2 and min(counts) >= 1


def test_copy_paste_feathers_the_seam(tmp_path: Path) -> None:
    catalog = make_catalog(tmp_path)
    target = np.full((64, 96, 3), 30, dtype=np.uint8)
    cp = CopyPaste(catalog, rare_classes=[1], p=1.0, max_pastes=1)
    image, boxes, _ = cp(target, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(1))
    x1, y1, _, y2 = boxes[0].astype(int)
    # the margin (source background 90) fades into the target (30): intermediate values
    margin_row = image[(y1 + y2) // 2, max(x1 - 4, 0) : x1, 0]
    assert margin_row.min() >= 30 and margin_row.max() <= 90
    assert len(set(margin_row.tolist())) > 1


def test_copy_paste_probability_zero_is_identity(tmp_path: Path) -> None:
    cp = CopyPaste(make_catalog(tmp_path), rare_classes=[1], p=0.0)
    target = np.zeros((64, 96, 3), dtype=np.uint8)
    image, boxes, labels = cp(target, np.zeros((0, 4)), np.zeros(0), np.random.default_rng(0))
    assert image is target and boxes.shape == (0, 4) and labels.shape == (0,)
