"""Stratified split: every class with ≥ 2 images on both sides, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defectdet.data.catalog import Catalog
from defectdet.data.split import stratified_split, stratify
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


def test_stratified_split_is_stratify_on_the_presence_matrix():
    cat = make_catalog({0: list(range(1, 30)), 1: [3, 9, 27], 2: [40]}, 60)
    train, val = stratified_split(cat, 0.3, seed=4)
    is_val = stratify(cat.image_class_counts() > 0, 0.3, rng=np.random.default_rng(4))
    ids = cat.images["image_id"].to_numpy()
    assert np.array_equal(val, ids[is_val]) and np.array_equal(train, ids[~is_val])


def test_stratify_without_rng_spreads_val_evenly():
    presence = np.zeros((10, 1), dtype=bool)  # ten background images
    assert np.flatnonzero(stratify(presence, 0.2)).tolist() == [2, 7]
    assert np.flatnonzero(stratify(presence, 0.5)).tolist() == [1, 3, 5, 7, 9]
    assert not stratify(presence, 0.0).any() and stratify(presence, 1.0).all()
    # no classes at all: still one background group
    assert stratify(np.zeros((4, 0), dtype=bool), 0.5).sum() == 2


def test_stratify_rarity_picks_the_group_key():
    # image 0 holds classes 0 and 1: class 0 is in fewer images, but the given rarity says 1
    presence = np.array([[1, 1], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=bool)
    by_images = stratify(presence, 0.5)  # groups: class 0 {0, 1}, class 1 {2, 3, 4}
    by_rarity = stratify(presence, 0.5, rarity=np.array([1, 0]))  # class 0 {1}, 1 {0, 2, 3, 4}
    assert by_images.tolist() == [False, True, True, False, True]
    assert by_rarity.tolist() == [True, False, True, False, True]  # image 0 repaired into val
    for is_val in (by_images, by_rarity):
        for c in (0, 1):
            assert set(is_val[presence[:, c]].tolist()) == {True, False}


def test_repair_moves_at_a_cost_only_when_forced():
    """Class 0 (two images, both in train) can reach val only by taking class 1 or 2 away from
    train: the forced repair does it (rarest-first order), the unforced one leaves it."""
    presence = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=bool)
    assert stratify(presence, 0.2).tolist() == [True, False, False]
    assert stratify(presence, 0.2, force_repair=False).tolist() == [False, False, False]
