"""The synthetic dataset generator: valid COCO output, exact boxes, skew, determinism, safety."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectdet.data.synth import (
    DEFECT_KINDS,
    SynthConfig,
    assign_val,
    background_plan,
    draw_defect,
    image_rng,
    render_image,
    synthesize,
)
from defectdet.errors import ConfigError, OutputExistsError


def small(**kw) -> SynthConfig:
    """Non-square on purpose, so a width/height mix-up shows."""
    return SynthConfig(**({"images": 40, "width": 96, "height": 64, "seed": 3} | kw))


def load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"{split}.json").read_text())


def bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the true pixels, x2/y2 exclusive, computed independently."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def test_writes_coco_referencing_real_images(tmp_path):
    calls = []
    summary = synthesize(tmp_path, small(), progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 40) for i in range(1, 41)]
    train, val = load(tmp_path, "train"), load(tmp_path, "val")
    ids = [im["id"] for im in train["images"] + val["images"]]
    assert sorted(ids) == list(range(1, 41))
    assert len(val["images"]) == 8  # val_fraction 0.2
    names = ["scratch", "spot", "crack", "inclusion"]
    annotated, n_anns = set(), 0
    for doc in (train, val):
        assert doc["categories"] == [
            {"id": i + 1, "name": n, "supercategory": "defect"} for i, n in enumerate(names)
        ]
        images = {im["id"]: im for im in doc["images"]}
        for im in images.values():
            assert im["file_name"].startswith("images/") and im["file_name"].endswith(".jpg")
            pixels = cv2.imread(str(tmp_path / im["file_name"]))
            assert pixels.shape == (64, 96, 3) == (im["height"], im["width"], 3)
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            assert a["image_id"] in images and a["category_id"] in (1, 2, 3, 4)
            assert min(x, y) >= 0 and w > 0 and h > 0 and x + w <= 96 and y + h <= 64
            assert a["area"] == w * h and a["iscrowd"] == 0
            annotated.add(a["image_id"])
        n_anns += len(doc["annotations"])
    all_ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert sorted(all_ann_ids) == list(range(1, n_anns + 1))
    assert summary["images"] == 40 and summary["annotations"] == n_anns
    assert sum(summary["per_class"].values()) == n_anns
    assert summary["background_images"] == 40 - len(annotated)
    assert summary["out"] == str(tmp_path)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96), (200, 160)])
def test_draw_defect_box_is_tight_and_inside(kind, height, width):
    for i in range(15):
        shade, box = draw_defect(kind, image_rng(7, i), height, width)
        assert shade.shape == (height, width)
        assert box == bounds(shade != 0)
        x1, y1, x2, y2 = box
        assert 1 <= x1 < x2 <= width - 1 and 1 <= y1 < y2 <= height - 1


def iou(a, b) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_draw_defect_respects_other_boxes():
    """A defect is placed with IoU < 0.3 against the boxes already drawn: the same draws
    without ``avoid`` overlap the taken box more (so avoiding it is work), and with it every
    draw still finds a place."""
    taken = draw_defect("inclusion", image_rng(5, 999), 32, 32)[1]
    free = [draw_defect("inclusion", image_rng(1, i), 32, 32)[1] for i in range(40)]
    assert sum(iou(box, taken) >= 0.3 for box in free) >= 2
    for i in range(40):
        drawn = draw_defect("inclusion", image_rng(1, i), 32, 32, avoid=[taken])
        assert drawn is not None, i
        assert iou(drawn[1], taken) < 0.3


def test_boxes_are_exactly_the_changed_pixels():
    """Compared with the same surface before defects: nothing changes outside the boxes, and a
    lone defect's box is exactly the bounds of the changed pixels."""
    one = small(background_fraction=0.0, max_defects=1)
    many = small(background_fraction=0.0, max_defects=3)
    counts = []
    for i in range(30):
        r = render_image(one, i, background=False)
        assert len(r.boxes) == 1
        assert bounds((r.image != r.base).any(2)) == r.boxes[0]
        r = render_image(many, i, background=False)
        changed = (r.image != r.base).any(2)
        assert all(changed[y1:y2, x1:x2].any() for x1, y1, x2, y2 in r.boxes)
        for x1, y1, x2, y2 in r.boxes:
            changed[y1:y2, x1:x2] = False
        assert not changed.any()
        counts.append(len(r.boxes))
    assert min(counts) >= 1 and max(counts) >= 2  # defects were drawn, several at a time
    bg = render_image(many, 0, background=True)
    assert bg.boxes == [] and np.array_equal(bg.image, bg.base)


def test_png_files_hold_the_rendered_pixels(tmp_path):
    cfg = small(images=12, image_format="png")
    synthesize(tmp_path, cfg)
    flags = background_plan(cfg)
    for i in range(12):
        written = cv2.imread(str(tmp_path / f"images/{i + 1:06d}.png"))
        assert np.array_equal(written, render_image(cfg, i, bool(flags[i])).image)


def test_class_frequencies_follow_weights(tmp_path):
    cfg = SynthConfig(images=400, width=32, height=32, background_fraction=0.0, image_format="png")
    counts = synthesize(tmp_path / "a", cfg)["per_class"]
    assert counts["scratch"] > counts["spot"] > counts["crack"] > counts["inclusion"] > 0
    assert 0.6 < counts["scratch"] / sum(counts.values()) < 0.8
    # Not hard-wired to the default names or order.
    cfg = SynthConfig(images=100, width=32, height=32, classes={"inclusion": 9.0, "spot": 1.0})
    summary = synthesize(tmp_path / "b", cfg)
    assert summary["per_class"]["inclusion"] > 3 * summary["per_class"]["spot"]
    assert [c["name"] for c in load(tmp_path / "b", "train")["categories"]] == ["inclusion", "spot"]


@pytest.mark.parametrize("fraction", [0.0, 0.6, 1.0])
def test_background_fraction(tmp_path, fraction):
    summary = synthesize(tmp_path, small(background_fraction=fraction))
    assert abs(summary["background_images"] / 40 - fraction) <= 0.05
    if fraction == 1.0:
        assert summary["annotations"] == 0


def test_deterministic_per_seed(tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthesize(tmp_path / name, small(seed=seed))
        ann = tmp_path / name / "annotations"
        runs[name] = [(ann / f).read_bytes() for f in ("train.json", "val.json")]
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
    images = sorted((tmp_path / "a" / "images").iterdir())
    assert len(images) == 40
    for p in images:
        assert p.read_bytes() == (tmp_path / "b" / "images" / p.name).read_bytes()


def test_stratified_split_puts_rare_classes_in_both(tmp_path):
    synthesize(tmp_path, SynthConfig(images=150, width=48, height=48, seed=1, image_format="png"))
    present = {}
    for split in ("train", "val"):
        for a in load(tmp_path, split)["annotations"]:
            present.setdefault(a["category_id"], {}).setdefault(split, set()).add(a["image_id"])
    for cat, by_split in present.items():
        if sum(len(s) for s in by_split.values()) >= 2:
            assert set(by_split) == {"train", "val"}, cat


def test_assign_val_by_hand():
    # class 3 in two images that also hold commoner classes; class 2 only alongside class 0
    labels = [[0], [0], [0], [0], [0, 3], [1, 3], [0, 2], [0, 2], [1], [1], [], [], [], [], []]
    val = assign_val(labels, 0.2)
    for c in (0, 1, 2, 3):
        sides = {bool(val[i]) for i, ls in enumerate(labels) if c in ls}
        assert sides == {True, False}, c
    assert 1 <= sum(val[10:]) <= 2  # backgrounds split at about the same ratio
    assert not assign_val(labels, 0.0).any() and assign_val(labels, 1.0).all()


def test_assign_val_reproduces_the_committed_sample_split():
    """data_samples/ was generated with the defaults: the split of its labels must come out the
    same, so that regenerating it gives the same annotation files."""
    ann = Path(__file__).resolve().parents[1] / "data_samples" / "annotations"
    docs = {s: json.loads((ann / f"{s}.json").read_text()) for s in ("train", "val")}
    images = sorted(im["id"] for d in docs.values() for im in d["images"])
    assert images == list(range(1, len(images) + 1))
    labels: list[list[int]] = [[] for _ in images]
    anns = docs["train"]["annotations"] + docs["val"]["annotations"]
    for a in sorted(anns, key=lambda a: a["id"]):  # in the order the generator drew them
        labels[a["image_id"] - 1].append(a["category_id"] - 1)
    val = assign_val(labels, SynthConfig().val_fraction)
    assert {int(i) + 1 for i in np.flatnonzero(val)} == {im["id"] for im in docs["val"]["images"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": 0}, "images"),
        ({"width": 16}, "width"),
        ({"height": 31}, "height"),
        ({"background_fraction": 1.5}, "background_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"classes": {}}, "at least one"),
        ({"classes": {"scratch": 1.0, "dent": 1.0}}, "unknown class 'dent'"),
        ({"classes": {"scratch": 0.0}}, "scratch"),
        ({"textures": ("wood",)}, "unknown texture 'wood'"),
        ({"image_format": "gif"}, "image_format"),
        ({"seed": -1}, "seed"),
        ({"max_defects": 0}, "max_defects"),
    ],
)
def test_config_errors(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        synthesize(tmp_path, small(**change))
    assert not (tmp_path / "annotations").exists()


def test_refuses_existing_dataset_unless_overwrite(tmp_path):
    synthesize(tmp_path, small(images=6))
    before = (tmp_path / "annotations" / "train.json").read_bytes()
    with pytest.raises(OutputExistsError, match="not empty"):
        synthesize(tmp_path, small(images=6, seed=9))
    assert (tmp_path / "annotations" / "train.json").read_bytes() == before
    (tmp_path / "images" / "notes.txt").write_text("mine")
    summary = synthesize(tmp_path, small(images=4, seed=9), overwrite=True)
    assert summary["images"] == 4
    left = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert left == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg", "notes.txt"]
