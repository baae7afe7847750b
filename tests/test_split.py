"""Stratified split: every class with ≥ 2 images on both sides, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defectdet.data.catalog import Catalog
from defectdet.data.split import stratified_split
from defectdet.errors import ConfigError


def make_catalog(class_images: dict[int, list[int]], num_images: int) -> Catalog:
    images = pd.DataFrame(
        {
            "image_id": np.arange(1, num_images + 1),
            "file_name": [f"{i}.jpg" for i in range(num_images)],
            "width": 64,
            "height": 64,
            "split": "",
        }
    )
    rows = [(img, c, 1.0, 1.0, 5.0, 5.0) for c, imgs in class_images.items() for img in imgs]
    boxes = pd.DataFrame(rows, columns=["image_id", "class_id", "x1", "y1", "x2", "y2"])
    return Catalog(Path("."), [f"c{i}" for i in range(len(class_images))], images, boxes)


@pytest.mark.parametrize("seed", range(5))
def test_every_class_with_two_images_on_both_sides(seed: int):
    rng = np.random.default_rng(seed)
    # A common class everywhere, a rare class in exactly 2 images that also hold the common one,
    # and a class in a single image.
    common = sorted(rng.choice(np.arange(1, 101), 40, replace=False).tolist())
    rare = common[:2]
    single = [common[5]]
    cat = make_catalog({0: common, 1: rare, 2: single}, 100)
    train, val = stratified_split(cat, 0.2, seed=seed)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 100
    for c, imgs in ((0, common), (1, rare)):
        assert set(imgs) & set(train), f"class {c} missing from train"
        assert set(imgs) & set(val), f"class {c} missing from val"
    assert 12 <= len(val) <= 28  # near the requested 20 %
    background = set(range(1, 101)) - set(common)
    assert 0.1 <= len(background & set(val)) / len(background) <= 0.3


def test_split_is_reproducible_and_seed_dependent():
    cat = make_catalog({0: list(range(1, 30)), 1: [3, 9, 27]}, 60)
    a = stratified_split(cat, 0.25, seed=1)
    b = stratified_split(cat, 0.25, seed=1)
    c = stratified_split(cat, 0.25, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_split_rejects_bad_fraction():
    cat = make_catalog({0: [1]}, 4)
    with pytest.raises(ConfigError):
        stratified_split(cat, 1.5)
