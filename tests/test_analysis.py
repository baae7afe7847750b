"""Tests for defectdet.analysis: report numbers against independent counts, remedies against
their formulas, spec parsing, advice, rendering and plotting."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from defectdet.analysis import (
    build_report,
    choose_repeat_threshold,
    class_weights,
    effective_number_weights,
    inverse_weights,
    plot_report,
    render_report,
    repeat_factors,
)
from defectdet.data.catalog import Catalog
from defectdet.data.problems import ProblemLog
from defectdet.errors import ConfigError

CLASSES = ["scratch", "dent", "inclusion", "stain"]  # 7 / 3 / 1 / 0 instances

# (image_id, class_id, width, height) of each box; placed at (5, 5) in its image.
BOXES = [
    (0, 0, 10, 10),  # small
    (0, 0, 32, 32),  # area exactly 32² -> medium
    (1, 0, 50, 40),
    (2, 0, 200, 100),  # large
    (3, 0, 20, 8),
    (3, 0, 60, 60),
    (4, 0, 96, 96),  # area exactly 96² -> large
    (0, 1, 30, 30),
    (5, 1, 100, 20),
    (6, 1, 12, 300),
    (15, 2, 6, 6),
]
REQUIRED_KEYS = {
    "num_images",
    "num_background_images",
    "num_annotations",
    "imbalance_ratio",
    "classes",
    "background_share",
    "imbalance_ratio_images",
    "always_ok_accuracy",
    "objects_per_image",
    "image_sizes",
    "box_sizes",
    "repeat_threshold",
    "splits",
    "problems",
    "format",
    "root",
    "advice",
    "suggested_image_size",
}
CLASS_KEYS = {
    "name",
    "instances",
    "images",
    "instance_share",
    "image_share",
    "repeat_factor",
    "class_weight",
    "size_buckets",
    "median_width",
    "median_height",
    "median_rel_width",
    "median_rel_height",
}


def make_catalog(boxes=BOXES, num_images: int = 20, classes=CLASSES) -> Catalog:
    """20 images (640x480, every 4th 1024x768), ids 0..13 train, 14..19 val; 12 background."""
    ids = np.arange(num_images)
    images = pd.DataFrame(
        {
            "image_id": ids,
            "file_name": [f"img{i}.png" for i in ids],
            "width": np.where(ids % 4 == 3, 1024, 640),
            "height": np.where(ids % 4 == 3, 768, 480),
            "split": np.where(ids < 14, "train", "val"),
        }
    )
    rows = [(i, c, 5.0, 5.0, 5.0 + w, 5.0 + h) for i, c, w, h in boxes]
    box_df = pd.DataFrame(rows, columns=["image_id", "class_id", "x1", "y1", "x2", "y2"])
    problems = ProblemLog()
    problems.add("labels/x.txt", "box outside the image", kind="out_of_bounds", action="clipped")
    return Catalog(Path("/data/parts"), list(classes), images, box_df, "yolo", problems)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return make_catalog()


@pytest.fixture(scope="module")
def report(catalog: Catalog) -> dict:
    return build_report(catalog)


# ---------------------------------------------------------------------------- report numbers
def test_report_has_required_keys_and_is_strict_json(report: dict) -> None:
    assert REQUIRED_KEYS - set(report) == set()  # shows the missing keys on failure
    for c in report["classes"]:
        assert CLASS_KEYS - set(c) == set()
        assert set(c["size_buckets"]) == {"small", "medium", "large"}
    assert set(report["objects_per_image"]) == {"mean", "median", "max", "mean_over_defect_images"}
    assert {"min_width", "median_width", "max_height", "distinct"} <= set(report["image_sizes"])
    json.loads(json.dumps(report, allow_nan=False))  # no numpy types, no NaN


def test_report_counts_match_independent_count(catalog: Catalog, report: dict) -> None:
    sizes = {r.image_id: (r.width, r.height) for r in catalog.images.itertuples()}
    instances, images, buckets = Counter(), defaultdict(set), defaultdict(Counter)
    widths, rel_widths = defaultdict(list), defaultdict(list)
    for b in catalog.boxes.itertuples():
        w, h = b.x2 - b.x1, b.y2 - b.y1
        instances[b.class_id] += 1
        images[b.class_id].add(b.image_id)
        area = w * h
        buckets[b.class_id]["small" if area < 32**2 else "medium" if area < 96**2 else "large"] += 1
        widths[b.class_id].append(w)
        rel_widths[b.class_id].append(w / sizes[b.image_id][0])
    defect_images = {b.image_id for b in catalog.boxes.itertuples()}

    assert report["num_images"] == 20
    assert report["num_annotations"] == len(BOXES) == 11
    assert report["num_background_images"] == 20 - len(defect_images) == 12
    for k, c in enumerate(report["classes"]):
        assert c["name"] == CLASSES[k]
        assert c["instances"] == instances[k]
        assert c["images"] == len(images[k])
        assert c["instance_share"] == pytest.approx(instances[k] / 11)
        assert c["image_share"] == pytest.approx(len(images[k]) / 20)
        assert c["size_buckets"] == {s: buckets[k][s] for s in ("small", "medium", "large")}
        if instances[k]:
            assert c["median_width"] == pytest.approx(float(np.median(widths[k])))
            assert c["median_rel_width"] == pytest.approx(float(np.median(rel_widths[k])))
        else:
            assert c["median_width"] is None and c["median_rel_height"] is None
    assert [c["instances"] for c in report["classes"]] == [7, 3, 1, 0]
    assert [c["images"] for c in report["classes"]] == [5, 3, 1, 0]
    assert report["imbalance_ratio"] == pytest.approx(7.0)  # 7 / 1, the empty class ignored
    assert report["imbalance_ratio_images"] == pytest.approx(5.0)
    total = Counter()
    for k in buckets:
        total.update(buckets[k])
    assert report["box_sizes"] == {s: total[s] for s in ("small", "medium", "large")}


def test_always_ok_accuracy_is_the_background_share(report: dict) -> None:
    assert report["always_ok_accuracy"] == pytest.approx(12 / 20)
    assert report["background_share"] == pytest.approx(12 / 20)


def test_objects_per_image_and_image_sizes(catalog: Catalog, report: dict) -> None:
    per_image = Counter(b.image_id for b in catalog.boxes.itertuples())
    all_counts = [per_image.get(i, 0) for i in range(20)]
    opi = report["objects_per_image"]
    assert opi["mean"] == pytest.approx(11 / 20)
    assert opi["median"] == float(np.median(all_counts))
    assert opi["max"] == max(all_counts) == 3
    assert opi["mean_over_defect_images"] == pytest.approx(11 / len(per_image))
    s = report["image_sizes"]
    assert (s["min_width"], s["max_width"], s["min_height"], s["max_height"]) == (
        640,
        1024,
        480,
        768,
    )
    assert s["median_width"] == 640 and s["distinct"] == 2
    assert report["suggested_image_size"] == 640  # median longer side, multiple of 32


def test_splits_counts(catalog: Catalog, report: dict) -> None:
    assert list(report["splits"]) == ["train", "val"]
    for name, s in report["splits"].items():
        ids = set(catalog.images.loc[catalog.images["split"] == name, "image_id"])
        rows = [b for b in BOXES if b[0] in ids]
        assert s["num_images"] == len(ids)
        assert s["num_annotations"] == len(rows)
        assert s["num_background_images"] == len(ids - {b[0] for b in rows})
        for k, c in enumerate(s["classes"]):
            assert c["name"] == CLASSES[k]
            assert c["instances"] == sum(1 for b in rows if b[1] == k)
            assert c["images"] == len({b[0] for b in rows if b[1] == k})
    assert report["problems"] == {"out_of_bounds": 1}
    assert report["format"] == "yolo" and report["root"] == "/data/parts"


def test_no_splits_and_empty_catalogue() -> None:
    cat = make_catalog()
    cat.images["split"] = ""
    assert build_report(cat)["splits"] == {}
    empty = make_catalog(boxes=[], num_images=0)
    rep = build_report(empty)
    assert rep["num_images"] == 0 and rep["imbalance_ratio"] is None
    assert rep["advice"] and "nothing to train" in rep["advice"][0]
    json.dumps(rep, allow_nan=False)


def lvis_factor(images_with_class: int, num_images: int, t: float) -> float:
    """r(c) = max(1, sqrt(t / f(c))), f(c) the share of images holding c; 1 for an absent c."""
    f = images_with_class / num_images
    return max(1.0, math.sqrt(t / f)) if f > 0 else 1.0


#: The images holding each class of BOXES, counted here.
IMAGES_OF = {c: {b[0] for b in BOXES if b[1] == c} for c in range(len(CLASSES))}


def test_report_uses_given_repeat_threshold(catalog: Catalog) -> None:
    rep = build_report(catalog, repeat_threshold=0.5)
    assert rep["repeat_threshold"] == 0.5
    got = [c["repeat_factor"] for c in rep["classes"]]
    # 5, 3, 1 and 0 of 20 images: sqrt(0.5 / 0.25), sqrt(0.5 / 0.15), sqrt(0.5 / 0.05), 1
    assert got == pytest.approx([math.sqrt(2), math.sqrt(10 / 3), math.sqrt(10), 1.0])
    assert got == pytest.approx([lvis_factor(len(IMAGES_OF[c]), 20, 0.5) for c in IMAGES_OF])


# ---------------------------------------------------------------------------- remedies
def test_repeat_factors_formula() -> None:
    f = np.array([0.5, 0.1, 0.01, 0.0])
    got = repeat_factors(f, 0.1)
    expected = [max(1.0, math.sqrt(0.1 / x)) if x > 0 else 1.0 for x in f]
    assert got == pytest.approx(expected)
    assert got[2] == pytest.approx(math.sqrt(10))


def test_report_repeat_factors_are_what_the_sampler_uses(catalog: Catalog) -> None:
    """One implementation: the report's per-class factors, maxed over each image's classes,
    are the sampler's per-image factors."""
    from defectdet.data import repeat_factors as shared
    from defectdet.data.sampling import repeat_factors_per_image

    assert repeat_factors is shared.repeat_factors
    assert repeat_factors_per_image is shared.repeat_factors_per_image
    rep = build_report(catalog)
    t = rep["repeat_threshold"]
    per_class = [lvis_factor(len(IMAGES_OF[c]), 20, t) for c in IMAGES_OF]
    assert [c["repeat_factor"] for c in rep["classes"]] == pytest.approx(per_class)
    # An image is repeated by the largest factor of its classes; defect-free images once.
    ids = catalog.images["image_id"].tolist()
    expected = [max([1.0] + [per_class[c] for c in IMAGES_OF if i in IMAGES_OF[c]]) for i in ids]
    got = repeat_factors_per_image(catalog.image_class_counts(), t)
    np.testing.assert_allclose(got, expected)
    assert got.max() > 1  # the rare classes are repeated


def test_analysis_does_not_import_torch() -> None:
    """``defectdet analyze`` stays light: the shared repeat factors need numpy only."""
    code = "import sys, defectdet.analysis; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_choose_repeat_threshold() -> None:
    assert choose_repeat_threshold(np.array([0.4, 0.05, 0.0])) == 0.1
    # every class rarer than 0.1: the commonest class is not repeated
    t = choose_repeat_threshold(np.array([0.04, 0.01]))
    assert t == pytest.approx(0.04)
    assert repeat_factors(np.array([0.04, 0.01]), t) == pytest.approx([1.0, 2.0])
    assert choose_repeat_threshold(np.zeros(3)) == 0.1


def test_effective_number_weights_formula() -> None:
    counts = np.array([1000, 100, 10, 0])
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**n) if n else 0.0 for n in counts]
    scale = 3 / sum(raw)  # mean 1 over the three classes present
    got = effective_number_weights(counts, beta)
    assert got == pytest.approx([r * scale for r in raw])
    assert got.sum() == pytest.approx(3.0) and got[3] == 0.0
    assert effective_number_weights(counts, 0.0) == pytest.approx([1, 1, 1, 0])
    with pytest.raises(ConfigError):
        effective_number_weights(counts, 1.0)


def test_inverse_weights() -> None:
    counts = np.array([400, 100, 0])
    assert inverse_weights(counts) == pytest.approx([2 * 0.2, 2 * 0.8, 0.0])
    sqrt = inverse_weights(counts, power=0.5)
    assert sqrt == pytest.approx([2 / 3, 4 / 3, 0.0])


def mean_one(raw: list[float]) -> list[float]:
    return [3 * r / sum(raw) for r in raw]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("none", [1, 1, 1]),
        ("", [1, 1, 1]),
        # Computed here from the counts 100, 10, 1, scaled to mean 1 over the classes.
        ("inverse", mean_one([1 / 100, 1 / 10, 1])),
        ("sqrt-inverse", mean_one([100**-0.5, 10**-0.5, 1])),
        ("effective", mean_one([(1 - 0.999) / (1 - 0.999**n) for n in (100, 10, 1)])),
        ("effective:0.9", mean_one([(1 - 0.9) / (1 - 0.9**n) for n in (100, 10, 1)])),
        ("dent=3, inclusion=0.5", [1, 3, 0.5]),
        ("scratch=0", [0, 1, 1]),
    ],
)
def test_class_weights_spec(spec: str, expected) -> None:
    got = class_weights(spec, np.array([100, 10, 1]), ["scratch", "dent", "inclusion"])
    assert got == pytest.approx(np.asarray(expected, dtype=float))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("crack=2", "scratch, dent, inclusion"),  # names the valid classes
        ("dent=heavy", "not a number"),
        ("dent=nan", "finite"),
        ("dent=-1", ">= 0"),
        ("dent=2,dent=3", "twice"),
        ("effective:x", "not a number"),
        ("effective:1.5", "beta"),
        ("inverse:2", "not one of"),
        ("balanced", "not one of"),
        ("=2", "name=WEIGHT"),
    ],
)
def test_class_weights_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        class_weights(spec, np.array([100, 10, 1]), ["scratch", "dent", "inclusion"])


# ---------------------------------------------------------------------------- advice
def test_advice_names_rare_class_and_remedies(report: dict) -> None:
    text = "\n".join(report["advice"])
    assert "'inclusion' has 1 instance in 1 image:" in text and "50+" in text
    assert "'dent' has 3 instances in 3 images" in text
    assert "No annotations of 'stain'" in text
    assert "Imbalance ratio 7x" in text and "--sampler repeat-factor" in text
    assert "--loss focal --gamma 2" in text
    assert "scores 60% image accuracy" in text
    assert "--background-fraction 0.7" in text  # 8 defect images / 12 background, to 0.1
    assert "Split 'val' has no 'scratch', 'dent': AP is not measured" in text
    assert "Split 'train' has no 'inclusion': cannot be learned" in text
    assert "--strict" in text


def test_advice_only_when_warranted() -> None:
    # 40 images, each with one scratch and one dent of medium size: balanced, no background.
    boxes = [(i, c, 50, 50) for i in range(40) for c in (0, 1)]
    rep = build_report(make_catalog(boxes, num_images=40, classes=["scratch", "dent"]))
    text = "\n".join(rep["advice"])
    assert "Imbalance" not in text and "instances in" not in text and "only" not in text
    assert "--background-fraction" not in text and "image accuracy" not in text
    assert "small" not in text and "No defect-free images" in text


def test_advice_small_boxes() -> None:
    boxes = [(i, 0, 8, 8) for i in range(40)]
    rep = build_report(make_catalog(boxes, num_images=50, classes=["pit"]))
    assert any("--anchors auto" in a and "--image-size 640" in a for a in rep["advice"])


def test_advice_groups_many_rare_classes() -> None:
    names = [f"d{i}" for i in range(6)] + ["[common]"]  # brackets: no Rich markup in names
    boxes = [(i, i % 6, 40, 40) for i in range(12)] + [(i, 6, 40, 40) for i in range(12, 60)]
    rep = build_report(make_catalog(boxes, num_images=60, classes=names))
    rare = [a for a in rep["advice"] if "fewer than 10 images" in a]
    assert len(rare) == 1 and rare[0].startswith("6 classes") and "'d5' (2)" in rare[0]
    console = Console(record=True, width=160)
    render_report(rep, console)
    assert "[common]" in console.export_text()


# ---------------------------------------------------------------------------- output
def test_render_report(report: dict) -> None:
    console = Console(record=True, width=160)
    render_report(report, console)
    text = console.export_text()
    for name in CLASSES:
        assert name in text
    assert "60.0% image accuracy" in text
    assert "Splits" in text and "val" in text
    assert "without defects" in text and "12 (60.0%)" in text
    assert "Advice" in text and "collect more examples" in text


def test_plot_report_writes_png(report: dict, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "dataset.png"
    plot_report(report, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["dataset.png"]  # no temp file left
    plot_report(build_report(make_catalog(boxes=[], num_images=3)), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- scale
def test_large_catalogue_is_vectorised() -> None:
    """200k boxes over 50k images: runs well within a couple of seconds (no Python box loops)."""
    rng = np.random.default_rng(0)
    n_img, n_box, k = 50_000, 200_000, 12
    ids = np.arange(n_img)
    images = pd.DataFrame(
        {
            "image_id": ids * 7 + 3,  # ids need not be row numbers
            "file_name": [f"{i}.png" for i in ids],
            "width": rng.choice([640, 1280], n_img),
            "height": rng.choice([480, 960], n_img),
            "split": rng.choice(["train", "val", "test"], n_img),
        }
    )
    img = rng.integers(0, n_img // 4, n_box)  # 3/4 of the images stay background
    cls = np.minimum(rng.zipf(1.6, n_box) - 1, k - 1)  # heavy-tailed classes
    x1, y1 = rng.uniform(0, 300, n_box), rng.uniform(0, 200, n_box)
    w, h = rng.uniform(2, 300, n_box), rng.uniform(2, 250, n_box)
    boxes = pd.DataFrame(
        {"image_id": img * 7 + 3, "class_id": cls, "x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h}
    )
    cat = Catalog(Path("big"), [f"c{i}" for i in range(k)], images, boxes, "coco")
    rep = build_report(cat)
    assert rep["num_annotations"] == n_box
    assert sum(c["instances"] for c in rep["classes"]) == n_box
    assert rep["num_background_images"] == n_img - len(np.unique(img))
    assert sum(s["num_annotations"] for s in rep["splits"].values()) == n_box
